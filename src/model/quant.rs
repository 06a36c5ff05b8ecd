//! The integer forward, following the I-ViT code base (HAWQ-V3 dyadic arithmetic):
//! per-output-channel symmetric integer weights, per-tensor symmetric activations, exact integer
//! GEMMs, dyadic requantisation between layers, 16-bit residual adds, and every Softmax, GELU
//! and LayerNorm computed by a golden unit in Integer mode, any method per layer.
//!
//! Data flow of one block (scales named as in the manifest's `act_scales`):
//! ```text
//! r (16-bit, residual) ─ LN1 unit ─ requant ─ h (act_bits, blocks.i.norm1)
//!   h·Wqkv ─ requant ─ qkv (blocks.i.attn.qkv) ─ q·kᵀ ─ requant (scale·head_dim^−½) ─ scores (blocks.i.attn.matmul_qk)
//!   scores ─ Softmax unit ─ p ─ p·V ─ requant ─ ctx (blocks.i.attn.matmul_av) ─ ·Wproj (LayerScale folded) ─ requant (blocks.i.attn.proj)
//!   r1 = requant16(proj + r) (blocks.i.residual1) ─ LN2 unit ─ requant ─ h2 (blocks.i.norm2)
//!   h2·W1 ─ GELU unit ─ requant (blocks.i.mlp.act) ─ ·W2 ─ requant (blocks.i.mlp.fc2)
//!   r2 = requant16(fc2 + r1) (blocks.i.residual2)
//! ```
//! Format conversions that let any method sit on any layer (`kernels.md` §5):
//! * LayerNorm input: the 16-bit per-tensor residual feeds `layernorm_ivit`/`layernorm_ibert`
//!   directly; `layernorm_fqvit` (PTF) gets it requantised per channel to FQ-ViT's unsigned
//!   act_bits format with one zero point and power-of-two channel factors `scale8/8·2^alpha_c`.
//! * LayerNorm output: I-ViT/I-BERT give ~31-bit integers with a per-channel scale `√C/2^30·γ_c`
//!   (negative for γ < 0): requantised per channel (dyadic, signed multiplier) to act_bits. PTF
//!   outputs integers already in the next scale (computed with that scale as `out_scale`): only
//!   clamped to the signed act_bits range.
//! * Softmax output → attn·V: I-BERT `[0, 2^ob]` at `2^−ob`, I-ViT `[0, 2^(ob−1)−1]` at
//!   `2^−(ob−1)` (16-bit), both multiplied; FQ-ViT log2 codes `k` (value `2^−k`, or the zero
//!   flag) as shift-and-add `Σ v·2^(top−k)` at scale `2^−top`, `top = 2^bits − 1`.
//! * GELU input: ShiftGELU and the float fallback take fc1 requantised to act_bits
//!   (`blocks.i.mlp.fc1`); I-BERT i-GELU takes the fc1 accumulator with its per-channel scale,
//!   as I-BERT does (at act_bits it collapses, `kernels.md` §1.1). I-BERT's negative output
//!   scale is absorbed by the next requantiser's negative multiplier.
//! * FQ-ViT has no integer GELU: `gelu_fqvit` is float GELU on the dequantised act_bits input,
//!   output quantised to act_bits, as FQ-ViT does — **not an integer unit**.
//!
//! Choices where the reference code is silent or inconsistent: every requantiser clamps to its
//! width (hardware behaviour; the I-ViT code leaves 6-bit outputs unclamped, §6.9); the class,
//! distillation and position embeddings are offline constants quantised straight into the
//! 16-bit residual scale; logits are the head's accumulator times its scale.

use super::float::{gelu, patches, Point};
use super::gemm::{self, Requants};
use super::manifest::{LayerUnit, PtfParams, QuantSection};
use super::{Layer, Manifest, Model, ModelError, Output, Tap};
use crate::fixed::{int_range, round_half_even_f64, signed_width, QTensor, Scale};
use crate::units::{self, Aux, Condition, Encoding, Mode, Preset, Unit, UnitOutput};
use std::collections::BTreeMap;

/// Activation widths the integer forward supports (exact i16 GEMM operands, i32 accumulators).
pub const SUPPORTED_BITS: std::ops::RangeInclusive<u32> = 4..=8;

/// Width of the residual stream (I-ViT's 16-bit QuantAct before every LayerNorm).
pub const RESIDUAL_BITS: u32 = 16;

/// How to build an integer model.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    /// Weight bits (per-output-channel symmetric).
    pub weight_bits: u32,
    /// Activation bits (per-tensor symmetric).
    pub act_bits: u32,
    /// Parameter preset of every golden unit.
    pub preset: Preset,
    /// The unit of each non-linear layer, in execution order.
    pub units: Vec<LayerUnit>,
}

/// Activation scales at one activation width, resolved from a manifest's quant section.
#[derive(Debug, Clone, PartialEq)]
pub struct ActScales {
    /// Scale per quantisation point (residual points at 16 bits).
    pub scales: BTreeMap<String, f64>,
    /// PTF parameters per LayerNorm layer.
    pub ptf: BTreeMap<String, PtfParams>,
    /// Activation width the scales are for.
    pub act_bits: u32,
}

/// Largest code of a signed `bits` format, `2^(bits−1) − 1`.
fn qmax(bits: u32) -> f64 {
    ((1u64 << (bits - 1)) - 1) as f64
}

