#!/usr/bin/env python3
"""Tests of sim/export.py against the mnq model directory contract (run by .ci/run).

    /usr/bin/python3 sim/test_export.py

Builds tiny random timm models (ViT, distilled DeiT, layer scale, num_classes 0, an I-ViT
style QAT checkpoint), exports them to temporary directories and checks each directory the
way mnq reads it: the safetensors header parsed by hand (names, dtypes, shapes, offsets),
every manifest field, reference.npz, and the reference outputs reproduced twice: by a plain
NumPy float64 forward pass written from the contract's text, and by timm reloading the
exported tensors. Ends with a cargo-style "test result:" line that .ci/run counts.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import sys
import tempfile
import unittest
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4.0)
MANIFEST_KEYS = ["format", "name", "arch", "img_size", "in_chans", "patch_size", "embed_dim", "depth",
                 "num_heads", "mlp_ratio", "num_classes", "layer_scale", "ln_eps", "input", "source", "quant"]


def tiny(name="vit_tiny_patch16_224", seed=0, **kw):
    """A tiny timm model with every weight (norms, biases, layer scales) moved off its init."""
    torch.manual_seed(seed)
    args = dict(TINY, in_chans=3, num_classes=5)
    args.update(kw)
    m = timm.create_model(name, pretrained=False, **args)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval(), args


def read_safetensors(path: Path):
    """Parse a safetensors file by hand: {name: (dtype, shape, float32 array)}."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    body = raw[8 + n:]
    spans, out = [], {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        spans.append((a, b))
        arr = np.frombuffer(body[a:b], "<f4") if h["dtype"] == "F32" else None
        out[name] = (h["dtype"], tuple(h["shape"]), None if arr is None else arr.reshape(h["shape"]))
    spans.sort()
    pos = 0
    for a, b in spans:
        assert a == pos and b >= a, f"safetensors data offsets not contiguous at {a}"
        pos = b
    assert pos == len(body), "safetensors body has trailing or missing bytes"
    return out


def expected_shapes(m: dict):
    """Contract tensor names and shapes, written out from the contract text (not from export.py)."""
    d, c, p, k = m["embed_dim"], m["in_chans"], m["patch_size"], m["num_classes"]
    h = int(d * m["mlp_ratio"])
    deit = m["arch"] == "deit"
    t = (m["img_size"] // p) ** 2 + 1 + deit
    s = {"cls_token": (1, 1, d), "pos_embed": (1, t, d), "patch_embed.proj.weight": (d, c, p, p),
         "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,)}
    if deit:
        s["dist_token"] = (1, 1, d)
    for i in range(m["depth"]):
        b = f"blocks.{i}."
        s.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                  b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                  b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (h, d),
                  b + "mlp.fc1.bias": (h,), b + "mlp.fc2.weight": (d, h), b + "mlp.fc2.bias": (d,)})
        if m["layer_scale"]:
            s[b + "ls1.gamma"] = (d,)
            s[b + "ls2.gamma"] = (d,)
    if k > 0:
        s.update({"head.weight": (k, d), "head.bias": (k,)})
        if deit:
            s.update({"head_dist.weight": (k, d), "head_dist.bias": (k,)})
    return s


_erf = np.frompyfunc(math.erf, 1, 1)


def contract_forward(t: dict, m: dict, x: np.ndarray) -> np.ndarray:
    """The contract's eval-mode semantics in float64 NumPy."""
    w = {k: v.astype(np.float64) for k, v in t.items()}
    n, c = x.shape[:2]
    p, d, nh = m["patch_size"], m["embed_dim"], m["num_heads"]
    g = m["img_size"] // p
    hd = d // nh
    eps = m["ln_eps"]

    def ln(h, name):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def lin(h, name):
        return h @ w[name + ".weight"].T + w[name + ".bias"]

    patches = x.astype(np.float64).reshape(n, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, g * g, -1)
    tok = patches @ w["patch_embed.proj.weight"].reshape(d, -1).T + w["patch_embed.proj.bias"]
    prefix = [w["cls_token"]] + ([w["dist_token"]] if m["arch"] == "deit" else [])
    h = np.concatenate([np.broadcast_to(q, (n, 1, d)) for q in prefix] + [tok], 1) + w["pos_embed"]
    tn = h.shape[1]
    for i in range(m["depth"]):
        b = f"blocks.{i}."
        qkv = lin(ln(h, b + "norm1"), b + "attn.qkv").reshape(n, tn, 3, nh, hd).transpose(2, 0, 3, 1, 4)
        s = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * hd ** -0.5
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = lin((s @ qkv[2]).transpose(0, 2, 1, 3).reshape(n, tn, d), b + "attn.proj")
        h = h + (o * w[b + "ls1.gamma"] if m["layer_scale"] else o)
        f = lin(ln(h, b + "norm2"), b + "mlp.fc1")
        f = lin(0.5 * f * (1.0 + _erf(f / math.sqrt(2.0)).astype(np.float64)), b + "mlp.fc2")
        h = h + (f * w[b + "ls2.gamma"] if m["layer_scale"] else f)
    h = ln(h, "norm")
    if m["num_classes"] == 0:
        return h[:, 0]
    y = lin(h[:, 0], "head")
    return (y + lin(h[:, 1], "head_dist")) / 2 if m["arch"] == "deit" else y


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


class ContractChecks(unittest.TestCase):
    """Checks of an exported directory against the contract (no tests of its own)."""

    def check_dir(self, out: Path, model_name: str, args: dict, *, arch, layer_scale, quant=False, eps=1e-6):
        """Check an exported directory against the contract; return (manifest, tensors)."""
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["manifest.json", "model.safetensors", "reference.npz"])
        man = json.loads((out / "manifest.json").read_text())
        keys = [k for k in man if k != "labels"]
        self.assertEqual(keys, MANIFEST_KEYS)
        self.assertEqual(man["format"], 1)
        self.assertEqual(man["name"], out.name)
        self.assertEqual(man["arch"], arch)
        for k in ("img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads", "num_classes"):
            self.assertIsInstance(man[k], int, k)
            self.assertEqual(man[k], args[k], k)
        self.assertIsInstance(man["mlp_ratio"], float)
        self.assertEqual(man["mlp_ratio"], args["mlp_ratio"])
        self.assertIs(man["layer_scale"], layer_scale)
        self.assertEqual(man["ln_eps"], eps)
        self.assertEqual(sorted(man["input"]), ["mean", "std"])
        self.assertEqual(len(man["input"]["mean"]), args["in_chans"])
        self.assertEqual(len(man["input"]["std"]), args["in_chans"])
        self.assertIsInstance(man["source"], str)
        if quant:
            self.assertIsInstance(man["quant"], dict)
        else:
            self.assertIsNone(man["quant"])

        st = read_safetensors(out / "model.safetensors")
        want = expected_shapes(man)
        self.assertEqual(sorted(st), sorted(want))
        for name, (dtype, shape, _) in st.items():
            self.assertEqual(dtype, "F32", name)
            self.assertEqual(shape, want[name], name)
        tensors = {k: v[2] for k, v in st.items()}

        with zipfile.ZipFile(out / "reference.npz") as z:
            self.assertTrue(all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist()), "npz compressed")
        ref = np.load(out / "reference.npz")
        okey = "logits" if args["num_classes"] > 0 else "features"
        self.assertEqual(sorted(ref.files), sorted(["inputs", okey]))
        x, y = ref["inputs"], ref[okey]
        self.assertEqual(x.dtype, np.float32)
        self.assertEqual(y.dtype, np.float32)
        c, s = args["in_chans"], args["img_size"]
        self.assertEqual(x.shape[1:], (c, s, s))
        self.assertEqual(y.shape, (x.shape[0], args["num_classes"] or args["embed_dim"]))

        # 1. The contract's semantics, from the exported tensors, give the reference outputs.
        self.assertLess(rel_err(contract_forward(tensors, man, x), y), 1e-5)
        # 2. timm reloading the exported tensors (float32, eval) gives them too.
        m2 = timm.create_model(model_name, pretrained=False, **{k: v for k, v in args.items()})
        for mod in m2.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.eps = man["ln_eps"]
        sd = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
        own = m2.state_dict()
        missing, unexpected = m2.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        self.assertEqual(missing, [])
        for k in set(sd) - set(own):  # biases timm leaves out must have been written as zeros
            self.assertTrue(k.endswith(".bias") and not sd[k].any(), k)
        m2.eval()
        with torch.no_grad():
            xt = torch.from_numpy(x)
            y2 = m2(xt) if args["num_classes"] > 0 else m2.forward_features(xt)[:, 0]
        self.assertLess(rel_err(y2.numpy().astype(np.float64), y.astype(np.float64)), 1e-4)
        return man, tensors

    def export(self, model, tmp, name="m", **kw):
        kw.setdefault("mean", [0.5] * model.patch_embed.proj.in_channels)
        kw.setdefault("std", [0.25] * model.patch_embed.proj.in_channels)
        out = Path(tmp) / name
        export.export_model(model, out, **kw)
        return out


