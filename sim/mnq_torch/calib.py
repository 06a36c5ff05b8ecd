"""Post-training calibration in PyTorch, following `src/model/calib.rs` (min/max ranges and
FQ-ViT's PTF search), for `qat.py` when a manifest has no quant section.

It runs the float forward in float32 PyTorch, so its scales are close to, not bit-identical
with, `mnq calibrate`'s (summation orders differ); what mnq simulates afterwards is whatever
scales end up in the manifest, so this only affects the starting point of QAT.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import RESIDUAL_BITS, MnqModel, patch_merge_index, qmax, swin_stages


def ln_input_points(m: dict) -> dict:
    """LayerNorm layer → (the residual point that feeds it, the layer's channel count, the input
    token grid when a 2x2 patch merge regroups the point's tokens before it, else None)."""
    out = {}
    if m["arch"] == "swin":
        d0 = m["embed_dim"]
        prev = "patch_embed"
        if m["swin"].get("patch_norm", True):
            out["patch_embed.norm"] = (prev, d0, None)
            prev = "patch_embed.residual"
        dim = d0
        for st, depth, ds, _nh, grid, _w in swin_stages(m):
            if st > 0:
                # The PTF statistics follow the merged 2x2 order the LayerNorm sees (calib.rs).
                out[f"layers.{st}.downsample.norm"] = (prev, 4 * dim, grid * 2)
                prev = f"layers.{st}.downsample.reduction"
                dim = ds
            for j in range(depth):
                pre = f"layers.{st}.blocks.{j}"
                out[f"{pre}.norm1"] = (prev, ds, None)
                out[f"{pre}.norm2"] = (f"{pre}.residual1", ds, None)
                prev = f"{pre}.residual2"
        out["norm"] = (prev, dim, None)
        return out
    d = m["embed_dim"]
    prev = "pos_embed"
    for b in range(m["depth"]):
        out[f"blocks.{b}.norm1"] = (prev, d, None)
        out[f"blocks.{b}.norm2"] = (f"blocks.{b}.residual1", d, None)
        prev = f"blocks.{b}.residual2"
    out["norm"] = (prev, d, None)
    return out


@torch.no_grad()
def calibrate(mm: MnqModel, images: torch.Tensor, bits: int, batch: int = 64) -> dict:
    """A quant section (act_scales, ptf) for `bits` from normalised images `[N, C, H, W]`."""
    stats = {p: [np.inf, -np.inf, 0.0] for p in mm.points}

    def obs1(name, y):
        s = stats[name]
        s[0] = min(s[0], float(y.min()))
        s[1] = max(s[1], float(y.max()))
        s[2] = max(s[2], float(y.abs().max()))

    for i in range(0, len(images), batch):
        mm(images[i:i + batch], "float", observer=obs1)
    levels = (1 << bits) - 1
    lnp = ln_input_points(mm.m)
    fmt = {}
    for ln, (p, _, _) in lnp.items():
        mn, mx, _ = stats[p]
        scale8 = max((mx - mn) / levels, float(np.finfo(np.float32).eps))
        fmt[p] = (scale8, min(max(-float(np.rint(mn / scale8)), 0.0), float(levels)))
    err = {p: torch.zeros(4, ch, dtype=torch.float64) for p, ch, _ in set(lnp.values())}
    merge = {p: g for p, _, g in lnp.values() if g is not None}

    def obs2(name, y):
        if name not in err:
            return
        scale8, zp = fmt[name]
        y = y.detach()
        if name in merge:
            y = y[:, torch.tensor(patch_merge_index(merge[name]), device=y.device)]
        x = y.to(torch.float64).reshape(-1, err[name].shape[1])
        for a in range(4):
            s = scale8 / float(1 << (3 - a))
            q = (torch.round(x / s) + zp).clamp(0, levels)
            err[name][a] += ((x - (q - zp) * s) ** 2).sum(0)

    for i in range(0, len(images), batch):
        mm(images[i:i + batch], "float", observer=obs2)
    act = {}
    for p, res in mm.points.items():
        mn, mx, amax = stats[p]
        act[p] = max(amax, 1e-8) / qmax(RESIDUAL_BITS if res else bits)
    ptf = {}
    for ln, (p, _, _) in lnp.items():
        e = err[p]
        alpha = [int(torch.argmin(e[:, c]).item()) for c in range(e.shape[1])]  # first minimum on ties
        ptf[ln] = {"min": stats[p][0], "max": stats[p][1], "alpha": alpha}
    return {"weight_bits": bits, "act_bits": bits, "act_scales": act, "ptf": ptf}