impl ActScales {
    /// Scales for `act_bits` from a quant section made for `q.act_bits`: the calibrated range
    /// `s·(2^(b−1)−1)` is kept and divided by the new width's largest code; residual scales stay.
    pub fn from_section(q: &QuantSection, act_bits: u32) -> ActScales {
        let f = qmax(q.act_bits.clamp(2, 32)) / qmax(act_bits);
        let scales = q
            .act_scales
            .iter()
            .map(|(k, &s)| {
                let residual = k == "pos_embed" || k.ends_with(".residual1") || k.ends_with(".residual2");
                (k.clone(), if residual { s } else { s * f })
            })
            .collect();
        ActScales { scales, ptf: q.ptf.clone(), act_bits }
    }

    fn get(&self, p: Point) -> Result<f64, ModelError> {
        let name = p.name();
        self.scales.get(&name).copied().ok_or_else(|| ModelError::Quant {
            what: format!(
                "the activation scale '{name}' is missing from the manifest's quant section; run `mnq calibrate` to compute every scale"
            ),
        })
    }
}

/// A linear layer with integer weights and its requantisers.
#[derive(Debug, Clone)]
struct QLinear {
    /// Weights packed for the i32 kernels.
    w: gemm::Packed,
    /// Row-major weights for the plain i64 kernel (used when the i32 kernels are not provably
    /// exact, and by the reference path that tests the fast kernels).
    rm: Vec<i16>,
    n: usize,
    /// Bias in accumulator units `RNE(b / (s_in·s_w))`.
    bias: Vec<i64>,
    /// Accumulator scale per output channel `s_in·s_w[o]`.
    acc_scale: Vec<f64>,
    /// Requantiser per output channel to the output scale (None when the output is not requantised).
    req: Option<Requants>,
    /// Whether the i32 kernel is provably exact for this layer.
    narrow: bool,
}

impl QLinear {
    #[allow(clippy::too_many_arguments)]
    fn new(w: &[f32], b: &[f32], n: usize, k: usize, ls: Option<&[f32]>, wbits: u32, abits: u32, s_in: f64, s_out: Option<f64>) -> QLinear {
        let qm = qmax(wbits);
        let (lo, hi) = int_range(wbits, true);
        let mut wq = Vec::with_capacity(n * k);
        let mut bias = Vec::with_capacity(n);
        let mut acc_scale = Vec::with_capacity(n);
        for o in 0..n {
            let g = ls.map_or(1.0, |g| f64::from(g[o]));
            let row = &w[o * k..(o + 1) * k];
            let amax = row.iter().map(|v| (f64::from(*v) * g).abs()).fold(0.0, f64::max);
            // I-ViT: s_w = max|w| / (2^(b−1)−1) per output channel; an all-zero row gets 1/qmax.
            let sw = if amax > 0.0 { amax / qm } else { 1.0 / qm };
            wq.extend(row.iter().map(|v| round_half_even_f64(f64::from(*v) * g / sw).clamp(lo as f64, hi as f64) as i16));
            let sa = s_in * sw;
            bias.push(round_half_even_f64(f64::from(b[o]) * g / sa).clamp(-9.0e15, 9.0e15) as i64);
            acc_scale.push(sa);
        }
        let req = s_out.map(|so| Requants::new(acc_scale.iter().map(|sa| sa / so)));
        let narrow = gemm::gemm_fits_i32(k, 1i64 << (abits - 1), 1i64 << (wbits - 1));
        QLinear { w: gemm::Packed::new(&wq, n, k), rm: wq, n, bias, acc_scale, req, narrow }
    }

    /// Accumulators `x·Wᵀ + bias` (i64) for `rows` input rows.
    fn acc(&self, x: &[i16], rows: usize, plain: bool, scratch: &mut Vec<i32>, out: &mut Vec<i64>) {
        out.clear();
        if self.narrow && !plain {
            scratch.clear();
            scratch.resize(rows * self.n, 0);
            gemm::gemm_i16(x, rows, &self.w, scratch);
            out.extend(scratch.chunks_exact(self.n).flat_map(|r| r.iter().zip(&self.bias).map(|(&a, &b)| i64::from(a) + b)));
        } else {
            out.resize(rows * self.n, 0);
            gemm::gemm_i16_wide(x, rows, &self.rm, self.n, out);
            for row in out.chunks_exact_mut(self.n) {
                for (v, b) in row.iter_mut().zip(&self.bias) {
                    *v += b;
                }
            }
        }
    }

    /// Accumulators requantised per channel to the output scale, clamped to `bits`.
    fn forward(&self, x: &[i16], rows: usize, bits: u32, plain: bool, s: &mut Scratch, out: &mut Vec<i16>) {
        self.acc(x, rows, plain, &mut s.i32, &mut s.i64);
        requant_to(&s.i64, self.req.as_ref().expect("linear layer with an output scale"), bits, plain, &mut s.i64b, out);
    }
}

/// Requantise rows with `req` (one requantiser per channel), clamped to signed `bits`, as i16.
fn requant_to(v: &[i64], req: &Requants, bits: u32, plain: bool, tmp: &mut Vec<i64>, out: &mut Vec<i16>) {
    let (lo, hi) = int_range(bits, true);
    tmp.clear();
    apply(req, v, lo, hi, plain, tmp);
    out.clear();
    out.extend(tmp.iter().map(|&x| x as i16));
}

