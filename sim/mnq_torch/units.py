"""mnq's golden units in Integer mode (`src/units/{ibert,ivit,fqvit}.rs`), bit-exact, on int64
torch tensors.

Every unit takes integer codes `q` of shape `[B, ..., C]` (rows along the last dimension; `B`
indexes independent unit calls, e.g. the images of a batch — only I-BERT LayerNorm's dynamic
shift rule looks across the rows of one call) and returns a `UnitOut`: the output integers, the
output scale (a float, or one float per channel) and the encoding. Per-layer constants are
computed on the host in IEEE float64 exactly as mnq computes them (`rdiv`, `floor`, `fl32`,
`frexp`); the data path is integer. The softmax units take a mask (`mask=`, bool, broadcast to
`q`'s shape, True = masked; Swin's shifted windows) as mnq's `Aux::mask`: a masked element is
absent from its row (out of the row maximum and the sum) and outputs exactly code 0 (I-BERT,
I-ViT) or the zero flag −1 (FQ-ViT); a fully masked row outputs zeros (the zero flag). Only the
Integer mode is ported (the Reference mode replays the published float code).

Backward passes are not defined here: the units are integer functions. `model.py` attaches a
straight-through estimator around each unit (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .erf import gelu_f64
from .fixed import (I64, RangeError, bit_length, bit_length_t, div_round_half_even, dyadic, dyadics, f2i, ffloor,
                    floor_div, fl32, int_range, isqrt_t, rdiv, rne, rne_mul_shift, shift_round_half_even, t,
                    trunc_div)


@dataclass
class UnitOut:
    """Output of a unit: integers, scale (float or per-channel array) and encoding."""

    values: torch.Tensor
    scale: object
    encoding: str = "linear"  # or "log2"
    log2_bits: int = 0


def _check_bits(name, bits, lo, hi, signed, want):
    if not (lo <= bits <= hi) or (want is not None and want != signed):
        sign = {True: "signed", False: "unsigned", None: "signed or unsigned"}[want]
        raise ValueError(f"{name}: input width {bits} bits is not supported (supported: {lo}..={hi}, {sign})")


def _check_range(name, q, bits, signed):
    lo, hi = int_range(bits, signed)
    if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
        raise ValueError(f"{name}: input outside the {bits}-bit {'signed' if signed else 'unsigned'} range")


# ---------------------------------------------------------------------------------------------
# I-BERT i-exp (shared by softmax_ibert and softmax_fqvit)

EXP_A = 0.35815147
EXP_B = 0.96963238 / EXP_A
EXP_C = 1.0 / EXP_A


@dataclass
class ExpConsts:
    """`ibert::ExpConsts` for one input scale."""

    x0: int
    b: int
    c: int
    n: int
    upshift: int

    @staticmethod
    def new(s: float, n: int, upshift: int) -> "ExpConsts":
        s = s / 2.0 ** upshift
        ss = s * s
        c = float(np.floor(rdiv(EXP_C, ss)))
        return ExpConsts(ffloor(rdiv(-0.6931, s)), ffloor(rdiv(EXP_B, s)), f2i(min(c, 9.0e18)), n, upshift)

    @staticmethod
    def auto_upshift(s: float) -> int:
        for p in range(24):
            if ExpConsts.new(s, 30, p).c >= 1024:
                return p
        return 24

    def check(self, span: int):
        """The int64 data path holds: |x|·|x0| products and c·2^n stay below 2^62."""
        xr = abs(self.x0)
        if xr * (xr + abs(self.b)) + abs(self.c) >= 1 << 62 or (span << self.upshift) >= 1 << 40:
            raise RangeError(f"i-exp constants x0={self.x0} b={self.b} c={self.c} leave the int64 range")

    def exp_parts(self, x: torch.Tensor):
        """`(z, n − qq)` with `E = z·2^(n−qq)` for `x = q − max ≤ 0`."""
        x = x << self.upshift
        x = torch.maximum(x, torch.full_like(x, self.n * self.x0))
        qq = floor_div(x, self.x0)
        r = x - self.x0 * qq
        z = (r * (r + self.b) + self.c).clamp(min=0)
        return z, self.n - qq

    def e_max(self) -> int:
        return self.c << self.n


def _rows_max(q):
    return q.max(dim=-1, keepdim=True).values


def _apply_mask(q, mask):
    """`(q', m, full)` for a softmax mask (None: `(q, None, None)`): masked elements of `q'` are
    set to their row's unmasked maximum (distance 0: in range for every table), `m` is the mask
    broadcast to `q`'s shape, `full` flags the rows with every element masked."""
    if mask is None:
        return q, None, None
    m = torch.as_tensor(mask, dtype=torch.bool, device=q.device)
    try:
        m = m.expand(q.shape)
    except RuntimeError:
        raise ValueError(f"the softmax mask of shape {list(m.shape)} does not fit the input's {list(q.shape)}") from None
    lowest = torch.iinfo(torch.int64).min
    full = m.all(-1, keepdim=True)
    rmax = torch.where(m, torch.full_like(q, lowest), q).max(-1, keepdim=True).values
    rmax = torch.where(full, torch.zeros_like(rmax), rmax)
    return torch.where(m, rmax.expand_as(q), q), m, full


