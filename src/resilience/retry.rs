//! The retry policy of the seed's `connection.retryPolicy`: how many attempts, and how long to
//! wait before each one.
//!
//! Attempt 1 is the first delivery. Before attempt `n + 1` the wait is `base * n` (linear) or
//! `base * 2^(n-1)` (exponential), capped at `max_delay`, with up to `jitter` of it added at
//! random so that many failed records do not all come back at the same instant. A server's
//! `Retry-After` wins when it asks for longer.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    Linear,
    Exponential,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = never retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub base: Duration,
    pub max_delay: Duration,
    /// Fraction of the delay added at random (0 = none).
    pub jitter: f64,
    /// Retrying in place: the longest a record waits for an open breaker before it is given
    /// up as unavailable. The wait uses no attempt.
    pub max_outage: Duration,
}

impl Default for RetryPolicy {
    /// The seed's outgoing-webhook policy: 3 attempts, exponential from 1 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            jitter: 0.0,
            max_outage: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `failed` (1-based) before the next one, without jitter.
    pub fn delay(&self, failed: u32) -> Duration {
        let n = failed.max(1);
        let d = match self.backoff {
            Backoff::Linear => self.base.saturating_mul(n),
            Backoff::Exponential => self.base.saturating_mul(1u32 << (n - 1).min(30)),
        };
        d.min(self.max_delay)
    }

    /// `delay` with jitter (from `random` in [0, 1)) and a server's `Retry-After` honoured.
    pub fn next_delay(&self, failed: u32, random: f64, retry_after: Option<Duration>) -> Duration {
        let d = self.delay(failed);
        let d = d + d.mul_f64(self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0));
        match retry_after {
            // Honoured even beyond max_delay: the server knows when it will be back.
            Some(r) if r > d => r,
            _ => d,
        }
    }

    /// Whether another attempt follows failed attempt `failed`.
    pub fn retries_after(&self, failed: u32) -> bool {
        failed < self.max_attempts
    }
}

/// A random number in [0, 1) for jitter (not for anything secret): `fastrand`'s per-thread
/// generator, so concurrent retries spread out rather than share a clock-derived value.
pub fn jitter_random() -> f64 {
    fastrand::f64()
}

/// Parses an HTTP `Retry-After` value: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            backoff,
            base: Duration::from_millis(500),
            max_delay: Duration::from_secs(3),
            jitter: 0.0,
            max_outage: Duration::from_secs(600),
        }
    }

    #[test]
    fn linear_and_exponential_delays_are_capped() {
        let l = policy(Backoff::Linear);
        let ms = |p: &RetryPolicy, n| p.delay(n).as_millis();
        assert_eq!([ms(&l, 1), ms(&l, 2), ms(&l, 3)], [500, 1000, 1500]);
        let e = policy(Backoff::Exponential);
        assert_eq!(
            [ms(&e, 1), ms(&e, 2), ms(&e, 3), ms(&e, 4), ms(&e, 40)],
            [500, 1000, 2000, 3000, 3000]
        );
        assert!(e.retries_after(3));
        assert!(!e.retries_after(4));
    }

    #[test]
    fn jitter_adds_at_most_its_fraction_and_retry_after_wins_when_longer() {
        let mut p = policy(Backoff::Exponential);
        p.jitter = 0.5;
        assert_eq!(p.next_delay(2, 0.0, None), Duration::from_millis(1000));
        assert_eq!(p.next_delay(2, 0.999_999, None).as_millis(), 1499);
        let long = Some(Duration::from_secs(30));
        assert_eq!(p.next_delay(1, 0.0, long), Duration::from_secs(30));
        assert_eq!(
            p.next_delay(3, 0.0, Some(Duration::from_millis(1))),
            Duration::from_millis(2000)
        );
        let r = jitter_random();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let got = parse_retry_after(&soon).unwrap().as_secs();
        assert!((85..=90).contains(&got), "{got}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
