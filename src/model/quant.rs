//! The integer executor of the layer graph, following the I-ViT code base (HAWQ-V3 dyadic
//! arithmetic): per-output-channel symmetric integer weights, per-tensor symmetric
//! activations, exact integer GEMMs, dyadic requantisation between layers, 16-bit residual
//! adds, and every Softmax, GELU and LayerNorm computed by a golden unit in Integer mode, any
//! method per layer.
//!
//! Data flow of one block (scales named as in the manifest's `act_scales`):
//! ```text
//! r (16-bit, residual) ─ LN1 unit ─ requant ─ h (act_bits, blocks.i.norm1)
//!   h·Wqkv ─ requant ─ qkv (blocks.i.attn.qkv) ─ q·kᵀ ─ requant (scale·head_dim^−½) [+ rel. bias] ─ scores (blocks.i.attn.matmul_qk)
//!   scores ─ Softmax unit [mask] ─ p ─ p·V ─ requant ─ ctx (blocks.i.attn.matmul_av) ─ ·Wproj (LayerScale folded) ─ requant (blocks.i.attn.proj)
//!   r1 = requant16(proj + r) (blocks.i.residual1) ─ LN2 unit ─ requant ─ h2 (blocks.i.norm2)
//!   h2·W1 ─ GELU unit ─ requant (blocks.i.mlp.act) ─ ·W2 ─ requant (blocks.i.mlp.fc2)
//!   r2 = requant16(fc2 + r1) (blocks.i.residual2)
//! ```
//! Swin adds token permutations (exact), the relative position bias as an offline integer
//! table `RNE(bias/s_scores)` added to the requantised scores before the clamp to act_bits,
//! the shifted-window mask passed to the softmax unit (masked entries: probability exactly 0),
//! patch merging on the 16-bit residual, a bias-free reduction requantised into a new 16-bit
//! residual stream, the patch-embedding LayerNorm's act_bits output requantised into the first
//! residual stream, and the mean over tokens `RNE(Σ_t q / T)` (round half to even, exact
//! integer division) at the final norm's scale before the head.
//!
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

use super::float::{gather, gelu, patches};
use super::gemm::{self, Requants};
use super::graph::{Graph, LinearP, Node, Pool, Slot};
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
    /// `s·(2^(b−1)−1)` is kept and divided by the new width's largest code; the residual
    /// points of `graph` keep their 16-bit scales.
    pub fn from_section(q: &QuantSection, act_bits: u32, graph: &Graph) -> ActScales {
        let f = qmax(q.act_bits.clamp(2, 32)) / qmax(act_bits);
        let residual = |k: &str| graph.points.iter().any(|p| p.name == k && p.is_residual());
        let scales = q.act_scales.iter().map(|(k, &s)| (k.clone(), if residual(k) { s } else { s * f })).collect();
        ActScales { scales, ptf: q.ptf.clone(), act_bits }
    }

    fn get(&self, name: &str) -> Result<f64, ModelError> {
        self.scales.get(name).copied().ok_or_else(|| ModelError::Quant {
            what: format!(
                "the activation scale '{name}' is missing from the manifest's quant section; run `mnq calibrate` to compute every scale"
            ),
        })
    }
}

/// The integer weights of one linear layer at one width: what depends only on the float
/// weights (and LayerScale) and the width, not on activation scales or units, so every
/// [`IntModel`] of a model at that width shares one copy ([`WeightCache`]).
#[derive(Debug)]
struct QWeights {
    /// Weights packed for the i32 kernels.
    w: PackedW,
    /// Row-major weights for the plain i64 kernel (used when the i32 kernels are not provably
    /// exact, and by the reference path that tests the fast kernels).
    rm: Vec<i16>,
    /// Weight scale per output channel.
    sw: Vec<f64>,
}

impl QWeights {
    fn new(w: &[f32], n: usize, k: usize, ls: Option<&[f32]>, wbits: u32) -> QWeights {
        let qm = qmax(wbits);
        let (lo, hi) = int_range(wbits, true);
        let mut rm = Vec::with_capacity(n * k);
        let mut sw = Vec::with_capacity(n);
        for o in 0..n {
            let g = ls.map_or(1.0, |g| f64::from(g[o]));
            let row = &w[o * k..(o + 1) * k];
            let amax = row.iter().map(|v| (f64::from(*v) * g).abs()).fold(0.0, f64::max);
            // I-ViT: s_w = max|w| / (2^(b−1)−1) per output channel; an all-zero row gets 1/qmax.
            let s = if amax > 0.0 { amax / qm } else { 1.0 / qm };
            rm.extend(row.iter().map(|v| round_half_even_f64(f64::from(*v) * g / s).clamp(lo as f64, hi as f64) as i16));
            sw.push(s);
        }
        // 8-bit weights on a CPU with the u8 × i8 kernel take its packing (twice the products
        // per instruction, half the memory); the i16 packing serves every other case.
        let w = match (wbits <= 8 && gemm::has_u8_kernel()).then(|| gemm::Packed8::new(&rm, n, k)).flatten() {
            Some(p) => PackedW::I8(p),
            None => PackedW::I16(gemm::Packed::new(&rm, n, k)),
        };
        QWeights { w, rm, sw }
    }
}

/// Weights packed for one of the i32-accumulator kernels.
#[derive(Debug)]
enum PackedW {
    /// i16 × i16 (`vpdpwssd` / `vpmaddwd`).
    I16(gemm::Packed),
    /// u8 × i8 (`vpdpbusd`), activations offset by 128.
    I8(gemm::Packed8),
}

/// Key of a [`WeightCache`] entry: the float weights' address and length, the LayerScale's
/// address, the width, and a hash of the values (so that weights changed in place, through
/// `Model::params` or `tensor_mut`, are never served stale).
type WeightKey = (usize, usize, Option<usize>, u32, u64);

/// Integer weights already quantised for a model, shared by its integer models: an attribution
/// builds one [`IntModel`] per variant, and a real-size model's weights (ViT-S: 88 MB per width)
/// held once per variant exhausted memory.
#[derive(Debug, Default)]
pub struct WeightCache(std::sync::Mutex<std::collections::HashMap<WeightKey, std::sync::Arc<QWeights>>>);

impl Clone for WeightCache {
    /// A clone starts empty: the cached entries belong to the original's weights.
    fn clone(&self) -> WeightCache {
        WeightCache::default()
    }
}

/// A fast hash of float values (their bit patterns), four independent lanes.
fn values_hash(v: &[f32]) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = [1u64, 2, 3, 4];
    let chunks = v.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, x) in h.iter_mut().zip(c) {
            *l = (*l ^ u64::from(x.to_bits())).wrapping_mul(M);
        }
    }
    let mut r = (v.len() as u64).wrapping_mul(M);
    for x in rest {
        r = (r ^ u64::from(x.to_bits())).wrapping_mul(M);
    }
    h.iter().fold(r, |a, &l| (a.rotate_left(23) ^ l).wrapping_mul(M))
}

impl WeightCache {
    fn get(&self, w: &[f32], n: usize, k: usize, ls: Option<&[f32]>, wbits: u32) -> std::sync::Arc<QWeights> {
        let key = (
            w.as_ptr() as usize,
            w.len(),
            ls.map(|g| g.as_ptr() as usize),
            wbits,
            values_hash(w) ^ ls.map_or(0, values_hash).rotate_left(1),
        );
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key).or_insert_with(|| std::sync::Arc::new(QWeights::new(w, n, k, ls, wbits))).clone()
    }
}