/// Requantise rows with the vector kernel, or element by element when `plain`.
fn apply(req: &Requants, v: &[i64], lo: i64, hi: i64, plain: bool, out: &mut Vec<i64>) {
    if plain {
        req.apply_rows_plain(v, lo, hi, out);
    } else {
        req.apply_rows(v, lo, hi, out);
    }
}

/// FQ-ViT's float GELU of input code `q` (scale `s_in`), quantised to `bits` at `s_out`.
fn float_gelu_code(q: i64, s_in: f64, s_out: f64, bits: u32) -> i16 {
    let (lo, hi) = int_range(bits, true);
    round_half_even_f64(gelu(q as f64 * s_in) / s_out).clamp(lo as f64, hi as f64) as i16
}

/// The same requantiser for every channel of rows of `c`.
fn per_tensor(ratio: f64, c: usize) -> Requants {
    Requants::new(std::iter::repeat_n(ratio, c))
}

/// One requantiser per channel from a unit's output scale to `s_out`.
fn from_scale(scale: &Scale, c: usize, s_out: f64) -> Requants {
    Requants::new((0..c).map(|i| scale.at(i) / s_out))
}

#[derive(Default)]
struct Scratch {
    i32: Vec<i32>,
    i64: Vec<i64>,
    i64b: Vec<i64>,
}

/// PTF input format of one `layernorm_fqvit` layer.
#[derive(Debug, Clone)]
struct PtfFormat {
    zp: i64,
    /// Channel scales `scale8/8·2^alpha_c`.
    sc: Vec<f64>,
    /// Residual → channel format, per channel.
    req: Requants,
}

/// The golden unit (or float fallback) of one layer with its fixed inputs.
struct QLayer {
    unit: Option<Box<dyn Unit>>,
    choice: LayerUnit,
    aux: Aux,
    /// Scale of what the layer's output is requantised to (LayerNorm and GELU).
    out_scale: f64,
    ptf: Option<PtfFormat>,
    /// Float GELU fallback as a table over the act_bits input codes (the same values as
    /// computing it per element: the output depends on the code alone).
    gelu_lut: Vec<i16>,
}

/// Requantisers of one block.
struct QBlock {
    qkv: QLinear,
    /// Scores `s_qkv²·head_dim^−½` → `matmul_qk` scale (per row of T).
    qk: Requants,
    s_qkv: f64,
    s_qk: f64,
    s_av: f64,
    proj: QLinear,
    /// Residual 1: proj branch and identity branch.
    r1: (Requants, Requants),
    s_r1: f64,
    fc1: QLinear,
    /// fc1 accumulator → GELU input scale (I-ViT and float GELU).
    fc1_req: Requants,
    s_fc1: f64,
    fc2: QLinear,
    r2: (Requants, Requants),
    s_r2: f64,
}

/// A model prepared for the integer forward: integer weights, scales and a unit per layer.
pub struct IntModel {
    /// Manifest of the float model.
    pub manifest: Manifest,
    /// Non-linear layers in execution order.
    pub layers: Vec<Layer>,
    /// The configuration it was built with.
    pub config: QuantConfig,
    s_input: f64,
    patch: QLinear,
    /// Residual rows of the class/distillation tokens and the position embedding, at `s_r0`.
    pre_rows: Vec<i64>,
    pos: Vec<i64>,
    pe_req: Requants,
    s_r0: f64,
    blocks: Vec<QBlock>,
    qlayers: Vec<QLayer>,
    head: Option<QLinear>,
    head_dist: Option<QLinear>,
    s_norm: f64,
    /// Use the plain i64 kernels and element-wise requantisers (reference for the fast kernels).
    plain: bool,
}

