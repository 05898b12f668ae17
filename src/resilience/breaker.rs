//! The circuit breaker state machine, with resilience4j's semantics (and one addition).
//!
//! - **CLOSED**: calls pass; outcomes go into a sliding window (the last N calls, or the calls
//!   of the last T). Once the window holds at least `minimum_calls`, the breaker opens when the
//!   failure rate ≥ `failure_rate_threshold` or the slow-call rate ≥ `slow_call_rate_threshold`
//!   (a call is slow when it took ≥ `slow_call_duration`). Unlike resilience4j, an absolute
//!   `max_failures` in the window also opens it, whatever the rate — ten failed writes of a
//!   patient record matter even among ten thousand good ones.
//! - **OPEN**: calls are rejected (the caller parks or pauses the records; nothing is dropped)
//!   for `wait_in_open`, multiplied by `wait_multiplier` for each consecutive opening without
//!   a successful close, capped at `max_wait_in_open`. Then the next call attempt moves it to
//! - **HALF_OPEN**: `permitted_in_half_open` probe calls pass, further ones are rejected. When
//!   all probes are recorded, the same rate thresholds over the probes decide OPEN again or
//!   CLOSED (with an empty window). If the probes have not completed within
//!   `max_wait_in_half_open`, it opens again, so a stuck probe cannot hold it half-open.
//!
//! Time is passed in (milliseconds), never read here: the same machine runs on processing time
//! and in deterministic tests. Every state change is recorded as a `Transition` for the caller
//! to publish (`integration.circuit.opened|half_opened|closed`).

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The event type published for entering this state.
    pub fn event_type(self) -> &'static str {
        match self {
            BreakerState::Closed => "integration.circuit.closed",
            BreakerState::Open => "integration.circuit.opened",
            BreakerState::HalfOpen => "integration.circuit.half_opened",
        }
    }
}

/// Which calls the CLOSED window covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SlidingWindow {
    /// The last N calls.
    Count(usize),
    /// The calls of the last T (kept in one-second buckets).
    Time(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub window: SlidingWindow,
    pub minimum_calls: usize,
    /// Percent, 0–100.
    pub failure_rate_threshold: f64,
    pub slow_call_rate_threshold: f64,
    pub slow_call_duration: Duration,
    /// Opens on this many failures in the window, whatever the rate.
    pub max_failures: Option<usize>,
    pub wait_in_open: Duration,
    /// Growth of the open wait per consecutive opening (1 = constant).
    pub wait_multiplier: f64,
    pub max_wait_in_open: Duration,
    pub permitted_in_half_open: usize,
    /// Zero: wait for the probes however long they take (resilience4j's default).
    pub max_wait_in_half_open: Duration,
}

impl Default for BreakerConfig {
    /// resilience4j's defaults, with a bounded half-open wait.
    fn default() -> Self {
        BreakerConfig {
            window: SlidingWindow::Count(100),
            minimum_calls: 100,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(60),
            max_failures: None,
            wait_in_open: Duration::from_secs(60),
            wait_multiplier: 1.0,
            max_wait_in_open: Duration::from_secs(600),
            permitted_in_half_open: 10,
            max_wait_in_half_open: Duration::from_secs(120),
        }
    }
}

/// One state change, for the caller to publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub at_ms: i64,
    pub reason: String,
    /// Over the window (or the probes) that decided it.
    pub calls: usize,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
}

/// Counts of one bucket (or of a whole window).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    calls: usize,
    failures: usize,
    slow: usize,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.calls += o.calls;
        self.failures += o.failures;
        self.slow += o.slow;
    }
    fn sub(&mut self, o: Counts) {
        self.calls -= o.calls;
        self.failures -= o.failures;
        self.slow -= o.slow;
    }
    fn rates(&self) -> (f64, f64) {
        if self.calls == 0 {
            return (0.0, 0.0);
        }
        let n = self.calls as f64;
        (
            100.0 * self.failures as f64 / n,
            100.0 * self.slow as f64 / n,
        )
    }
}

/// The CLOSED window: per call (count) or per second (time), with running totals.
#[derive(Debug, Default)]
struct Window {
    /// (bucket start in ms, or 0 for count windows; counts)
    buckets: VecDeque<(i64, Counts)>,
    total: Counts,
}