class ExportTests(ContractChecks):
    """Exports of tiny random timm models and the exporter's refusals."""

    def test_vit_classifier(self):
        m, args = tiny()
        with tempfile.TemporaryDirectory() as tmp:
            out = self.export(m, tmp, labels=[f"c{i}" for i in range(5)], source="test")
            man, _ = self.check_dir(out, "vit_tiny_patch16_224", args, arch="vit", layer_scale=False)
            self.assertEqual(man["labels"], ["c0", "c1", "c2", "c3", "c4"])
            self.assertEqual(man["input"], {"mean": [0.5] * 3, "std": [0.25] * 3})

    def test_deit_distilled(self):
        m, args = tiny("deit_tiny_distilled_patch16_224", seed=1, in_chans=1, num_classes=7)
        with tempfile.TemporaryDirectory() as tmp:
            out = self.export(m, tmp)
            self.check_dir(out, "deit_tiny_distilled_patch16_224", args, arch="deit", layer_scale=False)
            # The distillation head really counts: the reference is the mean of both heads.
            ref = np.load(out / "reference.npz")
            with torch.no_grad():
                f = m.forward_features(torch.from_numpy(ref["inputs"]))
                cls_only = m.head(f[:, 0]).numpy()
            self.assertGreater(rel_err(cls_only, ref["logits"]), 1e-2)

    def test_layer_scale_and_no_qkv_bias(self):
        # A DINOv2/CaiT-style block: LayerScale gammas, and qkv without bias (written as zeros).
        m, args = tiny(seed=2, init_values=0.5, qkv_bias=False, mlp_ratio=2.0, num_classes=3)
        with tempfile.TemporaryDirectory() as tmp:
            out = self.export(m, tmp)
            man, t = self.check_dir(out, "vit_tiny_patch16_224", args, arch="vit", layer_scale=True)
            self.assertFalse(t["blocks.0.attn.qkv.bias"].any())
            self.assertFalse(np.allclose(t["blocks.1.ls2.gamma"], 0.5))

    def test_num_classes_zero(self):
        for name, arch in (("vit_tiny_patch16_224", "vit"), ("deit_tiny_distilled_patch16_224", "deit")):
            with self.subTest(arch=arch):
                m, args = tiny(name, seed=3, num_classes=0)
                with tempfile.TemporaryDirectory() as tmp:
                    out = self.export(m, tmp)
                    man, t = self.check_dir(out, name, args, arch=arch, layer_scale=False)
                    self.assertFalse(any(k.startswith("head") for k in t))

    def test_layernorm_eps_is_the_models(self):
        m, args = tiny(seed=8)
        self.assertEqual(export.describe(m)["ln_eps"], 1e-6)  # timm's ViT default
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.eps = 1e-5
        with tempfile.TemporaryDirectory() as tmp:
            self.check_dir(self.export(m, tmp), "vit_tiny_patch16_224", args, arch="vit", layer_scale=False, eps=1e-5)
        m.blocks[1].norm2.eps = 1e-6
        with self.assertRaisesRegex(export.ExportError, "different eps"):
            export.describe(m)

    def test_reference_images_are_normalised(self):
        m, args = tiny("deit_tiny_distilled_patch16_224", seed=4, in_chans=1)
        imgs = np.random.default_rng(5).integers(0, 256, (3, 32, 32), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            out = self.export(m, tmp, mean=[0.3], std=[0.4], ref_images=imgs)
            x = np.load(out / "reference.npz")["inputs"]
            self.assertEqual(x.shape, (3, 1, 32, 32))
            np.testing.assert_allclose(x[:, 0], (imgs / 255.0 - 0.3) / 0.4, rtol=0, atol=1e-6)

    def test_ivit_qat_checkpoint(self):
        m, args = tiny(seed=6)
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        value = {}

        def put(module, v, shape=(1,)):
            sd[module + ".act_scaling_factor"] = torch.full(shape, v)
            value[module] = v
        # Every buffer the I-ViT ViT (models/vit_quant.py) has, with distinct values.
        put("qact_input", 0.011)
        put("patch_embed.qact", 0.012)
        put("qact_pos", 0.013)
        put("qact1", 0.014)
        put("qact2", 0.015)
        for i in range(args["depth"]):
            b = f"blocks.{i}."
            for j, mod in enumerate(["qact1", "attn.qact1", "attn.qact_attn1", "attn.int_softmax", "attn.qact2",
                                     "attn.qact3", "qact2", "qact3", "mlp.qact_gelu", "mlp.act", "mlp.qact1",
                                     "mlp.qact2", "qact4", "attn.matmul_1", "attn.matmul_2"]):
                put(b + mod, 0.1 * (i + 1) + 0.001 * (j + 1))
            for lin in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                w = sd[b + lin + ".weight"]
                sd[b + lin + ".fc_scaling_factor"] = torch.ones(w.shape[0])
                sd[b + lin + ".weight_integer"] = torch.zeros_like(w)
                sd[b + lin + ".bias_integer"] = torch.zeros(w.shape[0])
            for ln in ("norm1", "norm2"):
                sd[b + ln + ".norm_scaling_factor"] = torch.ones(args["embed_dim"])
                sd[b + ln + ".bias_integer"] = torch.zeros(args["embed_dim"])
        sd["patch_embed.proj.conv_scaling_factor"] = torch.ones(args["embed_dim"])
        sd["head.fc_scaling_factor"] = torch.ones(5)

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "ivit.pth"
            torch.save({"model": sd, "epoch": 3}, ckpt)
            out = Path(tmp) / "q"
            err = io.StringIO()
            with redirect_stderr(err):
                rc = export.main(["--model", "vit_tiny_patch16_224", "--model-args", json.dumps(args),
                                  "--checkpoint", str(ckpt), "--qat", "ivit", "--act-bits", "8",
                                  "--out", str(out), "--mean", "0.5 0.5 0.5", "--std", "0.5,0.5,0.5"])
            self.assertEqual(rc, 0, err.getvalue())
            man, t = self.check_dir(out, "vit_tiny_patch16_224", args, arch="vit", layer_scale=False, quant=True)
            q = man["quant"]
            self.assertEqual((q["weight_bits"], q["act_bits"]), (8, 8))
            want = {"input": value["qact_input"], "patch_embed": value["patch_embed.qact"], "norm": value["qact2"]}
            for i in range(args["depth"]):
                b = f"blocks.{i}."
                for src, dst in [("qact1", "norm1"), ("attn.qact1", "attn.qkv"), ("attn.qact_attn1", "attn.matmul_qk"),
                                 ("attn.int_softmax", "attn.softmax"), ("attn.qact3", "attn.proj"),
                                 ("qact2", "residual1"), ("qact3", "norm2"), ("mlp.qact_gelu", "mlp.fc1"),
                                 ("mlp.qact1", "mlp.act"), ("mlp.qact2", "mlp.fc2"), ("qact4", "residual2")]:
                    want[b + dst] = value[b + src]
            self.assertEqual(q["act_scales"], approx_dict(want))
            layers = [f"blocks.{i}.{n}" for i in range(2) for n in ("norm1", "attn.softmax", "norm2", "mlp.act")]
            self.assertEqual(list(q["assignment"]), layers + ["norm"])
            self.assertEqual(q["assignment"]["blocks.1.attn.softmax"], "softmax_ivit")
            self.assertEqual(q["assignment"]["blocks.0.mlp.act"], "gelu_ivit")
            self.assertEqual(q["assignment"]["norm"], "layernorm_ivit")
            self.assertIn("blocks.0.attn.qact2", err.getvalue())  # unmapped scales are reported
            # The float weights are the checkpoint's.
            np.testing.assert_array_equal(t["blocks.1.mlp.fc2.weight"], sd["blocks.1.mlp.fc2.weight"].numpy())

            # A tensor that is neither a weight nor an I-ViT buffer is refused, naming it.
            sd["blocks.0.attn.mystery"] = torch.ones(1)
            torch.save(sd, ckpt)
            err = io.StringIO()
            with redirect_stderr(err):
                rc = export.main(["--model", "vit_tiny_patch16_224", "--model-args", json.dumps(args),
                                  "--checkpoint", str(ckpt), "--qat", "ivit", "--out", str(Path(tmp) / "q2")])
            self.assertEqual(rc, 2)
            self.assertIn("blocks.0.attn.mystery", err.getvalue())
            del sd["blocks.0.attn.mystery"]
            # An uncalibrated (zero) scale is refused, naming it.
            sd["blocks.1.qact4.act_scaling_factor"] = torch.zeros(1)
            torch.save(sd, ckpt)
            with self.assertRaisesRegex(export.ExportError, r"blocks\.1\.qact4\.act_scaling_factor"):
                export.split_checkpoint(tiny(seed=6)[0], export.load_checkpoint(ckpt), "ivit")
            self.assertFalse((Path(tmp) / "q2").exists())

    def test_plain_checkpoint_cli(self):
        m, args = tiny("deit_tiny_distilled_patch16_224", seed=7, in_chans=1, num_classes=4)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "ckpt.pth"
            torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, ckpt)
            out = Path(tmp) / "plain"
            with redirect_stderr(io.StringIO()):
                rc = export.main(["--model", "deit_tiny_distilled_patch16_224", "--model-args", json.dumps(args),
                                  "--checkpoint", str(ckpt), "--out", str(out), "--mean", "0.3", "--std", "0.4",
                                  "--ref-count", "3"])
            self.assertEqual(rc, 0)
            man, t = self.check_dir(out, "deit_tiny_distilled_patch16_224", args, arch="deit", layer_scale=False)
            np.testing.assert_array_equal(t["dist_token"], m.dist_token.detach().numpy())
            self.assertEqual(np.load(out / "reference.npz")["inputs"].shape[0], 3)
            # An existing directory is not overwritten without --force, and is with it.
            before = (out / "model.safetensors").read_bytes()
            err = io.StringIO()
            with redirect_stderr(err):
                rc = export.main(["--model", "deit_tiny_distilled_patch16_224", "--model-args", json.dumps(args),
                                  "--out", str(out), "--mean", "0.3", "--std", "0.4"])
            self.assertEqual(rc, 2)
            self.assertIn("--force", err.getvalue())
            self.assertEqual((out / "model.safetensors").read_bytes(), before)
            with redirect_stderr(io.StringIO()):
                rc = export.main(["--model", "deit_tiny_distilled_patch16_224", "--model-args", json.dumps(args),
                                  "--out", str(out), "--mean", "0.3", "--std", "0.4", "--force", "--seed", "9"])
            self.assertEqual(rc, 0)
            self.assertNotEqual((out / "model.safetensors").read_bytes(), before)
            self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()), ["ckpt.pth", "plain"])

    def test_refusals(self):
        cases = [
            (dict(global_pool="avg"), "global_pool|fc_norm"),
            (dict(reg_tokens=2), "register tokens"),
            (dict(qk_norm=True), "qk_norm"),
            (dict(act_layer="gelu_tanh"), "GELU"),
            (dict(no_embed_class=True), "no_embed_class"),
            (dict(pre_norm=True), "pre_norm"),
        ]
        for kw, pattern in cases:
            with self.subTest(kw=kw):
                m, _ = tiny(**kw)
                with self.assertRaisesRegex(export.ExportError, pattern):
                    export.describe(m)
        torch.manual_seed(0)
        with self.assertRaisesRegex(export.ExportError, "resnet|ResNet"):
            export.describe(timm.create_model("resnet10t", pretrained=False, num_classes=3))
        m, _ = tiny()
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(export.ExportError, "mean has 1 values"):
                export.export_model(m, Path(tmp) / "x", mean=[0.5], std=[0.5])
            with self.assertRaisesRegex(export.ExportError, "labels"):
                export.export_model(m, Path(tmp) / "x", mean=[0.5] * 3, std=[0.5] * 3, labels=["a"])
            # A checkpoint for another shape names the tensor; a non-tensor pickle asks for trust.
            other, _ = tiny(embed_dim=60)
            ckpt = Path(tmp) / "other.pth"
            torch.save(other.state_dict(), ckpt)
            with self.assertRaisesRegex(export.ExportError, r"cls_token has shape \(1, 1, 60\)"):
                export.split_checkpoint(m, export.load_checkpoint(ckpt), None)
            torch.save({"model": m.state_dict(), "args": _Args()}, ckpt)
            with self.assertRaisesRegex(export.ExportError, "--trust-checkpoint"):
                export.load_checkpoint(ckpt)
            export.split_checkpoint(m, export.load_checkpoint(ckpt, trust=True), None)
            sd = m.state_dict()
            sd["blocks.0.norm1.weight"][3] = float("nan")
            m.load_state_dict(sd)
            with self.assertRaisesRegex(export.ExportError, r"blocks\.0\.norm1\.weight holds NaN"):
                export.export_model(m, Path(tmp) / "x", mean=[0.5] * 3, std=[0.5] * 3)
            self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()), ["other.pth"])


