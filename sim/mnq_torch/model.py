"""An mnq model directory as a PyTorch module: mnq's integer forward (`src/model/quant.rs`),
bit-exact, plus a straight-through float surrogate for quantisation-aware training.

`MnqModel(dir, bits=..., assignment=...)` reads `manifest.json` (with its `quant` section) and
`model.safetensors` (ViT, DeiT and Swin as the model directory contract describes them; Swin
as `src/model/arch/swin.rs` builds it: patch embedding + LayerNorm requantised into the first
residual stream, cyclic shift and window partition as exact token permutations, the relative
position bias as the integer table `RNE(bias/s_scores)` added before the clamp, the
shifted-window mask passed to the softmax units, patch merging on the 16-bit residual with a
bias-free reduction into a new 16-bit residual, and the mean over tokens `RNE(Σ_t q / T)`).
Three modes share one op list:

* `int`: the integer forward alone — image by image the same integers as `mnq infer`
  (`int_logits`: the head accumulators; `logits`: float64, as mnq computes them).
* `qat`: the integer forward plus a float32 surrogate that carries the gradients. At every
  quantisation point the surrogate's value is replaced by the dequantised integer result, with
  a straight-through estimator (STE, the seed's Eq. 2) for the gradient:
    - requantisation to an activation point (scale `s`, range `[lo, hi]`): the value is
      `q·s` with `q` the exact integer; `∂/∂y = 1` where `lo ≤ y/s ≤ hi`, else 0 (rounding
      passes the gradient, clipping stops it); `∂/∂s` is LSQ's `q − y/s` inside the range and
      `q` (= lo or hi) outside, times `1/√(numel·hi)`. Activation scales are learned this way;
      16-bit residual scales and PTF parameters stay as calibrated.
    - weights (per output channel symmetric, scale `max|w|/(2^(b−1)−1)` recomputed every
      step, so nothing clips): identity STE, `∂/∂w = ∂/∂ŵ`.
    - each non-linear unit: the value is the unit's dequantised integer output; the gradient is
      the float operation's at the surrogate input (softmax, erf GELU, LayerNorm with the
      manifest's eps, which also gives LayerNorm's γ and β their gradients; Swin's masked
      softmax: timm's −100 added to the masked logits).
    - logits: the value is mnq's float64 logits, the gradient the float head's.
* `float`: the float surrogate alone, without quantisation (calibration in `calib.py`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import units as U
from .fixed import I64, RangeError, div_round_half_even, dyadic_t, int_matmul, int_range, rne_mul_shift

RESIDUAL_BITS = 16
SUPPORTED_BITS = range(4, 9)  # mnq's integer forward: 4..=8
F32_EPS = float(np.finfo(np.float32).eps)


class ModelDirError(ValueError):
    """A model directory, assignment or quant section that does not fit."""


def qmax(bits: int) -> float:
    return float((1 << (bits - 1)) - 1)


def swin_stages(m: dict):
    """Per Swin stage: (stage, depth, width, heads, grid side, window side) as swin.rs derives
    them (window `min(window_size, grid)`)."""
    sw = m["swin"]
    grid = m["img_size"] // m["patch_size"]
    out = []
    for st, depth in enumerate(sw["depths"]):
        if st > 0:
            grid //= 2
        out.append((st, depth, sw["embed_dims"][st], sw["num_heads"][st], grid, min(sw["window_size"][st], grid)))
    return out


def swin_shift(m: dict, st: int, j: int, grid: int, w: int) -> int:
    """timm's `_calc_window_shift`: odd blocks shift by window_size/2 while the grid exceeds the window."""
    return m["swin"]["window_size"][st] // 2 if j % 2 == 1 and grid > w else 0


def _block_layers(pre):
    return [(f"{pre}.norm1", "layernorm"), (f"{pre}.attn.softmax", "softmax"),
            (f"{pre}.norm2", "layernorm"), (f"{pre}.mlp.act", "gelu")]


def layer_names(m: dict):
    """Non-linear layers of a manifest in execution order: (name, op)."""
    out = []
    if m["arch"] == "swin":
        if m["swin"].get("patch_norm", True):
            out.append(("patch_embed.norm", "layernorm"))
        for st, depth, *_ in swin_stages(m):
            if st > 0:
                out.append((f"layers.{st}.downsample.norm", "layernorm"))
            for j in range(depth):
                out += _block_layers(f"layers.{st}.blocks.{j}")
        return out + [("norm", "layernorm")]
    for b in range(m["depth"]):
        out += _block_layers(f"blocks.{b}")
    return out + [("norm", "layernorm")]


def _block_points(p, pre):
    for k in ("norm1", "attn.qkv", "attn.matmul_qk", "attn.matmul_av", "attn.proj"):
        p[f"{pre}.{k}"] = False
    p[f"{pre}.residual1"] = True
    for k in ("norm2", "mlp.fc1", "mlp.act", "mlp.fc2"):
        p[f"{pre}.{k}"] = False
    p[f"{pre}.residual2"] = True