impl IntModel {
    /// Prepare `model` with activation `scales` and `config`.
    pub fn new(model: &Model, scales: &ActScales, config: QuantConfig) -> Result<IntModel, ModelError> {
        for (what, b) in [("weight", config.weight_bits), ("activation", config.act_bits)] {
            if !SUPPORTED_BITS.contains(&b) {
                return Err(ModelError::Quant {
                    what: format!(
                        "{what} width {b} bits is not supported by the integer forward (supported: {}..={}; the exact i16 GEMM is sized for ≤ 8-bit operands)",
                        SUPPORTED_BITS.start(),
                        SUPPORTED_BITS.end()
                    ),
                });
            }
        }
        if scales.act_bits != config.act_bits {
            return Err(ModelError::Quant { what: format!("scales are for {} bits, config for {}", scales.act_bits, config.act_bits) });
        }
        if config.units.len() != model.layers.len() {
            return Err(ModelError::Quant {
                what: format!("{} units given for {} non-linear layers", config.units.len(), model.layers.len()),
            });
        }
        let m = &model.manifest;
        let (d, t, hd) = (m.embed_dim, m.tokens(), m.head_dim());
        let (wb, ab) = (config.weight_bits, config.act_bits);
        let s_input = scales.get(Point::Input)?;
        let s_pe = scales.get(Point::PatchEmbed)?;
        let s_r0 = scales.get(Point::PosEmbed)?;
        let patch = QLinear::new(&model.patch.w, &model.patch.b, d, model.patch.inp, None, wb, ab, s_input, Some(s_pe));
        let (rlo, rhi) = int_range(RESIDUAL_BITS, true);
        let q16 = |v: f64| round_half_even_f64(v / s_r0).clamp(rlo as f64, rhi as f64) as i64;
        let npre = t - m.num_patches();
        let mut pre_rows = Vec::with_capacity(npre * d);
        for (i, tok) in std::iter::once(&model.cls_token).chain(model.dist_token.as_ref()).enumerate() {
            pre_rows.extend(tok.iter().zip(&model.pos_embed[i * d..(i + 1) * d]).map(|(&c, &p)| q16(f64::from(c) + f64::from(p))));
        }
        let pos: Vec<i64> = model.pos_embed[npre * d..].iter().map(|&p| q16(f64::from(p))).collect();
        let pe_req = per_tensor(s_pe / s_r0, d);

        let mut blocks = Vec::with_capacity(m.depth);
        let mut s_prev = s_r0;
        for (b, blk) in model.blocks.iter().enumerate() {
            let s_n1 = scales.get(Point::Norm1(b))?;
            let s_qkv = scales.get(Point::Qkv(b))?;
            let s_qk = scales.get(Point::MatmulQk(b))?;
            let s_av = scales.get(Point::MatmulAv(b))?;
            let s_proj = scales.get(Point::Proj(b))?;
            let s_r1 = scales.get(Point::Residual1(b))?;
            let s_n2 = scales.get(Point::Norm2(b))?;
            let s_fc1 = scales.get(Point::Fc1(b))?;
            let s_act = scales.get(Point::Act(b))?;
            let s_fc2 = scales.get(Point::Fc2(b))?;
            let s_r2 = scales.get(Point::Residual2(b))?;
            let fc1 = QLinear::new(&blk.fc1.w, &blk.fc1.b, blk.fc1.out, d, None, wb, ab, s_n2, None);
            let fc1_req = Requants::new(fc1.acc_scale.iter().map(|sa| sa / s_fc1));
            blocks.push(QBlock {
                qkv: QLinear::new(&blk.qkv.w, &blk.qkv.b, 3 * d, d, None, wb, ab, s_n1, Some(s_qkv)),
                qk: per_tensor(s_qkv * s_qkv * (hd as f64).powf(-0.5) / s_qk, t),
                s_qkv,
                s_qk,
                s_av,
                proj: QLinear::new(&blk.proj.w, &blk.proj.b, d, d, blk.ls1.as_deref(), wb, ab, s_av, Some(s_proj)),
                r1: (per_tensor(s_proj / s_r1, d), per_tensor(s_prev / s_r1, d)),
                s_r1,
                fc1,
                fc1_req,
                s_fc1,
                fc2: QLinear::new(&blk.fc2.w, &blk.fc2.b, d, blk.fc2.inp, blk.ls2.as_deref(), wb, ab, s_act, Some(s_fc2)),
                r2: (per_tensor(s_fc2 / s_r2, d), per_tensor(s_r1 / s_r2, d)),
                s_r2,
            });
            s_prev = s_r2;
        }
        let s_norm = scales.get(Point::Norm)?;

        let mut qlayers = Vec::with_capacity(model.layers.len());
        for (layer, choice) in model.layers.iter().zip(&config.units) {
            if choice.op() != layer.op {
                return Err(ModelError::Quant {
                    what: format!("layer {}: unit {} does not compute {}", layer.name, choice.name(), layer.op.name()),
                });
            }
            let unit = match choice {
                LayerUnit::Unit(n) => Some(units::build(n, config.preset).map_err(|source| ModelError::Unit {
                    layer: layer.name.clone(),
                    unit: n.clone(),
                    source: Box::new(source),
                })?),
                LayerUnit::FloatGelu => None,
            };
            let mut aux = Aux::default();
            let (out_scale, in_scale) = match (layer.op, layer.block) {
                (units::Op::LayerNorm, blk) => {
                    let norm = match (blk, layer.name.ends_with("norm1")) {
                        (Some(b), true) => &model.blocks[b].norm1,
                        (Some(b), false) => &model.blocks[b].norm2,
                        (None, _) => &model.norm,
                    };
                    aux.gamma = Some(norm.w.clone());
                    aux.beta = Some(norm.b.clone());
                    let (so, si) = match (blk, layer.name.ends_with("norm1")) {
                        (Some(b), true) => (scales.get(Point::Norm1(b))?, if b == 0 { s_r0 } else { blocks[b - 1].s_r2 }),
                        (Some(b), false) => (scales.get(Point::Norm2(b))?, blocks[b].s_r1),
                        (None, _) => (s_norm, if m.depth == 0 { s_r0 } else { blocks[m.depth - 1].s_r2 }),
                    };
                    (so, si)
                }
                (units::Op::Gelu, Some(b)) => (scales.get(Point::Act(b))?, 0.0),
                _ => (0.0, 0.0),
            };
            let ptf = if choice.name() == "layernorm_fqvit" {
                let p = scales.ptf.get(&layer.name).ok_or_else(|| ModelError::Quant {
                    what: format!(
                        "layer {} uses layernorm_fqvit but the quant section has no PTF parameters for it (quant.ptf.{}); run `mnq calibrate`",
                        layer.name, layer.name
                    ),
                })?;
                let levels = ((1u64 << config.act_bits) - 1) as f64;
                let scale8 = ((p.max - p.min) / levels).max(f64::from(f32::EPSILON));
                let zp = (-round_half_even_f64(p.min / scale8)).clamp(0.0, levels) as i64;
                let sc: Vec<f64> = p.alpha.iter().map(|&a| scale8 / 8.0 * f64::from(1u32 << a)).collect();
                let req = Requants::new(sc.iter().map(|s| in_scale / s));
                aux.zero_point = zp;
                aux.out_scale = Some(Scale::PerTensor(out_scale));
                Some(PtfFormat { zp, sc, req })
            } else {
                None
            };
            let gelu_lut = match (choice, layer.block) {
                (LayerUnit::FloatGelu, Some(b)) => {
                    let (lo, hi) = int_range(config.act_bits, true);
                    (lo..=hi).map(|q| float_gelu_code(q, blocks[b].s_fc1, out_scale, config.act_bits)).collect()
                }
                _ => Vec::new(),
            };
            qlayers.push(QLayer { unit, choice: choice.clone(), aux, out_scale, ptf, gelu_lut });
        }
        let head = model.head.as_ref().map(|h| QLinear::new(&h.w, &h.b, h.out, d, None, wb, ab, s_norm, None));
        let head_dist = model.head_dist.as_ref().map(|h| QLinear::new(&h.w, &h.b, h.out, d, None, wb, ab, s_norm, None));
        Ok(IntModel {
            manifest: m.clone(),
            layers: model.layers.clone(),
            config,
            s_input,
            patch,
            pre_rows,
            pos,
            pe_req,
            s_r0,
            blocks,
            qlayers,
            head,
            head_dist,
            s_norm,
            plain: false,
        })
    }

