//! Float against integer forward over a set of images: top-1 accuracies, agreement and the
//! per-layer ASQNR of the non-linear layers' inputs and outputs, image by image in lockstep.

use super::float::{FloatRun, Real};
use super::quant::{IntModel, IntRun};
use super::{Images, Model, ModelError, Output, Tap};
use crate::units::Condition;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Run the float and the integer forward of one image in lockstep, calling `cb` with the float
/// and integer taps of each non-linear layer; returns (float, integer) outputs.
pub fn forward_pair<F: Real>(
    model: &Model,
    qm: &IntModel,
    image: &[f32],
    cb: &mut dyn FnMut(&Tap, &Tap),
) -> Result<(Output, Output), ModelError> {
    let (f, mut q) = forward_multi::<F>(model, &[qm], image, &mut |a, b| cb(a, &b[0]))?;
    Ok((f, q.pop().expect("one integer model")))
}

/// Run the float forward of one image once and every integer model of `qms` beside it, in
/// lockstep, calling `cb` with the float tap and the integer models' taps (in `qms` order) of
/// each non-linear layer; returns the float output and the integer models' outputs. One float
/// pass serves every model: the float model does not change with the units or the width.
pub fn forward_multi<F: Real>(
    model: &Model,
    qms: &[&IntModel],
    image: &[f32],
    cb: &mut dyn FnMut(&Tap, &[Tap]),
) -> Result<(Output, Vec<Output>), ModelError> {
    let mut f = FloatRun::<F>::new(model, image, true);
    let mut qs: Vec<IntRun> = qms.iter().map(|qm| IntRun::new(qm, image, true)).collect();
    loop {
        let a = f.next_tap();
        let bs: Vec<Option<Tap>> = qs.iter_mut().map(|q| q.next_tap()).collect::<Result<_, _>>()?;
        match a {
            Some(a) if bs.iter().all(|b| b.as_ref().is_some_and(|b| b.layer.index == a.layer.index)) => {
                let bs: Vec<Tap> = bs.into_iter().flatten().collect();
                cb(&a, &bs);
            }
            None if bs.iter().all(Option::is_none) => break,
            _ => unreachable!("float and integer forwards have the same layers"),
        }
    }
    Ok((f.finish(), qs.into_iter().map(IntRun::finish).collect::<Result<_, _>>()?))
}

/// `E[x²] / E[(x − q)²]` of one tensor (infinite when `q == x`).
pub fn sqnr_ratio(x: &[f64], q: &[f64]) -> f64 {
    let (mut s, mut n) = (0.0, 0.0);
    for (a, b) in x.iter().zip(q) {
        s += a * a;
        n += (a - b) * (a - b);
    }
    if n == 0.0 {
        f64::INFINITY
    } else {
        s / n
    }
}

/// Limbs of [`ExactSum`]: bit 0 is 2^−1074 (the smallest subnormal), the largest finite f64 is
/// below bit 2098, and two more limbs leave room for 2^64 additions.
const LIMBS: usize = 35;

/// An exact sum of non-negative f64 values (a fixed-point integer wide enough for every finite
/// double), so that a sum does not depend on the order or the grouping of its terms: images
/// summed in parallel, or in shards that `mnq merge` joins, give the same bits as one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactSum {
    /// Little-endian 64-bit limbs; bit 0 weighs 2^−1074. Empty means zero.
    limbs: Vec<u64>,
    /// Whether an infinite term was added (the sum is then infinite).
    inf: bool,
    /// Whether a NaN or negative term was added (the sum is then NaN).
    nan: bool,
}

impl ExactSum {
    /// Add `v` exactly (infinite: the sum becomes infinite; NaN or negative: NaN).
    pub fn add(&mut self, v: f64) {
        if v.is_nan() || v < 0.0 {
            self.nan = true;
            return;
        }
        if v.is_infinite() {
            self.inf = true;
            return;
        }
        if v == 0.0 {
            return;
        }
        let bits = v.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as usize;
        let frac = bits & ((1u64 << 52) - 1);
        // v = mant · 2^(pos − 1074) with pos ≥ 0.
        let (mant, pos) = if exp == 0 { (frac, 0) } else { (frac | (1u64 << 52), exp - 1) };
        if self.limbs.is_empty() {
            self.limbs = vec![0; LIMBS];
        }
        let (i, sh) = (pos / 64, pos % 64);
        let wide = u128::from(mant) << sh;
        self.add_at(i, wide as u64);
        self.add_at(i + 1, (wide >> 64) as u64);
    }

    fn add_at(&mut self, mut i: usize, v: u64) {
        let (s, mut carry) = self.limbs[i].overflowing_add(v);
        self.limbs[i] = s;
        while carry && i + 1 < LIMBS {
            i += 1;
            let (s, c) = self.limbs[i].overflowing_add(1);
            self.limbs[i] = s;
            carry = c;
        }
    }