def point_names(m: dict):
    """Quantisation points of a manifest: name → is_residual."""
    if m["arch"] == "swin":
        p = {"input": False, "patch_embed": True}
        if m["swin"].get("patch_norm", True):
            p["patch_embed.norm"] = False
            p["patch_embed.residual"] = True
        for st, depth, *_ in swin_stages(m):
            if st > 0:
                p[f"layers.{st}.downsample.norm"] = False
                p[f"layers.{st}.downsample.reduction"] = True
            for j in range(depth):
                _block_points(p, f"layers.{st}.blocks.{j}")
        p["norm"] = False
        return p
    p = {"input": False, "patch_embed": False, "pos_embed": True}
    for b in range(m["depth"]):
        _block_points(p, f"blocks.{b}")
    p["norm"] = False
    return p


def _block_tensors(e, pre, d, h):
    e.update({pre + "norm1.weight": [d], pre + "norm1.bias": [d], pre + "norm2.weight": [d], pre + "norm2.bias": [d],
              pre + "attn.qkv.weight": [3 * d, d], pre + "attn.qkv.bias": [3 * d],
              pre + "attn.proj.weight": [d, d], pre + "attn.proj.bias": [d],
              pre + "mlp.fc1.weight": [h, d], pre + "mlp.fc1.bias": [h],
              pre + "mlp.fc2.weight": [d, h], pre + "mlp.fc2.bias": [d]})


