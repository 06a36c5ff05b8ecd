//! Post-training calibration: per-tensor activation scales from the float forward on N images
//! (min/max or a percentile of |x|), and FQ-ViT's PTF parameters for every LayerNorm input.
//!
//! Pass 1 runs the f32 forward and records min, max and max|x| of every quantisation point.
//! Pass 2 (always, for PTF; it also fills the |x| histograms when a percentile is asked for)
//! runs it again: per LayerNorm input channel it accumulates the squared error of quantising
//! with `scale8/2^(3−alpha)`, alpha = 0..3, and picks the smallest (FQ-ViT `ptf.py`, first
//! minimum on ties). Residual points (16-bit) and PTF ranges always use min/max; the percentile
//! applies to the act_bits points only.

use super::float::FloatRun;
use super::manifest::{CalibInfo, PtfParams, QuantSection};
use super::{Images, Model, ModelError};
use crate::fixed::round_half_even_f64;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Histogram bins per point for percentiles.
const BINS: usize = 2048;

/// Options of a calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibOptions {
    /// Weight bits recorded in the quant section.
    pub weight_bits: u32,
    /// Activation bits the scales are for.
    pub act_bits: u32,
    /// Percentile of |x| in (0, 100] for the activation ranges (None or 100 = min/max).
    pub percentile: Option<f64>,
    /// Outlier-aware ranges instead: the clipping range of each act_bits point that minimises
    /// the point's own quantisation error (mean squared, over every calibration value).
    pub mse: bool,
}

/// Result of a calibration: the quant section to store.
pub type Calibration = QuantSection;

#[derive(Clone)]
struct Stats {
    min: f64,
    max: f64,
    amax: f64,
}

#[derive(Clone)]
struct Acc {
    hist: Vec<Vec<u64>>,
    /// Per LayerNorm-input point: per channel, squared errors for alpha 0..3.
    ptf: Vec<Vec<[f64; 4]>>,
}

/// Largest code of a signed format.
fn qmax(bits: u32) -> f64 {
    ((1u64 << (bits - 1)) - 1) as f64
}

