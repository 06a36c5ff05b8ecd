//! Range profiling (as hls4ml's profiling): the float model's values at a non-linear layer
//! against the integer format the layer's unit takes them in — how many would saturate, how much
//! of the format's range they use — and the float and integer output ranges.
//!
//! Every figure is a count, a minimum or a maximum, so profiles of disjoint image sets merge
//! exactly (shards of `mnq run`).

use crate::model::{InputFormat, Tap};
use serde::{Deserialize, Serialize};

/// Saturating share above which a layer is flagged.
pub const SATURATION_FLAG: f64 = 1e-3;
/// Bits of the format left unused above which a layer is flagged ("few codes").
pub const UNUSED_BITS_FLAG: f64 = 2.0;

/// The profile of one non-linear layer under one single-method model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RangeProfile {
    /// Input format of the unit (the widest seen, for the per-image accumulator widths).
    pub format: Option<InputFormat>,
    /// Input values seen.
    pub values: u64,
    /// Float input values beyond the format's range (they saturate when quantised).
    pub saturated: u64,
    /// Smallest and largest code the float inputs quantise to, before clamping.
    pub codes: Option<(i64, i64)>,
    /// Float model: input minimum and maximum, output minimum and maximum; integer model:
    /// output (dequantised) minimum and maximum. As bit patterns, so that merges are exact.
    #[serde(with = "crate::sensitivity::asqnr::f64_bits")]
    ranges: Vec<f64>,
}

fn widen(r: &mut [f64], i: usize, v: f64) {
    if v < r[i] {
        r[i] = v;
    }
    if v > r[i + 1] {
        r[i + 1] = v;
    }
}

impl RangeProfile {
    fn ensure(&mut self) {
        if self.ranges.is_empty() {
            self.ranges = vec![f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY];
        }
    }

    /// Add one image: the float model's tap `f` and the integer model's `q` of the same layer.
    pub fn push(&mut self, f: &Tap, q: &Tap) {
        self.ensure();
        if let Some(fmt) = q.format.filter(|m| !m.scales.is_empty()) {
            let (lo, hi) = fmt.code_range();
            let (mut clo, mut chi) = self.codes.unwrap_or((i64::MAX, i64::MIN));
            for (i, &x) in f.input.iter().enumerate() {
                // `as` saturates: a value beyond i64 still counts as beyond the format.
                let c = (x / fmt.scale_at(i)).round() as i64;
                let c = c.saturating_add(fmt.zero_point);
                self.saturated += u64::from(c < lo || c > hi);
                clo = clo.min(c);
                chi = chi.max(c);
            }
            if !f.input.is_empty() {
                self.codes = Some((clo, chi));
            }
            match &self.format {
                Some(old) if old.bits >= fmt.bits => {}
                _ => self.format = Some(fmt.clone()),
            }
        }
        self.values += f.input.len() as u64;
        for &x in f.input {
            widen(&mut self.ranges, 0, x);
        }
        for &x in f.output {
            widen(&mut self.ranges, 2, x);
        }
        for &x in q.output {
            widen(&mut self.ranges, 4, x);
        }
    }

