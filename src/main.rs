//! The `plexus` command line. Only glue: every command lives in `plexus::cli`.

// See Cargo.toml: bounded peak RSS on long runs.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    plexus::cli::main()
}