SWIN = "swin_tiny_patch4_window7_224"
_EPS_AT = MANIFEST_KEYS.index("ln_eps") + 1
SWIN_KEYS = MANIFEST_KEYS[:_EPS_AT] + ["swin"] + MANIFEST_KEYS[_EPS_AT:]  # the swin section follows ln_eps


def tiny_swin(seed=0, patch_norm=True, eps=None, **kw):
    """A tiny timm Swin with every weight (norms, biases, bias tables) moved off its init."""
    torch.manual_seed(seed)
    args = dict(img_size=32, in_chans=2, patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(2, 2, 4),
                window_size=4, num_classes=5)
    args.update(kw)
    m = timm.create_model(SWIN, pretrained=False, **args)
    if not patch_norm:
        m.patch_embed.norm = torch.nn.Identity()
    if eps is not None:
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.eps = eps
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval(), args


def swin_expected_shapes(m: dict):
    """Swin tensor names and shapes, written out from the contract text (not from export.py)."""
    sw = m["swin"]
    c, p, k = m["in_chans"], m["patch_size"], m["num_classes"]
    d = sw["embed_dims"][0]
    g = m["img_size"] // p
    s = {"patch_embed.proj.weight": (d, c, p, p), "patch_embed.proj.bias": (d,)}
    if sw["patch_norm"]:
        s.update({"patch_embed.norm.weight": (d,), "patch_embed.norm.bias": (d,)})
    for st, depth in enumerate(sw["depths"]):
        e, nh = sw["embed_dims"][st], sw["num_heads"][st]
        if st > 0:
            g //= 2
            s.update({f"layers.{st}.downsample.norm.weight": (4 * d,), f"layers.{st}.downsample.norm.bias": (4 * d,),
                      f"layers.{st}.downsample.reduction.weight": (e, 4 * d)})
        d = e
        h = int(d * m["mlp_ratio"])
        w = min(sw["window_size"][st], g)
        for j in range(depth):
            b = f"layers.{st}.blocks.{j}."
            s.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                      b + "attn.qkv.bias": (3 * d,), b + "attn.relative_position_bias_table": ((2 * w - 1) ** 2, nh),
                      b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,), b + "norm2.weight": (d,),
                      b + "norm2.bias": (d,), b + "mlp.fc1.weight": (h, d), b + "mlp.fc1.bias": (h,),
                      b + "mlp.fc2.weight": (d, h), b + "mlp.fc2.bias": (d,)})
    s.update({"norm.weight": (d,), "norm.bias": (d,)})
    if k > 0:
        s.update({"head.fc.weight": (k, d), "head.fc.bias": (k,)})
    return s


