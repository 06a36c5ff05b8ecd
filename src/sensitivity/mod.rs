//! Accuracy of units against the float references: SQNR (the seed's Eq. 10 ratio and its
//! decibel form), absolute errors, and the standard input distributions of each operation.
//!
//! SQNR here is `Σ x² / Σ (x − x̂)²` over all elements, with `x` the float reference output and
//! `x̂` the dequantised unit output (our reading of the seed's Eq. 10: signal power over
//! quantisation-noise power, as a plain ratio); `sqnr_db` is `10·log10` of it.
//!
//! Layer-wise sensitivity of a model is in the submodules: [`asqnr`] (the batch ASQNR of Eq. 10
//! and the SQNR diff of Eq. 11), [`table`] (layer × unit table and the seed's decision rules) and
//! [`assign`] (exact cost-aware assignment and Pareto fronts, `assignment.json`).

pub mod asqnr;
pub mod assign;
pub mod range;
pub mod table;

use crate::fixed::{round_half_even_f64, QTensor, Scale};
use crate::units::{float, Aux, Method, Op, Unit, UnitError};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::Serialize;

/// Error of an approximation against a reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorStats {
    /// Number of elements compared.
    pub n: usize,
    /// `Σ x² / Σ (x − x̂)²`; `None` when the approximation is exact.
    pub sqnr: Option<f64>,
    /// `10·log10(sqnr)`; `None` when exact.
    pub sqnr_db: Option<f64>,
    /// Largest absolute error.
    pub max_abs: f64,
    /// Mean absolute error.
    pub mean_abs: f64,
}

/// Compare `approx` with `reference` element by element.
pub fn error_stats(reference: &[f64], approx: &[f64]) -> ErrorStats {
    let n = reference.len().min(approx.len());
    let (mut sig, mut noise, mut max_abs, mut sum_abs) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (r, a) in reference.iter().zip(approx) {
        let e = (r - a).abs();
        sig += r * r;
        noise += e * e;
        max_abs = max_abs.max(e);
        sum_abs += e;
    }
    let sqnr = (noise > 0.0).then(|| sig / noise);
    ErrorStats { n, sqnr, sqnr_db: sqnr.map(|s| 10.0 * s.log10()), max_abs, mean_abs: if n > 0 { sum_abs / n as f64 } else { 0.0 } }
}

/// A realistic input distribution for a unit-level error measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Attention logits: rows of 197 tokens, Gaussian with a per-row spread and occasional peaks.
    Attention,
    /// GELU inputs in [−8, 8]: rows of 768, Gaussian (σ = 2) clipped, plus a uniform share.
    Gelu,
    /// Residual rows of 384 channels with six outlier channels, as in trained ViTs.
    Layernorm,
}

impl Dist {
    /// The standard distribution of an operation.
    pub fn for_op(op: Op) -> Option<Dist> {
        match op {
            Op::Softmax => Some(Dist::Attention),
            Op::Gelu => Some(Dist::Gelu),
            Op::LayerNorm => Some(Dist::Layernorm),
            Op::Requant | Op::Log2Quant => None,
        }
    }

    /// Row length of the distribution.
    pub fn row_len(self) -> usize {
        match self {
            Dist::Attention => 197,
            Dist::Gelu => 768,
            Dist::Layernorm => 384,
        }
    }
}

/// Float input, its quantised form for one unit, and the float reference output.
pub struct Sample {
    /// Float input values, row-major.
    pub x: Vec<f64>,
    /// Quantised input for the unit.
    pub q: QTensor,
    /// Auxiliary inputs (LayerNorm affine, zero point, output scale).
    pub aux: Aux,
    /// Float reference output on the float input.
    pub reference: Vec<f64>,
    /// Float reference output on the dequantised input (isolates the unit's own error).
    pub reference_deq: Vec<f64>,
}