impl Window {
    fn record(&mut self, kind: SlidingWindow, now_ms: i64, c: Counts) {
        match kind {
            SlidingWindow::Count(n) => {
                self.buckets.push_back((0, c));
                self.total.add(c);
                while self.buckets.len() > n.max(1) {
                    let (_, old) = self.buckets.pop_front().expect("non-empty");
                    self.total.sub(old);
                }
            }
            SlidingWindow::Time(_) => {
                self.expire(kind, now_ms);
                let second = now_ms - now_ms.rem_euclid(1000);
                match self.buckets.back_mut() {
                    Some((start, b)) if *start == second => b.add(c),
                    _ => self.buckets.push_back((second, c)),
                }
                self.total.add(c);
            }
        }
    }

    fn expire(&mut self, kind: SlidingWindow, now_ms: i64) {
        if let SlidingWindow::Time(t) = kind {
            let horizon = now_ms - t.as_millis() as i64;
            while let Some(&(start, old)) = self.buckets.front() {
                if start + 1000 > horizon {
                    break;
                }
                self.buckets.pop_front();
                self.total.sub(old);
            }
        }
    }

    fn clear(&mut self) {
        self.buckets.clear();
        self.total = Counts::default();
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    window: Window,
    /// When OPEN began, and how long it lasts.
    opened_at: i64,
    open_for: Duration,
    consecutive_opens: u32,
    /// HALF_OPEN: when it began, probes handed out, and their recorded outcomes.
    half_open_at: i64,
    probes_out: usize,
    probes: Counts,
    transitions: Vec<Transition>,
    /// Held open by an operator: no time-driven move to HALF_OPEN until `reset`.
    forced: bool,
}

/// A call was refused: the breaker is open (or half-open with every probe out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rejected {
    pub state: BreakerState,
    /// When a call may be tried again (OPEN), if known.
    pub retry_in: Option<Duration>,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: BreakerState::Closed,
            window: Window::default(),
            opened_at: 0,
            open_for: Duration::ZERO,
            consecutive_opens: 0,
            half_open_at: 0,
            probes_out: 0,
            probes: Counts::default(),
            transitions: Vec::new(),
            forced: false,
        }
    }

    /// Whether an operator holds it open.
    pub fn forced(&self) -> bool {
        self.forced
    }

    /// Opens it and holds it open until `reset` (an operator taking a system out of
    /// service: maintenance, a known outage). Calls are refused meanwhile.
    pub fn force_open(&mut self, now_ms: i64, reason: String) {
        if self.state != BreakerState::Open {
            let total = self.window.total;
            self.open(now_ms, reason, total);
        }
        self.forced = true;
    }

    /// Closes it with a clean window and no back-off memory (an operator saying the system
    /// is back), whatever its state.
    pub fn reset(&mut self, now_ms: i64, reason: String) {
        self.forced = false;
        self.consecutive_opens = 0;
        self.window.clear();
        self.probes_out = 0;
        self.probes = Counts::default();
        if self.state != BreakerState::Closed {
            self.change(BreakerState::Closed, now_ms, reason, Counts::default());
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// State changes since the last call, oldest first.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
    }

    /// Asks to make one call at `now_ms`. Ok: make it and `record` its outcome.
    pub fn try_acquire(&mut self, now_ms: i64) -> Result<(), Rejected> {
        self.tick(now_ms);
        match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => {
                let left = self.opened_at + self.open_for.as_millis() as i64 - now_ms;
                Err(Rejected {
                    state: BreakerState::Open,
                    retry_in: (!self.forced).then(|| Duration::from_millis(left.max(0) as u64)),
                })
            }
            BreakerState::HalfOpen => {
                if self.probes_out < self.config.permitted_in_half_open.max(1) {
                    self.probes_out += 1;
                    Ok(())
                } else {
                    Err(Rejected {
                        state: BreakerState::HalfOpen,
                        retry_in: None,
                    })
                }
            }
        }
    }

    /// Applies time-driven transitions (OPEN → HALF_OPEN after the wait; HALF_OPEN → OPEN
    /// after the max wait). `try_acquire` and `record` call it; a scheduler may too.
    pub fn tick(&mut self, now_ms: i64) {
        match self.state {
            BreakerState::Open
                if !self.forced && now_ms >= self.opened_at + self.open_for.as_millis() as i64 =>
            {
                self.half_open_at = now_ms;
                self.probes_out = 0;
                self.probes = Counts::default();
                self.change(
                    BreakerState::HalfOpen,
                    now_ms,
                    "wait in open state elapsed".into(),
                    Counts::default(),
                );
            }
            BreakerState::HalfOpen
                if !self.config.max_wait_in_half_open.is_zero()
                    && now_ms
                        >= self.half_open_at
                            + self.config.max_wait_in_half_open.as_millis() as i64 =>
            {
                let probes = self.probes;
                self.open(
                    now_ms,
                    format!(
                        "probes did not complete within {:?} in half-open state",
                        self.config.max_wait_in_half_open
                    ),
                    probes,
                );
            }
            _ => {}
        }
    }

    /// Records the outcome of a call that `try_acquire` allowed.
    pub fn record(&mut self, now_ms: i64, failed: bool, latency: Duration) {
        self.tick(now_ms);
        let c = Counts {
            calls: 1,
            failures: failed as usize,
            slow: (latency >= self.config.slow_call_duration) as usize,
        };
        match self.state {
            BreakerState::Closed => {
                self.window.record(self.config.window, now_ms, c);
                let total = self.window.total;
                if let Some(reason) = self.should_open(total, true) {
                    self.open(now_ms, reason, total);
                }
            }
            BreakerState::HalfOpen => {
                self.probes.add(c);
                let probes = self.probes;
                if probes.calls >= self.config.permitted_in_half_open.max(1) {
                    match self.should_open(probes, false) {
                        Some(reason) => self.open(now_ms, format!("probes: {reason}"), probes),
                        None => {
                            self.window.clear();
                            self.consecutive_opens = 0;
                            self.change(
                                BreakerState::Closed,
                                now_ms,
                                "probe calls succeeded".into(),
                                probes,
                            );
                        }
                    }
                }
            }
            // A call allowed before the breaker opened finished late: it says nothing new.
            BreakerState::Open => {}
        }
    }

    /// Opens a CLOSED breaker from outside: a window's trip predicate held (`reason` says
    /// which). OPEN and HALF_OPEN are left alone: the breaker is already protecting the
    /// system, and half-open probes decide for themselves.
    pub fn trip(&mut self, now_ms: i64, reason: String) {
        self.tick(now_ms);
        if self.state == BreakerState::Closed {
            let total = self.window.total;
            self.open(now_ms, reason, total);
        }
    }

    /// Why these counts open the breaker, if they do.
    fn should_open(&self, c: Counts, closed: bool) -> Option<String> {
        if closed
            && let Some(max) = self.config.max_failures
            && c.failures >= max
        {
            return Some(format!("{} failures in the window (max {max})", c.failures));
        }
        if c.calls < self.config.minimum_calls.max(1) && closed {
            return None;
        }
        let (failure_rate, slow_rate) = c.rates();
        if failure_rate >= self.config.failure_rate_threshold {
            return Some(format!(
                "failure rate {failure_rate:.1}% ≥ {}% over {} calls",
                self.config.failure_rate_threshold, c.calls
            ));
        }
        if slow_rate >= self.config.slow_call_rate_threshold {
            return Some(format!(
                "slow-call rate {slow_rate:.1}% ≥ {}% over {} calls",
                self.config.slow_call_rate_threshold, c.calls
            ));
        }
        None
    }

    fn open(&mut self, now_ms: i64, reason: String, c: Counts) {
        self.consecutive_opens += 1;
        let factor = self
            .config
            .wait_multiplier
            .max(1.0)
            .powi(self.consecutive_opens as i32 - 1);
        self.open_for = self
            .config
            .wait_in_open
            .mul_f64(factor)
            .min(self.config.max_wait_in_open.max(self.config.wait_in_open));
        self.opened_at = now_ms;
        self.window.clear();
        self.change(BreakerState::Open, now_ms, reason, c);
    }

    fn change(&mut self, to: BreakerState, now_ms: i64, reason: String, c: Counts) {
        let (failure_rate, slow_call_rate) = c.rates();
        self.transitions.push(Transition {
            from: self.state,
            to,
            at_ms: now_ms,
            reason,
            calls: c.calls,
            failure_rate,
            slow_call_rate,
        });
        self.state = to;
    }
}