    /// Add another exact sum.
    pub fn merge(&mut self, o: &ExactSum) {
        self.inf |= o.inf;
        self.nan |= o.nan;
        if o.limbs.is_empty() {
            return;
        }
        if self.limbs.is_empty() {
            self.limbs = vec![0; LIMBS];
        }
        let mut carry = 0u64;
        for i in 0..LIMBS {
            let (a, c1) = self.limbs[i].overflowing_add(o.limbs[i]);
            let (b, c2) = a.overflowing_add(carry);
            self.limbs[i] = b;
            carry = u64::from(c1) + u64::from(c2);
        }
    }

    /// The sum as the nearest f64 (the top 128 bits rounded with a sticky bit for the rest, so
    /// within half an ulp of the exact sum except in the subnormal range).
    pub fn value(&self) -> f64 {
        if self.nan {
            return f64::NAN;
        }
        if self.inf {
            return f64::INFINITY;
        }
        let Some(h) = self.limbs.iter().rposition(|&l| l != 0) else { return 0.0 };
        let lo = if h >= 1 { self.limbs[h - 1] } else { 0 };
        let sticky = self.limbs[..h.saturating_sub(1)].iter().any(|&l| l != 0);
        let top = (u128::from(self.limbs[h]) << 64) | u128::from(lo) | u128::from(sticky);
        // top · 2^(64(h−1) − 1074); scaled in two steps so that no factor overflows.
        let e = 64 * h as i32 - 64 - 1074;
        let (a, b) = (e / 2, e - e / 2);
        top as f64 * 2f64.powi(a) * 2f64.powi(b)
    }
}

/// `20·log10` of a ratio, as the seed's Eq. 10 writes ASQNR (None when infinite).
pub fn db20(ratio: f64) -> Option<f64> {
    ratio.is_finite().then(|| 20.0 * ratio.log10())
}

/// Per-layer figures of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Execution index.
    pub index: usize,
    /// Layer name.
    pub name: String,
    /// Operation.
    pub op: String,
    /// Unit that computed it.
    pub unit: String,
    /// Whether the unit is integer (false for FQ-ViT's float GELU fallback).
    pub integer: bool,
    /// Mean over images of `E[x²]/E[(x−q)²]` of the layer's input.
    pub asqnr_in: f64,
    /// Mean over images of `E[x²]/E[(x−q)²]` of the layer's output.
    pub asqnr_out: f64,
    /// `20·log10(asqnr_in)` (None = exact).
    pub asqnr_in_db: Option<f64>,
    /// `20·log10(asqnr_out)` (None = exact).
    pub asqnr_out_db: Option<f64>,
    /// Conditions the unit met, summed over images.
    pub conditions: Vec<(Condition, usize)>,
    /// Rows per image.
    pub rows: usize,
    /// Row length.
    pub row_len: usize,
}

/// Result of comparing float and integer forwards on a set of images.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Float precision of the reference forward.
    pub float: String,
    /// Top-1 accuracy of the float model (when labels are known).
    pub float_top1: Option<f64>,
    /// Top-1 accuracy of the integer model.
    pub int_top1: Option<f64>,
    /// Fraction of images where both predict the same class.
    pub agreement: f64,
    /// Mean over images of the logits' `E[x²]/E[(x−q)²]`, in dB (20·log10).
    pub logits_asqnr_db: Option<f64>,
    /// Per-layer figures in execution order.
    pub layers: Vec<LayerReport>,
}

/// What an evaluation sums over images, before the means: exact sums and counts, so that the
/// accumulators of disjoint image sets (parallel chunks, `mnq run --shard` slices) merge into
/// exactly what one pass over all images gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalAcc {
    /// Images summed.
    pub n: usize,
    float_ok: usize,
    int_ok: usize,
    agree: usize,
    logits: ExactSum,
    sin: Vec<ExactSum>,
    sout: Vec<ExactSum>,
    cond: Vec<Vec<(Condition, usize)>>,
}

impl EvalAcc {
    /// Empty sums for a model of `layers` non-linear layers.
    pub fn new(layers: usize) -> EvalAcc {
        EvalAcc {
            n: 0,
            float_ok: 0,
            int_ok: 0,
            agree: 0,
            logits: ExactSum::default(),
            sin: vec![ExactSum::default(); layers],
            sout: vec![ExactSum::default(); layers],
            cond: vec![Vec::new(); layers],
        }
    }