def _erf64(a):
    return torch.erf(torch.from_numpy(a)).numpy()  # exact erf in float64 (math.erf per element is too slow here)


def swin_contract_forward(t: dict, m: dict, x: np.ndarray, batch=200, masks=True) -> np.ndarray:
    """Swin's eval-mode semantics in float64 NumPy, from the contract's text: patch embedding and
    its norm; per block x += proj(attn(norm1(x))) in (shifted) windows with the relative
    position bias and the shifted-window mask, x += fc2(gelu(fc1(norm2(x)))); 2x2 patch merging
    (x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2] concatenated), norm, bias-free
    reduction; final norm, mean over tokens, head. masks=False leaves the shifted-window mask out
    (to show that it matters)."""
    if len(x) > batch:
        return np.concatenate([swin_contract_forward(t, m, x[i:i + batch], batch, masks)
                               for i in range(0, len(x), batch)])
    w = {k: v.astype(np.float64) for k, v in t.items()}
    sw, eps = m["swin"], m["ln_eps"]
    n, c = x.shape[:2]
    p = m["patch_size"]
    g = m["img_size"] // p
    d = sw["embed_dims"][0]

    def ln(h, name):
        mu = h.mean(-1, keepdims=True)
        var = ((h - mu) ** 2).mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def lin(h, name, bias=True):
        wt = w[name + ".weight"]
        y = (np.ascontiguousarray(h).reshape(-1, h.shape[-1]) @ wt.T).reshape(h.shape[:-1] + (wt.shape[0],))
        return y + w[name + ".bias"] if bias else y

    patches = x.astype(np.float64).reshape(n, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, g, g, -1)
    h = patches @ w["patch_embed.proj.weight"].reshape(d, -1).T + w["patch_embed.proj.bias"]  # [n, g, g, d]
    if sw["patch_norm"]:
        h = ln(h, "patch_embed.norm")
    for st, depth in enumerate(sw["depths"]):
        if st > 0:
            h = np.concatenate([h[:, 0::2, 0::2], h[:, 1::2, 0::2], h[:, 0::2, 1::2], h[:, 1::2, 1::2]], -1)
            g //= 2
            name = f"layers.{st}.downsample"
            h = lin(ln(h, name + ".norm"), name + ".reduction", bias=False)
        d, nh = sw["embed_dims"][st], sw["num_heads"][st]
        hd = d // nh
        win = min(sw["window_size"][st], g)
        nw = g // win
        # Relative position of key (i2, j2) seen from query (i1, j1), as an index of the bias table.
        ii, jj = np.divmod(np.arange(win * win), win)
        rel = (ii[:, None] - ii[None, :] + win - 1) * (2 * win - 1) + (jj[:, None] - jj[None, :] + win - 1)
        for j in range(depth):
            b = f"layers.{st}.blocks.{j}."
            shift = win // 2 if (j % 2 == 1 and g > win) else 0
            a = np.roll(ln(h, b + "norm1"), (-shift, -shift), axis=(1, 2))
            a = a.reshape(n, nw, win, nw, win, d).transpose(0, 1, 3, 2, 4, 5).reshape(n, nw * nw, win * win, d)
            qkv = lin(a, b + "attn.qkv").reshape(n, nw * nw, win * win, 3, nh, hd).transpose(3, 0, 1, 4, 2, 5)
            s = qkv[0] @ qkv[1].swapaxes(-1, -2) * hd ** -0.5  # [n, windows, heads, N, N]
            s = s + w[b + "attn.relative_position_bias_table"][rel].transpose(2, 0, 1)
            if shift and masks:
                # Region of every (rolled) grid position: keys of another region are left out.
                cut = np.zeros(g, int)
                cut[g - win:g - shift], cut[g - shift:] = 1, 2
                region = (cut[:, None] * 3 + cut[None, :])
                region = region.reshape(nw, win, nw, win).transpose(0, 2, 1, 3).reshape(nw * nw, win * win)
                masked = region[:, :, None] != region[:, None, :]
                s = np.where(masked[None, :, None], -np.inf, s)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = (s @ qkv[2]).transpose(0, 1, 3, 2, 4).reshape(n, nw * nw, win * win, d)
            o = lin(o, b + "attn.proj")
            o = o.reshape(n, nw, nw, win, win, d).transpose(0, 1, 3, 2, 4, 5).reshape(n, g, g, d)
            h = h + np.roll(o, (shift, shift), axis=(1, 2))
            f = lin(ln(h, b + "norm2"), b + "mlp.fc1")
            h = h + lin(0.5 * f * (1.0 + _erf64(f / math.sqrt(2.0))), b + "mlp.fc2")
    y = ln(h, "norm").reshape(n, g * g, d).mean(1)
    return lin(y, "head.fc") if m["num_classes"] > 0 else y


