//! One layer graph for every architecture: a list of typed ops over value slots, built from the
//! manifest by one builder per architecture (`model::arch`), and run by two executors — the
//! float forward (`model::float`, f32/f64) and the integer forward (`model::quant`, HAWQ-V3
//! dyadic arithmetic with a golden unit per non-linear layer). Taps, calibration, sensitivity
//! and `mnq run` read the graph (its non-linear [`Layer`]s and quantisation [`QPoint`]s), never
//! architecture names.
//!
//! A value slot holds a row-major matrix `[rows, cols]` of tokens. The executors give every op
//! the same meaning:
//! * [`Node::PatchEmbed`]: non-overlapping `P×P` patches of the `[C, S, S]` image (row-major over
//!   the patch grid), times the patch projection. Integer: the image is quantised at the
//!   `input` point first.
//! * [`Node::Tokens`]: class (and distillation) tokens prepended, position embedding added: the
//!   16-bit residual stream (integer: embeddings are offline constants at the residual scale).
//! * [`Node::LayerNorm`], [`Node::Softmax`], [`Node::Gelu`]: the non-linear layers (taps).
//! * [`Node::Linear`]: `x·Wᵀ + b` (LayerScale folded into the integer weights).
//! * [`Node::Scores`]: per group of `n` consecutive tokens (a window; one group of all tokens in
//!   ViT) and head, `q·head_dim^−½·kᵀ`, plus a relative position bias (Swin; integer: added at
//!   the scores' scale) and, in the float forward, the additive −100 mask of shifted windows.
//!   Layout `[groups, heads, n, n]`.
//! * [`Node::Context`]: probabilities times V per group and head, back to `[tokens, D]`.
//! * [`Node::Add`]: the residual add (integer: I-ViT's QuantAct with identity, 16 bits).
//! * [`Node::ToResidual`]: an activation requantised into a 16-bit residual stream.
//! * [`Node::Gather`]: a token permutation or regrouping (cyclic roll, window partition and
//!   reverse, Swin's 2×2 patch merging concat): exact in both executors.
//! * [`Node::Head`]: class token(s) or the mean over tokens, then the classifier(s).

use super::manifest::Manifest;
use super::Layer;
use crate::units::Op;
use std::sync::Arc;

/// Index of a value slot.
pub type Slot = usize;

/// Index of a parameter tensor in [`Graph::params`].
pub type ParamId = usize;

/// Index of a quantisation point in [`Graph::points`].
pub type PointId = usize;

/// A tensor the graph reads from `model.safetensors`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// timm tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Which manifest fields require it (for error messages).
    pub why: String,
}

impl ParamSpec {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the integer forward stores at a quantisation point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    /// An activation at the activation width (per-tensor symmetric).
    Act,
    /// A 16-bit residual stream (its scale does not follow the activation width).
    Residual,
}

/// A quantisation point: where the integer forward needs an activation scale.
#[derive(Debug, Clone, PartialEq)]
pub struct QPoint {
    /// Name in the manifest's `quant.act_scales`.
    pub name: String,
    /// Width class.
    pub kind: PointKind,
}

impl QPoint {
    /// Whether the point is a 16-bit residual.
    pub fn is_residual(&self) -> bool {
        self.kind == PointKind::Residual
    }
}

/// A linear layer's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearP {
    /// Weights `[out, in]`.
    pub w: ParamId,
    /// Bias `[out]` (None: no bias, e.g. Swin's patch-merging reduction).
    pub b: Option<ParamId>,
    /// LayerScale gamma `[out]` applied to the output.
    pub ls: Option<ParamId>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

/// LayerNorm affine parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct NormP {
    /// Weight (gamma) `[C]`.
    pub w: ParamId,
    /// Bias (beta) `[C]`.
    pub b: ParamId,
}

/// The token permutations and regroupings of [`Node::Gather`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatherKind {
    /// Cyclic shift of the `h×w` token grid by `(−shift, −shift)` (timm `torch.roll`), then the
    /// partition into `window×window` windows, windows row-major, tokens row-major inside.
    ShiftPartition {
        /// Grid side.
        grid: usize,
        /// Window side.
        window: usize,
        /// Shift (0: plain window partition).
        shift: usize,
    },
    /// The inverse of `ShiftPartition` (window reverse, then the roll back by `+shift`).
    ReverseShift {
        /// Grid side.
        grid: usize,
        /// Window side.
        window: usize,
        /// Shift.
        shift: usize,
    },
    /// Swin patch merging: each 2×2 neighbourhood of the `grid×grid` tokens becomes one row of
    /// 4C values in timm's order `x(2i,2j), x(2i+1,2j), x(2i,2j+1), x(2i+1,2j+1)`.
    PatchMerge {
        /// Grid side before merging.
        grid: usize,
    },
}

