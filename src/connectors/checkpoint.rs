//! Checkpoints: when may a source commit?
//!
//! A checkpointed source (Kafka) follows each batch with a barrier carrying an epoch number.
//! Barriers flow through every stage behind the rows they follow, to every sink and (from
//! every stage) to the dead-letter writer. Each of these *parties* acks an epoch once
//! everything it received before the barrier is durable. An epoch is complete when all
//! parties acked it and every earlier epoch is complete; its positions (next offset per
//! partition) then become committable. Acks may arrive out of order (sinks await delivery
//! reports concurrently); commits never skip an incomplete epoch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A committable position: (topic, partition, next offset to read).
pub type Position = (String, i32, i64);

#[derive(Default)]
struct State {
    parties: usize,
    epochs: BTreeMap<u64, Epoch>,
    committable: HashMap<(String, i32), i64>,
    last_registered: u64,
    completed_through: u64,
    /// Records with a smaller `_record_index` are final (delivered, dead or filtered).
    complete_end_index: i64,
    failed: Option<String>,
}

struct Epoch {
    remaining: usize,
    positions: Vec<Position>,
    end_index: i64,
}

/// Shared between the source, the sinks and the dead-letter writer.
pub struct Checkpoints {
    state: Mutex<State>,
    changed: Condvar,
    /// Told of each completed epoch's positions at once (a listener's application ACKs
    /// should not wait for the source's next commit).
    watcher: Mutex<Option<std::sync::Arc<dyn super::Settlement>>>,
}

impl Checkpoints {
    /// `parties`: the sinks plus the dead-letter writer.
    pub fn new(parties: usize) -> Self {
        Checkpoints {
            state: Mutex::new(State {
                parties,
                ..State::default()
            }),
            changed: Condvar::new(),
            watcher: Mutex::new(None),
        }
    }

    /// Tells `watcher` of every epoch as it completes.
    pub fn watch(&self, watcher: std::sync::Arc<dyn super::Settlement>) {
        *self.watcher.lock().expect("watcher") = Some(watcher);
    }

    fn tell(&self, completed: Vec<Position>) {
        if completed.is_empty() {
            return;
        }
        if let Some(w) = &*self.watcher.lock().expect("watcher") {
            w.complete(&completed);
        }
    }

    /// The source announces epoch `epoch` (ascending) covering `positions`; records below
    /// `end_index` have all been read by then.
    pub fn register(&self, epoch: u64, positions: Vec<Position>, end_index: i64) {
        let mut s = self.state.lock().expect("checkpoints");
        debug_assert!(epoch > s.last_registered);
        s.last_registered = epoch;
        let remaining = s.parties;
        s.epochs.insert(
            epoch,
            Epoch {
                remaining,
                positions,
                end_index,
            },
        );
        let completed = Self::advance(&mut s);
        self.changed.notify_all();
        drop(s);
        self.tell(completed);
    }

    /// One party has made everything up to `epoch`'s barrier durable.
    pub fn ack(&self, epoch: u64) {
        let mut s = self.state.lock().expect("checkpoints");
        if let Some(e) = s.epochs.get_mut(&epoch) {
            e.remaining = e.remaining.saturating_sub(1);
        }
        let completed = Self::advance(&mut s);
        self.changed.notify_all();
        drop(s);
        self.tell(completed);
    }

    /// A party cannot make its writes durable: nothing after this is committed.
    pub fn fail(&self, error: String) {
        let mut s = self.state.lock().expect("checkpoints");
        s.failed.get_or_insert(error);
        self.changed.notify_all();
    }

    /// Completes what it can; returns the completed epochs' positions.
    fn advance(s: &mut State) -> Vec<Position> {
        let mut completed = Vec::new();
        if s.failed.is_some() {
            return completed;
        }
        while let Some(entry) = s.epochs.first_entry() {
            if entry.get().remaining > 0 {
                break;
            }
            let (epoch, e) = entry.remove_entry();
            for (topic, partition, next) in e.positions.iter().cloned() {
                let slot = s.committable.entry((topic, partition)).or_insert(next);
                *slot = (*slot).max(next);
            }
            tracing::trace!(epoch, positions = ?e.positions, "epoch complete");
            s.completed_through = epoch;
            s.complete_end_index = s.complete_end_index.max(e.end_index);
            completed.extend(e.positions);
        }
        completed
    }

    /// Positions that became committable since the last call.
    pub fn take_committable(&self) -> Vec<Position> {
        let mut s = self.state.lock().expect("checkpoints");
        s.committable.drain().map(|((t, p), o)| (t, p, o)).collect()
    }

    /// Puts positions back (a commit failed; they are retried with the next ones).
    pub fn restore(&self, positions: Vec<Position>) {
        let mut s = self.state.lock().expect("checkpoints");
        for (t, p, o) in positions {
            let slot = s.committable.entry((t, p)).or_insert(o);
            *slot = (*slot).max(o);
        }
    }

    /// Waits until every registered epoch is complete; false on timeout or failure.
    pub fn wait_all(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().expect("checkpoints");
        loop {
            if s.failed.is_some() {
                return false;
            }
            if s.completed_through >= s.last_registered {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .expect("checkpoints")
                .0;
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.state.lock().expect("checkpoints").failed.clone()
    }

    /// (epochs registered, epochs complete, records final below this index).
    pub fn progress(&self) -> (u64, u64, i64) {
        let s = self.state.lock().expect("checkpoints");
        (s.last_registered, s.completed_through, s.complete_end_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: i32, o: i64) -> Position {
        ("t".into(), p, o)
    }

    #[test]
    fn commits_only_a_complete_prefix() {
        let c = Checkpoints::new(2);
        c.register(1, vec![pos(0, 10)], 10);
        c.register(2, vec![pos(0, 20), pos(1, 5)], 25);
        // Epoch 2 fully acked first: nothing committable while epoch 1 is open.
        c.ack(2);
        c.ack(2);
        assert!(c.take_committable().is_empty());
        c.ack(1);
        assert!(c.take_committable().is_empty());
        c.ack(1);
        let mut got = c.take_committable();
        got.sort();
        assert_eq!(got, vec![pos(0, 20), pos(1, 5)]);
        assert_eq!(c.progress(), (2, 2, 25));
        assert!(c.wait_all(Duration::from_millis(1)));
        assert!(c.take_committable().is_empty());
    }

    #[test]
    fn a_failure_stops_commits() {
        let c = Checkpoints::new(1);
        c.register(1, vec![pos(0, 1)], 1);
        c.fail("broker gone".into());
        c.ack(1);
        assert!(c.take_committable().is_empty());
        assert!(!c.wait_all(Duration::from_millis(1)));
        assert_eq!(c.failure().as_deref(), Some("broker gone"));
    }

    #[test]
    fn wait_all_wakes_on_ack_from_another_thread() {
        let c = std::sync::Arc::new(Checkpoints::new(1));
        c.register(1, vec![pos(0, 3)], 3);
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c2.ack(1);
        });
        assert!(c.wait_all(Duration::from_secs(5)));
        t.join().unwrap();
    }
}