class SwinChecks(unittest.TestCase):
    """Checks of an exported Swin directory against the contract."""

    def check_swin_dir(self, out: Path, args: dict, want: dict, *, model_fix=None):
        """`want`: the manifest fields the model must give (top level and the swin section)."""
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["manifest.json", "model.safetensors", "reference.npz"])
        man = json.loads((out / "manifest.json").read_text())
        self.assertEqual([k for k in man if k != "labels"], SWIN_KEYS)
        self.assertEqual((man["format"], man["name"], man["arch"], man["layer_scale"], man["quant"]),
                         (1, out.name, "swin", False, None))
        for k, v in want.items():
            self.assertEqual(man[k], v, k)
            self.assertIs(type(man[k]), type(v), k)
        sw = man["swin"]
        self.assertEqual(list(sw), ["depths", "embed_dims", "num_heads", "window_size", "patch_norm"])
        # The top-level fields Rust's Manifest checks against the stage lists.
        self.assertEqual((man["depth"], man["embed_dim"], man["num_heads"]),
                         (sum(sw["depths"]), sw["embed_dims"][0], sw["num_heads"][0]))
        self.assertIsInstance(man["mlp_ratio"], float)
        self.assertEqual(len(man["input"]["mean"]), man["in_chans"])

        st = read_safetensors(out / "model.safetensors")
        shapes = swin_expected_shapes(man)
        self.assertEqual(sorted(st), sorted(shapes))
        for name, (dtype, shape, _) in st.items():
            self.assertEqual(dtype, "F32", name)
            self.assertEqual(shape, shapes[name], name)
        self.assertFalse(any("relative_position_index" in k or "attn_mask" in k for k in st))
        tensors = {k: v[2] for k, v in st.items()}

        with zipfile.ZipFile(out / "reference.npz") as z:
            self.assertTrue(all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist()), "npz compressed")
        ref = np.load(out / "reference.npz")
        okey = "logits" if man["num_classes"] > 0 else "features"
        self.assertEqual(sorted(ref.files), sorted(["inputs", okey]))
        x, y = ref["inputs"], ref[okey]
        self.assertEqual((x.dtype, y.dtype), (np.float32, np.float32))
        self.assertEqual(x.shape[1:], (man["in_chans"], man["img_size"], man["img_size"]))
        self.assertEqual(y.shape, (x.shape[0], man["num_classes"] or sw["embed_dims"][-1]))

        # 1. The contract's semantics, from the exported tensors, give the reference outputs.
        self.assertLess(rel_err(swin_contract_forward(tensors, man, x), y), 1e-5)
        # 2. timm reloading the exported tensors (float32, eval) gives them too.
        m2 = self.swin_from_tensors(args, tensors, model_fix)
        with torch.no_grad():
            y2 = m2(torch.from_numpy(x)).numpy().astype(np.float64)
        self.assertLess(rel_err(y2, y.astype(np.float64)), 1e-4)
        return man, tensors

    def swin_from_tensors(self, args, tensors, model_fix=None):
        """A timm Swin (eval mode) holding the exported tensors; every model tensor must be there."""
        torch.manual_seed(0)
        m2 = timm.create_model(SWIN, pretrained=False, **args)
        if model_fix is not None:
            model_fix(m2)
        own = m2.state_dict()
        sd = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
        missing, unexpected = m2.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        self.assertEqual(missing, [])
        for k in set(sd) - set(own):  # biases timm leaves out must have been written as zeros
            self.assertTrue(k.endswith(".bias") and not sd[k].any(), k)
        return m2.eval()