impl GatherKind {
    /// Input rows per output row (4 for patch merging, else 1).
    pub fn group(&self) -> usize {
        match self {
            GatherKind::PatchMerge { .. } => 4,
            _ => 1,
        }
    }

    /// Input row of each output position: output row `r` is the concatenation of input rows
    /// `index[r·group .. (r+1)·group]`.
    pub fn index(&self) -> Vec<usize> {
        match *self {
            GatherKind::ShiftPartition { grid, window, shift } => shift_partition(grid, window, shift),
            GatherKind::ReverseShift { grid, window, shift } => {
                let fwd = shift_partition(grid, window, shift);
                let mut inv = vec![0; fwd.len()];
                for (pos, &src) in fwd.iter().enumerate() {
                    inv[src] = pos;
                }
                inv
            }
            GatherKind::PatchMerge { grid } => {
                let g2 = grid / 2;
                let mut v = Vec::with_capacity(grid * grid);
                for i in 0..g2 {
                    for j in 0..g2 {
                        for (di, dj) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            v.push((2 * i + di) * grid + 2 * j + dj);
                        }
                    }
                }
                v
            }
        }
    }

    /// Short description for reports and the op-list drawing.
    pub fn describe(&self) -> String {
        match self {
            GatherKind::ShiftPartition { window, shift: 0, .. } => format!("window partition {window}x{window}"),
            GatherKind::ShiftPartition { window, shift, .. } => format!("roll -{shift}, window partition {window}x{window}"),
            GatherKind::ReverseShift { window, shift: 0, .. } => format!("window reverse {window}x{window}"),
            GatherKind::ReverseShift { window, shift, .. } => format!("window reverse {window}x{window}, roll +{shift}"),
            GatherKind::PatchMerge { .. } => "patch merge 2x2 concat".into(),
        }
    }
}

/// Token order after rolling the grid by `(−shift, −shift)` and partitioning into windows:
/// position `p` of the result holds grid token `index[p]`.
fn shift_partition(grid: usize, window: usize, shift: usize) -> Vec<usize> {
    let nw = grid / window;
    let mut v = Vec::with_capacity(grid * grid);
    for wi in 0..nw {
        for wj in 0..nw {
            for a in 0..window {
                for b in 0..window {
                    // Rolled grid position (wi·window + a, wj·window + b) holds original token
                    // ((r + shift) mod grid, (c + shift) mod grid) (torch.roll by −shift).
                    let r = (wi * window + a + shift) % grid;
                    let c = (wj * window + b + shift) % grid;
                    v.push(r * grid + c);
                }
            }
        }
    }
    v
}

/// Swin's relative position bias of one block: `bias[h][i][j] = table[index[i][j]][h]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RelBias {
    /// The table `[(2w−1)², heads]`.
    pub table: ParamId,
    /// timm's `relative_position_index` `[n, n]` (row-major), n = w².
    pub index: Vec<usize>,
}

impl RelBias {
    /// timm's `get_relative_position_index(w, w)`.
    pub fn for_window(table: ParamId, w: usize) -> RelBias {
        let n = w * w;
        let mut index = Vec::with_capacity(n * n);
        for i in 0..n {
            for j in 0..n {
                let (ri, ci) = (i / w, i % w);
                let (rj, cj) = (j / w, j % w);
                let dr = ri + w - 1 - rj;
                let dc = ci + w - 1 - cj;
                index.push(dr * (2 * w - 1) + dc);
            }
        }
        RelBias { table, index }
    }
}

/// The shifted-window attention mask of one block: for each window, which key each query
/// may not see (tokens from different regions of the rolled grid).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowMask {
    /// `[windows, n, n]`, `true` = masked.
    pub masked: Arc<[bool]>,
    /// Tokens per window.
    pub n: usize,
}

