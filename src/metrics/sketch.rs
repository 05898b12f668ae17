//! A mergeable quantile sketch for latencies: DDSketch (Masson, Rim, Lee; VLDB 2019).
//!
//! Values fall into logarithmic bins `ceil(log_γ(x))` with `γ = (1+α)/(1-α)`; any quantile is
//! then within relative error α of the true value, whatever the distribution. Two sketches
//! merge by adding their bins, so windows can be combined (per key → per integration, hopping
//! panes → windows) and checkpointed as a few hundred counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Relative accuracy of the quantiles (1 %).
pub const DEFAULT_ALPHA: f64 = 0.01;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    alpha: f64,
    /// Values ≤ this are counted as zero (latencies under a microsecond).
    min_value: f64,
    zeros: u64,
    bins: BTreeMap<i32, u64>,
    count: u64,
    sum: f64,
    // An empty sketch's min/max are ±∞, which JSON cannot hold: written as null.
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_as_inf")]
    min: f64,
    #[serde(
        serialize_with = "finite_or_null",
        deserialize_with = "null_as_neg_inf"
    )]
    max: f64,
}

fn finite_or_null<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_some(x)
    } else {
        s.serialize_none()
    }
}

fn null_as_inf<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

fn null_as_neg_inf<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::new(DEFAULT_ALPHA)
    }
}

impl Sketch {
    pub fn new(alpha: f64) -> Self {
        Sketch {
            alpha: alpha.clamp(1e-4, 0.5),
            min_value: 1e-3,
            zeros: 0,
            bins: BTreeMap::new(),
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn gamma(&self) -> f64 {
        (1.0 + self.alpha) / (1.0 - self.alpha)
    }

    /// Adds one value (negative values and NaN are ignored: latencies are never negative).
    pub fn add(&mut self, x: f64) {
        if x.is_nan() || x < 0.0 {
            return;
        }
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if x <= self.min_value {
            self.zeros += 1;
        } else {
            let i = (x.ln() / self.gamma().ln()).ceil() as i32;
            *self.bins.entry(i).or_default() += 1;
        }
    }

    /// Adds another sketch's values (same α; a different α is merged at this one's accuracy).
    pub fn merge(&mut self, o: &Sketch) {
        if o.count == 0 {
            return;
        }
        if (o.alpha - self.alpha).abs() > f64::EPSILON {
            // Re-bin at this sketch's γ by each bin's representative value.
            for (&i, &n) in &o.bins {
                let v = o.value_of(i);
                let j = (v.ln() / self.gamma().ln()).ceil() as i32;
                *self.bins.entry(j).or_default() += n;
            }
        } else {
            for (&i, &n) in &o.bins {
                *self.bins.entry(i).or_default() += n;
            }
        }
        self.zeros += o.zeros;
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    fn value_of(&self, i: i32) -> f64 {
        let g = self.gamma();
        2.0 * g.powi(i) / (g + 1.0)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The q-quantile (0 ≤ q ≤ 1), within relative error α; None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (&i, &n) in &self.bins {
            seen += n;
            if seen > rank {
                // Exact at the extremes, which users compare against.
                return Some(self.value_of(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_full_sketches_survive_a_json_checkpoint() {
        let empty = Sketch::default();
        let back: Sketch = serde_json::from_slice(&serde_json::to_vec(&empty).unwrap()).unwrap();
        assert_eq!(back, empty);
        let mut full = Sketch::default();
        for x in [1.0, 5.0, 250.0] {
            full.add(x);
        }
        let back: Sketch = serde_json::from_slice(&serde_json::to_vec(&full).unwrap()).unwrap();
        assert_eq!(back, full);
    }

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn quantiles_are_within_the_relative_error() {
        // A skewed, latency-like distribution: many fast calls, a long tail.
        let mut values: Vec<f64> = (1..=10_000)
            .map(|i| {
                let u = i as f64 / 10_001.0;
                5.0 + 40.0 * (-(1.0 - u).ln())
            })
            .collect();
        let mut s = Sketch::default();
        for &v in &values {
            s.add(v);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let got = s.quantile(q).unwrap();
            let want = exact(&values, q);
            assert!(
                (got - want).abs() <= want * DEFAULT_ALPHA + 1e-9,
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(s.count(), 10_000);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((s.mean().unwrap() - mean).abs() < 1e-6);
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..1000 {
            let v = (i * 7 % 300) as f64 + 0.5;
            if i % 3 == 0 {
                a.add(v)
            } else {
                b.add(v)
            }
            all.add(v);
        }
        a.merge(&b);
        for q in [0.5, 0.95, 0.99] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        assert_eq!(a.count(), all.count());
    }

    #[test]
    fn empty_zero_and_bad_values() {
        let mut s = Sketch::default();
        assert_eq!(s.quantile(0.5), None);
        s.add(f64::NAN);
        s.add(-1.0);
        assert_eq!(s.count(), 0);
        s.add(0.0);
        s.add(0.0);
        s.add(10.0);
        assert_eq!(s.quantile(0.5), Some(0.0));
        let p100 = s.quantile(1.0).unwrap();
        assert!((p100 - 10.0).abs() <= 0.1, "{p100}");
        let json = serde_json::to_string(&s).unwrap();
        let back: Sketch = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s, "checkpointable");
    }
}