def _by_distance(f, q, span):
    """`f(q − rowmax(q))` for an element-wise integer function f: tabulated over the distances
    0..=span when that is cheaper (mnq does the same; the values are f's either way)."""
    dist = _rows_max(q) - q
    if q.numel() > span + 1:
        tab = f(-torch.arange(span + 1, dtype=I64, device=q.device))
        return tab[dist]
    return f(-dist)


class SoftmaxIBert:
    """I-BERT IntSoftmax (Integer mode): i-exp, a dyadic 16-bit requantiser, normalisation."""

    name = "softmax_ibert"

    def __init__(self, preset="adapted", **kw):
        if preset == "reference":
            self.out_bits, self.n, self.clamp_out, self.upshift = 8, 30, False, 0
        else:
            self.out_bits, self.n, self.clamp_out, self.upshift = 8, 30, True, None
        for k, v in kw.items():
            setattr(self, k, v)

    def consts(self, s: float) -> ExpConsts:
        up = self.upshift if self.upshift is not None else ExpConsts.auto_upshift(s)
        return ExpConsts.new(s, self.n, up)

    def __call__(self, q, scale, bits, signed=True, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 24, signed, None)
        _check_range(self.name, q, bits, signed)
        k = self.consts(float(scale))
        lo, hi = int_range(bits, signed)
        out_scale = 2.0 ** -self.out_bits
        if k.c <= 0:
            return UnitOut(torch.zeros_like(q), out_scale)
        k.check(hi - lo)
        m, e = dyadic(32767.0 / float(k.e_max()))

        def e16_of(x):
            z, sh = k.exp_parts(x)
            return rne_mul_shift(z, m, e - sh).clamp(-32768, 32767)

        q, mk, full = _apply_mask(q, aux.get("mask"))
        e16 = _by_distance(e16_of, q, hi - lo)
        if mk is not None:
            e16 = torch.where(mk, torch.zeros_like(e16), e16)
        sm = e16.sum(-1, keepdim=True)
        if mk is not None:
            sm = torch.where(full, torch.ones_like(sm), sm)  # its E are all 0: outputs 0
        factor = trunc_div(torch.full_like(q[..., :1], 1 << 32), sm)
        top = (1 << self.out_bits) - 1 if self.clamp_out else 1 << self.out_bits
        return UnitOut(((e16 * factor) >> (32 - self.out_bits)).clamp(max=top), out_scale)