impl WindowMask {
    /// timm's `get_attn_mask` for a `grid×grid` token grid, windows of `window`, shift `shift > 0`.
    pub fn shifted(grid: usize, window: usize, shift: usize) -> WindowMask {
        let region = |p: usize| -> usize {
            if p < grid - window {
                0
            } else if p < grid - shift {
                1
            } else {
                2
            }
        };
        let mut label = vec![0usize; grid * grid];
        for r in 0..grid {
            for c in 0..grid {
                label[r * grid + c] = 3 * region(r) + region(c);
            }
        }
        // Labels are taken on the rolled grid: partition it without a shift.
        let order = shift_partition(grid, window, 0);
        let n = window * window;
        let mut masked = Vec::with_capacity(order.len() * n);
        for win in order.chunks_exact(n) {
            for &i in win {
                for &j in win {
                    masked.push(label[i] != label[j]);
                }
            }
        }
        WindowMask { masked: masked.into(), n }
    }

    /// Number of windows.
    pub fn windows(&self) -> usize {
        self.masked.len() / (self.n * self.n)
    }

    /// The mask expanded to the scores' layout `[windows, heads, n, n]`.
    pub fn expand(&self, heads: usize) -> Arc<[bool]> {
        let nn = self.n * self.n;
        let mut v = Vec::with_capacity(self.masked.len() * heads);
        for w in self.masked.chunks_exact(nn) {
            for _ in 0..heads {
                v.extend_from_slice(w);
            }
        }
        v.into()
    }
}

/// How the head reads the final tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The class token (ViT).
    ClassToken,
    /// Class and distillation tokens through their two heads, averaged (DeiT); without heads
    /// the class token.
    Distilled,
    /// The mean over all tokens (Swin; integer: `RNE(Σ q / T)` at the norm's scale).
    Mean,
}

/// One op of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Image → patch projection `[patches, D]`.
    PatchEmbed {
        /// Output slot.
        out: Slot,
        /// The projection as a linear layer on flattened `[C, P, P]` patches.
        lin: LinearP,
        /// Input channels.
        chans: usize,
        /// Image side.
        img: usize,
        /// Patch side.
        patch: usize,
        /// Quantisation point of the normalised image.
        input_point: PointId,
        /// Quantisation point of the projection output.
        point: PointId,
    },
    /// Prepend class/distillation tokens and add the position embedding: the residual stream.
    Tokens {
        /// Input slot (patch projections).
        x: Slot,
        /// Output slot (residual).
        out: Slot,
        /// Tokens prepended, each `[1, 1, D]`.
        pre: Vec<ParamId>,
        /// Position embedding `[1, T, D]`.
        pos: ParamId,
        /// Residual point.
        point: PointId,
    },
    /// A LayerNorm layer over rows of `c` (a tap).
    LayerNorm {
        /// Input slot (a residual stream in the integer forward).
        x: Slot,
        /// Output slot.
        out: Slot,
        /// Affine parameters.
        norm: NormP,
        /// Channels.
        c: usize,
        /// Index in [`Graph::layers`].
        layer: usize,
        /// Quantisation point of the input (its residual scale; PTF statistics).
        in_point: PointId,
        /// Quantisation point of the output.
        point: PointId,
    },
    /// A linear layer.
    Linear {
        /// Input slot.
        x: Slot,
        /// Output slot.
        out: Slot,
        /// Parameters.
        lin: LinearP,
        /// Output point; when `keep_acc`, the integer forward keeps the accumulator and the
        /// consumer requantises to this point (the GELU input).
        point: PointId,
        /// Keep the integer accumulator (I-BERT's GELU reads it).
        keep_acc: bool,
    },
    /// Attention scores per group of `n` tokens and head.
    Scores {
        /// qkv slot `[T, 3D]`.
        qkv: Slot,
        /// Output slot `[groups·heads·n, n]`.
        out: Slot,
        /// Heads.
        heads: usize,
        /// Tokens per group (window).
        n: usize,
        /// Width D (heads × head_dim).
        d: usize,
        /// Relative position bias (Swin).
        bias: Option<RelBias>,
        /// Shifted-window mask (Swin, shifted blocks).
        mask: Option<WindowMask>,
        /// Quantisation point of the scores (the softmax input, bias included, mask not).
        point: PointId,
    },
    /// A softmax layer over rows of `n` (a tap); masked entries get probability zero.
    Softmax {
        /// Scores slot.
        x: Slot,
        /// Output slot.
        out: Slot,
        /// Index in [`Graph::layers`].
        layer: usize,
        /// The mask of the scores, expanded to their layout.
        mask: Option<Arc<[bool]>>,
    },
    /// Probabilities times V, heads concatenated: `[T, D]`.
    Context {
        /// Probabilities slot.
        p: Slot,
        /// qkv slot.
        qkv: Slot,
        /// Output slot.
        out: Slot,
        /// Heads.
        heads: usize,
        /// Tokens per group.
        n: usize,
        /// Width D.
        d: usize,
        /// Quantisation point of the context.
        point: PointId,
    },
    /// A GELU layer (a tap).
    Gelu {
        /// Input slot (fc1 accumulator in the integer forward).
        x: Slot,
        /// Output slot.
        out: Slot,
        /// Index in [`Graph::layers`].
        layer: usize,
        /// Quantisation point of the input (fc1 requantised).
        in_point: PointId,
        /// Quantisation point of the output.
        point: PointId,
    },
    /// `x ← x + y` on the residual stream.
    Add {
        /// Residual slot, updated.
        x: Slot,
        /// Branch slot.
        y: Slot,
        /// Residual point after the add.
        point: PointId,
    },
    /// An activation requantised into a new residual stream.
    ToResidual {
        /// Input slot.
        x: Slot,
        /// Output slot.
        out: Slot,
        /// Residual point.
        point: PointId,
    },
    /// A token permutation or regrouping.
    Gather {
        /// Input slot.
        x: Slot,
        /// Output slot.
        out: Slot,
        /// What it does.
        kind: GatherKind,
        /// Input row of each output position ([`GatherKind::index`]).
        index: Vec<usize>,
    },
    /// Pooling and the classifier(s): the logits (or features without a head).
    Head {
        /// Final normalised tokens.
        x: Slot,
        /// Channels.
        d: usize,
        /// How tokens are pooled.
        pool: Pool,
        /// Classifier.
        head: Option<LinearP>,
        /// Distillation classifier (DeiT).
        head_dist: Option<LinearP>,
    },
}