/// A breaker shared by a sink and its retry worker, on processing time, keeping the
/// transitions it made for the run summary and the breaker events.
#[derive(Clone)]
pub struct SharedBreaker {
    name: String,
    inner: std::sync::Arc<std::sync::Mutex<(CircuitBreaker, Vec<Transition>)>>,
}

impl SharedBreaker {
    pub fn new(name: &str, config: BreakerConfig) -> Self {
        SharedBreaker {
            name: name.to_string(),
            inner: std::sync::Arc::new(std::sync::Mutex::new((
                CircuitBreaker::new(config),
                Vec::new(),
            ))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut CircuitBreaker, i64) -> T) -> T {
        let mut g = self.inner.lock().expect("breaker");
        let now = chrono::Utc::now().timestamp_millis();
        let out = f(&mut g.0, now);
        let changes = g.0.take_transitions();
        for t in &changes {
            // Counts and reasons only: never a record's content.
            tracing::info!(
                breaker = %self.name,
                from = ?t.from,
                to = ?t.to,
                reason = %t.reason,
                "{}",
                t.to.event_type()
            );
        }
        g.1.extend(changes);
        out
    }

    pub fn try_acquire(&self) -> Result<(), Rejected> {
        self.with(|b, now| b.try_acquire(now))
    }

    /// As `try_acquire`; `Ok(true)` when the call is a half-open probe. A failed probe says
    /// the system is still down, not that the record is bad: callers do not charge it to the
    /// record's attempts, so a long outage cannot use them up before the system is back.
    pub fn try_acquire_probe(&self) -> Result<bool, Rejected> {
        self.with(|b, now| {
            b.try_acquire(now)
                .map(|()| b.state() == BreakerState::HalfOpen)
        })
    }

    pub fn record(&self, failed: bool, latency: Duration) {
        self.with(|b, now| b.record(now, failed, latency))
    }

    /// See `CircuitBreaker::trip`.
    pub fn trip(&self, reason: String) {
        self.with(|b, now| b.trip(now, reason))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// See `CircuitBreaker::force_open`.
    pub fn force_open(&self, reason: String) {
        self.with(|b, now| b.force_open(now, reason))
    }

    /// See `CircuitBreaker::reset`.
    pub fn reset(&self, reason: String) {
        self.with(|b, now| b.reset(now, reason))
    }

    /// Whether an operator holds it open.
    pub fn forced(&self) -> bool {
        self.with(|b, _| b.forced())
    }

    pub fn state(&self) -> BreakerState {
        self.with(|b, now| {
            b.tick(now);
            b.state()
        })
    }

    /// Every transition so far.
    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions_since(0)
    }

    /// Transitions after the first `n` (what a publisher has not seen yet).
    pub fn transitions_since(&self, n: usize) -> Vec<Transition> {
        let g = self.inner.lock().expect("breaker");
        g.1.get(n..).map(<[Transition]>::to_vec).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::*;

    const FAST: Duration = Duration::from_millis(5);

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: SlidingWindow::Count(10),
            minimum_calls: 5,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 80.0,
            slow_call_duration: Duration::from_millis(500),
            max_failures: None,
            wait_in_open: Duration::from_secs(10),
            wait_multiplier: 2.0,
            max_wait_in_open: Duration::from_secs(25),
            permitted_in_half_open: 3,
            max_wait_in_half_open: Duration::from_secs(30),
        }
    }

