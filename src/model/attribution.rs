//! Where the accuracy goes: the integer model re-run with chosen layers computed in float64
//! ([`LayerUnit::Exact`]) instead of their units, against the float model on the same images.
//!
//! With every non-linear layer exact, only the linear quantisation is left (weights,
//! activations, requantisers, 16-bit residuals): its loss is the float model's top-1 minus that
//! variant's. The reverse split, "units only" (the float model with every non-linear layer
//! through its unit, [`IntModel::unit_on_float`]), measures the units without the linear
//! quantisation. Each op kind kept exact in turn, and with `per_layer` each layer in turn, shows
//! how many points that op's (that layer's) units cost: the variant's top-1 minus the
//! all-integer model's. The float logits are computed once per image and shared.

use super::float::Real;
use super::manifest::{LayerUnit, EXACT_OPS};
use super::quant::{ActScales, IntModel, QuantConfig};
use super::{Images, Layer, Model, ModelError, Output};
use crate::model::eval::{db20, sqnr_ratio, ExactSum};
use crate::units::Preset;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How much attribution `mnq run` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// None.
    None,
    /// Linear quantisation and each op kind (5 variants).
    Ops,
    /// Also each layer alone (one more variant per non-linear layer).
    Layers,
}

/// What a variant keeps in float64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantKind {
    /// Nothing: the model as assigned.
    Integer,
    /// Every non-linear layer.
    LinearOnly,
    /// The reverse: every linear layer in float, the non-linear layers through their units.
    UnitsOnly,
    /// Every layer of one op kind.
    Op,
    /// One layer.
    Layer,
}

/// One re-run of the integer model: which layers are exact.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// What it keeps in float64.
    pub kind: VariantKind,
    /// Short name (`integer`, `linear only`, `softmax float`, `layer blocks.0.attn.softmax float`).
    pub name: String,
    /// What it measures, for the report.
    pub what: String,
    /// Unit of every layer in execution order.
    #[serde(skip)]
    pub units: Vec<LayerUnit>,
    /// Number of layers computed exactly (in float; for `units only`, the float linear layers
    /// are not counted: 0).
    pub exact_layers: usize,
}

/// The variants for a base assignment: all integer, every non-linear layer exact, each op kind
/// exact alone (only kinds the model has), and with `per_layer` each layer exact alone.
pub fn variants(layers: &[Layer], base: &[LayerUnit], per_layer: bool) -> Vec<Variant> {
    let make = |kind: VariantKind, name: String, what: String, exact: &dyn Fn(&Layer) -> bool| {
        let units: Vec<LayerUnit> =
            layers.iter().zip(base).map(|(l, u)| if exact(l) { LayerUnit::Exact(l.op) } else { u.clone() }).collect();
        let exact_layers = layers.iter().filter(|l| exact(l)).count();
        Variant { kind, name, what, units, exact_layers }
    };
    let mut v = vec![
        make(VariantKind::Integer, "integer".into(), "every layer through its unit (the model as assigned)".into(), &|_| false),
        make(
            VariantKind::LinearOnly,
            "linear only".into(),
            "every Softmax, GELU and LayerNorm in float64: only the linear quantisation left".into(),
            &|_| true,
        ),
        Variant {
            kind: VariantKind::UnitsOnly,
            name: "units only".into(),
            what: "the float model with every Softmax, GELU and LayerNorm through its integer unit at its calibrated input format: only the units' error".into(),
            units: base.to_vec(),
            exact_layers: 0,
        },
    ];
    for op in EXACT_OPS {
        if layers.iter().any(|l| l.op == op) {
            v.push(make(
                VariantKind::Op,
                format!("{} float", op.name()),
                format!("every {} layer in float64, the rest through its unit", op.name()),
                &|l| l.op == op,
            ));
        }
    }
    if per_layer {
        for t in layers {
            v.push(make(VariantKind::Layer, format!("{} float", t.name), format!("only layer {} in float64", t.name), &|l| {
                l.index == t.index
            }));
        }
    }
    v
}

/// Result of one variant on the evaluated images.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    /// The variant.
    pub variant: Variant,
    /// Top-1 of the variant (when labels are known).
    pub top1: Option<f64>,
    /// Fraction of images where it predicts the float model's class.
    pub agreement: f64,
    /// Mean over images of the logits' `E[x²]/E[(x−q)²]` against the float model, in dB.
    pub logits_asqnr_db: Option<f64>,
}

/// The whole attribution of one assignment.
#[derive(Debug, Clone, Serialize)]
pub struct Attribution {
    /// Images evaluated.
    pub images: usize,
    /// Float precision of the reference forward.
    pub float: String,
    /// Float model's top-1 (when labels are known).
    pub float_top1: Option<f64>,
    /// Every variant, in [`variants`] order (the first is the all-integer model).
    pub results: Vec<VariantResult>,
}

impl Attribution {
    /// Top-1 a variant loses against the float model (float − variant).
    pub fn lost(&self, r: &VariantResult) -> Option<f64> {
        Some(self.float_top1? - r.top1?)
    }

    /// Points of top-1 lost by the linear quantisation alone (float − linear only).
    pub fn linear_loss(&self) -> Option<f64> {
        self.lost(self.results.get(1)?)
    }