impl Node {
    /// Slots the op reads or writes.
    pub fn slots(&self) -> Vec<Slot> {
        match self {
            Node::PatchEmbed { out, .. } => vec![*out],
            Node::Tokens { x, out, .. }
            | Node::LayerNorm { x, out, .. }
            | Node::Linear { x, out, .. }
            | Node::Softmax { x, out, .. }
            | Node::Gelu { x, out, .. }
            | Node::ToResidual { x, out, .. }
            | Node::Gather { x, out, .. } => vec![*x, *out],
            Node::Scores { qkv, out, .. } => vec![*qkv, *out],
            Node::Context { p, qkv, out, .. } => vec![*p, *qkv, *out],
            Node::Add { x, y, .. } => vec![*x, *y],
            Node::Head { x, .. } => vec![*x],
        }
    }

    /// Short name of the op for the op-list drawing.
    pub fn op_name(&self) -> String {
        match self {
            Node::PatchEmbed { .. } => "patch embed".into(),
            Node::Tokens { .. } => "tokens + pos".into(),
            Node::LayerNorm { .. } => "LayerNorm".into(),
            Node::Linear { .. } => "linear".into(),
            Node::Scores { bias, mask, .. } => {
                format!("q·kᵀ{}{}", if bias.is_some() { " + rel. bias" } else { "" }, if mask.is_some() { " (masked)" } else { "" })
            }
            Node::Softmax { .. } => "softmax".into(),
            Node::Context { .. } => "p·V".into(),
            Node::Gelu { .. } => "GELU".into(),
            Node::Add { .. } => "residual add".into(),
            Node::ToResidual { .. } => "to residual".into(),
            Node::Gather { kind, .. } => kind.describe(),
            Node::Head { pool, .. } => format!(
                "head ({})",
                match pool {
                    Pool::ClassToken => "class token",
                    Pool::Distilled => "class + distillation",
                    Pool::Mean => "mean pool",
                }
            ),
        }
    }
}

/// A model's op list, its non-linear layers, quantisation points and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Ops in execution order.
    pub nodes: Vec<Node>,
    /// Non-linear layers in execution order.
    pub layers: Vec<Layer>,
    /// Quantisation points in execution order.
    pub points: Vec<QPoint>,
    /// Parameter tensors, sorted by name.
    pub params: Vec<ParamSpec>,
    /// Number of value slots.
    pub slots: usize,
    /// Slots whose value is dead after each node (the executors recycle their buffers).
    pub free_after: Vec<Vec<Slot>>,
    /// Tokens entering the first block (rows of the first residual stream).
    pub tokens: usize,
    /// Length of the output (classes, or features).
    pub out_len: usize,
}

impl Graph {
    /// Index of the point called `name`.
    pub fn point(&self, name: &str) -> Option<PointId> {
        self.points.iter().position(|p| p.name == name)
    }