/// Outlier channels of the LayerNorm distribution (fixed, as trained ViTs have fixed outlier channels).
pub const OUTLIER_CHANNELS: [usize; 6] = [7, 71, 103, 186, 340, 371];

/// Draw `rows` rows of `dist` with `seed`.
pub fn draw(dist: Dist, rows: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c = dist.row_len();
    let mut x = Vec::with_capacity(rows * c);
    match dist {
        Dist::Attention => {
            for _ in 0..rows {
                let sigma = rng.gen_range(1.0..4.0);
                let nd = Normal::new(0.0, sigma).unwrap();
                let start = x.len();
                x.extend((0..c).map(|_| nd.sample(&mut rng)));
                if rng.gen_bool(0.3) {
                    for _ in 0..rng.gen_range(1..4) {
                        let j = rng.gen_range(0..c);
                        x[start + j] += rng.gen_range(4.0..10.0);
                    }
                }
            }
        }
        Dist::Gelu => {
            let nd = Normal::new(0.0, 2.0).unwrap();
            for _ in 0..rows * c {
                let v: f64 = if rng.gen_bool(0.1) { rng.gen_range(-8.0..8.0) } else { nd.sample(&mut rng) };
                x.push(v.clamp(-8.0, 8.0));
            }
        }
        Dist::Layernorm => {
            let mu: Vec<f64> = (0..c).map(|_| Normal::new(0.0, 0.5).unwrap().sample(&mut rng)).collect();
            for _ in 0..rows {
                for (j, m) in mu.iter().enumerate() {
                    let (m, s) = if OUTLIER_CHANNELS.contains(&j) { (m * 10.0 + 5.0, 20.0) } else { (*m, 1.0) };
                    x.push(Normal::new(m, s).unwrap().sample(&mut rng));
                }
            }
        }
    }
    x
}

/// LayerNorm affine parameters of the standard distribution (float32, as model parameters are).
pub fn affine_params(c: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
    let g = (0..c).map(|_| rng.gen_range(0.5f32..1.5)).collect();
    let b = (0..c).map(|_| Normal::new(0.0f32, 0.1).unwrap().sample(&mut rng)).collect();
    (g, b)
}

/// Symmetric per-tensor scale `max|x| / (2^(b−1) − 1)` (I-ViT's quantiser).
pub fn symmetric_scale(x: &[f64], bits: u32) -> f64 {
    let m = x.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-8);
    f64::from((m / ((1u64 << (bits - 1)) - 1) as f64) as f32)
}

/// FQ-ViT's asymmetric uint quantiser (minmax): (scale, zero point).
pub fn asymmetric_params(x: &[f64], bits: u32) -> (f64, i64) {
    let lo = x.iter().cloned().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max).max(0.0);
    let levels = ((1u64 << bits) - 1) as f64;
    let s = f64::from((((hi - lo) / levels).max(f64::from(f32::EPSILON))) as f32);
    let zp = (-round_half_even_f64(lo / s)).clamp(0.0, levels) as i64;
    (s, zp)
}

/// FQ-ViT's PTF observer: per-channel scales `scale8/8·2^α_c` (α_c ∈ 0..=3 minimising L2 error), one zero point.
pub fn ptf_calibrate(x: &[f64], c: usize, bits: u32) -> (Vec<f64>, i64) {
    let (s8, zp) = asymmetric_params(x, bits);
    let top = ((1u64 << bits) - 1) as f64;
    let scales = (0..c)
        .map(|j| {
            let col: Vec<f64> = x.iter().skip(j).step_by(c).cloned().collect();
            (0..=3)
                .map(|a| {
                    let s = f64::from((s8 / 8.0 * 2f64.powi(a)) as f32);
                    let err: f64 = col
                        .iter()
                        .map(|v| {
                            let q = (round_half_even_f64(v / s) + zp as f64).clamp(0.0, top);
                            ((q - zp as f64) * s - v).powi(2)
                        })
                        .sum();
                    (err, s)
                })
                .fold((f64::INFINITY, s8), |best, cand| if cand.0 < best.0 { cand } else { best })
                .1
        })
        .collect();
    (scales, zp)
}