    /// Add one image's float and integer outputs (its label when known) to the image-level sums.
    fn add_outputs(&mut self, label: Option<usize>, fo: &Output, qo: &Output) {
        let (ft, qt) = (fo.top1(), qo.top1());
        if let Some(l) = label {
            self.float_ok += usize::from(ft == l);
            self.int_ok += usize::from(qt == l);
        }
        self.agree += usize::from(ft == qt);
        self.logits.add(sqnr_ratio(&fo.logits, &qo.logits));
        self.n += 1;
    }

    /// Join the sums of another image set (any order gives the same result).
    pub fn merge(mut self, o: &EvalAcc) -> EvalAcc {
        self.n += o.n;
        self.float_ok += o.float_ok;
        self.int_ok += o.int_ok;
        self.agree += o.agree;
        self.logits.merge(&o.logits);
        for i in 0..self.sin.len().min(o.sin.len()) {
            self.sin[i].merge(&o.sin[i]);
            self.sout[i].merge(&o.sout[i]);
            for &(c, k) in &o.cond[i] {
                add_cond(&mut self.cond[i], c, k);
            }
        }
        self
    }

    /// The means: the report of `qm` on the summed images, whose labels were known or not
    /// (no per-layer figures when the sums kept none: [`evaluate_logits`]).
    pub fn report(&self, model: &Model, qm: &IntModel, float: &str, labelled: bool) -> EvalReport {
        let n = self.n.max(1) as f64;
        let kept = if self.sin.is_empty() { 0 } else { model.layers.len() };
        let layers = model.layers[..kept]
            .iter()
            .zip(&qm.config.units)
            .map(|(l, u)| {
                let (ri, ro) = (self.sin[l.index].value() / n, self.sout[l.index].value() / n);
                LayerReport {
                    index: l.index,
                    name: l.name.clone(),
                    op: l.op.name().to_string(),
                    unit: u.name().to_string(),
                    integer: u.is_integer(),
                    asqnr_in: ri,
                    asqnr_out: ro,
                    asqnr_in_db: db20(ri),
                    asqnr_out_db: db20(ro),
                    conditions: {
                        // A fixed order, so that merged and single-pass reports are identical.
                        let mut c = self.cond[l.index].clone();
                        c.sort_by_key(|e| format!("{:?}", e.0));
                        c
                    },
                    rows: l.rows,
                    row_len: l.row_len,
                }
            })
            .collect();
        EvalReport {
            images: self.n,
            float: float.to_string(),
            float_top1: labelled.then(|| self.float_ok as f64 / n),
            int_top1: labelled.then(|| self.int_ok as f64 / n),
            agreement: self.agree as f64 / n,
            logits_asqnr_db: db20(self.logits.value() / n),
            layers,
        }
    }
}

fn add_cond(v: &mut Vec<(Condition, usize)>, c: Condition, k: usize) {
    match v.iter_mut().find(|e| e.0 == c) {
        Some(e) => e.1 += k,
        None => v.push((c, k)),
    }
}

/// Evaluate `qm` against the float forward in precision `F` on every image of `images`
/// (in parallel on the current rayon pool), calling `tick` after each image.
pub fn evaluate<F: Real>(model: &Model, qm: &IntModel, images: &Images, tick: &(dyn Fn() + Sync)) -> Result<EvalReport, ModelError> {
    let acc = evaluate_acc::<F>(model, qm, images, tick)?;
    Ok(acc.report(model, qm, F::name(), images.labels.is_some()))
}

/// The sums of [`evaluate`] before the means (what a shard of `mnq run` keeps).
pub fn evaluate_acc<F: Real>(model: &Model, qm: &IntModel, images: &Images, tick: &(dyn Fn() + Sync)) -> Result<EvalAcc, ModelError> {
    let nl = model.layers.len();
    (0..images.len())
        .into_par_iter()
        .try_fold(
            || EvalAcc::new(nl),
            |mut acc, i| -> Result<EvalAcc, ModelError> {
                let img = images.image(i);
                let (fo, qo) = forward_pair::<F>(model, qm, &img, &mut |a, b| {
                    let k = a.layer.index;
                    acc.sin[k].add(sqnr_ratio(a.input, b.input));
                    acc.sout[k].add(sqnr_ratio(a.output, b.output));
                    for &(c, n) in b.conditions {
                        add_cond(&mut acc.cond[k], c, n);
                    }
                })?;
                acc.add_outputs(images.labels.as_ref().map(|l| l[i]), &fo, &qo);
                tick();
                Ok(acc)
            },
        )
        .try_reduce(|| EvalAcc::new(nl), |a, b| Ok(a.merge(&b)))
}