/// A linear layer with integer weights and its requantisers.
#[derive(Debug, Clone)]
struct QLinear {
    /// The integer weights (shared).
    wt: std::sync::Arc<QWeights>,
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
    fn new(
        wt: std::sync::Arc<QWeights>,
        b: &[f32],
        n: usize,
        k: usize,
        ls: Option<&[f32]>,
        wbits: u32,
        abits: u32,
        s_in: f64,
        s_out: Option<f64>,
    ) -> QLinear {
        let mut bias = Vec::with_capacity(n);
        let mut acc_scale = Vec::with_capacity(n);
        for (o, &sw) in wt.sw.iter().enumerate() {
            let g = ls.map_or(1.0, |g| f64::from(g[o]));
            let sa = s_in * sw;
            bias.push(round_half_even_f64(f64::from(b[o]) * g / sa).clamp(-9.0e15, 9.0e15) as i64);
            acc_scale.push(sa);
        }
        let req = s_out.map(|so| Requants::new(acc_scale.iter().map(|sa| sa / so)));
        let narrow = gemm::gemm_fits_i32(k, 1i64 << (abits - 1), 1i64 << (wbits - 1));
        QLinear { wt, n, bias, acc_scale, req, narrow }
    }

    /// Input features.
    fn k(&self) -> usize {
        self.wt.rm.len() / self.n
    }

    /// The products `x·Wᵀ` in `s.i32` by an i32 kernel, when one is provably exact here
    /// (false: nothing computed, the i64 kernel must run).
    fn acc32(&self, x: &[i16], rows: usize, plain: bool, s: &mut Scratch) -> bool {
        if !self.narrow || plain {
            return false;
        }
        // The kernels write every element: the buffer is only zeroed when it grows.
        let need = rows * self.n;
        if s.i32.len() < need {
            s.i32.resize(need, 0);
        }
        let out = &mut s.i32[..need];
        match &self.wt.w {
            PackedW::I16(p) => gemm::gemm_i16(x, rows, p, out),
            // Activation codes are signed act_bits ≤ 8 values, so `x + 128` is a byte; the
            // kernel says so, and otherwise the i64 kernel runs.
            PackedW::I8(p) => return gemm::gemm_i8(x, rows, 128, p, &mut s.u8, out),
        }
        true
    }

    /// Accumulators `x·Wᵀ + bias` (i64) for `rows` input rows.
    fn acc(&self, x: &[i16], rows: usize, plain: bool, s: &mut Scratch, out: &mut Vec<i64>) {
        out.clear();
        if self.acc32(x, rows, plain, s) {
            out.resize(rows * self.n, 0);
            for (o, a) in out.chunks_exact_mut(self.n).zip(s.i32[..rows * self.n].chunks_exact(self.n)) {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(&self.bias) {
                    *o = i64::from(a) + b;
                }
            }
        } else {
            out.resize(rows * self.n, 0);
            gemm::gemm_i16_wide(x, rows, &self.wt.rm, self.n, out);
            for row in out.chunks_exact_mut(self.n) {
                for (v, b) in row.iter_mut().zip(&self.bias) {
                    *v += b;
                }
            }
        }
    }

