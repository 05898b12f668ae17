//! Event-time windows over outcome rows: tumbling (slide = size) or hopping (slide < size),
//! with a bounded-out-of-orderness watermark and allowed lateness — the model of Flink and
//! Arroyo, small enough to checkpoint as JSON.
//!
//! - The watermark is the largest event time seen minus `out_of_orderness`: the promise that
//!   no earlier record is still expected. A window `[start, end)` fires once the watermark
//!   reaches `end`.
//! - A record for a fired window that is still within `allowed_lateness` updates it, and the
//!   window is emitted again (`update: true`). Later than that, the record is counted in
//!   `late_dropped` — never silently lost.
//! - Processing-time windows are the same machine fed the clock as event time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sketch::Sketch;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    pub size_ms: i64,
    /// = size for tumbling windows.
    pub slide_ms: i64,
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
}

impl WindowConfig {
    pub fn tumbling(size: Duration) -> Self {
        let ms = size.as_millis().max(1) as i64;
        WindowConfig {
            size_ms: ms,
            slide_ms: ms,
            out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
        }
    }

    pub fn hopping(size: Duration, slide: Duration) -> Self {
        WindowConfig {
            slide_ms: slide.as_millis().clamp(1, size.as_millis().max(1)) as i64,
            ..WindowConfig::tumbling(size)
        }
    }

    pub fn with_watermark(mut self, out_of_orderness: Duration, lateness: Duration) -> Self {
        self.out_of_orderness_ms = out_of_orderness.as_millis() as i64;
        self.allowed_lateness_ms = lateness.as_millis() as i64;
        self
    }
}

/// One row of the stream being aggregated.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub key: &'a str,
    pub event_ms: i64,
    pub failed: bool,
    pub latency_ms: Option<f64>,
    /// Validation findings on the row (data quality).
    pub warnings: u32,
    pub errors: u32,
}

/// What a window accumulates per key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub count: u64,
    pub failure: u64,
    /// Rows with at least one validation warning or error.
    pub flagged: u64,
    pub latency: Sketch,
}

impl Aggregate {
    fn add(&mut self, o: &Observation<'_>) {
        self.count += 1;
        self.failure += o.failed as u64;
        self.flagged += (o.warnings + o.errors > 0) as u64;
        if let Some(l) = o.latency_ms {
            self.latency.add(l);
        }
    }
}

/// A window's result for one key: what `windows:` writes and breakers/alerts read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowRow {
    pub key: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub total: u64,
    pub success: u64,
    pub failure: u64,
    pub error_rate: f64,
    pub latency_avg_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub throughput_per_min: f64,
    /// Share of rows without validation findings.
    pub data_quality_rate: f64,
    /// A re-emission after late records arrived.
    pub update: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Windows {
    config: WindowConfig,
    /// Window start → key → aggregate (windows not yet purged).
    open: BTreeMap<i64, HashMap<String, Aggregate>>,
    fired: BTreeSet<i64>,
    max_event_ms: Option<i64>,
    late_dropped: u64,
    late_accepted: u64,
}

impl Windows {
    pub fn new(config: WindowConfig) -> Self {
        Windows {
            config,
            open: BTreeMap::new(),
            fired: BTreeSet::new(),
            max_event_ms: None,
            late_dropped: 0,
            late_accepted: 0,
        }
    }

    pub fn watermark(&self) -> Option<i64> {
        self.max_event_ms
            .map(|m| m - self.config.out_of_orderness_ms)
    }

    /// Records too late even for allowed lateness (counted, not aggregated).
    pub fn late_dropped(&self) -> u64 {
        self.late_dropped
    }

    /// Late records that still updated a fired window.
    pub fn late_accepted(&self) -> u64 {
        self.late_accepted
    }

    /// Starts of the windows containing `t`.
    fn starts(&self, t: i64) -> impl Iterator<Item = i64> + use<> {
        let (size, slide) = (self.config.size_ms, self.config.slide_ms);
        let last = t - t.rem_euclid(slide);
        let first = last - (size - 1) / slide * slide;
        (0..)
            .map(move |k| first + k * slide)
            .take_while(move |&s| s <= last)
            .filter(move |&s| s <= t && t < s + size)
    }