/// The float forward's output of every image of `images`, in image order (in parallel on the
/// current rayon pool), calling `tick` after each image: computed once per study and compared
/// with every integer model, since the float model does not change with the assignment.
pub fn float_outputs<F: Real>(model: &Model, images: &Images, tick: &(dyn Fn() + Sync)) -> Vec<Output> {
    (0..images.len())
        .into_par_iter()
        .map(|i| {
            let o = model.forward_float::<F>(&images.image(i), None);
            tick();
            o
        })
        .collect()
}

/// The image-level sums of [`evaluate_acc`] (top-1, agreement, logits ASQNR; no per-layer
/// figures) of `qm` against `float`, the [`float_outputs`] of the same images: only the
/// integer forward runs.
pub fn evaluate_logits(qm: &IntModel, images: &Images, float: &[Output], tick: &(dyn Fn() + Sync)) -> Result<EvalAcc, ModelError> {
    assert_eq!(float.len(), images.len(), "one float output per image");
    (0..images.len())
        .into_par_iter()
        .try_fold(
            || EvalAcc::new(0),
            |mut acc, i| -> Result<EvalAcc, ModelError> {
                let qo = qm.forward(&images.image(i), None)?;
                acc.add_outputs(images.labels.as_ref().map(|l| l[i]), &float[i], &qo);
                tick();
                Ok(acc)
            },
        )
        .try_reduce(|| EvalAcc::new(0), |a, b| Ok(a.merge(&b)))
}

/// [`evaluate_logits`] of several integer models at once, one sum per model: each image runs
/// through all of them with their shared prefixes computed once ([`forward_shared`](super::quant::forward_shared)).
pub fn evaluate_logits_many(
    qms: &[&IntModel],
    images: &Images,
    float: &[Output],
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<EvalAcc>, ModelError> {
    assert_eq!(float.len(), images.len(), "one float output per image");
    let empty = || vec![EvalAcc::new(0); qms.len()];
    (0..images.len())
        .into_par_iter()
        .try_fold(empty, |mut acc, i| -> Result<Vec<EvalAcc>, ModelError> {
            let outs = super::quant::forward_shared(qms, &images.image(i))?;
            for (a, qo) in acc.iter_mut().zip(&outs) {
                a.add_outputs(images.labels.as_ref().map(|l| l[i]), &float[i], qo);
            }
            tick();
            Ok(acc)
        })
        .try_reduce(empty, |a, b| Ok(a.into_iter().zip(&b).map(|(x, y)| x.merge(y)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum_of(v: &[f64]) -> ExactSum {
        let mut s = ExactSum::default();
        for &x in v {
            s.add(x);
        }
        s
    }

    #[test]
    fn exact_sums_of_known_values() {
        assert_eq!(ExactSum::default().value(), 0.0);
        assert_eq!(sum_of(&[1.0, 2.0, 0.5]).value(), 3.5);
        // 1 + 1e-30 − … : a naive f64 sum loses the small terms, the exact one keeps them.
        let tiny = sum_of(&[1e-30; 1000]).value();
        assert!((tiny - 1e-27).abs() <= 1e-27 * 1e-15, "{tiny}");
        assert_eq!(sum_of(&[1e300, 1e300]).value(), 2e300);
        assert_eq!(sum_of(&[f64::MAX, f64::MAX]).value(), f64::INFINITY, "beyond f64 after rounding");
        assert_eq!(sum_of(&[5e-324, 5e-324]).value(), 1e-323);
        assert_eq!(sum_of(&[1.0, f64::INFINITY]).value(), f64::INFINITY);
        assert!(sum_of(&[1.0, f64::NAN]).value().is_nan());
        assert!(sum_of(&[1.0, -1.0]).value().is_nan(), "negative terms are not ratios");
    }

    proptest! {
        #[test]
        fn order_and_grouping_do_not_matter(v in proptest::collection::vec(prop_oneof![0.0f64..1e-6, 0.0f64..1.0, 1.0f64..1e15], 0..200), cut in 0usize..200, seed in any::<u64>()) {
            let whole = sum_of(&v);
            // Any split, merged, and any permutation give the same limbs.
            let cut = cut.min(v.len());
            let mut a = sum_of(&v[..cut]);
            a.merge(&sum_of(&v[cut..]));
            prop_assert_eq!(&a, &whole);
            let mut w = v.clone();
            let mut r = seed;
            for i in (1..w.len()).rev() {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                w.swap(i, (r >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(&sum_of(&w), &whole);
            // The value is the exact sum rounded: within an ulp of a compensated sum.
            let (mut s, mut c) = (0.0f64, 0.0f64);
            for &x in &v {
                let y = x - c;
                let t = s + y;
                c = (t - s) - y;
                s = t;
            }
            prop_assert!((whole.value() - s).abs() <= s * 4.0 * f64::EPSILON, "{} vs {}", whole.value(), s);
        }
    }
}
