"""Exact fixed-point building blocks of mnq (`src/fixed.rs`) on int64 torch tensors.

Everything here is integer arithmetic on int64 tensors (CPU or CUDA), or IEEE float64
scalar arithmetic on the host where mnq itself computes a constant in f64 (Python floats
and NumPy float64 round exactly like Rust's f64). Where mnq uses i128 intermediates, the
functions below either split the operands into 31-bit limbs (`rne_mul_shift`) or check a
bound and raise `RangeError` instead of silently wrapping.
"""

from __future__ import annotations

import math

import numpy as np
import torch

I64 = torch.int64
MASK31 = (1 << 31) - 1
SAT = 1 << 62  # results of rne_mul_shift are clamped to [-SAT, SAT - 1] (mnq: i64::MIN/2..i64::MAX/2)


class RangeError(ValueError):
    """An intermediate would leave the int64 range that this exact port supports."""


# ---------------------------------------------------------------------------------------------
# Host-side scalars (f64 exactly as Rust computes them)

def fl32(x: float) -> float:
    """One binary32 rounding (`fixed::fl32`)."""
    return float(np.float32(x))


def rdiv(c: float, s: float) -> float:
    """PyTorch's `python_scalar / tensor`: `fl(fl(1/s) * c)` (`fixed::rdiv`)."""
    return (1.0 / s) * c


def f2i(x: float) -> int:
    """Rust's saturating `f64 as i64` (NaN gives 0)."""
    if math.isnan(x):
        return 0
    if x >= 9.223372036854775807e18:
        return (1 << 63) - 1
    if x <= -9.223372036854775808e18:
        return -(1 << 63)
    return int(x)  # truncation toward zero, as `as i64`


def ffloor(x: float) -> int:
    """`x.floor() as i64`."""
    return f2i(math.floor(x)) if math.isfinite(x) else f2i(x)


def rne(x: float) -> float:
    """Round half to even of an f64 (`round_ties_even`)."""
    return float(np.rint(x))


def bit_length(v: int) -> int:
    """`bit_length` of a non-negative integer."""
    return int(v).bit_length()


def dyadic(ratio: float) -> tuple[int, int]:
    """`Dyadic::from_ratio`: `(m, e)` with `m = ROUND_HALF_AWAY(mant * 2^31)`, `e = 31 - exp`."""
    ratio = float(ratio)
    if not math.isfinite(ratio):
        raise RangeError(f"dyadic multiplier of a non-finite ratio {ratio}")
    mant, ex = math.frexp(ratio)
    if mant == 0.0:
        return 0, 31
    n = int(mant * 2.0 ** 53)  # exact: mant has a 53-bit significand
    a = (abs(n) + (1 << 21)) >> 22  # |mant| * 2^31 rounded half away from zero
    return (a if n > 0 else -a), 31 - ex


def dyadics(ratios) -> tuple[torch.Tensor, torch.Tensor]:
    """`dyadic` of each ratio: int64 tensors `(m, e)`."""
    me = [dyadic(r) for r in np.asarray(ratios, dtype=np.float64).reshape(-1)]
    return torch.tensor([m for m, _ in me], dtype=I64), torch.tensor([e for _, e in me], dtype=I64)


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive range of an n-bit format."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def div_round_int(num: int, den: int, mode: str) -> int:
    """`fixed::div_round` on Python integers (den > 0)."""
    q, r = divmod(num, den)
    if mode == "floor":
        return q
    if mode == "half_even":
        return q + (1 if 2 * r > den or (2 * r == den and q & 1) else 0)
    if mode == "half_up":
        return q + (1 if 2 * r >= den else 0)
    raise ValueError(mode)


# ---------------------------------------------------------------------------------------------
# int64 tensor arithmetic

def t(x, device=None) -> torch.Tensor:
    """An int64 tensor of `x` (no copy when it already is one)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=I64, device=device) if (x.dtype != I64 or (device is not None and x.device != device)) else x
    return torch.as_tensor(x, dtype=I64, device=device)


def floor_div(a: torch.Tensor, b) -> torch.Tensor:
    """Exact floor division of int64 tensors (`div_euclid` for b > 0, `floor_div` for b < 0)."""
    return torch.div(a, b, rounding_mode="floor")


def trunc_div(a: torch.Tensor, b) -> torch.Tensor:
    """Rust's integer `/` (toward zero)."""
    return torch.div(a, b, rounding_mode="trunc")


def div_round_half_even(num: torch.Tensor, den) -> torch.Tensor:
    """`div_round(num, den, HalfEven)` for den > 0."""
    q = floor_div(num, den)
    r = num - q * den
    tw = 2 * r
    return q + ((tw > den) | ((tw == den) & ((q & 1) == 1))).to(I64)


def shift_round_half_even(x: torch.Tensor, sh) -> torch.Tensor:
    """`shift_round(x, sh, HalfEven)` for 0 <= sh <= 62 (scalar or tensor)."""
    sh = t(sh, x.device)
    shc = sh.clamp(min=1)
    q = x >> sh
    r = x - (q << sh)
    half = torch.ones_like(shc) << (shc - 1)
    up = (r > half) | ((r == half) & ((q & 1) == 1))
    return torch.where(sh == 0, x, q + up.to(I64))


