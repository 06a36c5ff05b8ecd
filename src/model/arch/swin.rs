//! timm `SwinTransformer` (arch `swin`): patch embedding with its LayerNorm, stages of
//! W-MSA / SW-MSA blocks (cyclic shift, window partition, relative position bias, the
//! shifted-window mask), patch merging between stages (2×2 concat, LayerNorm, bias-free
//! reduction), final LayerNorm, mean pooling over tokens, head.
//!
//! Window and shift of block j of stage s follow timm's `_calc_window_shift`: the window is
//! `min(window_size[s], R_s)` for the stage's grid side R_s, and odd blocks shift by
//! `window_size[s] / 2` only while `R_s` exceeds the window.

use super::{block, BlockShape, Why};
use crate::model::graph::{Builder, GatherKind, Graph, LinearP, Node, PointKind, Pool};
use crate::model::manifest::Manifest;

/// The graph of a Swin manifest (validated: the `swin` section is present and consistent).
pub fn build(m: &Manifest) -> Graph {
    let s = m.swin.as_ref().expect("Manifest::load checks that arch swin has a swin section");
    let mut g = Builder::new();
    let (c, p, d0) = (m.in_chans, m.patch_size, m.embed_dim);
    let mut grid = m.img_size / p;
    let pw = g.param("patch_embed.proj.weight", vec![d0, c, p, p], "embed_dim, in_chans, patch_size");
    let pb = g.param("patch_embed.proj.bias", vec![d0], "embed_dim");
    let input = g.point("input", PointKind::Act);
    // The patch projection feeds a LayerNorm (or the residual stream): a 16-bit residual.
    let pe = g.point("patch_embed", PointKind::Residual);
    let patches = g.slot();
    g.push(Node::PatchEmbed {
        out: patches,
        lin: LinearP { w: pw, b: Some(pb), ls: None, out: d0, inp: c * p * p },
        chans: c,
        img: m.img_size,
        patch: p,
        input_point: input,
        point: pe,
    });
    let (mut x, mut res) = (patches, pe);
    if s.patch_norm {
        let pn = g.point("patch_embed.norm", PointKind::Act);
        let h = g.layer_norm(patches, "patch_embed.norm", grid * grid, d0, pe, pn, "embed_dim, swin.patch_norm");
        let pr = g.point("patch_embed.residual", PointKind::Residual);
        x = g.slot();
        g.push(Node::ToResidual { x: h, out: x, point: pr });
        res = pr;
    }
    let why =
        Why { d: "swin.depths, swin.embed_dims", h: "swin.depths, swin.embed_dims, mlp_ratio", bias: "swin.window_size, swin.num_heads" };
    let mut dim = d0;
    let mut blk = 0;
    for (st, &depth) in s.depths.iter().enumerate() {
        let ds = s.embed_dims[st];
        if st > 0 {
            g.set_block(None);
            let merged = g.gather(x, GatherKind::PatchMerge { grid });
            grid /= 2;
            let name = format!("layers.{st}.downsample");
            let pn = g.point(format!("{name}.norm"), PointKind::Act);
            let h = g.layer_norm(merged, &format!("{name}.norm"), grid * grid, 4 * dim, res, pn, "swin.embed_dims");
            let pr = g.point(format!("{name}.reduction"), PointKind::Residual);
            let red = g.linear(&format!("{name}.reduction"), ds, 4 * dim, false, "swin.embed_dims");
            x = g.apply_linear(h, red, pr, false);
            res = pr;
            dim = ds;
        }
        let target = s.window_size[st];
        let w = target.min(grid);
        for j in 0..depth {
            let shift = if j % 2 == 1 && grid > w { target / 2 } else { 0 };
            let shape = BlockShape {
                tokens: grid * grid,
                d: ds,
                heads: s.num_heads[st],
                hidden: (ds as f64 * m.mlp_ratio) as usize,
                window: Some((grid, w, shift)),
                layer_scale: false,
            };
            g.set_block(Some(blk));
            res = block(&mut g, &format!("layers.{st}.blocks.{j}"), x, res, shape, why);
            blk += 1;
        }
    }
    g.set_block(None);
    let pn = g.point("norm", PointKind::Act);
    let hx = g.layer_norm(x, "norm", grid * grid, dim, res, pn, "swin.embed_dims");
    let head = (m.num_classes > 0).then(|| g.linear("head.fc", m.num_classes, dim, true, "num_classes"));
    g.push(Node::Head { x: hx, d: dim, pool: Pool::Mean, head, head_dist: None });
    g.finish(m.img_size / p * (m.img_size / p), if m.num_classes > 0 { m.num_classes } else { dim })
}