    /// Index of the parameter called `name`.
    pub fn param(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name)
    }

    /// The input point of LayerNorm layer `layer` (whose statistics PTF calibrates).
    pub fn ln_input_point(&self, layer: usize) -> Option<PointId> {
        self.nodes.iter().find_map(|n| match n {
            Node::LayerNorm { layer: l, in_point, .. } if *l == layer => Some(*in_point),
            _ => None,
        })
    }

    /// The op list as text, one op per line (`mnq infer --graph`, README drawing).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let tail = match n {
                Node::LayerNorm { layer, .. } | Node::Softmax { layer, .. } | Node::Gelu { layer, .. } => {
                    format!("  [{}]", self.layers[*layer].name)
                }
                Node::Linear { point, .. } | Node::Add { point, .. } | Node::ToResidual { point, .. } => {
                    format!("  → {}", self.points[*point].name)
                }
                _ => String::new(),
            };
            s.push_str(&format!("{i:3} {}{tail}\n", n.op_name()));
        }
        s
    }
}

/// Builder state shared by the architecture builders: parameters, points, layers and slots.
#[derive(Debug, Default)]
pub struct Builder {
    nodes: Vec<Node>,
    layers: Vec<Layer>,
    points: Vec<QPoint>,
    params: Vec<ParamSpec>,
    slots: usize,
    block: Option<usize>,
}

impl Builder {
    /// A new, empty builder.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// A fresh value slot.
    pub fn slot(&mut self) -> Slot {
        self.slots += 1;
        self.slots - 1
    }

    /// Register a parameter tensor.
    pub fn param(&mut self, name: impl Into<String>, shape: Vec<usize>, why: &str) -> ParamId {
        self.params.push(ParamSpec { name: name.into(), shape, why: why.into() });
        self.params.len() - 1
    }

    /// A linear layer `prefix.weight` `[out, inp]` (+ `prefix.bias` when `bias`).
    pub fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool, why: &str) -> LinearP {
        let w = self.param(format!("{prefix}.weight"), vec![out, inp], why);
        let b = bias.then(|| self.param(format!("{prefix}.bias"), vec![out], why));
        LinearP { w, b, ls: None, out, inp }
    }

    /// LayerNorm parameters `prefix.weight`, `prefix.bias` `[c]`.
    pub fn norm(&mut self, prefix: &str, c: usize, why: &str) -> NormP {
        NormP { w: self.param(format!("{prefix}.weight"), vec![c], why), b: self.param(format!("{prefix}.bias"), vec![c], why) }
    }

    /// Register a quantisation point.
    pub fn point(&mut self, name: impl Into<String>, kind: PointKind) -> PointId {
        self.points.push(QPoint { name: name.into(), kind });
        self.points.len() - 1
    }

    /// Set the block index recorded on the next layers (None outside blocks).
    pub fn set_block(&mut self, b: Option<usize>) {
        self.block = b;
    }

    /// Register a non-linear layer; returns its index.
    pub fn layer(&mut self, name: impl Into<String>, op: Op, rows: usize, row_len: usize) -> usize {
        let index = self.layers.len();
        self.layers.push(Layer { index, name: name.into(), op, block: self.block, rows, row_len });
        index
    }

    /// Append an op.
    pub fn push(&mut self, n: Node) {
        self.nodes.push(n);
    }

    /// `LayerNorm` of slot `x` (rows × c) as layer `name`, output at point `out_point`.
    pub fn layer_norm(&mut self, x: Slot, name: &str, rows: usize, c: usize, in_point: PointId, out_point: PointId, why: &str) -> Slot {
        let norm = self.norm(name, c, why);
        let layer = self.layer(name, Op::LayerNorm, rows, c);
        let out = self.slot();
        self.push(Node::LayerNorm { x, out, norm, c, layer, in_point, point: out_point });
        out
    }

    /// A linear op on slot `x` with output point `point`.
    pub fn apply_linear(&mut self, x: Slot, lin: LinearP, point: PointId, keep_acc: bool) -> Slot {
        let out = self.slot();
        self.push(Node::Linear { x, out, lin, point, keep_acc });
        out
    }

    /// A gather op on slot `x`.
    pub fn gather(&mut self, x: Slot, kind: GatherKind) -> Slot {
        let out = self.slot();
        let index = kind.index();
        self.push(Node::Gather { x, out, kind, index });
        out
    }

    /// Finish: parameters sorted by name (ids remapped), so loading checks them in name order.
    pub fn finish(mut self, tokens: usize, out_len: usize) -> Graph {
        let mut order: Vec<usize> = (0..self.params.len()).collect();
        order.sort_by(|&a, &b| self.params[a].name.cmp(&self.params[b].name));
        let mut new_id = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_id[old] = new;
        }
        let params = order.iter().map(|&i| self.params[i].clone()).collect();
        let remap = |p: &mut ParamId| *p = new_id[*p];
        let remap_lin = |l: &mut LinearP| {
            remap(&mut l.w);
            l.b.iter_mut().for_each(remap);
            l.ls.iter_mut().for_each(remap);
        };
        for n in &mut self.nodes {
            match n {
                Node::PatchEmbed { lin, .. } | Node::Linear { lin, .. } => remap_lin(lin),
                Node::Tokens { pre, pos, .. } => {
                    pre.iter_mut().for_each(remap);
                    remap(pos);
                }
                Node::LayerNorm { norm, .. } => {
                    remap(&mut norm.w);
                    remap(&mut norm.b);
                }
                Node::Scores { bias: Some(b), .. } => remap(&mut b.table),
                Node::Head { head, head_dist, .. } => {
                    head.iter_mut().for_each(remap_lin);
                    head_dist.iter_mut().for_each(remap_lin);
                }
                _ => {}
            }
        }
        let mut last = vec![0usize; self.slots];
        for (i, n) in self.nodes.iter().enumerate() {
            for s in n.slots() {
                last[s] = i;
            }
        }
        let mut free_after = vec![Vec::new(); self.nodes.len()];
        for (s, &i) in last.iter().enumerate() {
            free_after[i].push(s);
        }
        Graph { nodes: self.nodes, layers: self.layers, points: self.points, params, slots: self.slots, free_after, tokens, out_len }
    }
}

