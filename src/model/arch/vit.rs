//! timm `VisionTransformer` (arch `vit`) and `VisionTransformerDistilled` (arch `deit`):
//! class (and distillation) token, learned position embedding, pre-norm blocks with optional
//! LayerScale, final norm, class-token head(s).

use super::{block, BlockShape, Why};
use crate::model::graph::{Builder, Graph, LinearP, Node, PointKind, Pool};
use crate::model::manifest::Manifest;

/// The graph of a ViT / DeiT manifest.
pub fn build(m: &Manifest) -> Graph {
    let mut g = Builder::new();
    let (d, t, c, p) = (m.embed_dim, m.tokens(), m.in_chans, m.patch_size);
    let cls = g.param("cls_token", vec![1, 1, d], "every vit/deit");
    let dist = m.distilled().then(|| g.param("dist_token", vec![1, 1, d], "arch deit"));
    let pos = g.param("pos_embed", vec![1, t, d], "img_size, patch_size, arch");
    let pw = g.param("patch_embed.proj.weight", vec![d, c, p, p], "embed_dim, in_chans, patch_size");
    let pb = g.param("patch_embed.proj.bias", vec![d], "embed_dim");
    let input = g.point("input", PointKind::Act);
    let pe = g.point("patch_embed", PointKind::Act);
    let r0 = g.point("pos_embed", PointKind::Residual);
    let patches = g.slot();
    g.push(Node::PatchEmbed {
        out: patches,
        lin: LinearP { w: pw, b: Some(pb), ls: None, out: d, inp: c * p * p },
        chans: c,
        img: m.img_size,
        patch: p,
        input_point: input,
        point: pe,
    });
    let x = g.slot();
    g.push(Node::Tokens { x: patches, out: x, pre: std::iter::once(cls).chain(dist).collect(), pos, point: r0 });
    let shape = BlockShape { tokens: t, d, heads: m.num_heads, hidden: m.hidden(), window: None, layer_scale: m.layer_scale };
    let why = Why { d: "depth, embed_dim", h: "depth, embed_dim, mlp_ratio", bias: "" };
    let mut res = r0;
    for b in 0..m.depth {
        g.set_block(Some(b));
        res = block(&mut g, &format!("blocks.{b}"), x, res, shape, why);
    }
    g.set_block(None);
    let pn = g.point("norm", PointKind::Act);
    let hx = g.layer_norm(x, "norm", t, d, res, pn, "embed_dim");
    let (head, head_dist) = if m.num_classes > 0 {
        let hd = g.linear("head", m.num_classes, d, true, "num_classes");
        (Some(hd), m.distilled().then(|| g.linear("head_dist", m.num_classes, d, true, "num_classes, arch deit")))
    } else {
        (None, None)
    };
    let pool = if m.distilled() { Pool::Distilled } else { Pool::ClassToken };
    g.push(Node::Head { x: hx, d, pool, head, head_dist });
    g.finish(t, if m.num_classes > 0 { m.num_classes } else { d })
}