    /// Adds a row; returns the rows of fired windows it updated (late but allowed).
    pub fn add(&mut self, o: &Observation<'_>) -> Vec<WindowRow> {
        let wm = self.watermark();
        let mut updates = Vec::new();
        let mut dropped = false;
        let starts: Vec<i64> = self.starts(o.event_ms).collect();
        for start in starts {
            let end = start + self.config.size_ms;
            if wm.is_some_and(|w| end + self.config.allowed_lateness_ms <= w) {
                dropped = true;
                continue;
            }
            let keys = self.open.entry(start).or_default();
            // Look up before inserting: the key is allocated once per window, not per row.
            match keys.get_mut(o.key) {
                Some(agg) => agg.add(o),
                None => keys.entry(o.key.to_string()).or_default().add(o),
            }
            if self.fired.contains(&start) {
                updates.push(self.row(start, o.key, true));
            }
        }
        if dropped && updates.is_empty() {
            self.late_dropped += 1;
        } else if !updates.is_empty() {
            self.late_accepted += 1;
        }
        self.max_event_ms = Some(self.max_event_ms.map_or(o.event_ms, |m| m.max(o.event_ms)));
        updates
    }

    /// Moves the watermark to at least `t` (an idle source's clock, or processing time).
    pub fn advance_watermark_to(&mut self, t: i64) {
        let m = t + self.config.out_of_orderness_ms;
        self.max_event_ms = Some(self.max_event_ms.map_or(m, |x| x.max(m)));
    }