class SwinExportTests(SwinChecks):
    """Exports of tiny random timm Swins and the exporter's Swin refusals."""

    def export(self, model, tmp, name="s", **kw):
        c = model.patch_embed.proj.in_channels
        kw.setdefault("mean", [0.5] * c)
        kw.setdefault("std", [0.25] * c)
        out = Path(tmp) / name
        export.export_model(model, out, **kw)
        return out

    def test_window4_three_stages(self):
        # 16x16 -> 8x8 -> 4x4 tokens, window 4: stages 0 and 1 shift their odd block (masks),
        # stage 2 is one window (window == grid: no shift, no mask).
        m, args = tiny_swin(seed=11)
        blocks = [b for s in m.layers for b in s.blocks]
        self.assertEqual([b.shift_size[0] for b in blocks], [0, 2, 0, 2, 0, 0])
        with tempfile.TemporaryDirectory() as tmp:
            out = self.export(m, tmp, labels=[f"c{i}" for i in range(5)], source="t")
            man, t = self.check_swin_dir(out, args, dict(
                img_size=32, in_chans=2, patch_size=2, embed_dim=8, depth=6, num_heads=2, mlp_ratio=4.0,
                num_classes=5, ln_eps=1e-5, swin=dict(depths=[2, 2, 2], embed_dims=[8, 16, 32], num_heads=[2, 2, 4],
                                                      window_size=[4, 4, 4], patch_norm=True)))
            self.assertEqual(man["labels"], [f"c{i}" for i in range(5)])
            # The mask matters: without it the NumPy forward misses the reference.
            ref = np.load(out / "reference.npz")
            self.assertGreater(rel_err(swin_contract_forward(t, man, ref["inputs"], masks=False), ref["logits"]), 1e-3)

    def test_window7_two_stages(self):
        # 28x28 image, patch 2: a 14x14 grid in 7x7 windows (49-long rows, shifted by 3 with a
        # mask), merged to 7x7 = one window, where timm neither shifts nor masks.
        m, args = tiny_swin(seed=12, img_size=28, in_chans=1, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                            window_size=7, num_classes=3)
        blocks = [b for s in m.layers for b in s.blocks]
        self.assertEqual([(b.window_size[0], b.shift_size[0]) for b in blocks], [(7, 0), (7, 3), (7, 0), (7, 0)])
        with tempfile.TemporaryDirectory() as tmp:
            self.check_swin_dir(self.export(m, tmp), args, dict(
                img_size=28, in_chans=1, patch_size=2, embed_dim=16, depth=4, num_heads=1, num_classes=3,
                swin=dict(depths=[2, 2], embed_dims=[16, 32], num_heads=[1, 2], window_size=[7, 7], patch_norm=True)))

    def test_per_stage_windows_clamped_no_patch_norm_features(self):
        # Windows (8, 4, 8) on grids 16, 8, 4: timm clamps the last to the 4x4 grid (the manifest
        # says 4, the bias table is 7x7); odd depth 3 leaves block 2 unshifted; no qkv bias (zeros),
        # no patch norm, mlp_ratio 2, LayerNorm eps 1e-6 read from the model, num_classes 0 (features).
        kw = dict(depths=(3, 1, 2), num_heads=(1, 2, 2), window_size=(8, 4, 8), mlp_ratio=2.0, qkv_bias=False,
                  num_classes=0)
        m, args = tiny_swin(seed=13, patch_norm=False, eps=1e-6, **kw)
        blocks = [b for s in m.layers for b in s.blocks]
        self.assertEqual([(b.window_size[0], b.shift_size[0]) for b in blocks],
                         [(8, 0), (8, 4), (8, 0), (4, 0), (4, 0), (4, 0)])

        def fix(m2):
            m2.patch_embed.norm = torch.nn.Identity()
            for mod in m2.modules():
                if isinstance(mod, torch.nn.LayerNorm):
                    mod.eps = 1e-6
        with tempfile.TemporaryDirectory() as tmp:
            man, t = self.check_swin_dir(self.export(m, tmp), args, dict(
                embed_dim=8, depth=6, num_heads=1, mlp_ratio=2.0, num_classes=0, ln_eps=1e-6,
                swin=dict(depths=[3, 1, 2], embed_dims=[8, 16, 32], num_heads=[1, 2, 2], window_size=[8, 4, 4],
                          patch_norm=False)), model_fix=fix)
            self.assertFalse(t["layers.0.blocks.1.attn.qkv.bias"].any())
            self.assertEqual(t["layers.2.blocks.0.attn.relative_position_bias_table"].shape, (49, 2))
            self.assertFalse(any(k.startswith("head") for k in t))

    def test_checkpoint_cli_drops_derived_buffers(self):
        # A checkpoint that still carries relative_position_index / attn_mask (older timm,
        # Microsoft's code) exports: mnq derives those buffers itself.
        m, args = tiny_swin(seed=14, img_size=16, depths=(2, 2), num_heads=(1, 2), num_classes=4)
        sd = dict(m.state_dict())
        for k, v in m.named_buffers():
            if v is not None:
                sd[k] = v
        self.assertTrue(any(k.endswith("attn_mask") for k in sd))
        self.assertTrue(any(k.endswith("relative_position_index") for k in sd))
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "ckpt.pth"
            torch.save({"model": sd}, ckpt)
            out = Path(tmp) / "cli"
            err = io.StringIO()
            with redirect_stderr(err):
                rc = export.main(["--model", SWIN, "--model-args", json.dumps(args), "--checkpoint", str(ckpt),
                                  "--out", str(out), "--mean", "0.5,0.4", "--std", "0.25,0.3", "--ref-count", "3"])
            self.assertEqual(rc, 0, err.getvalue())
            man, t = self.check_swin_dir(out, args, dict(img_size=16, num_classes=4))
            self.assertEqual(man["input"], {"mean": [0.5, 0.4], "std": [0.25, 0.3]})
            np.testing.assert_array_equal(t["layers.1.blocks.1.attn.relative_position_bias_table"],
                                          sd["layers.1.blocks.1.attn.relative_position_bias_table"].numpy())
            # --qat ivit has no Swin map: refused, nothing written.
            err = io.StringIO()
            with redirect_stderr(err):
                rc = export.main(["--model", SWIN, "--model-args", json.dumps(args), "--checkpoint", str(ckpt),
                                  "--qat", "ivit", "--out", str(Path(tmp) / "q")])
            self.assertEqual(rc, 2)
            self.assertIn("no I-ViT scale map for Swin", err.getvalue())
            self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()), ["ckpt.pth", "cli"])

    def test_swin_refusals(self):
        from timm.layers import RmsNorm

        def ape(m):
            m.absolute_pos_embed = torch.nn.Parameter(torch.zeros(1, 256, 8))

        def tanh_gelu(m):
            m.layers[1].blocks[0].mlp.act = torch.nn.GELU(approximate="tanh")

        def other_eps(m):
            m.layers[2].downsample.norm.eps = 1e-6

        cases = [
            (dict(img_size=28, window_size=4), None, r"14x14 token grid is not a multiple of the 4x4 window"),
            (dict(img_size=28, patch_size=4, depths=(1, 1), num_heads=(1, 1), window_size=7), None,
             r"odd 7x7 grid of stage 0"),
            (dict(), tanh_gelu, r"layers\.1\.blocks\.0\.mlp\.act .*exact erf GELU"),
            (dict(), ape, "absolute position embedding"),
            (dict(global_pool="max"), None, r"global_pool='max'"),
            (dict(norm_layer=RmsNorm), None, "RmsNorm, not a LayerNorm"),
            (dict(strict_img_size=False), None, "dynamic_img_size"),
            (dict(head_dim=8), None, r"head_dim must be dim/num_heads"),
            (dict(mlp_ratio=(4.0, 2.0, 4.0)), None, "MLP ratios that differ"),
            # always_partition: timm shifts the 8x8 grid of stage 1 in its one 8x8 window.
            (dict(window_size=8, always_partition=True), None, r"layers\.1\.blocks\.1 shift 4 .*always_partition"),
            # ... and pads the 4x4 grid of stage 2 to its 8x8 window.
            (dict(depths=(2, 1, 1), window_size=8, always_partition=True), None,
             r"layers\.2\.blocks\.0: the 4x4 token grid is not a multiple of the 8x8 window"),
            (dict(), other_eps, "different eps"),
        ]
        for kw, fix, pattern in cases:
            with self.subTest(kw=kw, fix=fix and fix.__name__):
                m, _ = tiny_swin(**kw)
                if fix is not None:
                    fix(m)
                with self.assertRaisesRegex(export.ExportError, pattern):
                    export.describe(m)
        torch.manual_seed(0)
        v2 = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=32, patch_size=2, embed_dim=8,
                               depths=(1, 1), num_heads=(1, 1), window_size=4, num_classes=3)
        with self.assertRaisesRegex(export.ExportError, "SwinTransformerV2 is not supported"):
            export.describe(v2)
        # A model that passes describe() but lost its mask (a modified block) is refused too.
        m, _ = tiny_swin()
        m.layers[0].blocks[1].attn_mask = None
        with self.assertRaisesRegex(export.ExportError, r"layers\.0\.blocks\.1 attention mask"):
            export.describe(m)
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(export.ExportError, "assignment for Swin"):
                export.export_model(tiny_swin()[0], Path(tmp) / "a", mean=[0.5] * 2, std=[0.5] * 2,
                                    act_scales={"input": 0.1}, assignment={})
            self.assertEqual(list(Path(tmp).iterdir()), [])


