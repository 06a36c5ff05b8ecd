"""Post-training calibration in PyTorch, following `src/model/calib.rs` (min/max ranges and
FQ-ViT's PTF search), for `qat.py` when a manifest has no quant section.

It runs the float forward in float32 PyTorch, so its scales are close to, not bit-identical
with, `mnq calibrate`'s (summation orders differ); what mnq simulates afterwards is whatever
scales end up in the manifest, so this only affects the starting point of QAT.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import RESIDUAL_BITS, MnqModel, qmax


def ln_input_points(m: dict) -> dict:
    """LayerNorm layer → the residual point that feeds it."""
    out = {}
    prev = "pos_embed"
    for b in range(m["depth"]):
        out[f"blocks.{b}.norm1"] = prev
        out[f"blocks.{b}.norm2"] = f"blocks.{b}.residual1"
        prev = f"blocks.{b}.residual2"
    out["norm"] = prev
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
    for ln, p in lnp.items():
        mn, mx, _ = stats[p]
        scale8 = max((mx - mn) / levels, float(np.finfo(np.float32).eps))
        fmt[p] = (scale8, min(max(-float(np.rint(mn / scale8)), 0.0), float(levels)))
    err = {p: torch.zeros(4, mm.m["embed_dim"], dtype=torch.float64) for p in set(lnp.values())}

    def obs2(name, y):
        if name not in err:
            return
        scale8, zp = fmt[name]
        x = y.detach().to(torch.float64).reshape(-1, y.shape[-1])
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
    for ln, p in lnp.items():
        e = err[p]
        alpha = [int(torch.argmin(e[:, c]).item()) for c in range(e.shape[1])]  # first minimum on ties
        ptf[ln] = {"min": stats[p][0], "max": stats[p][1], "alpha": alpha}
    return {"weight_bits": bits, "act_bits": bits, "act_scales": act, "ptf": ptf}