    /// Accumulators requantised per channel to the output scale, clamped to `bits`.
    fn forward(&self, x: &[i16], rows: usize, bits: u32, plain: bool, s: &mut Scratch, out: &mut Vec<i16>) {
        let req = self.req.as_ref().expect("linear layer with an output scale");
        if self.acc32(x, rows, plain, s) {
            // Bias, requantiser and clamp in one pass over the i32 sums (the same values).
            let (lo, hi) = int_range(bits, true);
            out.clear();
            req.apply_acc(&s.i32[..rows * self.n], Some(&self.bias), lo, hi, out);
            return;
        }
        let mut acc = std::mem::take(&mut s.i64);
        self.acc(x, rows, plain, s, &mut acc);
        requant_to(&acc, req, bits, plain, &mut s.i64b, out);
        s.i64 = acc;
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
pub fn float_gelu_code(q: i64, s_in: f64, s_out: f64, bits: u32) -> i16 {
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
    u8: Vec<u8>,
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

/// How the softmax output feeds attention·V.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probs {
    /// Linear unsigned integers at this scale.
    Linear(f64),
    /// Log2 codes expanded as `2^(top − k)` at scale `2^−top`.
    Log2(u32),
}

/// The integer value of a slot.
#[derive(Debug, Clone, Default)]
enum IVal {
    /// Dead or not yet written.
    #[default]
    Empty,
    /// Activation codes at act_bits.
    Codes(Vec<i16>),
    /// A 16-bit residual stream.
    Res(Vec<i64>),
    /// A linear layer's accumulators (per-channel scale in the producing node).
    Acc(Vec<i64>),
    /// Attention scores (act_bits values, i64 for the softmax units).
    Scores(Vec<i64>),
    /// Softmax outputs.
    Probs(Vec<i32>, Probs),
}

impl IVal {
    fn codes(&self) -> &[i16] {
        match self {
            IVal::Codes(v) => v,
            other => unreachable!("graph built by arch: expected activation codes, got {}", other.kind()),
        }
    }

    fn res(&self) -> &[i64] {
        match self {
            IVal::Res(v) => v,
            other => unreachable!("graph built by arch: expected a residual stream, got {}", other.kind()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            IVal::Empty => "nothing",
            IVal::Codes(_) => "codes",
            IVal::Res(_) => "residual",
            IVal::Acc(_) => "accumulators",
            IVal::Scores(_) => "scores",
            IVal::Probs(..) => "probabilities",
        }
    }
}

/// The golden unit (or float fallback) of one non-linear layer with its fixed inputs.
struct QLayer {
    unit: Option<Box<dyn Unit>>,
    choice: LayerUnit,
    aux: Aux,
}

/// One op of the graph prepared for integer execution: requantisers and constants fixed.
enum QNode {
    PatchEmbed {
        out: Slot,
        lin: QLinear,
        s_input: f64,
        chans: usize,
        img: usize,
        patch: usize,
        /// Output width (act_bits, or 16 when it is a residual stream).
        bits: u32,
        residual: bool,
    },
    Tokens {
        x: Slot,
        out: Slot,
        /// Residual rows of the class/distillation tokens with their position embedding.
        pre_rows: Vec<i64>,
        /// Position embedding of the patch tokens at the residual scale.
        pos: Vec<i64>,
        pe_req: Requants,
    },
    LayerNorm {
        x: Slot,
        out: Slot,
        layer: usize,
        c: usize,
        s_in: f64,
        out_scale: f64,
        ptf: Option<PtfFormat>,
    },
    Linear {
        x: Slot,
        out: Slot,
        lin: QLinear,
        /// Output width; None = keep the accumulator.
        bits: Option<u32>,
        residual: bool,
    },
    Scores {
        qkv: Slot,
        out: Slot,
        heads: usize,
        n: usize,
        d: usize,
        qk: Requants,
        /// Relative position bias at the scores' scale, `[heads, n, n]`.
        bias: Option<Vec<i64>>,
    },
    Softmax {
        x: Slot,
        out: Slot,
        layer: usize,
        s_in: f64,
        row: usize,
    },
    Context {
        p: Slot,
        qkv: Slot,
        out: Slot,
        heads: usize,
        n: usize,
        d: usize,
        s_qkv: f64,
        s_av: f64,
    },
    Gelu {
        x: Slot,
        out: Slot,
        layer: usize,
        hidden: usize,
        /// fc1 accumulator scale per channel.
        acc_scale: Vec<f64>,
        /// fc1 accumulator → GELU input scale (I-ViT and float GELU).
        fc1_req: Requants,
        s_fc1: f64,
        out_scale: f64,
        /// Whether the unit takes the accumulator (I-BERT's i-GELU).
        wants_acc: bool,
        /// Float GELU fallback as a table over the act_bits input codes (the same values as
        /// computing it per element: the output depends on the code alone).
        gelu_lut: Vec<i16>,
    },
    Add {
        x: Slot,
        y: Slot,
        /// Branch and identity requantisers.
        ra: Requants,
        rb: Requants,
    },
    ToResidual {
        x: Slot,
        out: Slot,
        req: Requants,
    },
    Gather {
        x: Slot,
        out: Slot,
        index: Vec<usize>,
        group: usize,
    },
    Head {
        x: Slot,
        d: usize,
        pool: Pool,
        head: Option<Box<QLinear>>,
        head_dist: Option<Box<QLinear>>,
        s_norm: f64,
    },
}

/// A model prepared for the integer forward: integer weights, scales and a unit per layer.
pub struct IntModel {
    /// Manifest of the float model.
    pub manifest: Manifest,
    /// Non-linear layers in execution order.
    pub layers: Vec<Layer>,
    /// The configuration it was built with.
    pub config: QuantConfig,
    /// Fingerprint of everything the nodes are built from except the units: models of one
    /// family compute the same values up to the first layer whose units differ.
    family: u64,
    nodes: Vec<QNode>,
    qlayers: Vec<QLayer>,
    slots: usize,
    free_after: Vec<Vec<Slot>>,
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
        let g = &model.graph;
        let (wb, ab) = (config.weight_bits, config.act_bits);
        let point_scale = |p: usize| scales.get(&g.points[p].name);
        let bits_of = |p: usize| if g.points[p].is_residual() { RESIDUAL_BITS } else { ab };
        // What the nodes are built from besides the units (see `family`): every float parameter
        // read, the shared integer weights by identity, the scales and the widths.
        let fp = std::cell::Cell::new(0x243F_6A88_85A3_08D3u64);
        let mix = |v: u64| fp.set((fp.get().rotate_left(23) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let prm = |id: usize| {
            let p = model.param(id);
            mix(values_hash(p));
            p
        };
        let qlin = |l: &LinearP, s_in: f64, s_out: Option<f64>| -> QLinear {
            let zeros;
            let b = match l.b {
                Some(b) => prm(b),
                None => {
                    zeros = vec![0.0f32; l.out];
                    &zeros
                }
            };
            let wt = model.wcache.get(model.param(l.w), l.out, l.inp, l.ls.map(prm), wb);
            mix(std::sync::Arc::as_ptr(&wt) as usize as u64);
            QLinear::new(wt, b, l.out, l.inp, l.ls.map(prm), wb, ab, s_in, s_out)
        };

        // Layers: the unit of each, with its fixed inputs.
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
                LayerUnit::FloatGelu | LayerUnit::Exact(_) => None,
            };
            qlayers.push(QLayer { unit, choice: choice.clone(), aux: Aux::default() });
        }

        // The scale of each slot as the ops write it (an add moves its slot to a new scale).
        let mut scale = vec![0.0f64; g.slots];
        let mut acc_scale: Vec<Vec<f64>> = vec![Vec::new(); g.slots];
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for node in &g.nodes {
            nodes.push(match node {
                Node::PatchEmbed { out, lin, chans, img, patch, input_point, point } => {
                    let s_input = point_scale(*input_point)?;
                    let s_pe = point_scale(*point)?;
                    scale[*out] = s_pe;
                    QNode::PatchEmbed {
                        out: *out,
                        lin: qlin(lin, s_input, Some(s_pe)),
                        s_input,
                        chans: *chans,
                        img: *img,
                        patch: *patch,
                        bits: bits_of(*point),
                        residual: g.points[*point].is_residual(),
                    }
                }
                Node::Tokens { x, out, pre, pos, point } => {
                    let s_pe = scale[*x];
                    let s_r0 = point_scale(*point)?;
                    let d = prm(pre[0]).len();
                    let pos = prm(*pos);
                    let (rlo, rhi) = int_range(RESIDUAL_BITS, true);
                    let q16 = |v: f64| round_half_even_f64(v / s_r0).clamp(rlo as f64, rhi as f64) as i64;
                    let mut pre_rows = Vec::with_capacity(pre.len() * d);
                    for (i, &tok) in pre.iter().enumerate() {
                        pre_rows.extend(prm(tok).iter().zip(&pos[i * d..(i + 1) * d]).map(|(&c, &p)| q16(f64::from(c) + f64::from(p))));
                    }
                    let pos_rows: Vec<i64> = pos[pre.len() * d..].iter().map(|&p| q16(f64::from(p))).collect();
                    scale[*out] = s_r0;
                    QNode::Tokens { x: *x, out: *out, pre_rows, pos: pos_rows, pe_req: per_tensor(s_pe / s_r0, d) }
                }
                Node::LayerNorm { x, out, norm, c, layer, point, .. } => {
                    let s_in = scale[*x];
                    let out_scale = point_scale(*point)?;
                    let l = &model.layers[*layer];
                    let ql = &mut qlayers[*layer];
                    ql.aux.gamma = Some(prm(norm.w).to_vec());
                    ql.aux.beta = Some(prm(norm.b).to_vec());
                    let ptf = if ql.choice.name() == "layernorm_fqvit" {
                        let p = scales.ptf.get(&l.name).ok_or_else(|| ModelError::Quant {
                            what: format!(
                                "layer {} uses layernorm_fqvit but the quant section has no PTF parameters for it (quant.ptf.{}); run `mnq calibrate`",
                                l.name, l.name
                            ),
                        })?;
                        if p.alpha.len() != *c {
                            return Err(ModelError::Quant {
                                what: format!("quant.ptf.{} has {} alpha values but the layer has {c} channels", l.name, p.alpha.len()),
                            });
                        }
                        let levels = ((1u64 << ab) - 1) as f64;
                        let scale8 = ((p.max - p.min) / levels).max(f64::from(f32::EPSILON));
                        let zp = (-round_half_even_f64(p.min / scale8)).clamp(0.0, levels) as i64;
                        let sc: Vec<f64> = p.alpha.iter().map(|&a| scale8 / 8.0 * f64::from(1u32 << a)).collect();
                        let req = Requants::new(sc.iter().map(|s| s_in / s));
                        ql.aux.zero_point = zp;
                        ql.aux.out_scale = Some(Scale::PerTensor(out_scale));
                        Some(PtfFormat { zp, sc, req })
                    } else {
                        None
                    };
                    scale[*out] = out_scale;
                    QNode::LayerNorm { x: *x, out: *out, layer: *layer, c: *c, s_in, out_scale, ptf }
                }
                Node::Linear { x, out, lin, point, keep_acc } => {
                    let s_in = scale[*x];
                    if *keep_acc {
                        let ql = qlin(lin, s_in, None);
                        acc_scale[*out] = ql.acc_scale.clone();
                        scale[*out] = point_scale(*point)?;
                        QNode::Linear { x: *x, out: *out, lin: ql, bits: None, residual: false }
                    } else {
                        let s_out = point_scale(*point)?;
                        scale[*out] = s_out;
                        QNode::Linear {
                            x: *x,
                            out: *out,
                            lin: qlin(lin, s_in, Some(s_out)),
                            bits: Some(bits_of(*point)),
                            residual: g.points[*point].is_residual(),
                        }
                    }
                }
                Node::Scores { qkv, out, heads, n, d, bias, point, .. } => {
                    let s_qkv = scale[*qkv];
                    let s_qk = point_scale(*point)?;
                    let hd = d / heads;
                    let bias = bias.as_ref().map(|b| {
                        let tab = prm(b.table);
                        let mut v = Vec::with_capacity(heads * n * n);
                        for h in 0..*heads {
                            v.extend(b.index.iter().map(|&ix| round_half_even_f64(f64::from(tab[ix * heads + h]) / s_qk) as i64));
                        }
                        v
                    });
                    scale[*out] = s_qk;
                    QNode::Scores {
                        qkv: *qkv,
                        out: *out,
                        heads: *heads,
                        n: *n,
                        d: *d,
                        qk: per_tensor(s_qkv * s_qkv * (hd as f64).powf(-0.5) / s_qk, *n),
                        bias,
                    }
                }
                Node::Softmax { x, out, layer, mask } => {
                    qlayers[*layer].aux.mask = mask.clone();
                    QNode::Softmax { x: *x, out: *out, layer: *layer, s_in: scale[*x], row: model.layers[*layer].row_len }
                }
                Node::Context { p, qkv, out, heads, n, d, point } => {
                    let s_av = point_scale(*point)?;
                    let s_qkv = scale[*qkv];
                    scale[*out] = s_av;
                    QNode::Context { p: *p, qkv: *qkv, out: *out, heads: *heads, n: *n, d: *d, s_qkv, s_av }
                }
                Node::Gelu { x, out, layer, in_point, point } => {
                    let s_fc1 = point_scale(*in_point)?;
                    let out_scale = point_scale(*point)?;
                    let acc = acc_scale[*x].clone();
                    let ql = &qlayers[*layer];
                    // I-BERT's i-GELU and the exact float64 GELU take the fc1 accumulator itself.
                    let wants_acc =
                        ql.unit.as_ref().is_some_and(|u| u.name() == "gelu_ibert") || matches!(ql.choice, LayerUnit::Exact(_));
                    let gelu_lut = match ql.choice {
                        LayerUnit::FloatGelu => {
                            let (lo, hi) = int_range(ab, true);
                            (lo..=hi).map(|q| float_gelu_code(q, s_fc1, out_scale, ab)).collect()
                        }
                        _ => Vec::new(),
                    };
                    scale[*out] = out_scale;
                    QNode::Gelu {
                        x: *x,
                        out: *out,
                        layer: *layer,
                        hidden: acc.len(),
                        fc1_req: Requants::new(acc.iter().map(|sa| sa / s_fc1)),
                        acc_scale: acc,
                        s_fc1,
                        out_scale,
                        wants_acc,
                        gelu_lut,
                    }
                }
                Node::Add { x, y, point } => {
                    let s_new = point_scale(*point)?;
                    let c = prm_width(g, *y, model);
                    let n = QNode::Add { x: *x, y: *y, ra: per_tensor(scale[*y] / s_new, c), rb: per_tensor(scale[*x] / s_new, c) };
                    scale[*x] = s_new;
                    n
                }
                Node::ToResidual { x, out, point } => {
                    let s_new = point_scale(*point)?;
                    let c = prm_width(g, *x, model);
                    scale[*out] = s_new;
                    QNode::ToResidual { x: *x, out: *out, req: per_tensor(scale[*x] / s_new, c) }
                }
                Node::Gather { x, out, kind, index } => {
                    scale[*out] = scale[*x];
                    QNode::Gather { x: *x, out: *out, index: index.clone(), group: kind.group() }
                }
                Node::Head { x, d, pool, head, head_dist } => {
                    let s_norm = scale[*x];
                    QNode::Head {
                        x: *x,
                        d: *d,
                        pool: *pool,
                        head: head.as_ref().map(|h| Box::new(qlin(h, s_norm, None))),
                        head_dist: head_dist.as_ref().map(|h| Box::new(qlin(h, s_norm, None))),
                        s_norm,
                    }
                }
            });
        }
        {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{scales:?} {wb} {ab} {:?}", config.preset).hash(&mut h);
            mix(h.finish());
        }
        Ok(IntModel {
            manifest: model.manifest.clone(),
            layers: model.layers.clone(),
            config,
            family: fp.get(),
            nodes,
            qlayers,
            slots: g.slots,
            free_after: g.free_after.clone(),
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

/// Row width of the value in slot `s`: the output width of the op that writes it.
fn prm_width(g: &Graph, s: Slot, model: &Model) -> usize {
    for n in g.nodes.iter() {
        let w = match n {
            Node::PatchEmbed { out, lin, .. } | Node::Linear { out, lin, .. } if *out == s => lin.out,
            Node::Tokens { out, pre, .. } if *out == s => model.param(pre[0]).len(),
            Node::LayerNorm { out, c, .. } if *out == s => *c,
            Node::Context { out, d, .. } if *out == s => *d,
            Node::Gather { out, x, kind, .. } if *out == s => prm_width(g, *x, model) * kind.group(),
            _ => continue,
        };
        return w;
    }
    unreachable!("slot {s} is never written")
}

/// The integer forward of one image, stopping at every non-linear layer.
pub struct IntRun<'q> {
    qm: &'q IntModel,
    pc: usize,
    taps: bool,
    image: Vec<f32>,
    vals: Vec<IVal>,
    s: Scratch,
    tap_layer: usize,
    tap_in: Vec<f64>,
    tap_fmt: super::InputFormat,
    tap_out: Vec<f64>,
    cond: Vec<(Condition, usize)>,
    logits: Vec<f64>,
    int_logits: Vec<i64>,
}

impl<'q> IntRun<'q> {
    /// Start an integer forward of `image`; `taps` = fill tap values.
    pub fn new(qm: &'q IntModel, image: &[f32], taps: bool) -> IntRun<'q> {
        assert_eq!(image.len(), qm.manifest.image_len(), "image length must match the manifest (checked by Images)");
        IntRun { taps, image: image.to_vec(), vals: vec![IVal::Empty; qm.slots], ..IntRun::new_bare(qm) }
    }

    /// A run that only executes units ([`IntModel::unit_on_float`]).
    fn new_bare(qm: &'q IntModel) -> IntRun<'q> {
        IntRun {
            qm,
            pc: 0,
            taps: false,
            image: Vec::new(),
            vals: Vec::new(),
            s: Scratch::default(),
            tap_layer: 0,
            tap_in: Vec::new(),
            tap_fmt: super::InputFormat::default(),
            tap_out: Vec::new(),
            cond: Vec::new(),
            logits: Vec::new(),
            int_logits: Vec::new(),
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

    fn input_err(&self, li: usize, e: crate::fixed::FixedError) -> ModelError {
        self.unit_err(li, units::UnitError::Input { unit: "model", source: e })
    }

    fn run_unit(&self, li: usize, x: &QTensor) -> Result<UnitOutput, ModelError> {
        let ql = &self.qm.qlayers[li];
        if let LayerUnit::Exact(op) = ql.choice {
            return units::float::exact_output(op, x, &ql.aux, self.qm.manifest.ln_eps)
                .map_err(|what| ModelError::Quant { what: format!("layer {}: {}: {what}", self.qm.layers[li].name, ql.choice.name()) });
        }
        let unit = ql.unit.as_ref().expect("integer layer has a unit");
        unit.run(x, &ql.aux, Mode::Integer).map_err(|e| self.unit_err(li, e))
    }

    /// Run node `i`; Some(layer) when it is a non-linear layer (a tap).
    fn exec(&mut self, i: usize) -> Result<Option<usize>, ModelError> {
        let qm = self.qm;
        let plain = qm.plain;
        let ab = self.ab();
        let (lo, hi) = int_range(ab, true);
        match &qm.nodes[i] {
            QNode::PatchEmbed { out, lin, s_input, chans, img, patch, bits, residual } => {
                let xq: Vec<i16> =
                    self.image.iter().map(|&v| round_half_even_f64(f64::from(v) / s_input).clamp(lo as f64, hi as f64) as i16).collect();
                let pt = patches(&xq, *chans, *img, *patch);
                let mut pe = Vec::new();
                lin.forward(&pt, pt.len() / lin.k(), *bits, plain, &mut self.s, &mut pe);
                self.vals[*out] = if *residual { IVal::Res(pe.iter().map(|&v| i64::from(v)).collect()) } else { IVal::Codes(pe) };
                Ok(None)
            }
            QNode::Tokens { x, out, pre_rows, pos, pe_req } => {
                let (rlo, rhi) = int_range(RESIDUAL_BITS, true);
                let z: Vec<i64> = self.vals[*x].codes().iter().map(|&v| i64::from(v)).collect();
                let mut r = Vec::with_capacity(z.len());
                apply(pe_req, &z, i64::MIN, i64::MAX, plain, &mut r);
                let mut xr = Vec::with_capacity(pre_rows.len() + r.len());
                xr.extend_from_slice(pre_rows);
                xr.extend(r.iter().zip(pos).map(|(&v, &p)| (v + p).clamp(rlo, rhi)));
                self.vals[*out] = IVal::Res(xr);
                Ok(None)
            }
            QNode::LayerNorm { x, out, layer, c, s_in, out_scale, ptf } => {
                let li = *layer;
                let d = *c;
                let xs = self.vals[*x].res();
                let t = xs.len() / d;
                let mut h = Vec::new();
                let out_v = match ptf {
                    None => {
                        let xt = QTensor::new(xs.to_vec(), &[t, d], Scale::PerTensor(*s_in), RESIDUAL_BITS, true)
                            .map_err(|e| self.input_err(li, e))?;
                        if self.taps {
                            self.tap_in = xt.dequantize();
                            self.tap_fmt = super::InputFormat { bits: RESIDUAL_BITS, signed: true, zero_point: 0, scales: vec![*s_in] };
                        }
                        let o = self.run_unit(li, &xt)?;
                        requant_to(&o.values, &from_scale(&o.scale, d, *out_scale), ab, plain, &mut self.s.i64b, &mut h);
                        o
                    }
                    Some(p) => {
                        let top = (1i64 << ab) - 1;
                        let mut q = Vec::with_capacity(xs.len());
                        apply(&p.req, xs, i64::MIN / 2, i64::MAX / 2, plain, &mut q);
                        q.iter_mut().for_each(|v| *v = (*v + p.zp).clamp(0, top));
                        if self.taps {
                            self.tap_in = q.iter().enumerate().map(|(i, &v)| (v - p.zp) as f64 * p.sc[i % d]).collect();
                            self.tap_fmt = super::InputFormat { bits: ab, signed: false, zero_point: p.zp, scales: p.sc.clone() };
                        }
                        let xt = QTensor::new(q, &[t, d], Scale::PerChannel(p.sc.clone()), ab, false).map_err(|e| self.input_err(li, e))?;
                        let o = self.run_unit(li, &xt)?;
                        h.extend(o.values.iter().map(|&v| v.clamp(lo, hi) as i16));
                        o
                    }
                };
                if self.taps {
                    self.tap_out = out_v.dequantize();
                }
                self.cond = out_v.conditions;
                self.vals[*out] = IVal::Codes(h);
                Ok(Some(li))
            }
            QNode::Linear { x, out, lin, bits, residual } => {
                let xs = self.vals[*x].codes();
                let rows = xs.len() / lin.k();
                self.vals[*out] = match bits {
                    None => {
                        let mut acc = Vec::new();
                        lin.acc(xs, rows, plain, &mut self.s, &mut acc);
                        IVal::Acc(acc)
                    }
                    Some(b) => {
                        let mut o = Vec::new();
                        lin.forward(xs, rows, *b, plain, &mut self.s, &mut o);
                        if *residual {
                            IVal::Res(o.iter().map(|&v| i64::from(v)).collect())
                        } else {
                            IVal::Codes(o)
                        }
                    }
                };
                Ok(None)
            }
            QNode::Scores { qkv, out, heads, n, d, qk, bias, .. } => {
                let (nh, n, d) = (*heads, *n, *d);
                let hd = d / nh;
                let qkv = self.vals[*qkv].codes();
                let t = qkv.len() / (3 * d);
                let mut scores = Vec::with_capacity(nh * t * n);
                let mut qh = vec![0i16; n * hd];
                let mut kh = vec![0i16; n * hd];
                let mut acc = vec![0i32; n * n];
                let mut acc64 = Vec::with_capacity(n * n);
                let mut tmp = Vec::with_capacity(n * n);
                // act_bits ≤ 8 and head_dim ≤ 2^15: the i32 kernel is exact (checked at build time of the model).
                assert!(gemm::gemm_fits_i32(hd, 1 << (ab - 1), 1 << (ab - 1)), "head_dim too large for the i32 score kernel");
                let use_u8 = gemm::has_u8_kernel();
                for g in 0..t / n {
                    for h in 0..nh {
                        for i in 0..n {
                            let row = (g * n + i) * 3 * d;
                            qh[i * hd..(i + 1) * hd].copy_from_slice(&qkv[row + h * hd..][..hd]);
                            kh[i * hd..(i + 1) * hd].copy_from_slice(&qkv[row + d + h * hd..][..hd]);
                        }
                        acc64.clear();
                        // The bias joins at the scores' scale; the sum is clamped to act_bits.
                        let (slo, shi) = if bias.is_some() { (i64::MIN / 2, i64::MAX / 2) } else { (lo, hi) };
                        let dst = if bias.is_some() {
                            tmp.clear();
                            &mut tmp
                        } else {
                            &mut scores
                        };
                        if plain {
                            acc64.resize(n * n, 0);
                            gemm::gemm_i16_wide(&qh, n, &kh, n, &mut acc64);
                            apply(qk, &acc64, slo, shi, plain, dst);
                        } else {
                            let done = use_u8
                                && gemm::Packed8::new(&kh, n, hd)
                                    .is_some_and(|pk| gemm::gemm_i8(&qh, n, 128, &pk, &mut self.s.u8, &mut acc));
                            if !done {
                                gemm::gemm_i16(&qh, n, &gemm::Packed::new(&kh, n, hd), &mut acc);
                            }
                            qk.apply_acc(&acc, None, slo, shi, dst);
                        }
                        if let Some(b) = bias {
                            let bh = &b[h * n * n..(h + 1) * n * n];
                            scores.extend(tmp.iter().zip(bh).map(|(&v, &bb)| (v + bb).clamp(lo, hi)));
                        }
                    }
                }
                self.vals[*out] = IVal::Scores(scores);
                Ok(None)
            }
            QNode::Softmax { x, out, layer, s_in, row } => {
                let li = *layer;
                let xs = match &self.vals[*x] {
                    IVal::Scores(v) => v.clone(),
                    other => unreachable!("scores expected, got {}", other.kind()),
                };
                let rows = xs.len() / row;
                let xt = QTensor::new(xs, &[rows, *row], Scale::PerTensor(*s_in), ab, true).map_err(|e| self.input_err(li, e))?;
                if self.taps {
                    self.tap_in = xt.dequantize();
                    self.tap_fmt = super::InputFormat { bits: ab, signed: true, zero_point: 0, scales: vec![*s_in] };
                }
                let o = self.run_unit(li, &xt)?;
                if self.taps {
                    self.tap_out = o.dequantize();
                }
                let probs: Vec<i32> = o.values.iter().map(|&v| v as i32).collect();
                let fmt = match o.encoding {
                    Encoding::Linear => Probs::Linear(o.scale.at(0)),
                    Encoding::Log2 { bits } => Probs::Log2(((1u32 << bits) - 1).min(40)),
                };
                self.cond = o.conditions;
                self.vals[*out] = IVal::Probs(probs, fmt);
                Ok(Some(li))
            }
            QNode::Context { p, qkv, out, heads, n, d, s_qkv, s_av } => {
                let (nh, n, d) = (*heads, *n, *d);
                let hd = d / nh;
                let (probs, fmt) = match &self.vals[*p] {
                    IVal::Probs(v, f) => (v, *f),
                    other => unreachable!("probabilities expected, got {}", other.kind()),
                };
                let qkv = self.vals[*qkv].codes();
                let t = qkv.len() / (3 * d);
                let vmax = 1i64 << (ab - 1);
                let mut ctx = vec![0i64; t * d];
                let s_ctx = match fmt {
                    Probs::Linear(sp) => {
                        let pmax = probs.iter().copied().max().unwrap_or(0).max(0);
                        if !plain && pmax <= i32::from(i16::MAX) && gemm::av_fits_i32(n, i64::from(pmax), vmax) {
                            // Probabilities fit i16 and every sum fits i32: the packed GEMM with Vᵀ as weights.
                            let p16: Vec<i16> = probs.iter().map(|&v| v as i16).collect();
                            let mut vt = vec![0i16; hd * n];
                            let mut o = vec![0i32; n * hd];
                            for g in 0..t / n {
                                for h in 0..nh {
                                    for u in 0..n {
                                        for j in 0..hd {
                                            vt[j * n + u] = qkv[(g * n + u) * 3 * d + 2 * d + h * hd + j];
                                        }
                                    }
                                    let pb = ((g * nh + h) * n) * n;
                                    // Probabilities up to 255 are bytes: the u8 × i8 kernel, no offset.
                                    let done = pmax <= 255
                                        && gemm::has_u8_kernel()
                                        && gemm::Packed8::new(&vt, hd, n)
                                            .is_some_and(|pv| gemm::gemm_i8(&p16[pb..pb + n * n], n, 0, &pv, &mut self.s.u8, &mut o));
                                    if !done {
                                        gemm::gemm_i16(&p16[pb..pb + n * n], n, &gemm::Packed::new(&vt, hd, n), &mut o);
                                    }
                                    for i in 0..n {
                                        for j in 0..hd {
                                            ctx[(g * n + i) * d + h * hd + j] = i64::from(o[i * hd + j]);
                                        }
                                    }
                                }
                            }
                        } else {
                            for g in 0..t / n {
                                for h in 0..nh {
                                    let pb = ((g * nh + h) * n) * n;
                                    gemm::attn_v(
                                        &probs[pb..pb + n * n],
                                        n,
                                        &qkv[g * n * 3 * d..],
                                        3 * d,
                                        2 * d + h * hd,
                                        hd,
                                        &mut ctx[g * n * d..],
                                        d,
                                        h * hd,
                                    );
                                }
                            }
                        }
                        sp * s_qkv
                    }
                    Probs::Log2(top) => {
                        if !plain && top < 31 && gemm::av_fits_i32(n, 1i64 << top, vmax) {
                            let mut c32 = vec![0i32; t * d];
                            for g in 0..t / n {
                                for h in 0..nh {
                                    let pb = ((g * nh + h) * n) * n;
                                    gemm::attn_v_log2(
                                        &probs[pb..pb + n * n],
                                        n,
                                        top,
                                        &qkv[g * n * 3 * d..],
                                        3 * d,
                                        2 * d + h * hd,
                                        hd,
                                        &mut c32[g * n * d..],
                                        d,
                                        h * hd,
                                    );
                                }
                            }
                            ctx.iter_mut().zip(&c32).for_each(|(o, &x)| *o = i64::from(x));
                        } else {
                            for g in 0..t / n {
                                for h in 0..nh {
                                    let pb = ((g * nh + h) * n) * n;
                                    gemm::attn_v_log2(
                                        &probs[pb..pb + n * n],
                                        n,
                                        top,
                                        &qkv[g * n * 3 * d..],
                                        3 * d,
                                        2 * d + h * hd,
                                        hd,
                                        &mut ctx[g * n * d..],
                                        d,
                                        h * hd,
                                    );
                                }
                            }
                        }
                        s_qkv * 2f64.powi(-(top as i32))
                    }
                };
                let mut c16 = Vec::with_capacity(t * d);
                requant_to(&ctx, &per_tensor(s_ctx / s_av, d), ab, plain, &mut self.s.i64b, &mut c16);
                self.vals[*out] = IVal::Codes(c16);
                Ok(None)
            }
            QNode::Gelu { x, out, layer, hidden, acc_scale, fc1_req, s_fc1, out_scale, wants_acc, gelu_lut } => {
                let li = *layer;
                let hh = *hidden;
                let acc = match &self.vals[*x] {
                    IVal::Acc(v) => v,
                    other => unreachable!("fc1 accumulators expected, got {}", other.kind()),
                };
                let t = acc.len() / hh;
                let mut act = Vec::new();
                if *wants_acc {
                    // I-BERT feeds i-GELU the fc1 accumulator with its per-channel scale.
                    let wmax = acc.iter().map(|&v| signed_width(i128::from(v))).max().unwrap_or(2).max(2);
                    let xt = QTensor::new(acc.clone(), &[t, hh], Scale::PerChannel(acc_scale.clone()), wmax, true)
                        .map_err(|e| self.input_err(li, e))?;
                    if self.taps {
                        self.tap_in = xt.dequantize();
                        self.tap_fmt = super::InputFormat { bits: wmax, signed: true, zero_point: 0, scales: acc_scale.clone() };
                    }
                    let o = self.run_unit(li, &xt)?;
                    requant_to(&o.values, &from_scale(&o.scale, hh, *out_scale), ab, plain, &mut self.s.i64b, &mut act);
                    if self.taps {
                        self.tap_out = o.dequantize();
                    }
                    self.cond = o.conditions;
                } else {
                    let mut g = Vec::with_capacity(acc.len());
                    apply(fc1_req, acc, lo, hi, plain, &mut g);
                    if self.taps {
                        self.tap_in = g.iter().map(|&v| v as f64 * s_fc1).collect();
                        self.tap_fmt = super::InputFormat { bits: ab, signed: true, zero_point: 0, scales: vec![*s_fc1] };
                    }
                    if self.qm.qlayers[li].unit.is_some() {
                        let xt = QTensor::new(g, &[t, hh], Scale::PerTensor(*s_fc1), ab, true).map_err(|e| self.input_err(li, e))?;
                        let o = self.run_unit(li, &xt)?;
                        requant_to(&o.values, &from_scale(&o.scale, hh, *out_scale), ab, plain, &mut self.s.i64b, &mut act);
                        if self.taps {
                            self.tap_out = o.dequantize();
                        }
                        self.cond = o.conditions;
                    } else {
                        // FQ-ViT's float GELU on the dequantised input (not an integer unit).
                        let so = *out_scale;
                        if plain {
                            act.extend(g.iter().map(|&v| float_gelu_code(v, *s_fc1, so, ab)));
                        } else {
                            act.extend(g.iter().map(|&v| gelu_lut[(v - lo) as usize]));
                        }
                        if self.taps {
                            self.tap_out = act.iter().map(|&v| f64::from(v) * so).collect();
                        }
                        self.cond = Vec::new();
                    }
                }
                self.vals[*out] = IVal::Codes(act);
                Ok(Some(li))
            }
            QNode::Add { x, y, ra, rb } => {
                // x = clamp16(RNE(branch·m_a/2^e_a) + RNE(x·m_b/2^e_b)) (I-ViT QuantAct with identity).
                let (rlo, rhi) = int_range(RESIDUAL_BITS, true);
                let z: Vec<i64> = self.vals[*y].codes().iter().map(|&v| i64::from(v)).collect();
                let mut a = Vec::with_capacity(z.len());
                apply(ra, &z, i64::MIN / 2, i64::MAX / 2, plain, &mut a);
                let mut xv = match std::mem::take(&mut self.vals[*x]) {
                    IVal::Res(v) => v,
                    other => unreachable!("residual expected, got {}", other.kind()),
                };
                let mut bb = Vec::with_capacity(xv.len());
                apply(rb, &xv, i64::MIN / 2, i64::MAX / 2, plain, &mut bb);
                for ((x, &u), &v) in xv.iter_mut().zip(&a).zip(&bb) {
                    *x = (u + v).clamp(rlo, rhi);
                }
                self.vals[*x] = IVal::Res(xv);
                Ok(None)
            }
            QNode::ToResidual { x, out, req } => {
                let (rlo, rhi) = int_range(RESIDUAL_BITS, true);
                let z: Vec<i64> = self.vals[*x].codes().iter().map(|&v| i64::from(v)).collect();
                let mut r = Vec::with_capacity(z.len());
                apply(req, &z, rlo, rhi, plain, &mut r);
                self.vals[*out] = IVal::Res(r);
                Ok(None)
            }
            QNode::Gather { x, out, index, group } => {
                self.vals[*out] = match &self.vals[*x] {
                    IVal::Codes(v) => {
                        let mut o = Vec::new();
                        gather(v, index, *group, &mut o);
                        IVal::Codes(o)
                    }
                    IVal::Res(v) => {
                        let mut o = Vec::new();
                        gather(v, index, *group, &mut o);
                        IVal::Res(o)
                    }
                    other => unreachable!("tokens expected, got {}", other.kind()),
                };
                Ok(None)
            }
            QNode::Head { x, d, pool, head, head_dist, s_norm } => {
                let d = *d;
                let h = self.vals[*x].codes();
                let mut ints = Vec::new();
                let mut logits = |lin: &QLinear, row: &[i16], s: &mut Scratch| -> Vec<f64> {
                    let mut acc = Vec::new();
                    lin.acc(row, 1, plain, s, &mut acc);
                    ints.extend_from_slice(&acc);
                    acc.iter().zip(&lin.acc_scale).map(|(&a, &sc)| a as f64 * sc).collect()
                };
                let pooled: Vec<i16>;
                let feats: &[i16] = match pool {
                    Pool::Mean => {
                        pooled = mean_tokens(h, d);
                        &pooled
                    }
                    _ => &h[..d],
                };
                let mut s = std::mem::take(&mut self.s);
                self.logits = match (head, head_dist, pool) {
                    (None, _, _) => feats.iter().map(|&v| f64::from(v) * s_norm).collect(),
                    (Some(hl), Some(hd), Pool::Distilled) => {
                        let a = logits(hl, &h[..d], &mut s);
                        let b = logits(hd, &h[d..2 * d], &mut s);
                        a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect()
                    }
                    (Some(hl), _, _) => logits(hl, feats, &mut s),
                };
                if head.is_none() {
                    ints.extend(feats.iter().map(|&v| i64::from(v)));
                }
                self.int_logits = ints;
                self.s = s;
                Ok(None)
            }
        }
    }

    /// Run the next node; Some(layer) when it was a non-linear layer.
    fn step(&mut self) -> Result<Option<usize>, ModelError> {
        let qm = self.qm;
        let i = self.pc;
        let tapped = self.exec(i)?;
        for &s in &qm.free_after[i] {
            self.vals[s] = IVal::Empty;
        }
        self.pc += 1;
        Ok(tapped)
    }

    /// The same state continued by `qm`, a model of the same family whose units agree with
    /// this run's model on every layer already run.
    fn fork(&self, qm: &'q IntModel) -> IntRun<'q> {
        debug_assert_eq!(qm.family, self.qm.family);
        IntRun {
            pc: self.pc,
            image: if self.pc == 0 { self.image.clone() } else { Vec::new() },
            vals: self.vals.clone(),
            logits: self.logits.clone(),
            int_logits: self.int_logits.clone(),
            ..IntRun::new_bare(qm)
        }
    }

    /// Run to the next non-linear layer and show its input and output; None when done.
    pub fn next_tap(&mut self) -> Result<Option<Tap<'_>>, ModelError> {
        let qm = self.qm;
        while self.pc < qm.nodes.len() {
            if let Some(li) = self.step()? {
                self.tap_layer = li;
                return Ok(Some(Tap {
                    layer: &qm.layers[li],
                    input: &self.tap_in,
                    output: &self.tap_out,
                    conditions: &self.cond,
                    format: Some(&self.tap_fmt),
                }));
            }
        }
        Ok(None)
    }

    /// Run to the end and return the logits.
    pub fn finish(mut self) -> Result<Output, ModelError> {
        while self.next_tap()?.is_some() {}
        Ok(Output { logits: std::mem::take(&mut self.logits), int_logits: std::mem::take(&mut self.int_logits) })
    }
}

/// Integer forwards of one image through several models, each shared prefix computed once.
///
/// Models of one family (built from the same [`Model`], scales, widths and preset) compute
/// the same values up to the node of the first layer whose units differ, so the runs are a
/// tree: one run until the models' units part, then one branch per distinct unit, forked from
/// the state there. Attribution variants (one layer exact each) and the assignments `mnq run`
/// evaluates mostly share long prefixes. Models of other families, or with other kernels, run
/// on their own. The outputs equal `qm.forward(image, None)` of each model, bit for bit.
pub fn forward_shared(qms: &[&IntModel], image: &[f32]) -> Result<Vec<Output>, ModelError> {
    let mut out: Vec<Option<Output>> = vec![None; qms.len()];
    let mut families: Vec<Vec<usize>> = Vec::new();
    for (k, qm) in qms.iter().enumerate() {
        let same = |g: &Vec<usize>| qms[g[0]].family == qm.family && qms[g[0]].plain == qm.plain;
        match families.iter_mut().find(|g| same(g)) {
            Some(g) => g.push(k),
            None => families.push(vec![k]),
        }
    }
    for g in families {
        let run = IntRun::new(qms[g[0]], image, false);
        shared_branch(qms, g, run, &mut out)?;
    }
    Ok(out.into_iter().map(|o| o.expect("every model runs")).collect())
}

/// Continue `run` for the models `group` (whose units agree on every layer run so far).
fn shared_branch<'q>(qms: &[&'q IntModel], group: Vec<usize>, mut run: IntRun<'q>, out: &mut [Option<Output>]) -> Result<(), ModelError> {
    let nodes = run.qm.nodes.len();
    while run.pc < nodes {
        if group.len() > 1 {
            if let Some(li) = run.qm.nodes[run.pc].layer() {
                let mut parts: Vec<Vec<usize>> = Vec::new();
                for &k in &group {
                    let unit = &qms[k].qlayers[li].choice;
                    match parts.iter_mut().find(|p| &qms[p[0]].qlayers[li].choice == unit) {
                        Some(p) => p.push(k),
                        None => parts.push(vec![k]),
                    }
                }
                if parts.len() > 1 {
                    let last = parts.pop().expect("two parts or more");
                    for p in parts {
                        let fork = run.fork(qms[p[0]]);
                        shared_branch(qms, p, fork, out)?;
                    }
                    let fork = run.fork(qms[last[0]]);
                    drop(run);
                    return shared_branch(qms, last, fork, out);
                }
            }
        }
        run.step()?;
    }
    let o = Output { logits: std::mem::take(&mut run.logits), int_logits: std::mem::take(&mut run.int_logits) };
    for &k in &group {
        out[k] = Some(o.clone());
    }
    Ok(())
}

impl QNode {
    /// The non-linear layer this node computes, if it is one.
    fn layer(&self) -> Option<usize> {
        match self {
            QNode::LayerNorm { layer, .. } | QNode::Softmax { layer, .. } | QNode::Gelu { layer, .. } => Some(*layer),
            _ => None,
        }
    }
}

/// The integer mean over tokens of `[T, d]` codes, `RNE(Σ_t q / T)` per channel (round half to
/// even of the exact quotient), at the codes' own scale.
fn mean_tokens(h: &[i16], d: usize) -> Vec<i16> {
    let t = (h.len() / d) as i64;
    let mut s = vec![0i64; d];
    for row in h.chunks_exact(d) {
        for (a, &v) in s.iter_mut().zip(row) {
            *a += i64::from(v);
        }
    }
    s.iter().map(|&v| crate::fixed::div_round(i128::from(v), i128::from(t), crate::fixed::Rounding::HalfEven) as i16).collect()
}

impl IntModel {
    /// Layer `li`'s unit on a float input (the reverse split of the attribution: float linear
    /// layers around the integer units). The input is quantised to the format the integer
    /// forward feeds that unit (the calibrated input scale, the fc1 accumulator scale for
    /// I-BERT's GELU, the PTF channel scales and zero point for FQ-ViT's LayerNorm), the unit
    /// runs in Integer mode, and its output is dequantised at the unit's own output scale
    /// (no requantisation to act_bits: that belongs to the next linear layer).
    pub fn unit_on_float(&self, li: usize, x: &[f64]) -> Result<Vec<f64>, ModelError> {
        let run = IntRun::new_bare(self);
        let ab = self.config.act_bits;
        let (lo, hi) = int_range(ab, true);
        let rne = |v: f64, s: f64| round_half_even_f64(v / s);
        let clamp_codes = |s: f64, bits: u32| -> Vec<i64> {
            let (l, h) = int_range(bits, true);
            x.iter().map(|&v| rne(v, s).clamp(l as f64, h as f64) as i64).collect()
        };
        let node = self
            .nodes
            .iter()
            .find(|n| match n {
                QNode::Softmax { layer, .. } | QNode::LayerNorm { layer, .. } | QNode::Gelu { layer, .. } => *layer == li,
                _ => false,
            })
            .unwrap_or_else(|| unreachable!("every non-linear layer has a node"));
        let out = match node {
            QNode::Softmax { s_in, row, .. } => {
                let xt = QTensor::new(clamp_codes(*s_in, ab), &[x.len() / row, *row], Scale::PerTensor(*s_in), ab, true)
                    .map_err(|e| run.input_err(li, e))?;
                run.run_unit(li, &xt)?
            }
            QNode::LayerNorm { c, s_in, ptf, .. } => {
                let d = *c;
                let xt = match ptf {
                    None => {
                        QTensor::new(clamp_codes(*s_in, RESIDUAL_BITS), &[x.len() / d, d], Scale::PerTensor(*s_in), RESIDUAL_BITS, true)
                    }
                    Some(p) => {
                        let top = (1i64 << ab) - 1;
                        let q = x.iter().enumerate().map(|(i, &v)| (rne(v, p.sc[i % d]) as i64 + p.zp).clamp(0, top)).collect();
                        QTensor::new(q, &[x.len() / d, d], Scale::PerChannel(p.sc.clone()), ab, false)
                    }
                }
                .map_err(|e| run.input_err(li, e))?;
                run.run_unit(li, &xt)?
            }
            QNode::Gelu { hidden, acc_scale, s_fc1, out_scale, wants_acc, .. } => {
                let hh = *hidden;
                let shape = [x.len() / hh, hh];
                if *wants_acc {
                    let acc: Vec<i64> = x.iter().enumerate().map(|(i, &v)| rne(v, acc_scale[i % hh]) as i64).collect();
                    let w = acc.iter().map(|&v| signed_width(i128::from(v))).max().unwrap_or(2).max(2);
                    let xt = QTensor::new(acc, &shape, Scale::PerChannel(acc_scale.clone()), w, true).map_err(|e| run.input_err(li, e))?;
                    run.run_unit(li, &xt)?
                } else if self.qlayers[li].unit.is_some() {
                    let xt = QTensor::new(clamp_codes(*s_fc1, ab), &shape, Scale::PerTensor(*s_fc1), ab, true)
                        .map_err(|e| run.input_err(li, e))?;
                    run.run_unit(li, &xt)?
                } else {
                    // FQ-ViT's float GELU on the quantised input, as the integer forward computes it.
                    return Ok(x
                        .iter()
                        .map(|&v| {
                            f64::from(float_gelu_code(rne(v, *s_fc1).clamp(lo as f64, hi as f64) as i64, *s_fc1, *out_scale, ab))
                                * out_scale
                        })
                        .collect());
                }
            }
            _ => unreachable!("matched non-linear nodes only"),
        };
        Ok(out.dequantize())
    }
}
