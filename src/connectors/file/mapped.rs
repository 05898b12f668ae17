//! A file's bytes for a reader that goes through them once, front to back: mapped (regular
//! files) with the pages already read given back to the kernel, so that the process's
//! resident set stays the size of what is in hand, not of the file; read whole otherwise
//! (stdin, pipes, devices, empty files).

use std::io::Read;
use std::path::Path;

pub enum Input {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Input {
    /// Opens `path`; `-` reads standard input.
    pub fn open(path: &Path) -> std::io::Result<Input> {
        if path == Path::new("-") {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            return Ok(Input::Read(buf));
        }
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_file() && meta.len() > 0 {
            // SAFETY: the mapping is read-only and private. A file truncated by another
            // process while it is read would fault (SIGBUS): inputs are files at rest.
            let m = unsafe { memmap2::Mmap::map(&file) }?;
            let _ = m.advise(memmap2::Advice::Sequential);
            Ok(Input::Mapped(m))
        } else {
            let mut buf = Vec::new();
            (&file).read_to_end(&mut buf)?;
            Ok(Input::Read(buf))
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Read(v) => v,
        }
    }
}

impl std::ops::Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

/// How far pages were given back (see [`Released::upto`]).
#[derive(Debug, Default)]
pub struct Released(usize);

impl Released {
    /// Tells the kernel the pages before `consumed` are not needed any more: they leave the
    /// process's resident set. Safe for a private read-only file mapping: a later read of
    /// those bytes (an HL7 batch header the splitter kept) faults them in again from the file.
    pub fn upto(&mut self, input: &Input, consumed: usize) {
        const CHUNK: usize = 4 << 20;
        let Input::Mapped(m) = input else {
            return;
        };
        let page = 4096;
        let upto = consumed.min(m.len()) / page * page;
        if upto < self.0 + CHUNK {
            return;
        }
        // The kernel maps a fault's neighbours too ("fault-around", 64 KiB by default), so
        // pages just before the last release come back when the next pages are read: go
        // back a little each time, or they pile up (measured: ~10 pages per release).
        let from = self.0.saturating_sub(1 << 20);
        // SAFETY: DontNeed on a read-only private file mapping only drops clean pages; the
        // bytes stay readable (refaulted from the file).
        let dropped = unsafe {
            m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, upto - from)
        };
        if dropped.is_ok() {
            self.0 = upto;
        }
    }
}
