//! One graph builder per architecture: each reads the manifest, registers the tensors it needs
//! (names and shapes, checked by the loader), the quantisation points and the non-linear layers,
//! and lays out the op list. A new architecture is one more builder here and one line in
//! [`super::graph::build`]; the pre-norm transformer block they share is [`block`].

pub mod swin;
pub mod vit;

use super::graph::{Builder, GatherKind, Node, PointId, PointKind, RelBias, Slot, WindowMask};
use crate::units::Op;

/// Shape of one transformer block.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    /// Tokens.
    pub tokens: usize,
    /// Width D.
    pub d: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden size.
    pub hidden: usize,
    /// Windowed attention (Swin): grid side, window side, shift.
    pub window: Option<(usize, usize, usize)>,
    /// LayerScale after attention and MLP.
    pub layer_scale: bool,
}

/// Which manifest fields the block's tensors follow (for "tensor missing" messages).
#[derive(Debug, Clone, Copy)]
pub struct Why {
    /// Tensors sized by the width.
    pub d: &'static str,
    /// Tensors sized by the MLP hidden size.
    pub h: &'static str,
    /// The relative position bias table.
    pub bias: &'static str,
}

/// One pre-norm block on the residual stream in slot `x` (quantised at point `res`), tensors
/// and layers named `prefix.…` as timm names them: `x += proj(attn(norm1(x)))`,
/// `x += fc2(gelu(fc1(norm2(x))))`, with Swin's shifted-window partition around the attention.
/// Returns the residual point after the block.
pub fn block(g: &mut Builder, prefix: &str, x: Slot, res: PointId, s: BlockShape, why: Why) -> PointId {
    let (t, d, nh, hh) = (s.tokens, s.d, s.heads, s.hidden);
    let n1 = g.point(format!("{prefix}.norm1"), PointKind::Act);
    let h = g.layer_norm(x, &format!("{prefix}.norm1"), t, d, res, n1, why.d);
    // Swin: roll and partition into windows (skipped when one unshifted window is the grid).
    let (h, n, windows) = match s.window {
        Some((grid, w, shift)) if w < grid || shift > 0 => {
            (g.gather(h, GatherKind::ShiftPartition { grid, window: w, shift }), w * w, true)
        }
        Some((_, w, _)) => (h, w * w, false),
        None => (h, t, false),
    };
    let pq = g.point(format!("{prefix}.attn.qkv"), PointKind::Act);
    let qkv_lin = g.linear(&format!("{prefix}.attn.qkv"), 3 * d, d, true, why.d);
    let qkv = g.apply_linear(h, qkv_lin, pq, false);
    let pqk = g.point(format!("{prefix}.attn.matmul_qk"), PointKind::Act);
    let bias = s.window.map(|(_, w, _)| {
        let table = g.param(format!("{prefix}.attn.relative_position_bias_table"), vec![(2 * w - 1) * (2 * w - 1), nh], why.bias);
        RelBias::for_window(table, w)
    });
    let mask = match s.window {
        Some((grid, w, shift)) if shift > 0 => Some(WindowMask::shifted(grid, w, shift)),
        _ => None,
    };
    let scores = g.slot();
    g.push(Node::Scores { qkv, out: scores, heads: nh, n, d, bias, mask: mask.clone(), point: pqk });
    let sm = g.layer(format!("{prefix}.attn.softmax"), Op::Softmax, nh * t, n);
    let probs = g.slot();
    g.push(Node::Softmax { x: scores, out: probs, layer: sm, mask: mask.map(|m| m.expand(nh)) });
    let pav = g.point(format!("{prefix}.attn.matmul_av"), PointKind::Act);
    let ctx = g.slot();
    g.push(Node::Context { p: probs, qkv, out: ctx, heads: nh, n, d, point: pav });
    let pproj = g.point(format!("{prefix}.attn.proj"), PointKind::Act);
    let mut proj = g.linear(&format!("{prefix}.attn.proj"), d, d, true, why.d);
    if s.layer_scale {
        proj.ls = Some(g.param(format!("{prefix}.ls1.gamma"), vec![d], "layer_scale true"));
    }
    let mut o = g.apply_linear(ctx, proj, pproj, false);
    if windows {
        let (grid, w, shift) = s.window.expect("windowed");
        o = g.gather(o, GatherKind::ReverseShift { grid, window: w, shift });
    }
    let r1 = g.point(format!("{prefix}.residual1"), PointKind::Residual);
    g.push(Node::Add { x, y: o, point: r1 });
    let n2 = g.point(format!("{prefix}.norm2"), PointKind::Act);
    let h2 = g.layer_norm(x, &format!("{prefix}.norm2"), t, d, r1, n2, why.d);
    let pf1 = g.point(format!("{prefix}.mlp.fc1"), PointKind::Act);
    let fc1 = g.linear(&format!("{prefix}.mlp.fc1"), hh, d, true, why.h);
    let f = g.apply_linear(h2, fc1, pf1, true);
    let pact = g.point(format!("{prefix}.mlp.act"), PointKind::Act);
    let gl = g.layer(format!("{prefix}.mlp.act"), Op::Gelu, t, hh);
    let a = g.slot();
    g.push(Node::Gelu { x: f, out: a, layer: gl, in_point: pf1, point: pact });
    let pf2 = g.point(format!("{prefix}.mlp.fc2"), PointKind::Act);
    let mut fc2 = g.linear(&format!("{prefix}.mlp.fc2"), d, hh, false, why.h);
    fc2.b = Some(g.param(format!("{prefix}.mlp.fc2.bias"), vec![d], why.d));
    if s.layer_scale {
        fc2.ls = Some(g.param(format!("{prefix}.ls2.gamma"), vec![d], "layer_scale true"));
    }
    let y = g.apply_linear(a, fc2, pf2, false);
    let r2 = g.point(format!("{prefix}.residual2"), PointKind::Residual);
    g.push(Node::Add { x, y, point: r2 });
    r2
}