def rne_mul_shift(z: torch.Tensor, m, e) -> torch.Tensor:
    """Exact `RNE(z * m / 2^e)` (`Dyadic::apply`) without an i128: z is split into 31-bit limbs.

    Needs |z| < 2^62, |m| <= 2^31 and e >= 1 (a ratio below 2^30); the result is clamped to
    [-2^62, 2^62 - 1], which changes nothing downstream (every caller clamps to at most that).
    """
    dev = z.device
    m, e = t(m, dev), t(e, dev)
    if z.numel() and int(z.abs().max()) >= SAT:
        raise RangeError(f"requantiser input {int(z.abs().max())} is outside +-2^62")
    if e.numel() and int(e.min()) < 1:
        raise RangeError("requantiser ratio >= 2^30 (dyadic shift below 1) is not supported")
    if m.numel() and int(m.abs().max()) > (1 << 31):
        raise RangeError("dyadic multiplier above 2^31")
    zmax = int(z.abs().max()) if z.numel() else 0
    if zmax < (1 << 31) and (not e.numel() or int(e.max()) <= 62):
        # |z·m| < 2^62: one int64 product, then the branch-free RNE shift of gemm.rs's Requants:
        # (p + 2^(e−1) − 1 + ((p >> e) & 1)) >> e.
        p = z * m
        return (p + ((torch.ones_like(e) << (e - 1)) - 1) + ((p >> e) & 1)) >> e
    zl, zh = z & MASK31, z >> 31
    a = zh * m  # |a| <= 2^62
    b = zl * m  # |b| < 2^62
    c = a + (b >> 31)  # z*m = c*2^31 + bl, 0 <= bl < 2^31
    bl = b & MASK31
    # e >= 31: q = c >> (e-31), remainder (rc, bl) with rc in [0, 2^(e-31)).
    k = (e - 31).clamp(0, 62)
    q_hi = c >> k
    rc = c - (q_hi << k)
    hk = torch.ones_like(k) << (k - 1).clamp(min=0)  # 2^(k-1), the half in units of 2^31 (k >= 1)
    gt_hi = torch.where(k == 0, bl > (1 << 30), (rc > hk) | ((rc == hk) & (bl > 0)))
    eq_hi = torch.where(k == 0, bl == (1 << 30), (rc == hk) & (bl == 0))
    r_hi = q_hi + (gt_hi | (eq_hi & ((q_hi & 1) == 1))).to(I64)
    r_hi = torch.where(e >= 94, torch.zeros_like(r_hi), r_hi)  # |z*m| < 2^93 < 2^(e-1)
    # 1 <= e < 31: q = c*2^j + (bl >> e), j = 31 - e; saturate when c*2^j leaves +-2^62.
    j = (31 - e).clamp(1, 30)
    el = e.clamp(1, 30)
    big = c.abs() >= (torch.ones_like(j) << (62 - j))
    q_lo = (torch.where(big, torch.zeros_like(c), c) << j) + (bl >> el)
    r = bl & ((torch.ones_like(el) << el) - 1)
    half = torch.ones_like(el) << (el - 1)
    r_lo = q_lo + ((r > half) | ((r == half) & ((q_lo & 1) == 1))).to(I64)
    r_lo = torch.where(big, torch.where(c < 0, torch.full_like(c, -SAT), torch.full_like(c, SAT - 1)), r_lo)
    return torch.where(e >= 31, r_hi, r_lo).clamp(-SAT, SAT - 1)


def requant(z: torch.Tensor, m, e, lo: int, hi: int) -> torch.Tensor:
    """A dyadic requantiser clamped to [lo, hi] (`Requants::apply_rows`)."""
    return rne_mul_shift(z, m, e).clamp(lo, hi)


def bit_length_t(v: torch.Tensor) -> torch.Tensor:
    """Exact `bit_length` of non-negative int64 values."""
    if v.numel() and int(v.min()) < 0:
        raise RangeError("bit_length of a negative value")
    n = torch.zeros_like(v)
    x = v.clone()
    for s in (32, 16, 8, 4, 2, 1):
        big = x >= (1 << s)
        n = n + big.to(I64) * s
        x = torch.where(big, x >> s, x)
    return n + (x > 0).to(I64)


def isqrt_t(v: torch.Tensor) -> torch.Tensor:
    """Exact `floor(sqrt(v))` of non-negative int64 values below 2^62 (`fixed::isqrt`)."""
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= SAT):
        raise RangeError("isqrt argument outside [0, 2^62)")
    r = torch.floor(torch.sqrt(v.to(torch.float64))).to(I64)
    for _ in range(3):  # the float estimate is within a few units: correct it exactly
        r = torch.where(r * r > v, r - 1, r)
        r = torch.where((r + 1) * (r + 1) <= v, r + 1, r)
    if v.numel() and not bool(((r * r <= v) & ((r + 1) * (r + 1) > v)).all()):
        raise RangeError("isqrt correction did not converge")
    return r


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer `a @ b` of int64 tensors.

    Computed as a float64 GEMM (CUDA has no int64 GEMM): every product and every partial sum
    is an integer of magnitude at most k * max|a| * max|b|, checked to be below 2^53, so the
    float64 sums are exact in any order and the result is the exact integer product.
    """
    k = a.shape[-1]
    ma = int(a.abs().max()) if a.numel() else 0
    mb = int(b.abs().max()) if b.numel() else 0
    if k * ma * mb >= (1 << 53):
        raise RangeError(f"integer GEMM bound {k}*{ma}*{mb} reaches 2^53")
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(I64)


def dyadic_t(ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`dyadic` of every element of a float64 tensor, on its device: int64 `(m, e)`."""
    if ratio.dtype != torch.float64:
        raise TypeError("dyadic_t needs float64 ratios")
    if ratio.numel() and not bool(torch.isfinite(ratio).all()):
        raise RangeError("dyadic multiplier of a non-finite ratio")
    mant, ex = torch.frexp(ratio)
    n = (mant * 2.0 ** 53).to(I64)  # exact: a 53-bit significand
    a = (n.abs() + (1 << 21)) >> 22  # |mant|·2^31 rounded half away from zero
    m = torch.where(n < 0, -a, a)
    e = torch.where(mant == 0, torch.full_like(m, 31), 31 - ex.to(I64))
    return m, e