    fn calls(b: &mut CircuitBreaker, at: i64, outcomes: &[bool]) {
        for &failed in outcomes {
            b.try_acquire(at).expect("allowed");
            b.record(at, failed, FAST);
        }
    }

    #[test]
    fn stays_closed_below_the_minimum_then_opens_at_the_threshold() {
        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[true; 4]);
        assert_eq!(b.state(), Closed, "4 of 4 failed, but fewer than 5 calls");
        calls(&mut b, 1, &[true]);
        assert_eq!(b.state(), Open);
        let t = b.take_transitions();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].from, t[0].to, t[0].calls), (Closed, Open, 5));
        assert_eq!(t[0].failure_rate, 100.0);
        assert!(t[0].reason.contains("failure rate"), "{}", t[0].reason);

        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[false, true, false, true, false, false]);
        assert_eq!(b.state(), Closed, "2 of 6 = 33%");
        calls(&mut b, 0, &[true]);
        assert_eq!(b.state(), Closed, "3 of 7 = 43%");
        calls(&mut b, 0, &[true]);
        assert_eq!(b.state(), Open, "4 of 8 = 50%");
    }

    #[test]
    fn a_window_trip_opens_a_closed_breaker_and_probes_still_decide() {
        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[false, true]);
        b.trip(1_000, "window calls: 2 calls, 1 failed".into());
        assert_eq!(b.state(), Open);
        let t = b.take_transitions();
        assert_eq!(t[0].reason, "window calls: 2 calls, 1 failed");
        // Tripping an open breaker changes nothing (no second event).
        b.trip(2_000, "again".into());
        assert!(b.take_transitions().is_empty());
        // After the wait, probes close it as usual.
        for _ in 0..3 {
            assert!(b.try_acquire(11_000).is_ok());
            assert_eq!(b.state(), HalfOpen);
            b.record(11_000, false, FAST);
        }
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn forced_open_holds_until_reset_which_closes_with_a_clean_slate() {
        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[true, true, true, true]);
        b.force_open(1_000, "maintenance by ops".into());
        assert_eq!(b.state(), Open);
        // Long past the wait: still open, no probes, no retry hint.
        let r = b.try_acquire(1_000_000).unwrap_err();
        assert_eq!((r.state, r.retry_in), (Open, None));
        assert!(b.forced());
        b.reset(1_000_001, "reset by ops".into());
        assert_eq!(b.state(), Closed);
        let t = b.take_transitions();
        let moves: Vec<_> = t
            .iter()
            .map(|t| (t.from, t.to, t.reason.as_str()))
            .collect();
        assert_eq!(
            moves,
            [
                (Closed, Open, "maintenance by ops"),
                (Open, Closed, "reset by ops")
            ]
        );
        // The four failures before were forgotten: one more does not open it.
        calls(&mut b, 1_000_002, &[true]);
        assert_eq!(b.state(), Closed);
        // A breaker already open by itself is held too, and its back-off starts over.
        calls(&mut b, 1_000_003, &[true; 4]);
        assert_eq!(b.state(), Open);
        b.force_open(1_000_004, "hold".into());
        assert!(b.try_acquire(9_000_000).is_err());
        b.reset(9_000_001, "back".into());
        calls(&mut b, 9_000_002, &[true; 5]);
        let r = b.try_acquire(9_000_003).unwrap_err();
        assert_eq!(
            r.retry_in,
            Some(Duration::from_millis(9_999)),
            "first wait again"
        );
    }

    #[test]
    fn the_count_window_forgets_old_calls() {
        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[true, true]);
        calls(&mut b, 0, &[false; 10]);
        assert_eq!(
            b.state(),
            Closed,
            "the 2 failures slid out of the last 10 calls"
        );
        calls(&mut b, 0, &[true; 4]);
        assert_eq!(b.state(), Closed, "4 of 10 = 40%");
        calls(&mut b, 0, &[true]);
        assert_eq!(b.state(), Open, "5 of 10");
    }

    #[test]
    fn the_time_window_forgets_calls_older_than_its_span() {
        let mut c = config();
        c.window = SlidingWindow::Time(Duration::from_secs(5));
        let mut b = CircuitBreaker::new(c);
        calls(&mut b, 0, &[true; 4]);
        calls(&mut b, 6_000, &[true]);
        assert_eq!(b.state(), Closed, "the first four are older than 5 s");
        calls(&mut b, 7_000, &[true; 3]);
        assert_eq!(b.state(), Closed, "4 calls in the window");
        calls(&mut b, 9_999, &[false]);
        assert_eq!(b.state(), Open, "4 of 5 within 5 s");
    }

    #[test]
    fn slow_calls_and_the_absolute_failure_count_open_it() {
        let mut b = CircuitBreaker::new(config());
        for _ in 0..5 {
            b.try_acquire(0).unwrap();
            b.record(0, false, Duration::from_millis(800));
        }
        assert_eq!(b.state(), Open);
        assert!(b.take_transitions()[0].reason.contains("slow-call rate"));

        let mut c = config();
        c.window = SlidingWindow::Count(100);
        c.minimum_calls = 100;
        c.max_failures = Some(3);
        let mut b = CircuitBreaker::new(c);
        calls(&mut b, 0, &[false; 20]);
        calls(&mut b, 0, &[true, true]);
        assert_eq!(b.state(), Closed);
        calls(&mut b, 0, &[true]);
        assert_eq!(
            b.state(),
            Open,
            "3 failures, under the minimum calls and the rate"
        );
        assert!(b.take_transitions()[0].reason.contains("3 failures"));
    }

    #[test]
    fn open_rejects_until_the_wait_then_half_open_permits_the_probes() {
        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[true; 5]);
        let r = b.try_acquire(4_000).unwrap_err();
        assert_eq!(r.state, Open);
        assert_eq!(r.retry_in, Some(Duration::from_secs(6)));
        assert_eq!(b.try_acquire(9_999).unwrap_err().state, Open);
        assert!(b.try_acquire(10_000).is_ok(), "first probe");
        assert_eq!(b.state(), HalfOpen);
        assert!(b.try_acquire(10_001).is_ok());
        assert!(b.try_acquire(10_002).is_ok());
        let r = b.try_acquire(10_003).unwrap_err();
        assert_eq!((r.state, r.retry_in), (HalfOpen, None), "only 3 probes");
        for _ in 0..3 {
            b.record(10_100, false, FAST);
        }
        assert_eq!(b.state(), Closed);
        let kinds: Vec<_> = b
            .take_transitions()
            .iter()
            .map(|t| (t.from, t.to))
            .collect();
        assert_eq!(
            kinds,
            vec![(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
        // Closed again with an empty window: old failures do not count.
        calls(&mut b, 10_200, &[true; 4]);
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn failed_probes_reopen_with_a_growing_capped_wait() {
        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[true; 5]);
        // 1st open: 10 s. Probes fail → 2nd open: 20 s. Again → 3rd: 40 s capped at 25 s.
        let mut at = 10_000;
        for expected_wait in [20_000, 25_000] {
            for _ in 0..3 {
                b.try_acquire(at).unwrap();
            }
            b.record(at, true, FAST);
            b.record(at, false, FAST);
            assert_eq!(b.state(), HalfOpen, "2 of 3 probes in");
            b.record(at, true, FAST);
            assert_eq!(b.state(), Open, "2 of 3 probes failed");
            assert_eq!(
                b.try_acquire(at).unwrap_err().retry_in,
                Some(Duration::from_millis(expected_wait))
            );
            at += expected_wait as i64;
        }
        let last = b.take_transitions().pop().unwrap();
        assert!(last.reason.starts_with("probes:"), "{}", last.reason);
        // A successful close resets the growth.
        for _ in 0..3 {
            b.try_acquire(at).unwrap();
        }
        for _ in 0..3 {
            b.record(at, false, FAST);
        }
        assert_eq!(b.state(), Closed);
        calls(&mut b, at, &[true; 5]);
        assert_eq!(
            b.try_acquire(at).unwrap_err().retry_in,
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn a_stuck_probe_cannot_hold_it_half_open() {
        let mut b = CircuitBreaker::new(config());
        calls(&mut b, 0, &[true; 5]);
        b.try_acquire(10_000).unwrap();
        b.record(10_500, false, FAST);
        b.try_acquire(10_600).unwrap(); // never recorded
        assert_eq!(b.state(), HalfOpen);
        b.tick(39_999);
        assert_eq!(b.state(), HalfOpen);
        b.tick(40_000);
        assert_eq!(b.state(), Open, "30 s max wait in half-open");
        let t = b.take_transitions().pop().unwrap();
        assert!(t.reason.contains("did not complete"), "{}", t.reason);
        // A late outcome of the stuck probe changes nothing.
        b.record(40_001, false, FAST);
        assert_eq!(b.state(), Open);
        assert_eq!(
            BreakerState::Open.event_type(),
            "integration.circuit.opened"
        );
    }
}