    /// Fires every window the watermark has passed (once), and forgets windows past their
    /// allowed lateness. Rows come in window order, then key order.
    pub fn fire(&mut self) -> Vec<WindowRow> {
        let Some(wm) = self.watermark() else {
            return Vec::new();
        };
        let size = self.config.size_ms;
        let due: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|s| s + size <= wm && !self.fired.contains(s))
            .collect();
        let mut rows = Vec::new();
        for start in due {
            let mut keys: Vec<String> = self.open[&start].keys().cloned().collect();
            keys.sort();
            for k in keys {
                rows.push(self.row(start, &k, false));
            }
            self.fired.insert(start);
        }
        let lateness = self.config.allowed_lateness_ms;
        let gone: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|s| s + size + lateness <= wm)
            .collect();
        for s in gone {
            self.open.remove(&s);
            self.fired.remove(&s);
        }
        rows
    }

    fn row(&self, start: i64, key: &str, update: bool) -> WindowRow {
        let a = &self.open[&start][key];
        let n = a.count.max(1) as f64;
        let minutes = self.config.size_ms as f64 / 60_000.0;
        WindowRow {
            key: key.to_string(),
            window_start_ms: start,
            window_end_ms: start + self.config.size_ms,
            total: a.count,
            success: a.count - a.failure,
            failure: a.failure,
            error_rate: a.failure as f64 / n,
            latency_avg_ms: a.latency.mean(),
            latency_p50_ms: a.latency.quantile(0.5),
            latency_p95_ms: a.latency.quantile(0.95),
            latency_p99_ms: a.latency.quantile(0.99),
            throughput_per_min: a.count as f64 / minutes,
            data_quality_rate: (a.count - a.flagged) as f64 / n,
            update,
        }
    }

    /// Running rows of the windows not fired yet, for `keys` (what a breaker's trip
    /// predicate looks at: it must not wait for the window to close).
    pub fn live_rows<'k>(&self, keys: impl IntoIterator<Item = &'k str> + Clone) -> Vec<WindowRow> {
        let mut rows = Vec::new();
        for (&start, aggs) in &self.open {
            if self.fired.contains(&start) {
                continue;
            }
            for k in keys.clone() {
                if aggs.contains_key(k) {
                    rows.push(self.row(start, k, false));
                }
            }
        }
        rows
    }

    /// Fires every open window regardless of the watermark: the end of a bounded input
    /// (Flink's final watermark).
    pub fn fire_all(&mut self) -> Vec<WindowRow> {
        let last = self.open.keys().next_back().copied();
        if let Some(s) = last {
            self.advance_watermark_to(s + self.config.size_ms + self.config.allowed_lateness_ms);
        }
        self.fire()
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    /// Windows (start, keys) held in memory.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// The whole state as JSON (the checkpoint): a restart resumes mid-window.
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("window state serializes")
    }

    pub fn restore(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn obs(key: &str, t: i64, failed: bool) -> Observation<'_> {
        Observation {
            key,
            event_ms: t,
            failed,
            latency_ms: Some(10.0),
            warnings: 0,
            errors: 0,
        }
    }

    fn tumbling_1m() -> Windows {
        Windows::new(
            WindowConfig::tumbling(Duration::from_secs(60))
                .with_watermark(Duration::from_secs(10), Duration::from_secs(30)),
        )
    }

    #[test]
    fn out_of_order_rows_within_the_bound_land_in_their_window_which_fires_on_the_watermark() {
        let mut w = tumbling_1m();
        w.add(&obs("a", 5_000, false));
        w.add(&obs("a", 65_000, true)); // next window; watermark 55 s
        w.add(&obs("a", 50_000, true)); // out of order, first window
        assert!(w.fire().is_empty(), "watermark 55 s < end 60 s");
        w.add(&obs("b", 70_000, false)); // watermark 60 s
        let rows = w.fire();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.window_start_ms, r.window_end_ms), (0, MIN));
        assert_eq!((r.total, r.failure, r.success), (2, 1, 1));
        assert_eq!(r.error_rate, 0.5);
        assert!(!r.update);
        assert!(w.fire().is_empty(), "fires once");
    }

    #[test]
    fn late_rows_update_within_lateness_and_are_counted_beyond_it() {
        let mut w = tumbling_1m();
        w.add(&obs("a", 1_000, false));
        w.add(&obs("a", 75_000, false)); // watermark 65 s: window 0 fires
        assert_eq!(w.fire().len(), 1);
        // Late but within 30 s of lateness (65 < 60 + 30): updates and re-emits.
        let up = w.add(&obs("a", 2_000, true));
        assert_eq!(up.len(), 1);
        assert!(up[0].update);
        assert_eq!((up[0].total, up[0].failure), (2, 1));
        assert_eq!(w.late_accepted(), 1);
        // Watermark 95 s ≥ 60 + 30: window 0 is gone; its rows are counted, not aggregated.
        w.add(&obs("a", 105_000, false));
        w.fire();
        assert!(w.add(&obs("a", 3_000, true)).is_empty());
        assert_eq!(w.late_dropped(), 1);
    }

    #[test]
    fn hopping_windows_hold_a_row_in_each_window_covering_it() {
        let mut w = Windows::new(WindowConfig::hopping(
            Duration::from_secs(60),
            Duration::from_secs(20),
        ));
        let starts: Vec<i64> = w.starts(65_000).collect();
        assert_eq!(starts, vec![20_000, 40_000, 60_000]);
        let starts: Vec<i64> = w.starts(0).collect();
        assert_eq!(starts, vec![-40_000, -20_000, 0]);
        w.add(&obs("k", 65_000, false));
        w.advance_watermark_to(200_000);
        let rows = w.fire();
        let spans: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| (r.window_start_ms, r.window_end_ms))
            .collect();
        assert_eq!(
            spans,
            vec![(20_000, 80_000), (40_000, 100_000), (60_000, 120_000)]
        );
        assert!(rows.iter().all(|r| r.total == 1));
    }

    #[test]
    fn aggregates_latency_quantiles_throughput_and_quality_per_key() {
        let mut w = tumbling_1m();
        for i in 0..100 {
            let mut o = obs("ehr-1", i * 500, i % 10 == 0);
            o.latency_ms = Some((i + 1) as f64);
            o.warnings = (i % 4 == 0) as u32;
            w.add(&o);
        }
        w.add(&obs("ehr-2", 30_000, false));
        w.advance_watermark_to(MIN);
        let rows = w.fire();
        assert_eq!(
            rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["ehr-1", "ehr-2"]
        );
        let r = &rows[0];
        assert_eq!((r.total, r.failure), (100, 10));
        assert!((r.error_rate - 0.1).abs() < 1e-9);
        assert!((r.latency_avg_ms.unwrap() - 50.5).abs() < 1e-9);
        let p50 = r.latency_p50_ms.unwrap();
        let p99 = r.latency_p99_ms.unwrap();
        assert!((p50 - 50.0).abs() <= 1.0, "{p50}");
        assert!((p99 - 99.0).abs() <= 1.0, "{p99}");
        assert_eq!(r.throughput_per_min, 100.0);
        assert!((r.data_quality_rate - 0.75).abs() < 1e-9);
    }

    #[test]
    fn a_restart_mid_window_keeps_its_counts() {
        let mut w = tumbling_1m();
        w.add(&obs("a", 1_000, true));
        w.add(&obs("a", 2_000, false));
        let saved = w.snapshot();
        let mut back = Windows::restore(&saved).unwrap();
        back.add(&obs("a", 3_000, false));
        back.advance_watermark_to(MIN);
        let rows = back.fire();
        assert_eq!(rows[0].total, 3, "counts before the restart kept");
        assert_eq!(rows[0].failure, 1);
    }
}
