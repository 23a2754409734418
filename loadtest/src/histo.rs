//! Latency histograms: creation with fixed bounds, a striped recorder shared by many
//! connection tasks, and (de)serialization (hdrhistogram V2, base64) so worker processes
//! can ship theirs to the parent for merging.

use std::sync::Mutex;

use anyhow::Context;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest value recorded (µs, one minute); larger ones are clamped to it.
pub const MAX_VALUE: u64 = 60_000_000;

/// A histogram of µs values with 3 significant digits.
pub fn new() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_VALUE, 3).expect("valid histogram bounds")
}

/// Records `value`, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, value: u64) {
    h.saturating_record(value.clamp(1, MAX_VALUE));
}

/// Serializes to base64 of the V2 format.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing to memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Deserializes what [`encode`] produced.
pub fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("histogram base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(h)
}

/// Adds a serialized histogram into `into`.
pub fn merge_encoded(into: &mut Histogram<u64>, text: &str) -> anyhow::Result<()> {
    let h = decode(text)?;
    into.add(&h)
        .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))
}

/// Percentiles of a histogram, in its unit.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Stripes of histograms so concurrent connection tasks rarely contend; drained
/// periodically by one ticker.
pub struct Striped {
    stripes: Vec<Mutex<Histogram<u64>>>,
}

impl Striped {
    pub fn new(stripes: usize) -> Striped {
        Striped {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(new())).collect(),
        }
    }

    /// Records values into stripe `key % stripes`.
    pub fn record_all(&self, key: u64, values: impl IntoIterator<Item = u64>) {
        let index = (key % self.stripes.len() as u64) as usize;
        let mut h = lock(&self.stripes[index]);
        for v in values {
            record(&mut h, v);
        }
    }

    /// Moves everything recorded so far into `into`, leaving the stripes empty.
    pub fn drain_into(&self, into: &mut Histogram<u64>) {
        for stripe in &self.stripes {
            let mut h = lock(stripe);
            // Same bounds everywhere: adding cannot fail.
            let _ = into.add(&*h);
            h.reset();
        }
    }
}

/// Locks, ignoring poisoning (a panicked recorder leaves a usable histogram).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_serialized_parts_equals_one_histogram() {
        let mut whole = new();
        let mut parts = vec![new(), new(), new()];
        let mut x: u64 = 12345;
        for i in 0..30_000u64 {
            // A cheap deterministic spread over several orders of magnitude.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = 1 + (x >> 33) % (1 + (i % 5) * 20_000);
            record(&mut whole, v);
            record(&mut parts[(i % 3) as usize], v);
        }
        let mut merged = new();
        for part in &parts {
            let text = encode(part);
            merge_encoded(&mut merged, &text).expect("merge");
        }
        assert_eq!(merged.len(), whole.len());
        assert_eq!(Percentiles::of(&merged), Percentiles::of(&whole));
        for q in [0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(q), whole.value_at_quantile(q));
        }
    }

    #[test]
    fn striped_drains_everything_once() {
        let striped = Striped::new(4);
        for key in 0..10 {
            striped.record_all(key, [key + 1, 1000]);
        }
        let mut h = new();
        striped.drain_into(&mut h);
        assert_eq!(h.len(), 20);
        let mut again = new();
        striped.drain_into(&mut again);
        assert!(again.is_empty());
        assert!(decode("not base64!").is_err());
        record(&mut h, u64::MAX);
        assert!(h.max() >= MAX_VALUE);
    }
}
