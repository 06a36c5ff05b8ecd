//! Float against integer forward over a set of images: top-1 accuracies, agreement and the
//! per-layer ASQNR of the non-linear layers' inputs and outputs, image by image in lockstep.

use super::float::{FloatRun, Real};
use super::quant::{IntModel, IntRun};
use super::{Images, Model, ModelError, Output, Tap};
use crate::units::Condition;
use rayon::prelude::*;
use serde::Serialize;

/// Run the float and the integer forward of one image in lockstep, calling `cb` with the float
/// and integer taps of each non-linear layer; returns (float, integer) outputs.
pub fn forward_pair<F: Real>(
    model: &Model,
    qm: &IntModel,
    image: &[f32],
    cb: &mut dyn FnMut(&Tap, &Tap),
) -> Result<(Output, Output), ModelError> {
    let mut f = FloatRun::<F>::new(model, image, true);
    let mut q = IntRun::new(qm, image, true);
    loop {
        match (f.next_tap(), q.next_tap()?) {
            (Some(a), Some(b)) => {
                debug_assert_eq!(a.layer.index, b.layer.index);
                cb(&a, &b);
            }
            (None, None) => break,
            _ => unreachable!("float and integer forwards have the same layers"),
        }
    }
    Ok((f.finish(), q.finish()?))
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

#[derive(Clone)]
struct Acc {
    n: usize,
    float_ok: usize,
    int_ok: usize,
    agree: usize,
    logits: f64,
    sin: Vec<f64>,
    sout: Vec<f64>,
    cond: Vec<Vec<(Condition, usize)>>,
}

impl Acc {
    fn new(layers: usize) -> Acc {
        Acc {
            n: 0,
            float_ok: 0,
            int_ok: 0,
            agree: 0,
            logits: 0.0,
            sin: vec![0.0; layers],
            sout: vec![0.0; layers],
            cond: vec![Vec::new(); layers],
        }
    }

    fn merge(mut self, o: Acc) -> Acc {
        self.n += o.n;
        self.float_ok += o.float_ok;
        self.int_ok += o.int_ok;
        self.agree += o.agree;
        self.logits += o.logits;
        for i in 0..self.sin.len() {
            self.sin[i] += o.sin[i];
            self.sout[i] += o.sout[i];
            for &(c, k) in &o.cond[i] {
                add_cond(&mut self.cond[i], c, k);
            }
        }
        self
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
    let nl = model.layers.len();
    let acc = (0..images.len())
        .into_par_iter()
        .try_fold(
            || Acc::new(nl),
            |mut acc, i| -> Result<Acc, ModelError> {
                let img = images.image(i);
                let (fo, qo) = forward_pair::<F>(model, qm, &img, &mut |a, b| {
                    let k = a.layer.index;
                    acc.sin[k] += sqnr_ratio(a.input, b.input);
                    acc.sout[k] += sqnr_ratio(a.output, b.output);
                    for &(c, n) in b.conditions {
                        add_cond(&mut acc.cond[k], c, n);
                    }
                })?;
                let (ft, qt) = (fo.top1(), qo.top1());
                if let Some(l) = &images.labels {
                    acc.float_ok += usize::from(ft == l[i]);
                    acc.int_ok += usize::from(qt == l[i]);
                }
                acc.agree += usize::from(ft == qt);
                acc.logits += sqnr_ratio(&fo.logits, &qo.logits);
                acc.n += 1;
                tick();
                Ok(acc)
            },
        )
        .try_reduce(|| Acc::new(nl), |a, b| Ok(a.merge(b)))?;
    let n = acc.n.max(1) as f64;
    let has_labels = images.labels.is_some();
    let layers = model
        .layers
        .iter()
        .zip(&qm.config.units)
        .map(|(l, u)| {
            let (ri, ro) = (acc.sin[l.index] / n, acc.sout[l.index] / n);
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
                conditions: acc.cond[l.index].clone(),
                rows: l.rows,
                row_len: l.row_len,
            }
        })
        .collect();
    Ok(EvalReport {
        images: acc.n,
        float: F::name().to_string(),
        float_top1: has_labels.then(|| acc.float_ok as f64 / n),
        int_top1: has_labels.then(|| acc.int_ok as f64 / n),
        agreement: acc.agree as f64 / n,
        logits_asqnr_db: db20(acc.logits / n),
        layers,
    })
}