    /// Join the profile of other images.
    pub fn merge(&mut self, o: &RangeProfile) {
        if o.ranges.is_empty() {
            return;
        }
        self.ensure();
        for i in [0, 2, 4] {
            widen(&mut self.ranges, i, o.ranges[i]);
            widen(&mut self.ranges, i, o.ranges[i + 1]);
        }
        self.values += o.values;
        self.saturated += o.saturated;
        self.codes = match (self.codes, o.codes) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
            (a, b) => a.or(b),
        };
        match (&self.format, &o.format) {
            (Some(a), Some(b)) if a.bits >= b.bits => {}
            (_, Some(b)) => self.format = Some(b.clone()),
            _ => {}
        }
    }

    /// (min, max) of the float input, the float output and the integer output.
    pub fn float_input(&self) -> Option<(f64, f64)> {
        self.pair(0)
    }

    /// (min, max) of the float model's output.
    pub fn float_output(&self) -> Option<(f64, f64)> {
        self.pair(2)
    }

    /// (min, max) of the integer model's output, dequantised.
    pub fn int_output(&self) -> Option<(f64, f64)> {
        self.pair(4)
    }

    fn pair(&self, i: usize) -> Option<(f64, f64)> {
        (self.values > 0 && !self.ranges.is_empty() && self.ranges[i] <= self.ranges[i + 1]).then(|| (self.ranges[i], self.ranges[i + 1]))
    }

    /// Share of float inputs beyond the format.
    pub fn saturation(&self) -> f64 {
        if self.values == 0 {
            0.0
        } else {
            self.saturated as f64 / self.values as f64
        }
    }

    /// Bits the inputs' code span occupies (log2 of the clamped span of codes, ≥ 0).
    pub fn used_bits(&self) -> Option<f64> {
        let f = self.format.as_ref()?;
        let (lo, hi) = f.code_range();
        let (a, b) = self.codes?;
        let span = (b.clamp(lo, hi) - a.clamp(lo, hi) + 1) as f64;
        Some(span.log2())
    }

    /// Format bits the inputs leave unused (few codes used when large).
    pub fn unused_bits(&self) -> Option<f64> {
        Some(f64::from(self.format.as_ref()?.bits) - self.used_bits()?)
    }

    /// Words for the report's flag column ("" when the layer is fine).
    pub fn flags(&self) -> String {
        let mut v = Vec::new();
        if self.saturation() > SATURATION_FLAG {
            v.push(format!("saturates ({:.2} %)", 100.0 * self.saturation()));
        }
        if self.unused_bits().is_some_and(|u| u > UNUSED_BITS_FLAG) {
            v.push(format!("few codes ({:.1} of {} bits)", self.used_bits().unwrap_or(0.0), self.format.as_ref().map_or(0, |f| f.bits)));
        }
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Layer;
    use crate::units::Op;

    fn layer() -> Layer {
        Layer { index: 0, name: "l".into(), op: Op::Softmax, block: None, rows: 1, row_len: 2 }
    }

    #[test]
    fn counts_saturation_and_code_span_per_channel() {
        let l = layer();
        // Per-channel scales 0.1 and 1.0, signed 4 bits: codes −8..7.
        let fmt = InputFormat { bits: 4, signed: true, zero_point: 0, scales: vec![0.1, 1.0] };
        let fin = [0.5, 3.0, 0.9, -9.0];
        let fout = [0.0; 4];
        let qout = [0.25, 0.5, 0.75, 1.0];
        let f = Tap { layer: &l, input: &fin, output: &fout, conditions: &[], format: None };
        let q = Tap { layer: &l, input: &fin, output: &qout, conditions: &[], format: Some(&fmt) };
        let mut p = RangeProfile::default();
        p.push(&f, &q);
        // Codes 5, 3, 9 (saturates), −9 (saturates).
        assert_eq!((p.values, p.saturated, p.codes), (4, 2, Some((-9, 9))));
        assert_eq!(p.float_input(), Some((-9.0, 3.0)));
        assert_eq!(p.int_output(), Some((0.25, 1.0)));
        assert_eq!(p.used_bits(), Some(4.0), "clamped span −8..7 is all 16 codes");
        assert!(p.flags().contains("saturates (50.00 %)"), "{}", p.flags());
        // Merging two halves gives the profile of the whole.
        let (mut a, mut b) = (RangeProfile::default(), RangeProfile::default());
        let fa = Tap { input: &fin[..2], output: &fout[..2], ..f };
        let qa = Tap { input: &fin[..2], output: &qout[..2], ..q };
        let fb = Tap { input: &fin[2..], output: &fout[2..], ..f };
        let qb = Tap { input: &fin[2..], output: &qout[2..], ..q };
        a.push(&fa, &qa);
        b.push(&fb, &qb);
        a.merge(&b);
        assert_eq!(a, p);
    }

    #[test]
    fn few_codes_are_flagged_and_a_zero_point_counts() {
        let l = layer();
        let fmt = InputFormat { bits: 8, signed: false, zero_point: 128, scales: vec![1.0] };
        let fin = [0.0, 1.0, -1.0, 2.0];
        let f = Tap { layer: &l, input: &fin, output: &fin, conditions: &[], format: None };
        let q = Tap { format: Some(&fmt), ..f };
        let mut p = RangeProfile::default();
        p.push(&f, &q);
        assert_eq!((p.saturated, p.codes), (0, Some((127, 130))));
        assert_eq!(p.used_bits(), Some(2.0));
        assert!(p.flags().starts_with("few codes (2.0 of 8 bits)"), "{}", p.flags());
    }
}