class SoftmaxFqVit:
    """FQ-ViT Log-Int-Softmax (Integer mode): i-exp, then log2 codes by comparisons."""

    name = "softmax_fqvit"

    def __init__(self, preset="adapted", **kw):
        self.bits, self.n = 4, 30
        self.upshift = 0 if preset == "reference" else None
        for k, v in kw.items():
            setattr(self, k, v)

    def __call__(self, q, scale, bits, signed=True, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 24, signed, None)
        _check_range(self.name, q, bits, signed)
        s = float(scale)
        up = self.upshift if self.upshift is not None else ExpConsts.auto_upshift(s)
        k = ExpConsts.new(s, self.n, up)
        levels = 1 << self.bits
        if k.c <= 0:
            return UnitOut(torch.full_like(q, -1), 1.0, "log2", self.bits)
        lo, hi = int_range(bits, signed)
        k.check(hi - lo)
        if q.shape[-1] * k.e_max() >= 1 << 61:  # z <= c for x <= 0, so every E <= c·2^n
            raise RangeError("softmax_fqvit: row sum of i-exp values leaves the int64 range")
        def ev_of(x):
            z, sh = k.exp_parts(x)
            return z << sh

        q, mk, _ = _apply_mask(q, aux.get("mask"))
        ev = _by_distance(ev_of, q, hi - lo)
        if mk is not None:
            ev = torch.where(mk, torch.zeros_like(ev), ev)  # E = 0: the zero flag
        two_s = 2 * ev.sum(-1, keepdim=True)
        ths = []
        for j in range(levels):
            tt = 2 if j == 0 else 3 << (j - 1)
            d = 2 * tt - 1
            exact = (two_s % d) == 0
            if tt % 2 == 0:
                ths.append(torch.where(exact, two_s // d, (two_s - 1) // d))
            else:
                ths.append((two_s - 1) // d)
        th = torch.stack(ths, dim=-1)  # [..., 1, levels], decreasing in j
        code = (ev.unsqueeze(-1) <= th).sum(-1)
        code = torch.where((ev == 0) | (code >= levels), torch.full_like(code, -1), code)
        return UnitOut(code, 1.0, "log2", self.bits)


# ---------------------------------------------------------------------------------------------
# I-ViT shift-based exponent (Shiftmax, ShiftGELU)

def shift_x0(s: float) -> int:
    return ffloor(rdiv(-1.0, s))


def ivit_auto_upshift(s: float) -> int:
    p = 0
    while abs(shift_x0(s / 2.0 ** p)) < 16 and p < 16:
        p += 1
    return p


def exp_shift(x: torch.Tensor, x0: int, n: int, cap: int) -> torch.Tensor:
    """`ivit::exp_shift`: `int_exp_shift` of x (after any upshift), results above cap saturate."""
    xe = x + (x >> 1) - (x >> 4)
    xc = torch.maximum(xe, torch.full_like(xe, n * x0))
    qq = floor_div(xc, x0)
    r = xc - x0 * qq
    base = r - 2 * x0
    sh = n - qq - 1
    shc = sh.clamp(0, 62)
    over = base > (cap >> shc)
    e = torch.where(over, torch.full_like(base, cap), base << shc)
    return torch.where(sh < 0, base >> 1, e)


class SoftmaxIVit:
    """I-ViT Shiftmax (Integer mode)."""

    name = "softmax_ivit"

    def __init__(self, preset="adapted", **kw):
        self.out_bits, self.n = 16, 15
        if preset == "reference":
            self.sum_bits, self.upshift = 31, 0
        else:
            self.sum_bits, self.upshift = None, None
        for k, v in kw.items():
            setattr(self, k, v)

    def constants(self, s: float, row: int):
        p = self.upshift if self.upshift is not None else ivit_auto_upshift(s)
        x0 = shift_x0(s / 2.0 ** p)
        if self.sum_bits is not None:
            k = self.sum_bits
        else:
            max_sum = (max(row, 1) * abs(x0)) << (self.n + 1)
            k = max(bit_length(max_sum) + self.out_bits, 31)
        return x0, p, k

    def __call__(self, q, scale, bits, signed=True, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 24, signed, None)
        _check_range(self.name, q, bits, signed)
        x0, up, k = self.constants(float(scale), q.shape[-1])
        k = min(k, 62)
        if k + 1 < self.out_bits:
            raise ValueError(f"{self.name}: sum_bits {k} must be at least out_bits - 1")
        lo, hi = int_range(bits, signed)
        if ((hi - lo) << up) >= 1 << 40 or abs(x0) >= 1 << 40:
            raise RangeError(f"{self.name}: constants leave the int64 range")
        q, mk, full = _apply_mask(q, aux.get("mask"))
        e = _by_distance(lambda x: exp_shift(x << up, x0, self.n, (1 << 62) - 1), q, hi - lo)
        if mk is not None:
            e = torch.where(mk, torch.zeros_like(e), e)
        limit = (1 << k) - 1
        sc = e.sum(-1, keepdim=True).clamp(max=limit)
        if mk is not None:
            sc = torch.where(full, torch.ones_like(sc), sc)  # its E are all 0: outputs 0
        factor = trunc_div(torch.full_like(sc, limit), sc)
        out = (e * factor) >> (k + 1 - self.out_bits)
        return UnitOut(out, float(np.float32(2.0 ** -(self.out_bits - 1))))


class GeluIVit:
    """I-ViT ShiftGELU `x·σ(1.702x)` (Integer mode)."""

    name = "gelu_ivit"

    def _sigma(self, q, m, x0, up, n):
        """σ_int of q with subtracted maximum m (row max, or max(q, 0) element-wise)."""
        cap = 1 << 31
        em = exp_shift((-m) << up, x0, n, cap)
        e = exp_shift((q - m) << up, x0, n, cap)
        limit = (1 << 31) - 1
        factor = trunc_div(torch.full_like(e, limit), (e + em).clamp(max=limit))
        return (e * factor) >> (32 - self.out_bits)

    def __init__(self, preset="adapted", **kw):
        if preset == "reference":
            self.out_bits, self.n, self.row_max, self.upshift = 8, 23, True, 0
        else:
            self.out_bits, self.n, self.row_max, self.upshift = 8, None, False, None
        for k, v in kw.items():
            setattr(self, k, v)

    def constants(self, s: float):
        s_sig = s * 1.702
        up = self.upshift if self.upshift is not None else ivit_auto_upshift(s_sig)
        x0 = shift_x0(s_sig / 2.0 ** up)
        n = self.n if self.n is not None else min(max(29 - self.out_bits - bit_length(abs(x0)), 8), 23)
        return x0, up, n

    def __call__(self, q, scale, bits, signed=True, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 16, signed, True)
        _check_range(self.name, q, bits, signed)
        s = float(scale)
        x0, up, n = self.constants(s)
        if abs(x0) >= 1 << 30:
            raise RangeError(f"{self.name}: x0 {x0} leaves the int64 range")
        lo, hi = int_range(bits, True)
        codes = torch.arange(lo, hi + 1, dtype=I64, device=q.device)
        # σ depends on (row max, q), or on q alone element-wise: tabulated for narrow inputs, as
        # mnq memoises it (same values).
        if self.row_max:
            rm = _rows_max(q)
            if bits <= 8 and q.numel() > (hi - lo + 1) ** 2:
                tab = self._sigma(codes.view(1, -1), codes.view(-1, 1), x0, up, n)  # [rmax, q]
                sig = tab[(rm - lo).expand_as(q), q - lo]
            else:
                sig = self._sigma(q, rm.expand_as(q), x0, up, n)
        elif bits <= 12 and q.numel() > hi - lo + 1:
            sig = self._sigma(codes, codes.clamp(min=0), x0, up, n)[q - lo]
        else:
            sig = self._sigma(q, q.clamp(min=0), x0, up, n)
        s_out = fl32(float(np.float32(s)) * float(np.float32(2.0 ** -(self.out_bits - 1))))
        return UnitOut(q * sig, s_out)


GELU_A = -0.2888
GELU_B = -1.769


class GeluIBert:
    """I-BERT i-GELU (Integer mode): a second-order erf polynomial; per-tensor or per-channel scale."""

    name = "gelu_ibert"

    def __init__(self, preset="adapted", **kw):
        self.n = 14 if preset == "reference" else None
        self.k = 1.4142
        for k, v in kw.items():
            setattr(self, k, v)

    def consts(self, s: float):
        se = s / self.k
        ss = se * se
        b = ffloor(rdiv(GELU_B, se))
        c = f2i(max(float(np.floor(rdiv(1.0 / GELU_A, ss))), -9.0e18))
        n = self.n if self.n is not None else max(bit_length(abs(c)) - 12, 0)
        sig_sf = (ss * GELU_A) * 2.0 ** n
        shift = ffloor(rdiv(1.0, sig_sf))
        s_out = (s * sig_sf) / 2.0
        return b, c, shift, n, s_out

    def __call__(self, q, scale, bits, signed=True, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 32, signed, True)
        per_channel = np.ndim(scale) > 0
        sv = np.asarray(scale, dtype=np.float64).reshape(-1)
        cs = [self.consts(float(s)) for s in sv]
        dev = q.device
        b = t([c[0] for c in cs], dev)
        c = t([c[1] for c in cs], dev)
        shift = t([c[2] for c in cs], dev)
        n = t([c[3] for c in cs], dev)
        qmax = int(q.abs().max()) if q.numel() else 0
        tmax = max(abs(x[0]) for x in cs)
        ymax = tmax * tmax + max(abs(x[1]) for x in cs)
        if ymax >= 1 << 62 or qmax * ((ymax >> min(x[3] for x in cs)) + 1 + max(abs(x[2]) for x in cs)) >= 1 << 62:
            raise RangeError(f"{self.name}: i-GELU products leave the int64 range")
        a = torch.minimum(q.abs(), -b)
        tt = a + b
        y = tt * tt + c
        y = torch.where(q < 0, -y, torch.where(q == 0, torch.zeros_like(y), y))
        out = q * ((y >> n) + shift)
        s_out = np.array([x[4] for x in cs]) if per_channel else cs[0][4]
        return UnitOut(out, s_out)


# ---------------------------------------------------------------------------------------------
# LayerNorms

def ln_out_unit(c: int) -> float:
    """`fl32(fl32(sqrt(fl32(C))) / 2^30)`."""
    return float(np.sqrt(np.float32(c)) / np.float32(2.0 ** 30))


def ln_bias_and_scale(gamma, beta, c: int):
    """Per-channel `bias_int = ⌊fl(fl(β/γ)/sf)⌋` and output scale `sf·γ` (f64 from f32 params)."""
    sf = ln_out_unit(c)
    g = np.asarray(gamma, dtype=np.float32).astype(np.float64)
    b = np.asarray(beta, dtype=np.float32).astype(np.float64)
    bias = []
    for gi, bi in zip(g.tolist(), b.tolist()):
        if gi == 0.0:
            bias.append(0)
        else:
            v = float(np.floor((bi / gi) / sf))
            bias.append(f2i(min(max(v, -9.0e18), 9.0e18)))
    return bias, sf * g


def _ln_scale_row(y, factor, bias):
    return ((y * factor) >> 1) + bias


class LayerNormIVit:
    """I-ViT I-LayerNorm (Integer mode): fixed-step Newton square root."""

    name = "layernorm_ivit"

    def __init__(self, preset="adapted", **kw):
        self.newton_steps = 10
        self.start = 1 << 16 if preset == "reference" else "bitlength"
        for k, v in kw.items():
            setattr(self, k, v)

    def __call__(self, q, scale, bits, signed=True, gamma=None, beta=None, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 32, signed, True)
        c = q.shape[-1]
        bias, oscale = ln_bias_and_scale(gamma, beta, c)
        bias = t(bias, q.device)
        s = q.sum(-1, keepdim=True)
        mean = div_round_half_even(s, c)
        y = q - mean
        var = (y * y).sum(-1, keepdim=True)
        if var.numel() and int(var.max()) >= 1 << 60:
            raise RangeError(f"{self.name}: row variance leaves the int64 range")
        if self.start == "bitlength":
            k = torch.ones_like(var) << ((bit_length_t(var) + 1) >> 1)
        else:
            k = torch.full_like(var, int(self.start))
        for _ in range(self.newton_steps):
            k = ((k + floor_div(var, k.clamp(min=1))) >> 1).clamp(min=1)
        factor = trunc_div(torch.full_like(k, (1 << 31) - 1), k)
        return UnitOut(_ln_scale_row(y, factor, bias), oscale)


class LayerNormIBert:
    """I-BERT IntLayerNorm (Integer mode): integer square root, a variance shift rule."""

    name = "layernorm_ibert"

    def __init__(self, preset="adapted", **kw):
        self.shift = ("dynamic", 0) if preset == "reference" else ("static", None)
        for k, v in kw.items():
            setattr(self, k, v)
        if isinstance(self.shift, str):  # mnq's --param form: dynamic:S, frozen:S or static
            rule, _, sv = self.shift.partition(":")
            if rule not in ("dynamic", "frozen", "static") or (rule != "static") != bool(sv):
                raise ValueError(f"layernorm_ibert: shift '{self.shift}' is not dynamic:S, frozen:S or static")
            self.shift = (rule, int(sv) if sv else None)

    @staticmethod
    def static_shift(bits: int, c: int) -> int:
        worst = (1 << (2 * bits)) * c
        for tt in range(64):
            if worst >> (2 * tt) < 1 << 32:
                return tt
        return 64

    def __call__(self, q, scale, bits, signed=True, gamma=None, beta=None, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 32, signed, True)
        c = q.shape[-1]
        bias, oscale = ln_bias_and_scale(gamma, beta, c)
        bias = t(bias, q.device)
        mean = div_round_half_even(q.sum(-1, keepdim=True), c)
        y = q - mean
        if y.numel() and int((y * y).sum(-1).max()) >= 1 << 60:
            raise RangeError(f"{self.name}: row variance leaves the int64 range")
        rule, s0 = self.shift
        base = self.static_shift(bits, c) if rule == "static" else s0
        bdims = q.dim() - 1  # every dim but the row
        shape1 = (q.shape[0],) + (1,) * bdims

        def var_of(sh):
            return ((y >> sh) ** 2).sum(-1, keepdim=True)

        shift = torch.full(shape1, base, dtype=I64, device=q.device)
        vars_ = var_of(shift)
        if rule == "dynamic":
            # Per unit call (dim 0): if any row's variance reaches 2^32, raise the shift to the
            # smallest t with V <= 2^(32+2t) over every row of that call.
            v0 = var_of(torch.zeros_like(shift))
            tt = torch.zeros_like(v0)
            for k in range(15):  # variances are below 2^60 (checked), so t <= 14
                tt = tt + (v0 > (1 << (32 + 2 * k))).to(I64)
            tmax = tt.reshape(q.shape[0], -1).max(-1).values.reshape(shape1)
            anyover = (vars_ >= 1 << 32).reshape(q.shape[0], -1).any(-1).reshape(shape1)
            shift = torch.where(anyover, torch.maximum(shift, tmax), shift)
            vars_ = var_of(shift)
        std = isqrt_t(vars_) << shift
        safe = std.clamp(min=1)
        factor = trunc_div(torch.full_like(safe, 1 << 31), safe)
        out = _ln_scale_row(y, factor, bias)
        out = torch.where(std == 0, bias.expand_as(out), out)
        return UnitOut(out, oscale)


class LayerNormFqVit:
    """FQ-ViT PTF integer LayerNorm (Integer mode): per-channel fixed-point constants."""

    name = "layernorm_fqvit"

    def __init__(self, preset="adapted", **kw):
        self.frac_bits = 20
        for k, v in kw.items():
            setattr(self, k, v)

    def integer_consts(self, sc, gamma, beta, so):
        c = len(sc)
        cf = float(c)
        s1 = min(sc)
        one = 2.0 ** self.frac_bits
        g = [float(np.float32(v)) for v in gamma]
        b = [float(np.float32(v)) for v in beta]
        kf = [int(rne(s / s1)) for s in sc]
        gq = [int(rne(cf * g[i] / so[i] * one)) for i in range(c)]
        hq = [int(rne(g[i] / so[i] * one)) for i in range(c)]
        bq = [int(rne(b[i] / so[i] * one)) for i in range(c)]
        return kf, gq, hq, bq

    def __call__(self, q, scale, bits, signed=False, gamma=None, beta=None, zero_point=0, out_scale=None, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 16, signed, None)
        c = q.shape[-1]
        if out_scale is None:
            raise ValueError(f"{self.name}: PTF LayerNorm needs the output scale of the next quantiser")
        so = [float(v) for v in np.broadcast_to(np.asarray(out_scale, dtype=np.float64), (c,))]
        sc = [float(v) for v in np.broadcast_to(np.asarray(scale, dtype=np.float64), (c,))]
        f = self.frac_bits
        kf, gq, hq, bq = self.integer_consts(sc, gamma, beta, so)
        dev = q.device
        kf_t, gq_t, hq_t, bq_t = t(kf, dev), t(gq, dev), t(hq, dev), t(bq, dev)
        xq = (q - int(zero_point)) * kf_t
        sm = xq.sum(-1, keepdim=True)
        ssq = (xq * xq).sum(-1, keepdim=True)
        d2 = c * ssq - sm * sm
        d = isqrt_t(d2)
        dmax = int(d.max()) if d.numel() else 0
        gmax = max(abs(v) for v in gq)
        if (dmax << (f + 1)) >= 1 << 56 or gmax >= 1 << 56 or (
                max(abs(v) for v in bq) * dmax + int(sm.abs().max()) * max(abs(v) for v in hq)) >= 1 << 61:
            raise RangeError(f"{self.name}: PTF constants leave the int64 range")
        g = gq_t.abs()
        dd = d.clamp(min=1)
        bg = bit_length_t(g)
        bd = bit_length_t(dd)
        diff = bg - bd
        ge = torch.where(diff >= 0, g >= (dd << diff.clamp(min=0)), (g << (-diff).clamp(min=0)) >= dd)
        lval = diff - f - (~ge).to(I64)
        n = torch.where(g == 0, torch.full_like(diff, 31), (7 - lval).clamp(0, 31))
        big_d = dd << f
        m = torch.where(g == 0, torch.zeros_like(n), floor_div(g << n, big_d).clamp(0, 255))
        # bb = RNE(((bq·d − sum·hq) << n) / (d << F)), by long division in steps of <= 8 bits
        # (the remainder stays below d·2^F < 2^55, so r << 8 fits).
        p = bq_t * dd - sm * hq_t
        qd = floor_div(p, big_d)
        r = p - qd * big_d
        rem = n
        for _ in range(4):
            s = rem.clamp(max=8)
            r = r << s
            qq = floor_div(r, big_d)
            qd = (qd << s) + qq
            r = r - qq * big_d
            rem = rem - s
        bb = qd + ((2 * r > big_d) | ((2 * r == big_d) & ((qd & 1) == 1))).to(I64)
        smm = torch.where(gq_t < 0, -m, m)
        out = shift_round_half_even(smm * xq + bb, n)
        zero = shift_round_half_even(bq_t, f).expand_as(out)
        out = torch.where(d == 0, zero, out)
        return UnitOut(out, out_scale if np.ndim(out_scale) else float(out_scale))


# ---------------------------------------------------------------------------------------------
# Requantiser and the FQ-ViT float GELU fallback

class Requant:
    """Dyadic requantisation `fixedpoint_mul` of I-ViT / I-BERT (Integer mode)."""

    def __init__(self, family="ivit", preset="adapted", **kw):
        self.family = family
        self.name = f"requant_{family}"
        self.out_bits = 8
        self.clamp = "always" if preset == "adapted" else family
        for k, v in kw.items():
            setattr(self, k, v)

    def clamps(self, bits):
        if self.clamp == "always":
            return True
        return bits in ((4, 8, 16, 32) if self.clamp == "ivit" else (4, 8, 16))

    def __call__(self, q, scale, bits, signed=True, out_scale=None, identity=None, **aux) -> UnitOut:
        _check_bits(self.name, bits, 2, 48, signed, True)
        if out_scale is None or not (out_scale > 0):
            raise ValueError(f"{self.name}: requantiser needs a positive per-tensor output scale")
        c = q.shape[-1]
        so = fl32(float(out_scale))
        sv = np.broadcast_to(np.asarray(scale, dtype=np.float64), (c,))
        m, e = dyadics(sv / so)
        v = rne_mul_shift(q, m.to(q.device), e.to(q.device))
        if identity is not None:
            iq, iscale = identity
            mi, ei = dyadics(np.broadcast_to(np.asarray(iscale, dtype=np.float64), (c,)) / so)
            v = v + rne_mul_shift(iq, mi.to(q.device), ei.to(q.device))
        if self.clamps(self.out_bits):
            lo, hi = int_range(self.out_bits, True)
            v = v.clamp(lo, hi)
        return UnitOut(v, so)


def float_gelu_code(q: int, s_in: float, s_out: float, bits: int) -> int:
    """FQ-ViT's float GELU of one input code, quantised to `bits` at `s_out` (`quant::float_gelu_code`)."""
    lo, hi = int_range(bits, True)
    return int(min(max(rne(gelu_f64(q * s_in) / s_out), lo), hi))


def float_gelu_table(s_in: float, s_out: float, bits: int) -> torch.Tensor:
    """The fallback as a table over every input code `lo..=hi` (what mnq precomputes)."""
    lo, hi = int_range(bits, True)
    return torch.tensor([float_gelu_code(v, s_in, s_out, bits) for v in range(lo, hi + 1)], dtype=I64)


class FloatGelu:
    """`gelu_fqvit`: FQ-ViT's float GELU fallback — not an integer unit (mnq's choice too)."""

    name = "gelu_fqvit"

    def __call__(self, q, scale, bits, signed=True, out_scale=None, **aux) -> UnitOut:
        tab = float_gelu_table(float(scale), float(out_scale), bits).to(q.device)
        lo, _ = int_range(bits, True)
        return UnitOut(tab[q - lo], float(out_scale))


UNITS = {
    "softmax_ibert": SoftmaxIBert,
    "softmax_ivit": SoftmaxIVit,
    "softmax_fqvit": SoftmaxFqVit,
    "gelu_ibert": GeluIBert,
    "gelu_ivit": GeluIVit,
    "layernorm_ibert": LayerNormIBert,
    "layernorm_ivit": LayerNormIVit,
    "layernorm_fqvit": LayerNormFqVit,
    "requant_ivit": lambda preset="adapted", **kw: Requant("ivit", preset, **kw),
    "requant_ibert": lambda preset="adapted", **kw: Requant("ibert", preset, **kw),
}


def build(name: str, preset: str = "adapted", **params):
    """A unit by mnq name with a preset (`reference` or `adapted`) and parameter overrides."""
    if name == "gelu_fqvit":
        return FloatGelu()
    if name not in UNITS:
        raise ValueError(f"unknown unit '{name}' (known: {', '.join(list(UNITS) + ['gelu_fqvit'])})")
    if preset not in ("reference", "adapted"):
        raise ValueError(f"unknown preset '{preset}' (reference or adapted)")
    return UNITS[name](preset=preset, **params)