/// Calibrate `model` on `images` (all of them; truncate first to use fewer), calling `tick`
/// after each image of each pass (2 passes).
pub fn calibrate(model: &Model, images: &Images, opts: &CalibOptions, tick: &(dyn Fn() + Sync)) -> Result<Calibration, ModelError> {
    if !super::quant::SUPPORTED_BITS.contains(&opts.act_bits) || !super::quant::SUPPORTED_BITS.contains(&opts.weight_bits) {
        return Err(ModelError::Quant {
            what: format!(
                "cannot calibrate for {}-bit weights / {}-bit activations (supported: {}..={})",
                opts.weight_bits,
                opts.act_bits,
                super::quant::SUPPORTED_BITS.start(),
                super::quant::SUPPORTED_BITS.end()
            ),
        });
    }
    if let Some(p) = opts.percentile {
        if !(p > 0.0 && p <= 100.0) {
            return Err(ModelError::Quant { what: format!("percentile {p} must be in (0, 100]") });
        }
    }
    if images.is_empty() {
        return Err(ModelError::Quant { what: "calibration needs at least one image".into() });
    }
    if opts.mse && opts.percentile.is_some_and(|p| p < 100.0) {
        return Err(ModelError::Quant { what: "choose a percentile or the MSE clipping search, not both".into() });
    }
    let g = &model.graph;
    let points = &g.points;
    let np = points.len();
    // The input point of every LayerNorm (PTF statistics), with the layer's channel count.
    let ln_points: Vec<(usize, usize)> = model
        .layers
        .iter()
        .filter(|l| l.op == crate::units::Op::LayerNorm)
        .map(|l| (g.ln_input_point(l.index).expect("every LayerNorm has an input point"), l.row_len))
        .collect();
    let ptf_slot = |p: usize| ln_points.iter().position(|q| q.0 == p);
    // A LayerNorm fed through a token regrouping (Swin's 2×2 patch merge) sees its input point's
    // values in the regrouped order: the per-channel PTF statistics must follow it.
    let regroup: Vec<Option<(Vec<usize>, usize)>> = model
        .layers
        .iter()
        .filter(|l| l.op == crate::units::Op::LayerNorm)
        .map(|l| {
            let x = g.nodes.iter().find_map(|n| match n {
                super::graph::Node::LayerNorm { layer, x, .. } if *layer == l.index => Some(*x),
                _ => None,
            })?;
            g.nodes.iter().find_map(|n| match n {
                super::graph::Node::Gather { out, kind, index, .. } if *out == x => Some((index.clone(), kind.group())),
                _ => None,
            })
        })
        .collect();

    // Pass 1: ranges.
    let empty = Stats { min: f64::INFINITY, max: f64::NEG_INFINITY, amax: 0.0 };
    let stats = (0..images.len())
        .into_par_iter()
        .fold(
            || vec![empty.clone(); np],
            |mut acc, i| {
                let img = images.image(i);
                let mut obs = |p: usize, v: &[f32]| {
                    let s = &mut acc[p];
                    for &x in v {
                        let x = f64::from(x);
                        s.min = s.min.min(x);
                        s.max = s.max.max(x);
                        s.amax = s.amax.max(x.abs());
                    }
                };
                FloatRun::<f32>::new(model, &img, false).with_observer(&mut obs).finish();
                tick();
                acc
            },
        )
        .reduce(
            || vec![empty.clone(); np],
            |a, b| {
                a.into_iter()
                    .zip(b)
                    .map(|(x, y)| Stats { min: x.min.min(y.min), max: x.max.max(y.max), amax: x.amax.max(y.amax) })
                    .collect()
            },
        );
    if let Some((p, _)) = points.iter().zip(&stats).find(|(_, s)| !(s.min.is_finite() && s.max.is_finite())) {
        return Err(ModelError::Quant { what: format!("the float forward produced non-finite values at '{}' during calibration", p.name) });
    }

    // Pass 2: PTF errors and |x| histograms.
    let levels = ((1u64 << opts.act_bits) - 1) as f64;
    let ptf_fmt: Vec<(f64, f64)> = ln_points
        .iter()
        .map(|(p, _)| {
            let s = &stats[*p];
            let scale8 = ((s.max - s.min) / levels).max(f64::from(f32::EPSILON));
            let zp = (-round_half_even_f64(s.min / scale8)).clamp(0.0, levels);
            (scale8, zp)
        })
        .collect();
    let want_hist = opts.mse || opts.percentile.is_some_and(|p| p < 100.0);
    let new_acc = || Acc {
        hist: if want_hist { vec![vec![0u64; BINS]; np] } else { Vec::new() },
        ptf: ln_points.iter().map(|&(_, c)| vec![[0.0; 4]; c]).collect(),
    };
    let acc = (0..images.len())
        .into_par_iter()
        .fold(new_acc, |mut acc, i| {
            let img = images.image(i);
            let mut obs = |p: usize, v: &[f32]| {
                let pi = p;
                if want_hist {
                    let top = stats[pi].amax;
                    if top > 0.0 {
                        let h = &mut acc.hist[pi];
                        for &x in v {
                            let b = ((f64::from(x).abs() / top) * BINS as f64) as usize;
                            h[b.min(BINS - 1)] += 1;
                        }
                    }
                }
                if let Some(k) = ptf_slot(p) {
                    let (scale8, zp) = ptf_fmt[k];
                    let e = &mut acc.ptf[k];
                    let merged;
                    let v = match &regroup[k] {
                        Some((index, group)) => {
                            let mut o = Vec::new();
                            super::float::gather(v, index, *group, &mut o);
                            merged = o;
                            &merged[..]
                        }
                        None => v,
                    };
                    for row in v.chunks_exact(ln_points[k].1) {
                        for (c, &x) in row.iter().enumerate() {
                            let x = f64::from(x);
                            for (a, err) in e[c].iter_mut().enumerate() {
                                let s = scale8 / f64::from(1u32 << (3 - a));
                                let q = (round_half_even_f64(x / s) + zp).clamp(0.0, levels);
                                let dq = (q - zp) * s;
                                *err += (x - dq) * (x - dq);
                            }
                        }
                    }
                }
            };
            FloatRun::<f32>::new(model, &img, false).with_observer(&mut obs).finish();
            tick();
            acc
        })
        .reduce(new_acc, |mut a, b| {
            for (x, y) in a.hist.iter_mut().zip(&b.hist) {
                x.iter_mut().zip(y).for_each(|(u, v)| *u += v);
            }
            for (x, y) in a.ptf.iter_mut().zip(&b.ptf) {
                for (u, v) in x.iter_mut().zip(y) {
                    for j in 0..4 {
                        u[j] += v[j];
                    }
                }
            }
            a
        });

    let mut act_scales = BTreeMap::new();
    for (pi, p) in points.iter().enumerate() {
        let s = &stats[pi];
        let (range, bits) = if p.is_residual() {
            (s.amax, super::quant::RESIDUAL_BITS)
        } else {
            let r = match opts.percentile {
                _ if opts.mse && s.amax > 0.0 => mse_clip(&acc.hist[pi], s.amax, opts.act_bits),
                Some(pc) if pc < 100.0 && s.amax > 0.0 => percentile(&acc.hist[pi], s.amax, pc),
                _ => s.amax,
            };
            (r, opts.act_bits)
        };
        act_scales.insert(p.name.clone(), range.max(1e-8) / qmax(bits));
    }
    let mut ptf = BTreeMap::new();
    for l in model.layers.iter().filter(|l| l.op == crate::units::Op::LayerNorm) {
        let p = g.ln_input_point(l.index).expect("LayerNorm layers have an input point");
        let k = ptf_slot(p).expect("collected above");
        let s = &stats[p];
        let alpha = acc.ptf[k]
            .iter()
            .map(|e| {
                let mut best = 0;
                for a in 1..4 {
                    if e[a] < e[best] {
                        best = a;
                    }
                }
                best as u8
            })
            .collect();
        ptf.insert(l.name.clone(), PtfParams { min: s.min, max: s.max, alpha });
    }
    Ok(QuantSection {
        weight_bits: opts.weight_bits,
        act_bits: opts.act_bits,
        act_scales,
        assignment: None,
        ptf,
        calibration: Some(CalibInfo {
            images: images.len(),
            percentile: opts.percentile.unwrap_or(100.0),
            source: images.path.display().to_string(),
            clip: opts.mse.then(|| "mse".to_string()),
        }),
        extra: BTreeMap::new(),
    })
}