/// Quantise `x` the way the unit's family expects and compute the float references.
pub fn sample(unit: &dyn Unit, bits: u32, dist: Dist, rows: usize, seed: u64) -> Result<Sample, UnitError> {
    let x = draw(dist, rows, seed);
    let c = dist.row_len();
    let shape = [rows, c];
    let err = |e| UnitError::Input { unit: "sample", source: e };
    let mut aux = Aux::default();
    let fqvit = unit.method() == Method::FqVit;
    let q = match (unit.op(), fqvit) {
        (Op::Gelu, _) => {
            QTensor::quantize(&x, &shape, f64::from((8.0 / ((1u64 << (bits - 1)) - 1) as f64) as f32), bits, true).map_err(err)?
        }
        (Op::LayerNorm, true) => {
            let (scales, zp) = ptf_calibrate(&x, c, bits);
            let top = (1i64 << bits) - 1;
            let qv = x.iter().enumerate().map(|(i, v)| (round_half_even_f64(v / scales[i % c]) as i64 + zp).clamp(0, top)).collect();
            aux.zero_point = zp;
            QTensor::new(qv, &shape, Scale::PerChannel(scales), bits, false).map_err(err)?
        }
        (_, true) => {
            let (s, zp) = asymmetric_params(&x, bits);
            let top = (1i64 << bits) - 1;
            let qv = x.iter().map(|v| (round_half_even_f64(v / s) as i64 + zp).clamp(0, top)).collect();
            aux.zero_point = zp;
            QTensor::new(qv, &shape, Scale::PerTensor(s), bits, false).map_err(err)?
        }
        _ => QTensor::quantize(&x, &shape, symmetric_scale(&x, bits), bits, true).map_err(err)?,
    };
    let deq: Vec<f64> = q.data().iter().enumerate().map(|(i, &v)| (v - aux.zero_point) as f64 * q.scale.at(i % c)).collect();
    let (reference, reference_deq) = match unit.op() {
        Op::Softmax => (float::softmax(&x, c), float::softmax(&deq, c)),
        Op::Gelu => (x.iter().map(|&v| float::gelu(v)).collect(), deq.iter().map(|&v| float::gelu(v)).collect()),
        Op::LayerNorm => {
            let (g, b) = affine_params(c, seed);
            let gf: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
            let bf: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
            let r = float::layernorm(&x, c, &gf, &bf, 1e-6);
            if fqvit {
                let (so, _) = asymmetric_params(&r, 8);
                aux.out_scale = Some(Scale::PerTensor(so));
            }
            aux.gamma = Some(g);
            aux.beta = Some(b);
            (r, float::layernorm(&deq, c, &gf, &bf, 1e-6))
        }
        Op::Requant | Op::Log2Quant => {
            return Err(UnitError::Aux {
                unit: unit.name(),
                what: "has no float counterpart to measure against; use softmax_*, gelu_* or layernorm_*".into(),
            })
        }
    };
    Ok(Sample { x, q, aux, reference, reference_deq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_error() {
        let s = error_stats(&[1.0, -1.0, 2.0, 0.0], &[1.0, -1.0, 2.0, 0.5]);
        assert_eq!(s.max_abs, 0.5);
        assert!((s.sqnr.unwrap() - 6.0 / 0.25).abs() < 1e-12);
        assert!(error_stats(&[1.0], &[1.0]).sqnr.is_none());
    }

    #[test]
    fn ptf_picks_large_factors_for_outliers() {
        let x = draw(Dist::Layernorm, 8, 1);
        let (scales, _) = ptf_calibrate(&x, 384, 8);
        let smin = scales.iter().cloned().fold(f64::INFINITY, f64::min);
        for &j in &OUTLIER_CHANNELS {
            assert!(scales[j] > smin, "outlier channel {j} kept the smallest scale");
        }
    }
}
