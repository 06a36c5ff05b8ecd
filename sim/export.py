#!/usr/bin/env python3
"""Export a timm ViT / DeiT / Swin to an mnq model directory.

Writes DIR/model.safetensors (float32 tensors under timm's names), DIR/manifest.json and
DIR/reference.npz (a few normalised inputs and the float logits PyTorch computes for them),
as described in the model directory contract (sim/README.md, "Model directory").

    /usr/bin/python3 sim/export.py --model deit_tiny_distilled_patch16_224 \
        --model-args '{"img_size": 28, "in_chans": 1, "patch_size": 7, "embed_dim": 96,
                       "depth": 4, "num_heads": 3, "num_classes": 10}' \
        --checkpoint ckpt.pth --mean 0.2860 --std 0.3530 --out sim/models/my_model

Accepted checkpoints: a plain timm state dict (torch.save'd, optionally inside a dict under
"model", "state_dict" or "model_state_dict", or a .safetensors file), or an I-ViT-style QAT
checkpoint (--qat ivit) whose QuantAct buffers become the manifest's quant.act_scales.
Only models whose eval-mode forward is exactly the contract's are exported; anything else
(other blocks, pooling, norms, activations, register tokens, ...) is refused with the reason.
A timm SwinTransformer (arch swin) is exported with its stage lists in the manifest's "swin"
section; grids timm would pad (not a multiple of the window, odd before a merge) are refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

FORMAT = 1
# Contract names of the non-linear layers of one block, in execution order.
BLOCK_NONLINEAR = ("norm1", "attn.softmax", "norm2", "mlp.act")
# The I-ViT unit of each non-linear op (unit names are <op>_<method> in mnq).
IVIT_UNITS = {"norm1": "layernorm_ivit", "attn.softmax": "softmax_ivit",
              "norm2": "layernorm_ivit", "mlp.act": "gelu_ivit", "norm": "layernorm_ivit"}

# I-ViT (github.com/zkkli/I-ViT, models/vit_quant.py) QuantAct / unit buffers named
# "<module>.act_scaling_factor" and the contract scale they are. The value is the scale of
# the tensor the next integer operation consumes. `{i}` is the block index.
IVIT_SCALE_MAP = OrderedDict([
    ("qact_input", "input"),                         # 8-bit input image
    ("patch_embed.qact", "patch_embed"),             # 16-bit patch projection output
    ("blocks.{i}.qact1", "blocks.{i}.norm1"),        # norm1 output requantised (8 bit)
    ("blocks.{i}.attn.qact1", "blocks.{i}.attn.qkv"),           # qkv output (8 bit)
    ("blocks.{i}.attn.qact_attn1", "blocks.{i}.attn.matmul_qk"),  # q.k^T * head_dim^-0.5
    ("blocks.{i}.attn.int_softmax", "blocks.{i}.attn.softmax"),   # Shiftmax output 2^-(ob-1)
    ("blocks.{i}.attn.qact3", "blocks.{i}.attn.proj"),          # proj output (16 bit)
    ("blocks.{i}.qact2", "blocks.{i}.residual1"),    # x + attn (16 bit)
    ("blocks.{i}.qact3", "blocks.{i}.norm2"),        # norm2 output requantised (8 bit)
    ("blocks.{i}.mlp.qact_gelu", "blocks.{i}.mlp.fc1"),          # fc1 output = GELU input
    ("blocks.{i}.mlp.qact1", "blocks.{i}.mlp.act"),  # GELU output requantised (8 bit)
    ("blocks.{i}.mlp.qact2", "blocks.{i}.mlp.fc2"),  # fc2 output (16 bit)
    ("blocks.{i}.qact4", "blocks.{i}.residual2"),    # x + mlp (16 bit)
    ("qact2", "norm"),                               # final norm output (class token), 8 bit
])
# I-ViT scales that have no contract name; reported, not written.
IVIT_UNMAPPED = OrderedDict([
    ("qact_pos", "16-bit position embedding"),
    ("qact1", "16-bit token sequence after the position add (block 0 input)"),
    ("blocks.{i}.attn.qact2", "attn.V output before proj (8 bit)"),
    ("blocks.{i}.attn.matmul_1", "q.k^T product scale (derived: s_qkv^2)"),
    ("blocks.{i}.attn.matmul_2", "attn.V product scale (derived)"),
    ("blocks.{i}.mlp.act", "ShiftGELU raw output scale (derived)"),
    ("blocks.{i}.attn.qact_softmax", "log2 attention quantiser of I-ViT forks"),
])
# Other I-ViT buffers that carry nothing the float model or the contract needs.
IVIT_AUX_SUFFIXES = ("weight_integer", "bias_integer", "fc_scaling_factor",
                     "conv_scaling_factor", "norm_scaling_factor", "act_scaling_factor")


class ExportError(Exception):
    """A model, checkpoint or argument the exporter cannot turn into a contract directory."""


def _timm():
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - environment problem
        raise ExportError(f"{e}: install PyTorch and timm (see sim/README.md)") from e
    import timm
    return timm


def _supported_classes():
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer, VisionTransformerDistilled


def _swin_class():
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer


def _is_identity(m) -> bool:
    import torch.nn as nn
    return m is None or isinstance(m, nn.Identity)


def _exact_gelu(m) -> bool:
    import torch.nn as nn
    from timm.layers.activations import GELU as TimmGELU
    if type(m) is nn.GELU:
        return getattr(m, "approximate", "none") == "none"
    return type(m) is TimmGELU


def _layernorm(m, dim: int, where: str) -> float:
    import torch.nn as nn
    from timm.layers import LayerNorm as TimmLayerNorm
    from timm.layers.norm import LayerNormFp32
    if type(m) not in (nn.LayerNorm, TimmLayerNorm, LayerNormFp32):
        raise ExportError(f"{where} is {type(m).__name__}, not a LayerNorm: mnq models LayerNorm only")
    if tuple(m.normalized_shape) != (dim,) or not m.elementwise_affine or m.weight is None or m.bias is None:
        raise ExportError(f"{where}: LayerNorm must normalise the last dim {dim} with weight and bias")
    return float(m.eps)


def describe(model) -> dict:
    """Check that `model` is a contract ViT/DeiT/Swin and return its manifest architecture fields.

    Raises ExportError naming the first feature the contract cannot express.
    """
    import torch.nn as nn
    from timm.layers import Attention, LayerScale, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block
    vit_cls, deit_cls = _supported_classes()
    kind = type(model)
    if kind is _swin_class():
        return describe_swin(model)
    if kind not in (vit_cls, deit_cls):
        raise ExportError(
            f"model class {kind.__module__}.{kind.__name__} is not supported: mnq takes timm "
            "VisionTransformer (arch vit), VisionTransformerDistilled (arch deit) and SwinTransformer "
            "(arch swin) only")
    distilled = kind is deit_cls
    name = "VisionTransformerDistilled" if distilled else "VisionTransformer"

    def need(cond, what):
        if not cond:
            raise ExportError(f"{name}: {what} is not supported by the mnq model contract")

    need(model.cls_token is not None, "a model without class token")
    need(getattr(model, "reg_token", None) is None and getattr(model, "num_reg_tokens", 0) == 0,
         "register tokens (reg_tokens > 0)")
    need(not getattr(model, "no_embed_class", False), "no_embed_class=True (position embedding without prefix tokens)")
    need(model.pos_embed is not None, "a model without learned position embedding")
    need(model.global_pool == "token", f"global_pool={model.global_pool!r} (only 'token')")
    need(getattr(model, "attn_pool", None) is None, "attention pooling")
    need(_is_identity(model.fc_norm), "fc_norm")
    need(_is_identity(model.norm_pre), "pre_norm")
    need(not getattr(model, "dynamic_img_size", False), "dynamic_img_size=True")
    need(not isinstance(model.norm, nn.Identity), "final_norm=False")

    pe = model.patch_embed
    need(type(pe) is PatchEmbed, f"patch embedding {type(pe).__name__}")
    need(_is_identity(pe.norm), "a norm in the patch embedding")
    need(getattr(pe, "flatten", True) and not getattr(pe, "dynamic_img_pad", False),
         "a patch embedding that does not flatten / pads dynamically")
    img_h, img_w = pe.img_size
    ph, pw = pe.patch_size
    need(img_h == img_w and ph == pw, f"non-square image {pe.img_size} or patch {pe.patch_size}")
    need(img_h % ph == 0, f"image size {img_h} not a multiple of patch size {ph}")
    conv = pe.proj
    need(type(conv) is nn.Conv2d and tuple(conv.kernel_size) == (ph, ph) and tuple(conv.stride) == (ph, ph)
         and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1,
         "a patch projection that is not a stride=kernel=patch convolution")
    in_chans = conv.in_channels
    dim = model.embed_dim
    num_patches = (img_h // ph) ** 2
    prefix = 2 if distilled else 1
    need(model.num_prefix_tokens == prefix, f"num_prefix_tokens={model.num_prefix_tokens}")
    need(tuple(model.pos_embed.shape) == (1, num_patches + prefix, dim),
         f"pos_embed of shape {tuple(model.pos_embed.shape)}")

    eps = {_layernorm(model.norm, dim, "norm")}
    depth = len(model.blocks)
    need(depth > 0, "depth 0")
    num_heads = None
    hidden = None
    layer_scale = None
    for i, blk in enumerate(model.blocks):
        w = f"blocks.{i}"
        need(type(blk) is Block, f"{w} of type {type(blk).__name__} (only timm Block)")
        eps.add(_layernorm(blk.norm1, dim, f"{w}.norm1"))
        eps.add(_layernorm(blk.norm2, dim, f"{w}.norm2"))
        at = blk.attn
        need(type(at) is Attention, f"{w}.attn of type {type(at).__name__}")
        need(_is_identity(at.q_norm) and _is_identity(at.k_norm), f"{w}.attn qk_norm")
        need(_is_identity(getattr(at, "norm", None)), f"{w}.attn scale_norm")
        need(getattr(at, "gate", None) is None, f"{w}.attn gated attention")
        need(at.num_heads * at.head_dim == dim, f"{w}.attn head dim {at.head_dim} x {at.num_heads} heads != {dim}")
        need(abs(at.scale - at.head_dim ** -0.5) < 1e-12, f"{w}.attn scale {at.scale} != head_dim^-0.5")
        need(type(at.qkv) is nn.Linear and tuple(at.qkv.weight.shape) == (3 * dim, dim), f"{w}.attn.qkv shape")
        need(type(at.proj) is nn.Linear and tuple(at.proj.weight.shape) == (dim, dim), f"{w}.attn.proj shape")
        need(num_heads in (None, at.num_heads), f"{w}: head count differs between blocks")
        num_heads = at.num_heads
        mlp = blk.mlp
        need(type(mlp) is Mlp, f"{w}.mlp of type {type(mlp).__name__} (only timm Mlp)")
        need(_exact_gelu(mlp.act), f"{w}.mlp.act {mlp.act!r} (only exact erf GELU)")
        need(_is_identity(mlp.norm), f"{w}.mlp norm (scale_mlp_norm)")
        need(type(mlp.fc1) is nn.Linear and type(mlp.fc2) is nn.Linear, f"{w}.mlp convolutional fc")
        h = mlp.fc1.out_features
        need(tuple(mlp.fc1.weight.shape) == (h, dim) and tuple(mlp.fc2.weight.shape) == (dim, h), f"{w}.mlp shapes")
        need(hidden in (None, h), f"{w}: MLP width differs between blocks")
        hidden = h
        ls = (not _is_identity(blk.ls1), not _is_identity(blk.ls2))
        need(ls[0] == ls[1], f"{w}: only one of ls1/ls2")
        for j, m in ((1, blk.ls1), (2, blk.ls2)):
            need(_is_identity(m) or type(m) is LayerScale, f"{w}.ls{j} of type {type(m).__name__}")
        need(layer_scale in (None, ls[0]), f"{w}: layer scale in some blocks only")
        layer_scale = ls[0]
    need(len(eps) == 1, f"LayerNorms with different eps {sorted(eps)}")
    mlp_ratio = hidden / dim
    need(int(dim * mlp_ratio) == hidden, f"MLP width {hidden} not dim*mlp_ratio")

    num_classes = model.num_classes
    heads = [("head", model.head)] + ([("head_dist", model.head_dist)] if distilled else [])
    for hn, hm in heads:
        if num_classes > 0:
            need(type(hm) is nn.Linear and tuple(hm.weight.shape) == (num_classes, dim) and hm.bias is not None,
                 f"{hn} that is not Linear({dim}, {num_classes}) with bias")
        else:
            need(_is_identity(hm), f"{hn} with num_classes 0")
    return OrderedDict([
        ("arch", "deit" if distilled else "vit"),
        ("img_size", int(img_h)), ("in_chans", int(in_chans)), ("patch_size", int(ph)),
        ("embed_dim", int(dim)), ("depth", depth), ("num_heads", int(num_heads)),
        ("mlp_ratio", float(mlp_ratio)), ("num_classes", int(num_classes)),
        ("layer_scale", bool(layer_scale)), ("ln_eps", float(eps.pop())),
    ])


def describe_swin(model) -> dict:
    """Check that `model` is a contract timm SwinTransformer; return its manifest fields.

    Everything is read from the modules (not from create_model arguments): stage widths,
    heads, the window and shift every block really uses, and each block's grid, so that a
    model whose eval-mode forward the graph would compute differently is refused.
    """
    import torch
    import torch.nn as nn
    from timm.layers import Mlp, PatchEmbed
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool
    from timm.layers.classifier import ClassifierHead
    from timm.models.swin_transformer import (PatchMerging, SwinTransformerBlock, SwinTransformerStage,
                                              WindowAttention, get_relative_position_index)

    def need(cond, what):
        if not cond:
            raise ExportError(f"SwinTransformer: {what} is not supported by the mnq model contract")

    need(getattr(model, "absolute_pos_embed", None) is None and getattr(model, "pos_embed", None) is None,
         "an absolute position embedding (ape)")
    need(not getattr(model, "dynamic_img_size", False), "dynamic_img_size=True / strict_img_size=False")
    pe = model.patch_embed
    need(type(pe) is PatchEmbed, f"patch embedding {type(pe).__name__}")
    need(not getattr(pe, "flatten", False) and not getattr(pe, "dynamic_img_pad", False)
         and getattr(pe, "strict_img_size", True), "a patch embedding that flattens / pads / takes any size")
    need(str(getattr(pe, "output_fmt", "NHWC")).split(".")[-1] == "NHWC", f"patch embedding format {pe.output_fmt}")
    img_h, img_w = pe.img_size
    ph, pw = pe.patch_size
    need(img_h == img_w and ph == pw, f"non-square image {pe.img_size} or patch {pe.patch_size}")
    need(img_h % ph == 0, f"image size {img_h} not a multiple of patch size {ph}")
    conv = pe.proj
    need(type(conv) is nn.Conv2d and tuple(conv.kernel_size) == (ph, ph) and tuple(conv.stride) == (ph, ph)
         and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
         and conv.bias is not None, "a patch projection that is not a stride=kernel=patch convolution with bias")
    in_chans = conv.in_channels
    dim = conv.out_channels
    grid = img_h // ph
    need(tuple(pe.grid_size) == (grid, grid), f"patch grid {tuple(pe.grid_size)}")
    eps = set()
    patch_norm = not _is_identity(pe.norm)
    if patch_norm:
        eps.add(_layernorm(pe.norm, dim, "patch_embed.norm"))

    depths, dims, heads, windows = [], [], [], []
    ratios = set()
    need(len(model.layers) > 0, "no stages")
    for st, stage in enumerate(model.layers):
        w = f"layers.{st}"
        need(type(stage) is SwinTransformerStage, f"{w} of type {type(stage).__name__}")
        ds = stage.downsample
        if st == 0:
            need(_is_identity(ds), f"{w}.downsample (stage 0 must not merge patches)")
            out_dim = dim
        else:
            need(type(ds) is PatchMerging, f"{w}.downsample of type {type(ds).__name__} (only timm PatchMerging)")
            need(grid % 2 == 0, f"patch merging of the odd {grid}x{grid} grid of stage {st - 1} (timm pads it)")
            grid //= 2
            eps.add(_layernorm(ds.norm, 4 * dim, f"{w}.downsample.norm"))
            red = ds.reduction
            out_dim = red.out_features
            need(type(red) is nn.Linear and red.bias is None and tuple(red.weight.shape) == (out_dim, 4 * dim),
                 f"{w}.downsample.reduction that is not a bias-free Linear({4 * dim}, out)")
        need(tuple(stage.output_resolution) == (grid, grid),
             f"{w} resolution {tuple(stage.output_resolution)} (the patch grid gives {grid}x{grid})")
        dim = out_dim
        need(len(stage.blocks) > 0, f"{w} without blocks")
        target = None
        for j, blk in enumerate(stage.blocks):
            b = f"{w}.blocks.{j}"
            need(type(blk) is SwinTransformerBlock, f"{b} of type {type(blk).__name__}")
            need(tuple(blk.input_resolution) == (grid, grid), f"{b} input resolution {tuple(blk.input_resolution)}")
            need(not getattr(blk, "dynamic_mask", False), f"{b} dynamic_mask")
            win, shift = tuple(blk.window_size), tuple(blk.shift_size)
            need(win[0] == win[1] and shift[0] == shift[1], f"{b} non-square window {win} / shift {shift}")
            need(target in (None, win[0]), f"{w}: blocks with different windows")
            target = win[0]
            need(grid % win[0] == 0,
                 f"{b}: the {grid}x{grid} token grid is not a multiple of the {win[0]}x{win[0]} window "
                 "(timm would pad; mnq's graph does not)")
            # timm's _calc_window_shift without always_partition: odd blocks shift by half the
            # window while the grid exceeds the window, nothing else.
            want_shift = win[0] // 2 if (j % 2 == 1 and grid > win[0]) else 0
            need(shift[0] == want_shift, f"{b} shift {shift[0]} (the graph shifts odd blocks by window/2 = "
                 f"{want_shift} for this grid; always_partition?)")
            need((blk.attn_mask is not None) == (shift[0] > 0), f"{b} attention mask without shift (or shift without)")
            eps.add(_layernorm(blk.norm1, dim, f"{b}.norm1"))
            eps.add(_layernorm(blk.norm2, dim, f"{b}.norm2"))
            at = blk.attn
            need(type(at) is WindowAttention, f"{b}.attn of type {type(at).__name__}")
            need(tuple(at.window_size) == win, f"{b}.attn window {tuple(at.window_size)} != block window {win}")
            nh = at.num_heads
            need(nh > 0 and dim % nh == 0, f"{b}.attn {nh} heads for width {dim}")
            hd = dim // nh
            need(type(at.qkv) is nn.Linear and tuple(at.qkv.weight.shape) == (3 * dim, dim),
                 f"{b}.attn.qkv of shape {tuple(at.qkv.weight.shape)} (head_dim must be dim/num_heads = {hd})")
            need(type(at.proj) is nn.Linear and tuple(at.proj.weight.shape) == (dim, dim) and at.proj.bias is not None,
                 f"{b}.attn.proj that is not Linear({dim}, {dim}) with bias")
            need(abs(at.scale - hd ** -0.5) < 1e-12, f"{b}.attn scale {at.scale} != head_dim^-0.5")
            n = win[0] * win[0]
            need(tuple(at.relative_position_bias_table.shape) == ((2 * win[0] - 1) ** 2, nh),
                 f"{b}.attn.relative_position_bias_table of shape {tuple(at.relative_position_bias_table.shape)}")
            idx = get_relative_position_index(win[0], win[0]).to(at.relative_position_index.device)
            need(tuple(at.relative_position_index.shape) == (n, n) and torch.equal(at.relative_position_index, idx),
                 f"{b}.attn.relative_position_index that is not timm's for a {win[0]}x{win[0]} window")
            if j == 0:
                heads.append(nh)
            need(nh == heads[-1], f"{w}: head count differs between blocks")
            mlp = blk.mlp
            need(type(mlp) is Mlp, f"{b}.mlp of type {type(mlp).__name__} (only timm Mlp)")
            need(_exact_gelu(mlp.act), f"{b}.mlp.act {mlp.act!r} (only exact erf GELU)")
            need(_is_identity(mlp.norm), f"{b}.mlp norm")
            need(type(mlp.fc1) is nn.Linear and type(mlp.fc2) is nn.Linear and mlp.fc1.bias is not None
                 and mlp.fc2.bias is not None, f"{b}.mlp fc layers that are not Linear with bias")
            h = mlp.fc1.out_features
            need(tuple(mlp.fc1.weight.shape) == (h, dim) and tuple(mlp.fc2.weight.shape) == (dim, h), f"{b}.mlp shapes")
            ratios.add((h, dim, float(getattr(blk, "mlp_ratio", h / dim))))
        depths.append(len(stage.blocks))
        dims.append(dim)
        windows.append(target)
    need(model.global_pool == "avg", f"global_pool={model.global_pool!r} (only 'avg')")
    hm = model.head
    need(type(hm) is ClassifierHead and not hm.use_conv and _is_identity(hm.flatten)
         and hm.global_pool.pool_type == "avg" and type(hm.global_pool.pool) is FastAdaptiveAvgPool
         and _is_identity(hm.global_pool.flatten), "a head other than timm's avg-pooling ClassifierHead")
    need(not isinstance(model.norm, nn.Identity), "no final norm")
    eps.add(_layernorm(model.norm, dim, "norm"))
    need(len(eps) == 1, f"LayerNorms with different eps {sorted(eps)}")
    # One mlp_ratio for all stages: the manifest's hidden width is int(stage width * mlp_ratio).
    rs = {r for _, _, r in ratios}
    need(len(rs) == 1, f"MLP ratios that differ between stages {sorted(rs)}")
    mlp_ratio = rs.pop()
    need(all(int(d * mlp_ratio) == h for h, d, _ in ratios), f"MLP widths that are not int(width * {mlp_ratio})")
    num_classes = model.num_classes
    fc = hm.fc
    if num_classes > 0:
        need(type(fc) is nn.Linear and tuple(fc.weight.shape) == (num_classes, dim) and fc.bias is not None,
             f"head.fc that is not Linear({dim}, {num_classes}) with bias")
    else:
        need(_is_identity(fc), "head.fc with num_classes 0")
    info = OrderedDict([
        ("arch", "swin"),
        ("img_size", int(img_h)), ("in_chans", int(in_chans)), ("patch_size", int(ph)),
        ("embed_dim", int(dims[0])), ("depth", int(sum(depths))), ("num_heads", int(heads[0])),
        ("mlp_ratio", float(mlp_ratio)), ("num_classes", int(num_classes)),
        ("layer_scale", False), ("ln_eps", float(eps.pop())),
        ("swin", OrderedDict([("depths", [int(x) for x in depths]), ("embed_dims", [int(x) for x in dims]),
                              ("num_heads", [int(x) for x in heads]), ("window_size", [int(x) for x in windows]),
                              ("patch_norm", bool(patch_norm))])),
    ])
    # Every persistent tensor of the model must be one the contract names: catches any extra
    # parameter a modified model would use and the graph would not.
    want = set(swin_tensor_shapes(info))
    extra = [k for k in model.state_dict() if k not in want]
    need(not extra, f"tensors outside the contract ({', '.join(extra[:5])})")
    return info


def swin_tensor_shapes(info: dict) -> "OrderedDict[str, tuple]":
    """The contract's tensor names and shapes for a Swin manifest (timm names, no derived buffers)."""
    sw = info["swin"]
    c, p = info["in_chans"], info["patch_size"]
    d = sw["embed_dims"][0]
    grid = info["img_size"] // p
    s = OrderedDict()
    s["patch_embed.proj.weight"] = (d, c, p, p)
    s["patch_embed.proj.bias"] = (d,)
    if sw["patch_norm"]:
        s["patch_embed.norm.weight"] = (d,)
        s["patch_embed.norm.bias"] = (d,)
    for st, depth in enumerate(sw["depths"]):
        ds, nh = sw["embed_dims"][st], sw["num_heads"][st]
        if st > 0:
            grid //= 2
            m = f"layers.{st}.downsample."
            s[m + "norm.weight"] = (4 * d,)
            s[m + "norm.bias"] = (4 * d,)
            s[m + "reduction.weight"] = (ds, 4 * d)
        d = ds
        h = int(d * info["mlp_ratio"])
        w = min(sw["window_size"][st], grid)
        for j in range(depth):
            b = f"layers.{st}.blocks.{j}."
            s[b + "norm1.weight"] = (d,)
            s[b + "norm1.bias"] = (d,)
            s[b + "attn.relative_position_bias_table"] = ((2 * w - 1) ** 2, nh)
            s[b + "attn.qkv.weight"] = (3 * d, d)
            s[b + "attn.qkv.bias"] = (3 * d,)
            s[b + "attn.proj.weight"] = (d, d)
            s[b + "attn.proj.bias"] = (d,)
            s[b + "norm2.weight"] = (d,)
            s[b + "norm2.bias"] = (d,)
            s[b + "mlp.fc1.weight"] = (h, d)
            s[b + "mlp.fc1.bias"] = (h,)
            s[b + "mlp.fc2.weight"] = (d, h)
            s[b + "mlp.fc2.bias"] = (d,)
    s["norm.weight"] = (d,)
    s["norm.bias"] = (d,)
    k = info["num_classes"]
    if k > 0:
        s["head.fc.weight"] = (k, d)
        s["head.fc.bias"] = (k,)
    return s