    /// Run every GEMM with plain i64 loops and every requantiser element by element with
    /// `Dyadic::apply`: slower, and the reference the fast kernels are tested against (the two
    /// must agree bit for bit).
    pub fn with_plain_kernels(mut self, plain: bool) -> IntModel {
        self.plain = plain;
        self
    }

    /// Integer forward of one image (normalised `[C, H, W]`), calling `taps` at every non-linear layer.
    pub fn forward(&self, image: &[f32], taps: Option<&mut dyn FnMut(&Tap)>) -> Result<Output, ModelError> {
        match taps {
            None => IntRun::new(self, image, false).finish(),
            Some(cb) => {
                let mut run = IntRun::new(self, image, true);
                while let Some(t) = run.next_tap()? {
                    cb(&t);
                }
                run.finish()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Start,
    Norm1(usize),
    Softmax(usize),
    Norm2(usize),
    Gelu(usize),
    Final,
    Done,
}

/// How the softmax output feeds attention·V.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probs {
    /// Linear unsigned integers at this scale.
    Linear(f64),
    /// Log2 codes expanded as `2^(top − k)` at scale `2^−top`.
    Log2(u32),
}

/// The integer forward of one image, stopping at every non-linear layer.
pub struct IntRun<'q> {
    qm: &'q IntModel,
    stage: Stage,
    taps: bool,
    image: Vec<f32>,
    /// Residual stream `[T, D]`, 16-bit, at scale `sx`.
    x: Vec<i64>,
    sx: f64,
    /// Normalised activations `[T, D]` at the LayerNorm's output scale.
    h: Vec<i16>,
    qkv: Vec<i16>,
    /// Softmax output codes or integers `[heads, T, T]`.
    probs: Vec<i32>,
    probs_fmt: Probs,
    /// GELU output `[T, H]`.
    act: Vec<i16>,
    s: Scratch,
    buf16: Vec<i16>,
    tap_in: Vec<f64>,
    tap_out: Vec<f64>,
    cond: Vec<(Condition, usize)>,
    logits: Vec<f64>,
}

impl<'q> IntRun<'q> {
    /// Start an integer forward of `image`; `taps` = fill tap values.
    pub fn new(qm: &'q IntModel, image: &[f32], taps: bool) -> IntRun<'q> {
        assert_eq!(image.len(), qm.manifest.image_len(), "image length must match the manifest (checked by Images)");
        IntRun {
            qm,
            stage: Stage::Start,
            taps,
            image: image.to_vec(),
            x: Vec::new(),
            sx: 1.0,
            h: Vec::new(),
            qkv: Vec::new(),
            probs: Vec::new(),
            probs_fmt: Probs::Linear(1.0),
            act: Vec::new(),
            s: Scratch::default(),
            buf16: Vec::new(),
            tap_in: Vec::new(),
            tap_out: Vec::new(),
            cond: Vec::new(),
            logits: Vec::new(),
        }
    }

    fn ab(&self) -> u32 {
        self.qm.config.act_bits
    }

    fn unit_err(&self, li: usize, source: units::UnitError) -> ModelError {
        ModelError::Unit {
            layer: self.qm.layers[li].name.clone(),
            unit: self.qm.qlayers[li].choice.name().to_string(),
            source: Box::new(source),
        }
    }

    fn run_unit(&self, li: usize, x: &QTensor) -> Result<UnitOutput, ModelError> {
        let ql = &self.qm.qlayers[li];
        let unit = ql.unit.as_ref().expect("integer layer has a unit");
        unit.run(x, &ql.aux, Mode::Integer).map_err(|e| self.unit_err(li, e))
    }

    fn embed(&mut self) {
        let qm = self.qm;
        let m = &qm.manifest;
        let (d, ab) = (m.embed_dim, self.ab());
        let (lo, hi) = int_range(ab, true);
        let xq: Vec<i16> =
            self.image.iter().map(|&v| round_half_even_f64(f64::from(v) / qm.s_input).clamp(lo as f64, hi as f64) as i16).collect();
        let pt = patches(&xq, m.in_chans, m.img_size, m.patch_size);
        let np = m.num_patches();
        let mut pe = std::mem::take(&mut self.buf16);
        qm.patch.forward(&pt, np, ab, qm.plain, &mut self.s, &mut pe);
        let (rlo, rhi) = int_range(RESIDUAL_BITS, true);
        let z: Vec<i64> = pe.iter().map(|&v| i64::from(v)).collect();
        let mut r = std::mem::take(&mut self.s.i64b);
        r.clear();
        apply(&qm.pe_req, &z, i64::MIN, i64::MAX, qm.plain, &mut r);
        self.x.clear();
        self.x.extend_from_slice(&qm.pre_rows);
        self.x.extend(r.iter().zip(&qm.pos).map(|(&v, &p)| (v + p).clamp(rlo, rhi)));
        debug_assert_eq!(self.x.len(), m.tokens() * d);
        self.sx = qm.s_r0;
        self.buf16 = pe;
        self.s.i64b = r;
    }

    fn input_err(&self, li: usize, e: crate::fixed::FixedError) -> ModelError {
        self.unit_err(li, units::UnitError::Input { unit: "model", source: e })
    }

    /// LayerNorm layer `li` on the residual; output requantised to act_bits into `h`.
    fn norm(&mut self, li: usize) -> Result<(), ModelError> {
        let qm = self.qm;
        let ql = &qm.qlayers[li];
        let d = qm.manifest.embed_dim;
        let t = self.x.len() / d;
        let ab = self.ab();
        let (lo, hi) = int_range(ab, true);
        let out = match &ql.ptf {
            None => {
                let x = QTensor::new(self.x.clone(), &[t, d], Scale::PerTensor(self.sx), RESIDUAL_BITS, true)
                    .map_err(|e| self.input_err(li, e))?;
                if self.taps {
                    self.tap_in = x.dequantize();
                }
                let out = self.run_unit(li, &x)?;
                requant_to(&out.values, &from_scale(&out.scale, d, ql.out_scale), ab, qm.plain, &mut self.s.i64b, &mut self.h);
                out
            }
            Some(p) => {
                let top = (1i64 << ab) - 1;
                let mut q = Vec::with_capacity(self.x.len());
                apply(&p.req, &self.x, i64::MIN / 2, i64::MAX / 2, qm.plain, &mut q);
                q.iter_mut().for_each(|v| *v = (*v + p.zp).clamp(0, top));
                if self.taps {
                    self.tap_in = q.iter().enumerate().map(|(i, &v)| (v - p.zp) as f64 * p.sc[i % d]).collect();
                }
                let x = QTensor::new(q, &[t, d], Scale::PerChannel(p.sc.clone()), ab, false).map_err(|e| self.input_err(li, e))?;
                let out = self.run_unit(li, &x)?;
                self.h.clear();
                self.h.extend(out.values.iter().map(|&v| v.clamp(lo, hi) as i16));
                out
            }
        };
        if self.taps {
            self.tap_out = out.dequantize();
        }
        self.cond = out.conditions;
        Ok(())
    }

    fn attention(&mut self, b: usize) -> Result<(), ModelError> {
        let qm = self.qm;
        let m = &qm.manifest;
        let (d, t, nh, hd, ab) = (m.embed_dim, m.tokens(), m.num_heads, m.head_dim(), self.ab());
        let blk = &qm.blocks[b];
        let li = 4 * b + 1;
        let mut qkv = std::mem::take(&mut self.qkv);
        blk.qkv.forward(&self.h, t, ab, qm.plain, &mut self.s, &mut qkv);
        let (lo, hi) = int_range(ab, true);
        let mut scores = Vec::with_capacity(nh * t * t);
        let mut qh = vec![0i16; t * hd];
        let mut kh = vec![0i16; t * hd];
        let mut acc = vec![0i32; t * t];
        let mut acc64 = Vec::with_capacity(t * t);
        // act_bits ≤ 8 and head_dim ≤ 2^15: the i32 kernel is exact (checked at build time of the model).
        assert!(gemm::gemm_fits_i32(hd, 1 << (ab - 1), 1 << (ab - 1)), "head_dim too large for the i32 score kernel");
        for h in 0..nh {
            for i in 0..t {
                qh[i * hd..(i + 1) * hd].copy_from_slice(&qkv[i * 3 * d + h * hd..][..hd]);
                kh[i * hd..(i + 1) * hd].copy_from_slice(&qkv[i * 3 * d + d + h * hd..][..hd]);
            }
            acc64.clear();
            if qm.plain {
                acc64.resize(t * t, 0);
                gemm::gemm_i16_wide(&qh, t, &kh, t, &mut acc64);
            } else {
                gemm::gemm_i16(&qh, t, &gemm::Packed::new(&kh, t, hd), &mut acc);
                acc64.extend(acc.iter().map(|&a| i64::from(a)));
            }
            apply(&blk.qk, &acc64, lo, hi, qm.plain, &mut scores);
        }
        self.qkv = qkv;
        let x = QTensor::new(scores, &[nh, t, t], Scale::PerTensor(blk.s_qk), ab, true).map_err(|e| self.input_err(li, e))?;
        if self.taps {
            self.tap_in = x.dequantize();
        }
        let out = self.run_unit(li, &x)?;
        if self.taps {
            self.tap_out = out.dequantize();
        }
        self.probs.clear();
        self.probs.extend(out.values.iter().map(|&v| v as i32));
        self.probs_fmt = match out.encoding {
            Encoding::Linear => Probs::Linear(out.scale.at(0)),
            Encoding::Log2 { bits } => Probs::Log2(((1u32 << bits) - 1).min(40)),
        };
        self.cond = out.conditions;
        Ok(())
    }

    fn attn_out(&mut self, b: usize) -> Result<(), ModelError> {
        let qm = self.qm;
        let m = &qm.manifest;
        let (d, t, nh, hd, ab) = (m.embed_dim, m.tokens(), m.num_heads, m.head_dim(), self.ab());
        let blk = &qm.blocks[b];
        let vmax = 1i64 << (ab - 1);
        let mut ctx = vec![0i64; t * d];
        let s_ctx = match self.probs_fmt {
            Probs::Linear(sp) => {
                let pmax = self.probs.iter().copied().max().unwrap_or(0).max(0);
                if !qm.plain && pmax <= i32::from(i16::MAX) && gemm::av_fits_i32(t, i64::from(pmax), vmax) {
                    // Probabilities fit i16 and every sum fits i32: the packed GEMM with Vᵀ as weights.
                    let p16: Vec<i16> = self.probs.iter().map(|&v| v as i16).collect();
                    let mut vt = vec![0i16; hd * t];
                    let mut o = vec![0i32; t * hd];
                    for h in 0..nh {
                        for u in 0..t {
                            for j in 0..hd {
                                vt[j * t + u] = self.qkv[u * 3 * d + 2 * d + h * hd + j];
                            }
                        }
                        gemm::gemm_i16(&p16[h * t * t..(h + 1) * t * t], t, &gemm::Packed::new(&vt, hd, t), &mut o);
                        for i in 0..t {
                            for j in 0..hd {
                                ctx[i * d + h * hd + j] = i64::from(o[i * hd + j]);
                            }
                        }
                    }
                } else {
                    for h in 0..nh {
                        gemm::attn_v(&self.probs[h * t * t..(h + 1) * t * t], t, &self.qkv, 3 * d, 2 * d + h * hd, hd, &mut ctx, d, h * hd);
                    }
                }
                sp * blk.s_qkv
            }
            Probs::Log2(top) => {
                let pr = &self.probs;
                let v = &self.qkv;
                if !qm.plain && top < 31 && gemm::av_fits_i32(t, 1i64 << top, vmax) {
                    let mut c32 = vec![0i32; t * d];
                    for h in 0..nh {
                        gemm::attn_v_log2(&pr[h * t * t..(h + 1) * t * t], t, top, v, 3 * d, 2 * d + h * hd, hd, &mut c32, d, h * hd);
                    }
                    ctx.iter_mut().zip(&c32).for_each(|(o, &x)| *o = i64::from(x));
                } else {
                    for h in 0..nh {
                        gemm::attn_v_log2(&pr[h * t * t..(h + 1) * t * t], t, top, v, 3 * d, 2 * d + h * hd, hd, &mut ctx, d, h * hd);
                    }
                }
                blk.s_qkv * 2f64.powi(-(top as i32))
            }
        };
        let mut c16 = Vec::with_capacity(t * d);
        requant_to(&ctx, &per_tensor(s_ctx / blk.s_av, d), ab, qm.plain, &mut self.s.i64b, &mut c16);
        let mut proj = std::mem::take(&mut self.buf16);
        blk.proj.forward(&c16, t, ab, qm.plain, &mut self.s, &mut proj);
        self.residual(&proj, &blk.r1, blk.s_r1);
        self.buf16 = proj;
        self.norm(4 * b + 2)
    }

    /// `x = clamp16(RNE(branch·m_a/2^e_a) + RNE(x·m_b/2^e_b))` (I-ViT QuantAct with identity).
    fn residual(&mut self, branch: &[i16], (ra, rb): &(Requants, Requants), s_new: f64) {
        let (lo, hi) = int_range(RESIDUAL_BITS, true);
        let z: Vec<i64> = branch.iter().map(|&v| i64::from(v)).collect();
        let mut a = Vec::with_capacity(z.len());
        apply(ra, &z, i64::MIN / 2, i64::MAX / 2, self.qm.plain, &mut a);
        let mut bb = std::mem::take(&mut self.s.i64b);
        bb.clear();
        apply(rb, &self.x, i64::MIN / 2, i64::MAX / 2, self.qm.plain, &mut bb);
        for ((x, &u), &v) in self.x.iter_mut().zip(&a).zip(&bb) {
            *x = (u + v).clamp(lo, hi);
        }
        self.s.i64b = bb;
        self.sx = s_new;
    }

    fn mlp_in(&mut self, b: usize) -> Result<(), ModelError> {
        let qm = self.qm;
        let m = &qm.manifest;
        let (t, hh, ab) = (m.tokens(), m.hidden(), self.ab());
        let blk = &qm.blocks[b];
        let li = 4 * b + 3;
        let ql = &qm.qlayers[li];
        let (lo, hi) = int_range(ab, true);
        let mut acc = std::mem::take(&mut self.s.i64);
        blk.fc1.acc(&self.h, t, qm.plain, &mut self.s.i32, &mut acc);
        let mut act = std::mem::take(&mut self.act);
        let is_ibert = ql.unit.as_ref().is_some_and(|u| u.name() == "gelu_ibert");
        if is_ibert {
            // I-BERT feeds i-GELU the fc1 accumulator with its per-channel scale.
            let wmax = acc.iter().map(|&v| signed_width(i128::from(v))).max().unwrap_or(2).max(2);
            let x = QTensor::new(acc.clone(), &[t, hh], Scale::PerChannel(blk.fc1.acc_scale.clone()), wmax, true)
                .map_err(|e| self.input_err(li, e))?;
            if self.taps {
                self.tap_in = x.dequantize();
            }
            let out = self.run_unit(li, &x)?;
            requant_to(&out.values, &from_scale(&out.scale, hh, ql.out_scale), ab, qm.plain, &mut self.s.i64b, &mut act);
            if self.taps {
                self.tap_out = out.dequantize();
            }
            self.cond = out.conditions;
        } else {
            let mut g = Vec::with_capacity(acc.len());
            apply(&blk.fc1_req, &acc, lo, hi, qm.plain, &mut g);
            if self.taps {
                self.tap_in = g.iter().map(|&v| v as f64 * blk.s_fc1).collect();
            }
            match &ql.unit {
                Some(_) => {
                    let x = QTensor::new(g, &[t, hh], Scale::PerTensor(blk.s_fc1), ab, true).map_err(|e| self.input_err(li, e))?;
                    let out = self.run_unit(li, &x)?;
                    requant_to(&out.values, &from_scale(&out.scale, hh, ql.out_scale), ab, qm.plain, &mut self.s.i64b, &mut act);
                    if self.taps {
                        self.tap_out = out.dequantize();
                    }
                    self.cond = out.conditions;
                }
                None => {
                    // FQ-ViT's float GELU on the dequantised input (not an integer unit).
                    let so = ql.out_scale;
                    act.clear();
                    if qm.plain {
                        act.extend(g.iter().map(|&v| float_gelu_code(v, blk.s_fc1, so, ab)));
                    } else {
                        act.extend(g.iter().map(|&v| ql.gelu_lut[(v - lo) as usize]));
                    }
                    if self.taps {
                        self.tap_out = act.iter().map(|&v| f64::from(v) * so).collect();
                    }
                    self.cond = Vec::new();
                }
            }
        }
        self.act = act;
        self.s.i64 = acc;
        Ok(())
    }

    fn mlp_out(&mut self, b: usize) {
        let qm = self.qm;
        let t = qm.manifest.tokens();
        let blk = &qm.blocks[b];
        let mut y = std::mem::take(&mut self.buf16);
        blk.fc2.forward(&self.act, t, self.ab(), qm.plain, &mut self.s, &mut y);
        self.residual(&y, &blk.r2, blk.s_r2);
        self.buf16 = y;
    }

    fn head(&mut self) {
        let qm = self.qm;
        let d = qm.manifest.embed_dim;
        let logits = |lin: &QLinear, row: &[i16], s: &mut Scratch| -> Vec<f64> {
            let mut acc = Vec::new();
            lin.acc(row, 1, qm.plain, &mut s.i32, &mut acc);
            acc.iter().zip(&lin.acc_scale).map(|(&a, &sc)| a as f64 * sc).collect()
        };
        self.logits = match (&qm.head, &qm.head_dist) {
            (None, _) => self.h[..d].iter().map(|&v| f64::from(v) * qm.s_norm).collect(),
            (Some(h), None) => logits(h, &self.h[..d], &mut self.s),
            (Some(h), Some(hd)) => {
                let a = logits(h, &self.h[..d], &mut self.s);
                let b = logits(hd, &self.h[d..2 * d], &mut self.s);
                a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect()
            }
        };
    }

    /// Run to the next non-linear layer and show its input and output; None when done.
    pub fn next_tap(&mut self) -> Result<Option<Tap<'_>>, ModelError> {
        let depth = self.qm.manifest.depth;
        let (layer, next) = match self.stage {
            Stage::Start => {
                self.embed();
                self.norm(0)?;
                (0, Stage::Norm1(0))
            }
            Stage::Norm1(b) => {
                self.attention(b)?;
                (4 * b + 1, Stage::Softmax(b))
            }
            Stage::Softmax(b) => {
                self.attn_out(b)?;
                (4 * b + 2, Stage::Norm2(b))
            }
            Stage::Norm2(b) => {
                self.mlp_in(b)?;
                (4 * b + 3, Stage::Gelu(b))
            }
            Stage::Gelu(b) => {
                self.mlp_out(b);
                let li = 4 * b + 4;
                self.norm(li)?;
                (li, if b + 1 < depth { Stage::Norm1(b + 1) } else { Stage::Final })
            }
            Stage::Final => {
                self.head();
                self.stage = Stage::Done;
                return Ok(None);
            }
            Stage::Done => return Ok(None),
        };
        self.stage = next;
        let layer = &self.qm.layers[layer];
        Ok(Some(Tap { layer, input: &self.tap_in, output: &self.tap_out, conditions: &self.cond }))
    }

    /// Run to the end and return the logits.
    pub fn finish(mut self) -> Result<Output, ModelError> {
        while self.next_tap()?.is_some() {}
        Ok(Output { logits: std::mem::take(&mut self.logits) })
    }
}
