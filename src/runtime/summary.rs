//! The run summary: per stage rows in/out/dead-lettered/filtered and time, and the totals that
//! prove nothing was lost (records in = delivered + dead-lettered + filtered + pending).

use serde::Serialize;

/// Exit codes of `plexus run` (also documented in the README).
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_DEAD_LETTERS: u8 = 3;
pub const EXIT_SINK_UNAVAILABLE: u8 = 4;
pub const EXIT_INTERRUPTED: u8 = 5;

#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub name: String,
    pub kind: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub dead_lettered: u64,
    pub filtered: u64,
    /// Time spent inside the operator.
    pub busy_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub integration: String,
    pub records_in: u64,
    pub bytes_in: u64,
    /// Distinct records written by at least one sink.
    pub delivered: u64,
    /// Distinct records in the dead-letter output.
    pub dead_lettered: u64,
    /// Dead-letter lines written (equal to `dead_lettered` unless a record failed twice).
    pub dead_letter_rows: u64,
    pub filtered: u64,
    /// Of the dead-lettered, those a sink could not deliver because its target was
    /// unreachable (not refused): the run's exit code tells schedulers so.
    pub unavailable: u64,
    /// The run was stopped by a signal before its input ended (file sources).
    pub interrupted: bool,
    /// Distinct records parked on a delayed retry topic (their retry worker decides).
    pub parked: u64,
    /// What the retry workers did in this run, per sink.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<crate::connectors::kafka::retry::RetryStats>,
    /// Circuit breaker state changes in this run, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breaker_transitions: Vec<crate::resilience::breaker::Transition>,
    /// Windowed aggregations: rows in, window rows out, alerts, late and invalid rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<super::windows::WindowSummary>,
    pub elapsed_ms: f64,
    pub stages: Vec<StageSummary>,
    /// Rows written per sink.
    pub sinks: Vec<(String, u64)>,
    pub warnings: Vec<String>,
}

impl RunSummary {
    /// Records neither delivered, dead-lettered, filtered nor parked: zero after a complete run.
    pub fn pending(&self) -> i64 {
        self.records_in as i64
            - (self.delivered + self.dead_lettered + self.filtered + self.parked) as i64
    }

    /// The process exit code of `plexus run` (README, "Exit codes"): 5 interrupted or
    /// incomplete, 4 a sink unavailable, 3 records dead-lettered, 0 everything delivered or
    /// filtered (1 and 2 are for runs that failed or never started).
    pub fn exit_code(&self) -> u8 {
        let retried_unavailable: u64 = self.retries.iter().map(|r| r.unavailable).sum();
        if self.interrupted || self.pending() != 0 {
            EXIT_INTERRUPTED
        } else if self.unavailable > 0 || retried_unavailable > 0 {
            EXIT_SINK_UNAVAILABLE
        } else if self.dead_lettered > 0 {
            EXIT_DEAD_LETTERS
        } else {
            0
        }
    }

    pub fn records_per_sec(&self) -> f64 {
        self.records_in as f64 / (self.elapsed_ms / 1e3).max(1e-9)
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "pipeline {} (integration {})\n",
            self.pipeline, self.integration
        ));
        s.push_str(&format!(
            "{:<20} {:<9} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "stage", "type", "in", "out", "dead", "filtered", "busy ms"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "{:<20} {:<9} {:>10} {:>10} {:>10} {:>10} {:>10.1}\n",
                st.name,
                st.kind,
                st.rows_in,
                st.rows_out,
                st.dead_lettered,
                st.filtered,
                st.busy_ms
            ));
        }
        for (name, rows) in &self.sinks {
            s.push_str(&format!("sink {name}: {rows} rows\n"));
        }
        s.push_str(&format!(
            "records: {} in = {} delivered + {} dead-lettered + {} filtered + {} parked for retry + {} pending\n",
            self.records_in,
            self.delivered,
            self.dead_lettered,
            self.filtered,
            self.parked,
            self.pending()
        ));
        if self.unavailable > 0 {
            s.push_str(&format!(
                "{} of the dead-lettered: a sink's target was unreachable (retry with `plexus replay` once it is back)\n",
                self.unavailable
            ));
        }
        if self.interrupted {
            s.push_str("interrupted: stopped by a signal before the input ended; every output was finished\n");
        }
        for t in &self.breaker_transitions {
            s.push_str(&format!(
                "circuit {:?} -> {:?}: {}\n",
                t.from, t.to, t.reason
            ));
        }
        for w in &self.windows {
            s.push_str(&format!(
                "window {}: {} rows in, {} window rows, {} alerts{}, {} breaker trips, {} late (dropped), {} without event time{}\n",
                w.name,
                w.rows_in,
                w.window_rows,
                w.alerts,
                if w.alerts_repeated > 0 {
                    format!(" (+{} raised before, not sent again)", w.alerts_repeated)
                } else {
                    String::new()
                },
                w.breaker_trips,
                w.late_dropped,
                w.invalid_time,
                if w.resumed { ", resumed from checkpoint" } else { "" }
            ));
        }
        for r in &self.retries {
            s.push_str(&format!(
                "retries of sink {}: {} delivered, {} parked again, {} dead-lettered\n",
                r.sink, r.delivered, r.parked_again, r.dead_lettered
            ));
        }
        let secs = self.elapsed_ms / 1e3;
        s.push_str(&format!(
            "elapsed {:.3} s, {:.0} records/s, {:.1} MB/s\n",
            secs,
            self.records_per_sec(),
            self.bytes_in as f64 / 1e6 / secs.max(1e-9)
        ));
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}