def tensor_shapes(info: dict) -> "OrderedDict[str, tuple]":
    """The contract's tensor names and shapes for a manifest's architecture fields."""
    if info["arch"] == "swin":
        return swin_tensor_shapes(info)
    d, c, p = info["embed_dim"], info["in_chans"], info["patch_size"]
    h = int(d * info["mlp_ratio"])
    distilled = info["arch"] == "deit"
    t = (info["img_size"] // p) ** 2 + (2 if distilled else 1)
    s = OrderedDict()
    s["cls_token"] = (1, 1, d)
    if distilled:
        s["dist_token"] = (1, 1, d)
    s["pos_embed"] = (1, t, d)
    s["patch_embed.proj.weight"] = (d, c, p, p)
    s["patch_embed.proj.bias"] = (d,)
    for i in range(info["depth"]):
        b = f"blocks.{i}."
        s[b + "norm1.weight"] = (d,)
        s[b + "norm1.bias"] = (d,)
        s[b + "attn.qkv.weight"] = (3 * d, d)
        s[b + "attn.qkv.bias"] = (3 * d,)
        s[b + "attn.proj.weight"] = (d, d)
        s[b + "attn.proj.bias"] = (d,)
        if info["layer_scale"]:
            s[b + "ls1.gamma"] = (d,)
        s[b + "norm2.weight"] = (d,)
        s[b + "norm2.bias"] = (d,)
        s[b + "mlp.fc1.weight"] = (h, d)
        s[b + "mlp.fc1.bias"] = (h,)
        s[b + "mlp.fc2.weight"] = (d, h)
        s[b + "mlp.fc2.bias"] = (d,)
        if info["layer_scale"]:
            s[b + "ls2.gamma"] = (d,)
    s["norm.weight"] = (d,)
    s["norm.bias"] = (d,)
    k = info["num_classes"]
    if k > 0:
        s["head.weight"] = (k, d)
        s["head.bias"] = (k,)
        if distilled:
            s["head_dist.weight"] = (k, d)
            s["head_dist.bias"] = (k,)
    return s


def nonlinear_layers(depth: int) -> list:
    """Contract names of the non-linear layers, in execution order."""
    names = [f"blocks.{i}.{n}" for i in range(depth) for n in BLOCK_NONLINEAR]
    return names + ["norm"]


def collect_tensors(model, info: dict) -> "OrderedDict[str, np.ndarray]":
    """The model's weights under the contract's names as C-contiguous float32 arrays.

    Biases a timm model leaves out (qkv_bias=False, proj_bias=False) are written as zeros,
    which is the same function.
    """
    sd = model.state_dict()
    out = OrderedDict()
    for name, shape in tensor_shapes(info).items():
        if name in sd and sd[name] is not None:
            a = sd[name].detach().cpu().double().numpy()
        elif name.endswith(".bias"):
            a = np.zeros(shape)
        else:
            raise ExportError(f"tensor {name} missing from the model")
        if a.shape != shape:
            raise ExportError(f"tensor {name} has shape {a.shape}, the contract needs {shape}")
        if not np.all(np.isfinite(a)):
            raise ExportError(f"tensor {name} holds NaN or infinite values")
        out[name] = np.ascontiguousarray(a.astype(np.float32))
    return out


def load_checkpoint(path: Path, trust: bool = False) -> dict:
    """Load a state dict (name -> torch tensor) from a torch or safetensors checkpoint file."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise ExportError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust)
    except TypeError:  # torch < 1.13 has no weights_only
        obj = torch.load(str(path), map_location="cpu")
    except Exception as e:
        hint = "" if trust else (" (if it holds more than tensors, e.g. training arguments, and you trust "
                                 "the file, pass --trust-checkpoint to unpickle it fully)")
        raise ExportError(f"cannot load checkpoint {path}: {e}{hint}") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict", "model_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ExportError(f"checkpoint {path} is not a state dict (name -> tensor), nor a dict holding one "
                          "under 'model', 'state_dict' or 'model_state_dict'")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def _match_block_pattern(pattern: str, module: str):
    rx = "^" + re.escape(pattern).replace(re.escape("{i}"), r"(\d+)") + "$"
    m = re.match(rx, module)
    return m


def ivit_scales(state: dict, depth: int):
    """Map an I-ViT checkpoint's act_scaling_factor buffers to contract scale names.

    Returns (act_scales, unmapped) where unmapped lists (checkpoint name, meaning) of the
    scales that have no contract name.
    """
    scales, unmapped = OrderedDict(), []
    for key, v in state.items():
        if not key.endswith(".act_scaling_factor"):
            continue
        module = key[: -len(".act_scaling_factor")]
        target = None
        for pat, name in IVIT_SCALE_MAP.items():
            m = _match_block_pattern(pat, module)
            if m:
                target = name.replace("{i}", m.group(1)) if m.groups() else name
                if m.groups() and int(m.group(1)) >= depth:
                    raise ExportError(f"checkpoint scale {key} names block {m.group(1)}, the model has {depth}")
                break
        if target is None:
            meaning = next((d for pat, d in IVIT_UNMAPPED.items() if _match_block_pattern(pat, module)), None)
            if meaning is None:
                raise ExportError(f"checkpoint scale {key} is not an I-ViT quantisation point mnq knows "
                                  "(see IVIT_SCALE_MAP in sim/export.py)")
            unmapped.append((key, meaning))
            continue
        a = v.detach().cpu().double().reshape(-1).numpy()
        if a.size != 1:
            raise ExportError(f"checkpoint scale {key} has {a.size} values; mnq takes per-tensor scales")
        s = float(a[0])
        if not np.isfinite(s) or s <= 0:
            raise ExportError(f"checkpoint scale {key} is {s}: not a positive finite scale (uncalibrated?)")
        scales[target] = s
    if not scales:
        raise ExportError("--qat ivit: the checkpoint has no I-ViT act_scaling_factor buffers")
    return scales, unmapped


def split_checkpoint(model, state: dict, qat: str | None):
    """Load a checkpoint's float weights into `model`; return (quant section or None, unmapped scales).

    Every weight of the model must be in the checkpoint; any other tensor must be a known
    I-ViT quantisation buffer (with --qat ivit), otherwise the checkpoint is refused.
    """
    import torch
    want = model.state_dict()
    if type(model) is _swin_class():
        if qat is not None:
            raise ExportError("--qat ivit covers ViT/DeiT only: there is no I-ViT scale map for Swin")
        # Buffers timm derives from the window (and older timm / Microsoft checkpoints still
        # carry): mnq computes them itself, as timm's checkpoint_filter_fn drops them.
        state = {k: v for k, v in state.items()
                 if not (k.endswith(".relative_position_index") or k.endswith(".attn_mask"))}
    missing = [k for k in want if k not in state]
    if missing:
        hint = ""
        if type(model) is _swin_class() and "layers.0.downsample.reduction.weight" in state:
            hint = (" (this looks like an original Microsoft Swin checkpoint, which merges patches at the end of "
                    "a stage: convert it with timm.models.swin_transformer.checkpoint_filter_fn first)")
        raise ExportError(f"checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:5]}: "
                          f"wrong --model / --model-args for this checkpoint?{hint}")
    extra = [k for k in state if k not in want]
    if qat is None and extra:
        raise ExportError(f"checkpoint has {len(extra)} tensors the model does not, e.g. {extra[:5]}: "
                          "wrong --model / --model-args, or a QAT checkpoint (pass --qat ivit)?")
    if qat == "ivit":
        bad = [k for k in extra if not k.rsplit(".", 1)[-1] in IVIT_AUX_SUFFIXES]
        if bad:
            raise ExportError(f"checkpoint has {len(bad)} tensors that are neither model weights nor I-ViT "
                              f"quantisation buffers, e.g. {bad[:5]}")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ExportError(f"checkpoint tensor {k} has shape {tuple(state[k].shape)}, the model needs {tuple(v.shape)}")
    with torch.no_grad():
        model.load_state_dict({k: state[k].to(want[k].dtype) for k in want}, strict=True)
    if qat is None:
        return None, []
    scales, unmapped = ivit_scales(state, len(model.blocks))
    return scales, unmapped


def reference_outputs(model, inputs: np.ndarray, num_classes: int) -> np.ndarray:
    """Eval-mode outputs for normalised inputs [n,C,H,W]: logits [n,K], or the features [n,D] when K = 0
    (ViT/DeiT: norm(x)[:,0], the class token; Swin: the mean over tokens of norm(x)).

    Computed in float64 on a copy of the model (the float32 weights are exact in float64), so
    the reference is the model's function, not float32 rounding; stored as float32.
    """
    import torch
    m = copy.deepcopy(model).double().eval()
    if hasattr(m, "set_distilled_training"):
        m.set_distilled_training(False)
    with torch.no_grad():
        x = torch.from_numpy(inputs.astype(np.float64))
        if num_classes > 0 or type(model) is _swin_class():
            y = m(x)  # a Swin without classes still pools: its head.fc is the identity
        else:
            y = m.forward_features(x)[:, 0]
    return y.numpy().astype(np.float32)


def normalise(pixels_u8: np.ndarray, mean, std, in_chans: int, img_size: int) -> np.ndarray:
    """uint8 images [n,H,W], [n,H,W,C] or [n,C,H,W] -> float32 [n,C,H,W], (p/255 - mean)/std."""
    a = np.asarray(pixels_u8)
    if a.dtype != np.uint8:
        raise ExportError(f"reference images must be uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and in_chans == 1:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] == in_chans and a.shape[1] != in_chans:
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1:] != (in_chans, img_size, img_size):
        raise ExportError(f"reference images of shape {np.asarray(pixels_u8).shape} do not fit the model "
                          f"({in_chans} channels, {img_size}x{img_size})")
    x = a.astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def _check_norm(mean, std, in_chans):
    for what, v in (("mean", mean), ("std", std)):
        if len(v) != in_chans:
            raise ExportError(f"input {what} has {len(v)} values, the model has {in_chans} channels")
        if not all(np.isfinite(x) for x in v):
            raise ExportError(f"input {what} {v} is not finite")
    if any(s <= 0 for s in std):
        raise ExportError(f"input std {std} must be positive")


def export_model(model, out_dir, *, name=None, mean, std, labels=None, source="", act_scales=None,
                 weight_bits=8, act_bits=8, assignment=None, ref_images=None, ref_count=8, seed=0,
                 force=False) -> dict:
    """Write the contract directory for a timm model (weights already loaded); return the manifest.

    The directory is built next to `out_dir` and moved into place at the end, so a failure
    leaves nothing behind; an existing `out_dir` is replaced only with force=True.
    """
    from safetensors.numpy import save_file
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} exists: pass --force to replace it")
    model.eval()
    info = describe(model)
    mean, std = [float(x) for x in mean], [float(x) for x in std]
    _check_norm(mean, std, info["in_chans"])
    if labels is not None and len(labels) != info["num_classes"]:
        raise ExportError(f"{len(labels)} labels for {info['num_classes']} classes")
    tensors = collect_tensors(model, info)

    quant = None
    if act_scales is not None:
        if weight_bits not in range(2, 17) or act_bits not in range(2, 17):
            raise ExportError(f"weight/activation bits {weight_bits}/{act_bits} outside 2..16")
        quant = OrderedDict([("weight_bits", int(weight_bits)), ("act_bits", int(act_bits)),
                             ("act_scales", OrderedDict(act_scales))])
        if assignment is not None:
            if info["arch"] == "swin":
                raise ExportError("a unit assignment for Swin is not supported by the exporter (ViT/DeiT only)")
            layers = nonlinear_layers(info["depth"])
            bad = [k for k in assignment if k not in layers]
            if bad or set(layers) - set(assignment):
                raise ExportError(f"assignment must name every non-linear layer once; unknown {bad}, "
                                  f"missing {sorted(set(layers) - set(assignment))}")
            quant["assignment"] = OrderedDict((k, assignment[k]) for k in layers)

    manifest = OrderedDict([("format", FORMAT), ("name", name or out_dir.name)])
    manifest.update(info)
    manifest["input"] = OrderedDict([("mean", mean), ("std", std)])
    if labels is not None:
        manifest["labels"] = list(labels)
    manifest["source"] = source
    manifest["quant"] = quant

    n, c = info["img_size"], info["in_chans"]
    if ref_images is None:
        rng = np.random.default_rng(seed)
        ref_images = rng.integers(0, 256, size=(ref_count, c, n, n), dtype=np.uint8)
    inputs = normalise(ref_images, mean, std, c, n)[:ref_count]
    outputs = reference_outputs(model, inputs, info["num_classes"])
    if not np.all(np.isfinite(outputs)):
        raise ExportError("the model's reference outputs are not finite")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # one key: byte-reproducible header
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        key = "logits" if info["num_classes"] > 0 else "features"
        np.savez(tmp / "reference.npz", **{"inputs": inputs, key: outputs})
        # mkdtemp (and the safetensors writer) create private modes; give the usual ones.
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", suffix=".tmp", dir=out_dir.parent))
            os.rmdir(old)
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _floats(text: str):
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError as e:
        raise ExportError(f"not a list of numbers: {text!r}") from e


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Python: Debian's /usr/bin/python3 with python3-torch, or a venv with "
                                       "sim/requirements.txt. See sim/README.md.")
    p.add_argument("--model", required=True, help="timm model name, e.g. deit_tiny_distilled_patch16_224")
    p.add_argument("--model-args", default="{}",
                   help="JSON object of timm.create_model keyword arguments (img_size, num_classes, ...)")
    p.add_argument("--checkpoint", help="state dict (.pth/.pt/.bin/.safetensors); without it the "
                   "model keeps timm's seeded random initialisation")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the checkpoint fully (needed when it holds more than tensors)")
    p.add_argument("--qat", choices=["ivit"], help="the checkpoint is an I-ViT QAT checkpoint: its "
                   "activation scales become quant.act_scales and every non-linear layer gets the I-ViT unit")
    p.add_argument("--weight-bits", type=int, default=8, help="quant.weight_bits (with --qat)")
    p.add_argument("--act-bits", type=int, default=8, help="quant.act_bits (with --qat)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--name", help="manifest name (default: the directory's name)")
    p.add_argument("--mean", help="per-channel input mean (default: the timm config's when it fits)")
    p.add_argument("--std", help="per-channel input std (default: the timm config's when it fits)")
    p.add_argument("--labels", help="JSON file with the list of class names")
    p.add_argument("--ref-images", help=".npy of uint8 images [n,H,W] / [n,H,W,C] / [n,C,H,W] for "
                   "reference.npz (default: seeded random pixels)")
    p.add_argument("--ref-count", type=int, default=8, help="number of reference inputs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for model init and random reference pixels")
    p.add_argument("--source", help="manifest source text (default: model name and checkpoint)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = p.parse_args(argv)
    try:
        timm = _timm()
        import torch
        torch.manual_seed(a.seed)
        try:
            kwargs = json.loads(a.model_args)
        except json.JSONDecodeError as e:
            raise ExportError(f"--model-args is not JSON: {e}") from e
        if not isinstance(kwargs, dict):
            raise ExportError("--model-args must be a JSON object")
        try:
            model = timm.create_model(a.model, pretrained=False, **kwargs)
        except RuntimeError as e:
            raise ExportError(f"timm cannot build {a.model!r}: {e}") from e
        except TypeError as e:
            raise ExportError(f"timm model {a.model!r} does not take these --model-args: {e}") from e
        if a.ref_count < 1:
            raise ExportError("--ref-count must be at least 1")
        info = describe(model)  # refuse before loading anything large
        if a.qat and info["arch"] == "swin":
            raise ExportError("--qat ivit covers ViT/DeiT only: there is no I-ViT scale map for Swin")
        scales, unmapped = None, []
        if a.checkpoint:
            scales, unmapped = split_checkpoint(model, load_checkpoint(Path(a.checkpoint), a.trust_checkpoint), a.qat)
        elif a.qat:
            raise ExportError("--qat needs --checkpoint")
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean = _floats(a.mean) if a.mean else list(cfg.get("mean", ()))
        std = _floats(a.std) if a.std else list(cfg.get("std", ()))
        if len(mean) != info["in_chans"] or len(std) != info["in_chans"]:
            raise ExportError(f"the timm config's normalisation {mean}/{std} does not fit {info['in_chans']} "
                              "channels: pass --mean and --std")
        labels = None
        if a.labels:
            with open(a.labels) as f:
                labels = json.load(f)
        ref = np.load(a.ref_images) if a.ref_images else None
        assignment = None
        if a.qat == "ivit":
            # "blocks.3.attn.softmax" -> "attn.softmax"; "norm" stays "norm"
            assignment = {n: IVIT_UNITS[n.split(".", 2)[-1]] for n in nonlinear_layers(info["depth"])}
        source = a.source or f"timm {a.model} {a.model_args}; checkpoint {a.checkpoint or 'none (random init)'}"
        man = export_model(model, a.out, name=a.name, mean=mean, std=std, labels=labels, source=source,
                           act_scales=scales, weight_bits=a.weight_bits, act_bits=a.act_bits,
                           assignment=assignment, ref_images=ref, ref_count=a.ref_count, seed=a.seed,
                           force=a.force)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {man['arch']} dim {man['embed_dim']} depth {man['depth']} "
          f"classes {man['num_classes']}" + (f", {len(man['quant']['act_scales'])} act scales" if man["quant"] else ""))
    for key, meaning in unmapped:
        print(f"note: checkpoint scale {key} ({meaning}) has no contract name; not written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