def expected_tensors(m: dict):
    """Tensor names and shapes of a manifest (as mnq's graph builder registers them)."""
    d, c, p, k = m["embed_dim"], m["in_chans"], m["patch_size"], m["num_classes"]
    if m["arch"] == "swin":
        e = {"patch_embed.proj.weight": [d, c, p, p], "patch_embed.proj.bias": [d]}
        if m["swin"].get("patch_norm", True):
            e["patch_embed.norm.weight"] = [d]
            e["patch_embed.norm.bias"] = [d]
        dim = d
        for st, depth, ds, nh, grid, w in swin_stages(m):
            if st > 0:
                pre = f"layers.{st}.downsample."
                e[pre + "norm.weight"] = [4 * dim]
                e[pre + "norm.bias"] = [4 * dim]
                e[pre + "reduction.weight"] = [ds, 4 * dim]
                dim = ds
            for j in range(depth):
                pre = f"layers.{st}.blocks.{j}."
                _block_tensors(e, pre, ds, int(ds * m["mlp_ratio"]))
                e[pre + "attn.relative_position_bias_table"] = [(2 * w - 1) ** 2, nh]
        e["norm.weight"] = [dim]
        e["norm.bias"] = [dim]
        if k > 0:
            e["head.fc.weight"] = [k, dim]
            e["head.fc.bias"] = [k]
        return e
    h = int(d * m["mlp_ratio"])
    deit = m["arch"] == "deit"
    t = (m["img_size"] // p) ** 2 + 1 + int(deit)
    e = {"cls_token": [1, 1, d], "pos_embed": [1, t, d], "patch_embed.proj.weight": [d, c, p, p],
         "patch_embed.proj.bias": [d], "norm.weight": [d], "norm.bias": [d]}
    if deit:
        e["dist_token"] = [1, 1, d]
    for b in range(m["depth"]):
        pre = f"blocks.{b}."
        _block_tensors(e, pre, d, h)
        if m.get("layer_scale"):
            e[pre + "ls1.gamma"] = [d]
            e[pre + "ls2.gamma"] = [d]
    if k > 0:
        e["head.weight"] = [k, d]
        e["head.bias"] = [k]
        if deit:
            e["head_dist.weight"] = [k, d]
            e["head_dist.bias"] = [k]
    return e


def shift_partition(grid: int, window: int, shift: int) -> list[int]:
    """Token order after `torch.roll` by (−shift, −shift) and the window partition (graph.rs)."""
    v = []
    nw = grid // window
    for wi in range(nw):
        for wj in range(nw):
            for a in range(window):
                for b in range(window):
                    v.append(((wi * window + a + shift) % grid) * grid + (wj * window + b + shift) % grid)
    return v


def patch_merge_index(grid: int) -> list[int]:
    """Swin patch merging: rows `x(2i,2j), x(2i+1,2j), x(2i,2j+1), x(2i+1,2j+1)` (graph.rs)."""
    return [(2 * i + di) * grid + 2 * j + dj for i in range(grid // 2) for j in range(grid // 2)
            for di, dj in ((0, 0), (1, 0), (0, 1), (1, 1))]


def relative_position_index(w: int) -> list[int]:
    """timm's `get_relative_position_index(w, w)`, row-major `[w², w²]`."""
    n = w * w
    return [((i // w) + w - 1 - (j // w)) * (2 * w - 1) + (i % w) + w - 1 - (j % w) for i in range(n) for j in range(n)]


def window_mask(grid: int, window: int, shift: int) -> np.ndarray:
    """timm's `get_attn_mask` as flags `[windows, n, n]`, True = masked (`WindowMask::shifted`)."""
    def region(p):
        return 0 if p < grid - window else (1 if p < grid - shift else 2)
    label = np.array([3 * region(r) + region(c) for r in range(grid) for c in range(grid)])
    order = np.array(shift_partition(grid, window, 0)).reshape(-1, window * window)
    lab = label[order]
    return lab[:, :, None] != lab[:, None, :]


def load_manifest(path: Path) -> dict:
    try:
        m = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelDirError(f"{path}: no manifest.json (is this an mnq model directory?)") from None
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from None
    if m.get("arch") not in ("vit", "deit", "swin"):
        raise ModelDirError(f"{path}: arch '{m.get('arch')}' is not supported by mnq_torch (vit, deit and swin)")
    if m["arch"] == "swin" and not isinstance(m.get("swin"), dict):
        raise ModelDirError(f"{path}: arch swin needs a \"swin\" section")
    return m


def read_assignment(assign, layers) -> list[str]:
    """Unit names per layer in execution order from a dict, an assignment.json path or a method name."""
    if isinstance(assign, str) and assign in ("ibert", "ivit", "fqvit"):
        return [f"{op}_{assign}" for _, op in layers]
    if isinstance(assign, (str, Path)):
        p = Path(assign)
        try:
            a = json.loads(p.read_text())
        except FileNotFoundError:
            raise ModelDirError(f"assignment {p}: file not found") from None
        except json.JSONDecodeError as e:
            raise ModelDirError(f"assignment {p}: not valid JSON ({e})") from None
        src = str(p)
        if a.get("format") != 1 or not isinstance(a.get("layers"), dict):
            raise ModelDirError(f"assignment {src}: expected format 1 with a 'layers' object")
        assign = a["layers"]
    else:
        src = "(given)"
    names = [n for n, _ in layers]
    for k in assign:
        if k not in names:
            raise ModelDirError(f"assignment {src}: layer '{k}' does not exist in this model "
                                f"(its non-linear layers are {names[0]} … {names[-1]}, {len(names)} in all)")
    out = []
    for n, op in layers:
        if n not in assign:
            missing = [x for x in names if x not in assign]
            raise ModelDirError(f"assignment {src}: every non-linear layer needs a unit; missing: {', '.join(missing)}")
        u = assign[n]
        if not u.startswith(op + "_") or u.split("_", 1)[1] not in ("ibert", "ivit", "fqvit"):
            raise ModelDirError(f"assignment {src}: layer '{n}' is a {op} layer but unit '{u}' is not one of "
                                f"{op}_ibert, {op}_ivit, {op}_fqvit")
        out.append(u)
    return out


class _STEQuant(torch.autograd.Function):
    """Value `q·s`; gradient: clipping STE for the input, LSQ for the scale."""

    @staticmethod
    def forward(ctx, y, s, qf, lo, hi, gscale):
        ctx.save_for_backward(y, s, qf)
        ctx.lo, ctx.hi, ctx.gscale = lo, hi, gscale
        return (qf * s).to(y.dtype)

    @staticmethod
    def backward(ctx, g):
        y, s, qf = ctx.saved_tensors
        v = y / s
        inside = (v >= ctx.lo) & (v <= ctx.hi)
        gy = g * inside.to(g.dtype)
        gs = None
        if ctx.needs_input_grad[1]:
            gs = ((g * torch.where(inside, qf - v, qf)).sum() * ctx.gscale).to(s.dtype).reshape(s.shape)
        return gy, gs, None, None, None, None


class _Replace(torch.autograd.Function):
    """Value exactly `value` (in f's dtype), gradient passed to `f` unchanged."""

    @staticmethod
    def forward(ctx, f, value):
        return value.to(f.dtype)

    @staticmethod
    def backward(ctx, g):
        return g, None


def _replace(f, value):
    """Value `value`, gradient of `f` (a unit's STE). Not `f + (value − f).detach()`, which
    rounds in float32 and would leave the value a unit in the last place off."""
    return _Replace.apply(f, value)


class MnqModel(torch.nn.Module):
    """An mnq ViT/DeiT/Swin model directory with a unit per non-linear layer (see the module docstring)."""

    def __init__(self, model_dir, bits: int = 8, assignment=None, preset: str = "adapted", manifest=None,
                 weight_bits: int | None = None, device="cpu", allow_uncalibrated: bool = False):
        super().__init__()
        self.dir = Path(model_dir)
        mpath = Path(manifest) if manifest else self.dir / "manifest.json"
        self.m = m = load_manifest(mpath)
        if bits not in SUPPORTED_BITS:
            raise ModelDirError(f"bits {bits} is not supported by mnq's integer forward (4..=8)")
        self.bits = bits
        self.weight_bits = weight_bits or bits
        if self.weight_bits not in SUPPORTED_BITS:
            raise ModelDirError(f"weight bits {self.weight_bits} is not supported (4..=8)")
        self.preset = preset
        self.layers = layer_names(m)
        self.points = point_names(m)
        q = m.get("quant") or {}
        if assignment is None:
            assignment = q.get("assignment") or "ivit"
        self.assignment = read_assignment(assignment, self.layers)
        self.units = {n: U.build(u, preset) for (n, _), u in zip(self.layers, self.assignment)}
        self._load_tensors(device)
        self.scales = torch.nn.ParameterDict()
        for p, res in self.points.items():
            self.scales[p.replace(".", "__")] = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64), requires_grad=not res)
        self.ptf = {}
        self.calibrated = False
        if q.get("act_scales") or not allow_uncalibrated:
            self.set_quant(q, origin=str(mpath))
        self.to(device)

    def set_quant(self, q: dict, origin: str = "quant section"):
        """Take activation scales and PTF parameters from a quant section, carried to `self.bits`
        as mnq does (`ActScales::from_section`: act_bits ranges kept, residual scales as they are)."""
        scales = q.get("act_scales") or {}
        missing = [p for p in self.points if p not in scales]
        if missing:
            raise ModelDirError(f"{origin}: the quant section has no activation scale for {', '.join(missing[:4])}"
                                f"{' …' if len(missing) > 4 else ''}; run `mnq calibrate` (sim/qat.py calibrates itself)")
        f = qmax(min(max(int(q.get("act_bits", self.bits)), 2), 32)) / qmax(self.bits)
        with torch.no_grad():
            for p, res in self.points.items():
                v = float(scales[p]) if res else float(scales[p]) * f
                if not (math.isfinite(v) and v > 0):
                    raise ModelDirError(f"{origin}: activation scale {p} = {v} is not a positive number")
                self.s(p).fill_(v)
        self.ptf = {k: dict(v) for k, v in (q.get("ptf") or {}).items()}
        for (n, _), u in zip(self.layers, self.assignment):
            if u == "layernorm_fqvit" and n not in self.ptf:
                raise ModelDirError(f"layer {n} uses layernorm_fqvit but the quant section has no PTF parameters for it "
                                    f"(quant.ptf.{n}); run `mnq calibrate`")
        self.calibrated = True

    # -- parameters -------------------------------------------------------------------------

    def _load_tensors(self, device):
        from safetensors.torch import load_file
        path = self.dir / "model.safetensors"
        if not path.exists():
            raise ModelDirError(f"{path}: no model.safetensors")
        st = load_file(str(path))
        want = expected_tensors(self.m)
        extra = sorted(set(st) - set(want))
        if extra:
            raise ModelDirError(f"{path}: unexpected tensor(s) {', '.join(extra[:5])} for this manifest")
        self.params = torch.nn.ParameterDict()
        self._names = {}
        for k, shape in want.items():
            if k not in st:
                raise ModelDirError(f"{path}: tensor '{k}' is missing")
            v = st[k]
            if v.dtype != torch.float32 or list(v.shape) != shape:
                raise ModelDirError(f"{path}: tensor '{k}' is {v.dtype} {list(v.shape)}, expected float32 {shape}")
            key = k.replace(".", "__")
            self._names[k] = key
            self.params[key] = torch.nn.Parameter(v.clone())

    def p(self, name: str) -> torch.Tensor:
        return self.params[self._names[name]]

    def s(self, point: str) -> torch.nn.Parameter:
        return self.scales[point.replace(".", "__")]

    def state_tensors(self) -> dict:
        """The float weights under their timm names (for model.safetensors)."""
        return {k: self.params[v].detach().to("cpu", torch.float32).contiguous() for k, v in self._names.items()}

    def act_scales(self) -> dict:
        return {p: float(self.s(p).detach()) for p in self.points}

    def clamp_scales(self):
        with torch.no_grad():
            for v in self.scales.values():
                v.clamp_(min=1e-8)

    # -- the forward ------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, mode: str = "int", observer=None) -> dict:
        """Forward of normalised float32 images `[B, C, H, W]` (see the module docstring)."""
        if mode not in ("int", "qat", "float"):
            raise ValueError(f"mode {mode}")
        return _Run(self, images, mode, observer).run()

    @staticmethod
    def normalise(pixels: np.ndarray, mean, std) -> np.ndarray:
        """uint8 `[N, H, W]` or `[N, C, H, W]` → float32 `[N, C, H, W]`: `(p/255 − mean_c)/std_c` in
        float32, operation for operation as mnq's `Images::image`."""
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[:, None]
        x = x.astype(np.float32) / np.float32(255.0)
        mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((x - mean) / std).astype(np.float32)


class _Run:
    """One forward of a batch: integer path (`q`, int64) and/or surrogate path (`x`, float32)."""

    def __init__(self, mm: MnqModel, images, mode, observer):
        self.mm, self.mode, self.obs = mm, mode, observer
        self.ints = mode in ("int", "qat")
        self.flt = mode in ("qat", "float")
        self.dev = images.device
        self.ab = mm.bits
        self.lo, self.hi = int_range(self.ab, True)
        self.S = {p: float(v.detach()) for p, v in zip(mm.points, (mm.s(p) for p in mm.points))} if self.ints else {}
        self.images = images

    # helpers ---------------------------------------------------------------------------------

    def point(self, name, y, q, residual=False):
        """Surrogate at a quantisation point: observe y; in qat mode the value becomes q·s."""
        if self.obs is not None and y is not None:
            self.obs(name, y)
        if self.mode != "qat":
            return y
        bits = RESIDUAL_BITS if residual else self.ab
        lo, hi = int_range(bits, True)
        s = self.mm.s(name).to(torch.float32)
        gscale = 1.0 / math.sqrt(max(y.numel(), 1) * hi)
        return _STEQuant.apply(y, s, q.to(torch.float32), lo, hi, gscale)

    def qlinear(self, prefix, s_in, s_out, ls=None, wname=None, bias=True):
        """Integer weights, bias, accumulator scales and requantiser of a linear layer (quant.rs
        QLinear); `bias=False`: a bias-free layer (Swin's patch-merging reduction), bias 0."""
        w = self.mm.p(f"{prefix}.weight" if wname is None else wname)
        b = self.mm.p(f"{prefix}.bias") if bias else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        n = w.shape[0]
        if not self.ints:  # float mode: the float weights
            wf = w.reshape(n, -1) if ls is None else w.reshape(n, -1) * ls[:, None]
            return dict(what=wf, b=b if ls is None else b * ls)
        wd = w.detach().to(torch.float64).reshape(n, -1)
        bd = b.detach().to(torch.float64)
        g = None
        if ls is not None:
            g = ls.detach().to(torch.float64)
            wd = wd * g[:, None]
            bd = bd * g
        wb = self.mm.weight_bits
        qm = qmax(wb)
        lo, hi = int_range(wb, True)
        amax = wd.abs().amax(1)
        sw = torch.where(amax > 0, amax / qm, torch.full_like(amax, 1.0 / qm))
        wq = torch.round(wd / sw[:, None]).clamp(lo, hi).to(I64)
        sa = s_in * sw
        bias = torch.round(bd / sa).clamp(-9.0e15, 9.0e15).to(I64)
        req = dyadic_t(sa / s_out) if s_out is not None else None
        what = None
        if self.flt:
            wf = w.reshape(n, -1)
            if ls is not None:
                wf = wf * ls[:, None]
            what = wf + (wq.to(torch.float32) * sw.to(torch.float32)[:, None] - wf).detach()
        return dict(wq=wq, bias=bias, sa=sa, req=req, what=what, b=b if ls is None else b * ls)

    def lin_int(self, L, xq, bits=None):
        acc = int_matmul(xq, L["wq"].t()) + L["bias"]
        if bits is None:
            return acc
        lo, hi = int_range(bits, True)
        m, e = L["req"]
        return rne_mul_shift(acc, m, e).clamp(lo, hi)

    @staticmethod
    def lin_flt(L, x):
        return x @ L["what"].t() + L["b"]

    def unit(self, layer, q, scale, bits, signed=True, **aux):
        try:
            return self.mm.units[layer](q, scale, bits, signed, **aux)
        except (ValueError, RangeError) as e:
            raise RangeError(f"layer {layer} ({self.mm.units[layer].name}): {e}") from None

    def req_scalar(self, ratio):
        m, e = dyadic_t(torch.tensor([ratio], dtype=torch.float64, device=self.dev))
        return m, e

    def req_vec(self, ratios):
        return dyadic_t(torch.as_tensor(np.asarray(ratios, dtype=np.float64), device=self.dev))

    # ops -------------------------------------------------------------------------------------

    def layer_norm(self, name, rq, rx, s_res, out_point):
        mm = self.mm
        gamma, beta = mm.p(f"{name}.weight"), mm.p(f"{name}.bias")
        hq = hx = None
        if self.ints:
            s_out = self.S[out_point]
            g_np = gamma.detach().cpu().numpy()
            b_np = beta.detach().cpu().numpy()
            if mm.units[name].name != "layernorm_fqvit":
                o = self.unit(name, rq, s_res, RESIDUAL_BITS, True, gamma=g_np, beta=b_np)
                m, e = self.req_vec(np.asarray(o.scale, dtype=np.float64) / s_out)
                hq = rne_mul_shift(o.values, m, e).clamp(self.lo, self.hi)
            else:
                p = mm.ptf[name]
                levels = (1 << self.ab) - 1
                scale8 = max((float(p["max"]) - float(p["min"])) / levels, F32_EPS)
                zp = int(min(max(-float(np.rint(float(p["min"]) / scale8)), 0.0), float(levels)))
                if len(p["alpha"]) != rq.shape[-1]:
                    raise ModelDirError(f"quant.ptf.{name} has {len(p['alpha'])} alpha values but the layer has {rq.shape[-1]} channels")
                sc = np.array([scale8 / 8.0 * float(1 << int(a)) for a in p["alpha"]])
                m, e = self.req_vec(s_res / sc)
                xq = (rne_mul_shift(rq, m, e) + zp).clamp(0, levels)
                o = self.unit(name, xq, sc, self.ab, False, gamma=g_np, beta=b_np, zero_point=zp, out_scale=s_out)
                hq = o.values.clamp(self.lo, self.hi)
        if self.flt:
            hx = F.layer_norm(rx, (rx.shape[-1],), gamma, beta, float(mm.m["ln_eps"]))
            hx = self.point(out_point, hx, hq)
        return hq, hx

    def run(self) -> dict:
        m = self.mm.m
        x32 = self.images.to(torch.float32)
        B = x32.shape[0]
        pz, c = m["patch_size"], m["in_chans"]
        grid = m["img_size"] // pz

        def patches(x):
            return x.reshape(B, c, grid, pz, grid, pz).permute(0, 2, 4, 1, 3, 5).reshape(B, grid * grid, c * pz * pz)

        self.patches = patches
        if m["arch"] == "swin":
            return self.run_swin()
        return self.run_vit()

    def embed(self, residual):
        """Input quantisation and the patch projection (to act_bits, or to 16 bits when `residual`)."""
        S = self.S
        x32 = self.images.to(torch.float32)
        lo, hi = self.lo, self.hi
        Lpe = self.qlinear("patch_embed.proj", S.get("input", 0.0), S.get("patch_embed"))
        xq = pq = xx = px = None
        if self.ints:
            xq = torch.round(x32.to(torch.float64) / S["input"]).clamp(lo, hi).to(I64)
            pq = self.lin_int(Lpe, self.patches(xq), RESIDUAL_BITS if residual else self.ab)
        if self.flt:
            xx = self.point("input", x32, xq)
            px = self.point("patch_embed", self.lin_flt(Lpe, self.patches(xx)), pq, residual=residual)
        return pq, px

    def run_vit(self) -> dict:
        mm, m = self.mm, self.mm.m
        B = self.images.shape[0]
        d, heads = m["embed_dim"], m["num_heads"]
        deit = m["arch"] == "deit"
        npre = 2 if deit else 1
        rlo, rhi = int_range(RESIDUAL_BITS, True)
        S = self.S

        # Patch embedding and tokens.
        pq, px = self.embed(False)
        rq = rx = None
        cls, pos = mm.p("cls_token"), mm.p("pos_embed")
        pre = [cls] + ([mm.p("dist_token")] if deit else [])
        s_res = S.get("pos_embed")
        if self.ints:
            s_r0 = S["pos_embed"]

            def q16(v):
                return torch.round(v / s_r0).clamp(rlo, rhi).to(I64)

            posd = pos.detach().to(torch.float64)[0]
            pre_rows = torch.stack([q16(t_.detach().to(torch.float64)[0, 0] + posd[i]) for i, t_ in enumerate(pre)])
            m_, e_ = self.req_scalar(S["patch_embed"] / s_r0)
            r = (rne_mul_shift(pq, m_, e_) + q16(posd[npre:])).clamp(rlo, rhi)
            rq = torch.cat([pre_rows.unsqueeze(0).expand(B, -1, -1), r], 1)
        if self.flt:
            tok = torch.cat([t_.expand(B, -1, -1) for t_ in pre] + [px], 1) + pos
            rx = self.point("pos_embed", tok, rq, residual=True)

        for bi in range(m["depth"]):
            pre_ = f"blocks.{bi}"
            ls1 = mm.p(f"{pre_}.ls1.gamma") if m.get("layer_scale") else None
            ls2 = mm.p(f"{pre_}.ls2.gamma") if m.get("layer_scale") else None
            rq, rx, s_res = self.block(pre_, rq, rx, s_res, d, heads, ls1, ls2)

        hq, hx = self.layer_norm("norm", rq, rx, s_res, "norm")
        out = {}
        if m["num_classes"] == 0:
            if self.ints:
                out["int_logits"] = hq[:, 0]
                out["logits"] = hq[:, 0].to(torch.float64) * S["norm"]
            if self.flt:
                out["surrogate"] = hx[:, 0] if self.mode == "float" else _replace(hx[:, 0], out["logits"])
            return out
        Lh = self.qlinear("head", S.get("norm"), None)
        Ld = self.qlinear("head_dist", S.get("norm"), None) if deit else None
        if self.ints:
            ah = self.lin_int(Lh, hq[:, 0])
            lh = ah.to(torch.float64) * Lh["sa"]
            if deit:
                ad = self.lin_int(Ld, hq[:, 1])
                out["int_logits"] = torch.cat([ah, ad], 1)
                out["logits"] = (lh + ad.to(torch.float64) * Ld["sa"]) / 2.0
            else:
                out["int_logits"] = ah
                out["logits"] = lh
        if self.flt:
            lf = self.lin_flt(Lh, hx[:, 0])
            if deit:
                lf = (lf + self.lin_flt(Ld, hx[:, 1])) / 2.0
            out["surrogate"] = lf if self.mode == "float" else _replace(lf, out["logits"])
        return out

    def to_residual(self, hq, hx, in_point, point):
        """An act_bits activation requantised into a new 16-bit residual stream (`ToResidual`)."""
        rq = rx = None
        if self.ints:
            rlo, rhi = int_range(RESIDUAL_BITS, True)
            m_, e_ = self.req_scalar(self.S[in_point] / self.S[point])
            rq = rne_mul_shift(hq, m_, e_).clamp(rlo, rhi)
        if self.flt:
            rx = self.point(point, hx, rq, residual=True)
        return rq, rx, self.S.get(point)

    def run_swin(self) -> dict:
        mm, m = self.mm, self.mm.m
        S = self.S
        sw = m["swin"]
        # The patch projection is a 16-bit residual; its LayerNorm's output is requantised into
        # the first residual stream.
        rq, rx = self.embed(True)
        s_res = S.get("patch_embed")
        if sw.get("patch_norm", True):
            hq, hx = self.layer_norm("patch_embed.norm", rq, rx, s_res, "patch_embed.norm")
            rq, rx, s_res = self.to_residual(hq, hx, "patch_embed.norm", "patch_embed.residual")
        dim = m["embed_dim"]
        for st, depth, ds, nh, grid, w in swin_stages(m):
            if st > 0:
                # Patch merging on the 16-bit residual, LayerNorm, bias-free reduction to 16 bits.
                idx = torch.tensor(patch_merge_index(grid * 2), device=self.dev)
                B = self.images.shape[0]
                if self.ints:
                    rq = rq[:, idx].reshape(B, grid * grid, 4 * dim)
                if self.flt:
                    rx = rx[:, idx].reshape(B, grid * grid, 4 * dim)
                name = f"layers.{st}.downsample"
                hq, hx = self.layer_norm(f"{name}.norm", rq, rx, s_res, f"{name}.norm")
                L = self.qlinear(f"{name}.reduction", S.get(f"{name}.norm"), S.get(f"{name}.reduction"), bias=False)
                rq = rx = None
                if self.ints:
                    rq = self.lin_int(L, hq, RESIDUAL_BITS)
                if self.flt:
                    rx = self.point(f"{name}.reduction", self.lin_flt(L, hx), rq, residual=True)
                s_res = S.get(f"{name}.reduction")
                dim = ds
            for j in range(depth):
                shift = swin_shift(m, st, j, grid, w)
                rq, rx, s_res = self.block(f"layers.{st}.blocks.{j}", rq, rx, s_res, ds, nh, window=(grid, w, shift))
        hq, hx = self.layer_norm("norm", rq, rx, s_res, "norm")
        out = {}
        pq = None
        if self.ints:
            pq = div_round_half_even(hq.sum(1), hq.shape[1])  # RNE(Σ_t q / T), exact
        if m["num_classes"] == 0:
            if self.ints:
                out["int_logits"] = pq
                out["logits"] = pq.to(torch.float64) * S["norm"]
            if self.flt:
                f = hx.mean(1)
                out["surrogate"] = f if self.mode == "float" else _replace(f, out["logits"])
            return out
        Lh = self.qlinear("head.fc", S.get("norm"), None)
        if self.ints:
            ah = self.lin_int(Lh, pq)
            out["int_logits"] = ah
            out["logits"] = ah.to(torch.float64) * Lh["sa"]
        if self.flt:
            lf = self.lin_flt(Lh, hx.mean(1))
            out["surrogate"] = lf if self.mode == "float" else _replace(lf, out["logits"])
        return out

    def block(self, pre_, rq, rx, s_res, d, heads, ls1=None, ls2=None, window=None):
        """One pre-norm block (`arch::block`): attention over groups of `n` tokens (all tokens
        for ViT; Swin: `window = (grid, w, shift)`, roll and window partition around it, the
        relative position bias, the shifted-window mask), then the MLP."""
        mm = self.mm
        B = self.images.shape[0]
        hd = d // heads
        lo, hi = self.lo, self.hi
        S = self.S
        hq, hx = self.layer_norm(f"{pre_}.norm1", rq, rx, s_res, f"{pre_}.norm1")
        T = (hq if hq is not None else hx).shape[1]
        n, perm, inv, bias_tab, mask = T, None, None, None, None
        if window is not None:
            grid, w, shift = window
            n = w * w
            if w < grid or shift > 0:
                fwd = shift_partition(grid, w, shift)
                perm = torch.tensor(fwd, device=self.dev)
                inv = torch.empty_like(perm)
                inv[perm] = torch.arange(len(fwd), device=self.dev)
            rel = torch.tensor(relative_position_index(w), device=self.dev)
            # [(2w−1)², heads] → [heads, n, n]
            bias_tab = mm.p(f"{pre_}.attn.relative_position_bias_table")[rel].reshape(n, n, heads).permute(2, 0, 1)
            if shift > 0:
                mask = torch.from_numpy(window_mask(grid, w, shift)).to(self.dev)[None, :, None]  # [1, G, 1, n, n]
        G = T // n
        if perm is not None:
            hq = hq[:, perm] if hq is not None else None
            hx = hx[:, perm] if hx is not None else None

        def split(v):  # [B, T, 3D] → [3, B, G, heads, n, hd]
            return v.reshape(B, G, n, 3, heads, hd).permute(3, 0, 1, 4, 2, 5)

        def merge(v):  # [B, G, heads, n, hd] → [B, T, D]
            return v.permute(0, 1, 3, 2, 4).reshape(B, T, d)

        # qkv, scores, softmax, context, proj
        Lqkv = self.qlinear(f"{pre_}.attn.qkv", S.get(f"{pre_}.norm1"), S.get(f"{pre_}.attn.qkv"))
        qkvq = qkvx = None
        if self.ints:
            qkvq = self.lin_int(Lqkv, hq, self.ab)
        if self.flt:
            qkvx = split(self.point(f"{pre_}.attn.qkv", self.lin_flt(Lqkv, hx), qkvq))
        if self.ints:
            qkvq = split(qkvq)
        sq = sx = None
        pqk = f"{pre_}.attn.matmul_qk"
        if self.ints:
            s_qkv, s_qk = S[f"{pre_}.attn.qkv"], S[pqk]
            m_, e_ = self.req_scalar(s_qkv * s_qkv * (hd ** -0.5) / s_qk)
            sq = rne_mul_shift(int_matmul(qkvq[0], qkvq[1].transpose(-1, -2)), m_, e_)
            if bias_tab is not None:
                # The bias joins at the scores' scale; the sum is clamped to act_bits.
                sq = sq + torch.round(bias_tab.detach().to(torch.float64) / s_qk).to(I64)
            sq = sq.clamp(lo, hi)
        if self.flt:
            y = (qkvx[0] @ qkvx[1].transpose(-1, -2)) * (hd ** -0.5)
            if bias_tab is not None:
                y = y + bias_tab
            sx = self.point(pqk, y, sq)
        sm = f"{pre_}.attn.softmax"
        cq = cx = None
        pav = f"{pre_}.attn.matmul_av"
        if self.ints:
            aux = {} if mask is None else {"mask": mask}
            o = self.unit(sm, sq, S[pqk], self.ab, True, **aux)
            if o.encoding == "linear":
                probs_deq = o.values.to(torch.float64) * float(o.scale)
                ctx = int_matmul(o.values, qkvq[2])
                s_ctx = float(o.scale) * S[f"{pre_}.attn.qkv"]
            else:
                top = min((1 << o.log2_bits) - 1, 40)
                k = o.values
                ok = (k >= 0) & (k <= top)
                pw = torch.where(ok, torch.ones_like(k) << (top - k).clamp(0, 62), torch.zeros_like(k))
                probs_deq = torch.where(ok, torch.pow(2.0, -k.to(torch.float64)), torch.zeros_like(k, dtype=torch.float64))
                ctx = int_matmul(pw, qkvq[2])
                s_ctx = S[f"{pre_}.attn.qkv"] * 2.0 ** -top
            m_, e_ = self.req_scalar(s_ctx / S[pav])
            cq = merge(rne_mul_shift(ctx, m_, e_).clamp(lo, hi))
        if self.flt:
            # timm adds −100 to the logits of keys in other regions of a shifted window.
            pf = torch.softmax(sx if mask is None else sx - 100.0 * mask.to(sx.dtype), -1)
            if self.mode == "qat":
                pf = _replace(pf, probs_deq)
            cx = self.point(pav, merge(pf @ qkvx[2]), cq)
        Lp = self.qlinear(f"{pre_}.attn.proj", S.get(pav), S.get(f"{pre_}.attn.proj"), ls=ls1)
        oq = ox = None
        if self.ints:
            oq = self.lin_int(Lp, cq, self.ab)
        if self.flt:
            ox = self.point(f"{pre_}.attn.proj", self.lin_flt(Lp, cx), oq)
        if inv is not None:
            oq = oq[:, inv] if oq is not None else None
            ox = ox[:, inv] if ox is not None else None
        rq, rx, s_res = self.add(rq, rx, s_res, oq, ox, f"{pre_}.attn.proj", f"{pre_}.residual1")
        # MLP
        h2q, h2x = self.layer_norm(f"{pre_}.norm2", rq, rx, s_res, f"{pre_}.norm2")
        L1 = self.qlinear(f"{pre_}.mlp.fc1", S.get(f"{pre_}.norm2"), S.get(f"{pre_}.mlp.fc1"))
        act = f"{pre_}.mlp.act"
        pf1 = f"{pre_}.mlp.fc1"
        uname = mm.units[act].name
        aq = ax = gq = None
        if self.ints:
            acc = self.lin_int(L1, h2q)
            s_act = S[act]
            if uname == "gelu_ibert":
                # mnq passes the accumulator at its signed width (only checked: <= 32 bits).
                vmax, vmin = int(acc.max()), int(acc.min())
                wmax = max(2, max(max(vmax, 0).bit_length(), max(-vmin - 1, 0).bit_length()) + 1)
                o = self.unit(act, acc, L1["sa"].cpu().numpy(), wmax, True)
                m_, e_ = self.req_vec(np.asarray(o.scale, dtype=np.float64) / s_act)
                aq = rne_mul_shift(o.values, m_, e_).clamp(lo, hi)
            else:
                m_, e_ = dyadic_t(L1["sa"] / S[pf1])
                gq = rne_mul_shift(acc, m_, e_).clamp(lo, hi)
                if uname == "gelu_fqvit":
                    aq = self.unit(act, gq, S[pf1], self.ab, True, out_scale=s_act).values
                else:
                    o = self.unit(act, gq, S[pf1], self.ab, True)
                    m_, e_ = self.req_scalar(float(o.scale) / s_act)
                    aq = rne_mul_shift(o.values, m_, e_).clamp(lo, hi)
        if self.flt:
            f1 = self.lin_flt(L1, h2x)
            if uname == "gelu_ibert":
                if self.obs is not None:
                    self.obs(pf1, f1)
                g_in = f1
            else:
                g_in = self.point(pf1, f1, gq)
            ax = self.point(act, F.gelu(g_in), aq)
        L2 = self.qlinear(f"{pre_}.mlp.fc2", S.get(act), S.get(f"{pre_}.mlp.fc2"), ls=ls2)
        fq = fx = None
        if self.ints:
            fq = self.lin_int(L2, aq, self.ab)
        if self.flt:
            fx = self.point(f"{pre_}.mlp.fc2", self.lin_flt(L2, ax), fq)
        return self.add(rq, rx, s_res, fq, fx, f"{pre_}.mlp.fc2", f"{pre_}.residual2")

    def add(self, rq, rx, s_res, yq, yx, y_point, new_point):
        """The residual add: `clamp16(RNE(y·m_a/2^e_a) + RNE(r·m_b/2^e_b))` at the new 16-bit scale."""
        nq = nx = None
        s_new = self.S.get(new_point)
        if self.ints:
            rlo, rhi = int_range(RESIDUAL_BITS, True)
            ma, ea = self.req_scalar(self.S[y_point] / s_new)
            mb, eb = self.req_scalar(s_res / s_new)
            nq = (rne_mul_shift(yq, ma, ea) + rne_mul_shift(rq, mb, eb)).clamp(rlo, rhi)
        if self.flt:
            nx = self.point(new_point, rx + yx, nq, residual=True)
        return nq, nx, s_new