class BundledModel(ContractChecks, SwinChecks):
    """The committed models and evaluation data (sim/train_tiny.py's output)."""

    def test_bundled_model_and_data(self):
        here = Path(__file__).resolve().parent
        out = here / "models" / "deit_tiny_fmnist"
        args = dict(img_size=28, in_chans=1, patch_size=7, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0,
                    num_classes=10)
        man, t = self.check_dir(out, "deit_tiny_distilled_patch16_224", args, arch="deit", layer_scale=False)
        self.assertEqual(man["input"], {"mean": [0.286], "std": [0.353]})
        self.assertLess((out / "model.safetensors").stat().st_size, 10 << 20)
        data = here / "data" / "fashion_mnist"
        labels = json.loads((data / "labels.json").read_text())
        self.assertEqual(labels, man["labels"])
        x, y = np.load(data / "eval_images.npy"), np.load(data / "eval_labels.npy")
        cal = np.load(data / "calib_images.npy")
        self.assertEqual((x.dtype, x.shape, y.dtype, y.shape), (np.uint8, (2000, 28, 28), np.uint8, (2000,)))
        self.assertEqual((cal.dtype, cal.shape), (np.uint8, (256, 28, 28)))
        self.assertEqual(np.bincount(y, minlength=10).min() > 150, True)  # every class is there
        # reference.npz holds the first eval images, normalised as the manifest says.
        ref = np.load(out / "reference.npz")["inputs"]
        np.testing.assert_allclose(ref, export.normalise(x[:len(ref)], [0.286], [0.353], 1, 28), rtol=0, atol=0)
        # The float accuracy on the eval split is the one the manifest's source states.
        logits = contract_forward(t, man, export.normalise(x, [0.286], [0.353], 1, 28))
        acc = float((logits.argmax(1) == y).mean())
        claimed = re.search(r"([0-9.]+) \(first 2000\)", man["source"])
        self.assertIsNotNone(claimed, man["source"])
        self.assertAlmostEqual(acc, float(claimed.group(1)), places=4)
        self.assertGreater(acc, 0.85)

    def test_bundled_swin_model(self):
        here = Path(__file__).resolve().parent
        out = here / "models" / "swin_tiny_fmnist"
        args = dict(img_size=28, in_chans=1, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                    window_size=7, mlp_ratio=4.0, num_classes=10)
        # Stage 0: a 14x14 grid in four 7x7 windows, W-MSA then masked SW-MSA (shift 3); patch
        # merging to 7x7, one window.
        man, t = self.check_swin_dir(out, args, dict(
            img_size=28, in_chans=1, patch_size=2, embed_dim=32, depth=4, num_heads=2, mlp_ratio=4.0,
            num_classes=10, swin=dict(depths=[2, 2], embed_dims=[32, 64], num_heads=[2, 4], window_size=[7, 7],
                                      patch_norm=True)))
        self.assertEqual(man["input"], {"mean": [0.286], "std": [0.353]})
        self.assertLess((out / "model.safetensors").stat().st_size, 4 << 20)
        data = here / "data" / "fashion_mnist"
        self.assertEqual(json.loads((data / "labels.json").read_text()), man["labels"])
        x, y = np.load(data / "eval_images.npy"), np.load(data / "eval_labels.npy")
        ref = np.load(out / "reference.npz")["inputs"]
        np.testing.assert_allclose(ref, export.normalise(x[:len(ref)], [0.286], [0.353], 1, 28), rtol=0, atol=0)
        # The accuracy from timm (float32, as training measured it) over all 2000 images: the NumPy
        # contract forward would take 12 s CPU for them; it has to match timm on the first 200.
        inputs = export.normalise(x, [0.286], [0.353], 1, 28)
        with torch.no_grad():
            logits = self.swin_from_tensors(args, t)(torch.from_numpy(inputs)).numpy().astype(np.float64)
        self.assertLess(rel_err(swin_contract_forward(t, man, inputs[:200]), logits[:200]), 1e-4)
        acc = float((logits.argmax(1) == y).mean())
        claimed = re.search(r"([0-9.]+) \(first 2000\)", man["source"])
        self.assertIsNotNone(claimed, man["source"])
        self.assertAlmostEqual(acc, float(claimed.group(1)), places=4)
        self.assertGreaterEqual(acc, 0.86)


class _Args:
    """Stands for the argparse namespace training scripts save beside the weights."""
    lr = 0.1


def approx_dict(d):
    """Float dict equality to 1e-6 relative (scales are float32 buffers), with a readable failure."""
    class Approx(dict):
        def __eq__(self, other):
            return (isinstance(other, dict) and sorted(other) == sorted(self)
                    and all(abs(other[k] - v) <= 1e-6 * abs(v) for k, v in self.items()))
    return Approx(d)


if __name__ == "__main__":
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    passed = result.testsRun - failed - len(result.skipped)
    status = "ok" if result.wasSuccessful() and not result.skipped else "FAILED"
    # Same shape as cargo's summary so .ci/run's closing count includes these tests.
    print(f"test result: {status}. {passed} passed; {failed + len(result.skipped)} failed; 0 ignored (sim/test_export.py)")
    sys.exit(0 if status == "ok" else 1)