/// The clipping range `c` of a symmetric `bits`-bit quantiser (step `Δ = c/(2^(bits−1)−1)`)
/// with the least mean squared error over a histogram of |x| on [0, top]: values beyond `c`
/// cost `(|x| − c)²`, values within it the rounding error, `Δ²/12` where a bin holds several
/// steps and the error at the bin centre where a step spans bins. The candidates are the bin
/// edges, searched from `top` down, so ties keep the wider range. Only ever narrows min/max.
pub fn mse_clip(hist: &[u64], top: f64, bits: u32) -> f64 {
    let n = hist.len();
    let w = top / n as f64;
    let centres: Vec<f64> = (0..n).map(|i| (i as f64 + 0.5) * w).collect();
    let mut best = (f64::INFINITY, top);
    for k in (1..=n).rev() {
        let c = k as f64 * w;
        let d = c / qmax(bits);
        let mut err = 0.0;
        for (i, &m) in hist.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let x = centres[i];
            let e = if x > c {
                (x - c) * (x - c)
            } else if d <= w {
                d * d / 12.0
            } else {
                let r = x - d * round_half_even_f64(x / d);
                r * r
            };
            err += m as f64 * e;
        }
        if err < best.0 {
            best = (err, c);
        }
    }
    best.1
}

/// The `pc`-th percentile of |x| from a histogram over [0, top], interpolated within the bin.
fn percentile(hist: &[u64], top: f64, pc: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return top;
    }
    let target = pc / 100.0 * total as f64;
    let mut cum = 0u64;
    for (i, &c) in hist.iter().enumerate() {
        if (cum + c) as f64 >= target {
            let frac = if c == 0 { 1.0 } else { (target - cum as f64) / c as f64 };
            return top * (i as f64 + frac.clamp(0.0, 1.0)) / hist.len() as f64;
        }
        cum += c;
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_of_uniform_histogram() {
        let h = vec![10u64; 100];
        assert!((percentile(&h, 1.0, 50.0) - 0.5).abs() < 1e-12);
        assert!((percentile(&h, 2.0, 99.0) - 1.98).abs() < 1e-12);
        assert_eq!(percentile(&h, 1.0, 100.0), 1.0);
        assert_eq!(percentile(&[0, 0], 3.0, 50.0), 3.0);
    }

    fn hist_of(v: &[f64], top: f64) -> Vec<u64> {
        let mut h = vec![0u64; BINS];
        for x in v {
            h[((x.abs() / top) * BINS as f64).min(BINS as f64 - 1.0) as usize] += 1;
        }
        h
    }

    fn quant_mse(v: &[f64], c: f64, bits: u32) -> f64 {
        let d = c / qmax(bits);
        v.iter().map(|&x| (x - (round_half_even_f64(x / d).clamp(-qmax(bits), qmax(bits))) * d).powi(2)).sum::<f64>() / v.len() as f64
    }

    #[test]
    fn mse_clip_cuts_outliers_and_keeps_uniform_ranges() {
        use rand::{Rng, SeedableRng};
        use rand_distr::{Distribution, Normal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let normal = Normal::new(0.0, 1.0).unwrap();
        // A unit Gaussian with 0.01 % outliers at ±40. The search trades their clipping error
        // against every other value's rounding error: at 4 bits min/max rounds most values to
        // zero and the search clips; at 8 bits the outliers cost more than the rounding, and
        // the search keeps (nearly) the full range. Either way it is never worse than min/max.
        let mut v: Vec<f64> = (0..100_000).map(|_| normal.sample(&mut rng)).collect();
        for x in v.iter_mut().step_by(10_000) {
            *x = if rng.gen::<bool>() { 40.0 } else { -40.0 };
        }
        let top = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        for bits in [8, 6, 4] {
            let c = mse_clip(&hist_of(&v, top), top, bits);
            let (e_mse, e_max) = (quant_mse(&v, c, bits), quant_mse(&v, top, bits));
            assert!(e_mse <= e_max * 1.01, "{bits} bits: clip {c}: {e_mse} vs {e_max}");
            if bits == 4 {
                assert!(c < top / 4.0 && e_mse < e_max / 2.0, "4 bits: clip {c} of {top}, {e_mse} vs {e_max}");
            }
            if bits == 8 {
                assert!(c > 0.9 * top, "8 bits: clip {c} of {top}");
            }
        }
        // A uniform tensor has nothing to clip at 8 bits.
        let u: Vec<f64> = (0..100_000).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let top = u.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        let c = mse_clip(&hist_of(&u, top), top, 8);
        assert!(c > 0.97 * top, "uniform: {c} of {top}");
    }
}