/// Build the graph of the model a manifest describes (validated by `Manifest::load`).
pub fn build(m: &Manifest) -> Graph {
    match m.arch() {
        super::manifest::Arch::Vit | super::manifest::Arch::Deit => super::arch::vit::build(m),
        super::manifest::Arch::Swin => super::arch::swin::build(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_undoes_shift_partition() {
        for (g, w, s) in [(14, 7, 3), (8, 4, 2), (4, 4, 0), (6, 3, 1)] {
            let f = GatherKind::ShiftPartition { grid: g, window: w, shift: s }.index();
            let r = GatherKind::ReverseShift { grid: g, window: w, shift: s }.index();
            for (p, &src) in r.iter().enumerate() {
                assert_eq!(f[src], p);
            }
            let mut sorted = f.clone();
            sorted.sort();
            assert_eq!(sorted, (0..g * g).collect::<Vec<_>>());
        }
    }

    #[test]
    fn shift_partition_matches_torch_roll() {
        // torch.roll(x, shifts=-1) on a 4×4 grid, then 2×2 windows: window 0 holds tokens
        // (1,1), (1,2), (2,1), (2,2) of the original grid.
        let f = GatherKind::ShiftPartition { grid: 4, window: 2, shift: 1 }.index();
        assert_eq!(&f[..4], &[5, 6, 9, 10]);
        // The last window wraps around: rolled (2..4, 2..4) = original (3, 0), ...
        assert_eq!(&f[12..], &[15, 12, 3, 0]);
    }

    #[test]
    fn relative_index_is_timms() {
        // timm get_relative_position_index(2, 2): [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]].
        let b = RelBias::for_window(0, 2);
        assert_eq!(b.index, vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]);
    }

    #[test]
    fn mask_separates_regions() {
        // 4×4 grid, window 2, shift 1: the last window (rolled rows/cols 2..4) mixes three
        // regions per axis; the first window is one region.
        let m = WindowMask::shifted(4, 2, 1);
        assert_eq!(m.windows(), 4);
        assert!(m.masked[..4 * 4].iter().all(|&x| !x));
        let last = &m.masked[3 * 16..];
        // rolled positions (2,2),(2,3),(3,2),(3,3): rows 2 → region 1, 3 → region 2; same for cols.
        assert!(!last[0] && last[1] && last[2] && last[3]);
        assert!(last.iter().step_by(5).all(|&x| !x));
    }

    #[test]
    fn patch_merge_order_is_timms() {
        let f = GatherKind::PatchMerge { grid: 4 }.index();
        assert_eq!(&f[..8], &[0, 4, 1, 5, 2, 6, 3, 7]);
    }
}