    /// Points of top-1 lost by the units alone around float linear layers (float − units only).
    pub fn units_loss(&self) -> Option<f64> {
        self.lost(self.results.iter().find(|r| r.variant.kind == VariantKind::UnitsOnly)?)
    }

    /// Points of top-1 a variant recovers over the all-integer model.
    pub fn recovered(&self, r: &VariantResult) -> Option<f64> {
        Some(r.top1? - self.results.first()?.top1?)
    }
}

/// What an attribution sums over images, before the means: counts and exact sums, so that
/// disjoint image sets (parallel chunks, `mnq run --shard` slices) merge exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttrAcc {
    /// Images summed.
    pub n: usize,
    float_ok: usize,
    ok: Vec<usize>,
    agree: Vec<usize>,
    sqnr: Vec<ExactSum>,
}

impl AttrAcc {
    /// Empty sums for `nv` variants.
    pub fn new(nv: usize) -> AttrAcc {
        AttrAcc { n: 0, float_ok: 0, ok: vec![0; nv], agree: vec![0; nv], sqnr: vec![ExactSum::default(); nv] }
    }

    /// Join the sums of another image set.
    pub fn merge(mut self, b: &AttrAcc) -> AttrAcc {
        self.n += b.n;
        self.float_ok += b.float_ok;
        for k in 0..self.ok.len().min(b.ok.len()) {
            self.ok[k] += b.ok[k];
            self.agree[k] += b.agree[k];
            self.sqnr[k].merge(&b.sqnr[k]);
        }
        self
    }

    /// The means, for `variants` (the ones summed, in order) on labelled images or not.
    pub fn finish(&self, variants: Vec<Variant>, float: &str, labelled: bool) -> Attribution {
        let n = self.n.max(1) as f64;
        let results = variants
            .into_iter()
            .enumerate()
            .map(|(k, variant)| VariantResult {
                variant,
                top1: labelled.then(|| self.ok[k] as f64 / n),
                agreement: self.agree[k] as f64 / n,
                logits_asqnr_db: db20(self.sqnr[k].value() / n),
            })
            .collect();
        Attribution { images: self.n, float: float.to_string(), float_top1: labelled.then(|| self.float_ok as f64 / n), results }
    }
}

/// Run every variant on every image (in parallel on the current rayon pool), calling `tick`
/// after each image.
pub fn attribute<F: Real>(
    model: &Model,
    scales: &ActScales,
    bits: u32,
    preset: Preset,
    variants: Vec<Variant>,
    images: &Images,
    tick: &(dyn Fn() + Sync),
) -> Result<Attribution, ModelError> {
    let float = super::eval::float_outputs::<F>(model, images, &|| {});
    let acc = attribute_acc::<F>(model, scales, bits, preset, &variants, images, &float, tick)?;
    Ok(acc.finish(variants, F::name(), images.labels.is_some()))
}

/// The sums of [`attribute`] before the means (what a shard of `mnq run` keeps), against
/// `float`, the [`float_outputs`](super::eval::float_outputs) of the same images.
#[allow(clippy::too_many_arguments)]
pub fn attribute_acc<F: Real>(
    model: &Model,
    scales: &ActScales,
    bits: u32,
    preset: Preset,
    variants: &[Variant],
    images: &Images,
    float: &[Output],
    tick: &(dyn Fn() + Sync),
) -> Result<AttrAcc, ModelError> {
    assert_eq!(float.len(), images.len(), "one float output per image");
    let qms: Vec<IntModel> = variants
        .iter()
        .map(|v| IntModel::new(model, scales, QuantConfig { weight_bits: bits, act_bits: bits, preset, units: v.units.clone() }))
        .collect::<Result<_, _>>()?;
    let nv = qms.len();
    // Every variant but `units only` is an integer model of one family: one prefix-shared run.
    let int_k: Vec<usize> = (0..nv).filter(|&k| variants[k].kind != VariantKind::UnitsOnly).collect();
    let int_qms: Vec<&IntModel> = int_k.iter().map(|&k| &qms[k]).collect();
    (0..images.len())
        .into_par_iter()
        .try_fold(
            || AttrAcc::new(nv),
            |mut a, i| -> Result<AttrAcc, ModelError> {
                let img = images.image(i);
                let fo = &float[i];
                let ft = fo.top1();
                let label = images.labels.as_ref().map(|l| l[i]);
                a.float_ok += usize::from(label == Some(ft));
                let mut outs: Vec<Option<Output>> = vec![None; nv];
                for (&k, o) in int_k.iter().zip(super::quant::forward_shared(&int_qms, &img)?) {
                    outs[k] = Some(o);
                }
                for (k, qm) in qms.iter().enumerate() {
                    let qo = match outs[k].take() {
                        Some(o) => o,
                        None => super::float::FloatRun::<F>::new(model, &img, false).with_units(qm).try_finish()?,
                    };
                    let qt = qo.top1();
                    a.ok[k] += usize::from(label == Some(qt));
                    a.agree[k] += usize::from(qt == ft);
                    a.sqnr[k].add(sqnr_ratio(&fo.logits, &qo.logits));
                }
                a.n += 1;
                tick();
                Ok(a)
            },
        )
        .try_reduce(|| AttrAcc::new(nv), |a, b| Ok(a.merge(&b)))
}
