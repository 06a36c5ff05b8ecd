"""Straight-through estimators, and each golden unit as a `torch.nn.Module` with one.

`UnitModule(name, preset)(q, x, scale, bits, ...)` returns `(out, y)`: `out` the unit's exact
integer output (a `UnitOut`, as `units.build(name)(q, ...)` gives), and `y` a float tensor
whose value is that output dequantised and whose gradient with respect to `x` (the float
surrogate of the input, ≈ q·scale) is the float operation's:

| unit | gradient passed to x |
|---|---|
| softmax_* | float softmax's (FQ-ViT log2 codes dequantised as 2^−k, the zero flag as 0) |
| gelu_* (gelu_fqvit included) | erf GELU's |
| layernorm_* | float LayerNorm's with γ, β (given as tensors, they get gradients too) and eps |
| requant_* | 1 inside the output range, 0 where the output sits at either end of it (clamped; the seed's Eq. 2) |

This is the rule `MnqModel(..., "qat")` applies at every non-linear layer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import units as U
from .fixed import int_range


class Replace(torch.autograd.Function):
    """Value exactly `value` (in f's dtype); the gradient goes to `f` unchanged."""

    @staticmethod
    def forward(ctx, f, value):
        return value.to(f.dtype)

    @staticmethod
    def backward(ctx, g):
        return g, None


def dequantize(out: U.UnitOut, like: torch.Tensor) -> torch.Tensor:
    """Real values of a unit's output, float64 (per-channel scales along the last dimension)."""
    v = out.values
    if out.encoding == "log2":
        return torch.where(v >= 0, torch.pow(2.0, -v.to(torch.float64)), torch.zeros_like(v, dtype=torch.float64))
    s = torch.as_tensor(np.asarray(out.scale, dtype=np.float64), device=v.device)
    return v.to(torch.float64) * s


class UnitModule(torch.nn.Module):
    """A golden unit (Integer mode, bit-exact) with a straight-through backward (module docstring)."""

    def __init__(self, name: str, preset: str = "adapted", eps: float = 1e-6, **params):
        super().__init__()
        self.unit = U.build(name, preset, **params)
        self.op = name.split("_")[0]
        self.eps = eps

    def forward(self, q: torch.Tensor, x: torch.Tensor, scale, bits: int, signed: bool = True, gamma=None, beta=None, **aux):
        g_np = None if gamma is None else torch.as_tensor(gamma).detach().cpu().numpy()
        b_np = None if beta is None else torch.as_tensor(beta).detach().cpu().numpy()
        out = self.unit(q, scale, bits, signed, gamma=g_np, beta=b_np, **aux)
        if self.op == "softmax":
            f = torch.softmax(x, -1)
        elif self.op == "gelu":
            f = F.gelu(x)
        elif self.op == "layernorm":
            gt = gamma if isinstance(gamma, torch.Tensor) else torch.as_tensor(g_np, dtype=x.dtype)
            bt = beta if isinstance(beta, torch.Tensor) else torch.as_tensor(b_np, dtype=x.dtype)
            f = F.layer_norm(x, (x.shape[-1],), gt.to(x.dtype), bt.to(x.dtype), self.eps)
        else:  # requantiser: identity, stopped where the output was clamped
            f = x
            if self.unit.clamps(self.unit.out_bits):
                lo, hi = int_range(self.unit.out_bits, True)
                f = x * ((out.values > lo) & (out.values < hi)).to(x.dtype)
        return out, Replace.apply(f, dequantize(out, x))
