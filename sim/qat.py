#!/usr/bin/env python3
"""Quantisation-aware fine-tuning of an mnq model directory with mnq's own integer units in the
forward pass (sim/mnq_torch), writing an mnq model directory that `mnq infer` / `mnq run` take
as it is.

    /usr/bin/python3 sim/qat.py --model sim/models/deit_tiny_fmnist --assign ASSIGNMENT.json \\
        --bits 6 --epochs 1 --out /tmp/deit_qat6

The forward is mnq's integer forward, bit for bit (every requantiser, GEMM and non-linear unit
as `mnq infer` computes it, with the per-layer units of --assign); the backward is a
straight-through estimator around it (see sim/mnq_torch/model.py): weights and LayerNorm
parameters are trained, activation scales are learned (LSQ), 16-bit residual scales and FQ-ViT
PTF parameters stay as calibrated. AdamW (the seed's optimiser) with linear warm-up and cosine
decay, random horizontal flips, cross-entropy on the model's logits (DeiT: the mean of its two
heads, as mnq evaluates it).

Scales to start from: the manifest's quant section (e.g. one written by `mnq calibrate`, or
--manifest FILE), else a calibration here on DATA/calib_images.npy (min/max and PTF, as
`mnq calibrate` does, in float32 PyTorch).

Output: OUT/model.safetensors (the trained float32 weights under their timm names) and
OUT/manifest.json whose quant section holds the trained act_scales, the bit widths, the
assignment, the PTF parameters and a `qat` record (steps, data, evaluation). The directory is
written beside OUT and renamed into place at the end: a failed run leaves nothing half-written
(an existing OUT is replaced only with --force). A checkpoint (OUT.ckpt.pt unless --checkpoint)
is written atomically every --checkpoint-every steps and at every epoch end; --resume continues
from it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class UserError(Exception):
    """A problem with the command's inputs, reported as `error: ...` with exit status 2."""


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\0\0\x08":
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: {body.size} bytes for shape {dims}")
    return body.reshape(dims).copy()


def load_train(root: Path):
    """Training images (uint8 [N, H, W] or [N, C, H, W]) and labels from an IDX or .npy folder."""
    idx = (root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz")
    npy = (root / "train_images.npy", root / "train_labels.npy")
    if all(p.is_file() for p in idx):
        x, y = read_idx(idx[0]), read_idx(idx[1])
    elif all(p.is_file() for p in npy):
        x, y = np.load(npy[0]), np.load(npy[1])
    else:
        raise UserError(f"no training set in {root}: expected {idx[0].name} + {idx[1].name} (Fashion-MNIST: "
                        f"apt-get install dataset-fashion-mnist) or {npy[0].name} + {npy[1].name}; see --train-data")
    if x.dtype != np.uint8 or len(x) != len(y):
        raise UserError(f"{root}: training images must be uint8 and match the labels in number")
    return x, y.astype(np.int64)


def load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path} ({what}) is missing; see --data")
    return np.load(path)


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total, self.label, self.quiet = total, label, quiet
        self.t0 = time.time()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, done: int, note: str = ""):
        if self.quiet:
            return
        now = time.time()
        if not self.tty and now - self.last < 30 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0
        w = 30
        fill = int(w * done / max(self.total, 1))
        bar = "=" * fill + (">" if fill < w else "") + " " * (w - fill - 1)
        line = f"{self.label} [{bar[:w]}] {done}/{self.total} {note} ({rate:.2f} it/s, eta {eta:.0f} s)"
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(160))
            if done >= self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def cosine_lr(step, total, warmup, peak):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def atomic_torch_save(obj, path: Path):
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def evaluate(mm, x, y, batch, device):
    """Top-1 of the exact integer forward (what `mnq infer` reports) and the logits."""
    import torch
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(mm(torch.from_numpy(x[i:i + batch]).to(device), "int")["logits"].cpu())
    logits = torch.cat(outs)
    return float((logits.argmax(1).numpy() == y).mean()), logits


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See sim/README.md (QAT) for the evidence table and GPU use.")
    p.add_argument("--model", required=True, help="mnq model directory (manifest.json + model.safetensors)")
    p.add_argument("--manifest", help="take the starting quant section from this manifest instead of MODEL/manifest.json")
    p.add_argument("--assign", required=True,
                   help="assignment.json (layer -> unit), or one method for every layer: ibert, ivit, fqvit")
    p.add_argument("--bits", type=int, required=True, choices=[8, 6, 4], help="weight and activation bits")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs over the training subset (fractions allowed)")
    p.add_argument("--steps", type=int, help="stop after this many optimiser steps (a smoke run)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--train-data", default="/usr/share/datasets/fashion-mnist",
                   help="folder with train-images-idx3-ubyte.gz + train-labels-idx1-ubyte.gz, or train_images.npy + train_labels.npy")
    p.add_argument("--train-count", type=int, default=0, help="train on this many images (a fixed seeded subset; 0 = all)")
    p.add_argument("--data", default=str(HERE / "data" / "fashion_mnist"),
                   help="folder with eval_images.npy, eval_labels.npy, calib_images.npy")
    p.add_argument("--eval-count", type=int, default=2000, help="evaluation images after each epoch (0 = none)")
    p.add_argument("--calib-count", type=int, default=256, help="calibration images when the manifest has no scales")
    p.add_argument("--preset", default="adapted", choices=["adapted", "reference"], help="unit parameter preset (mnq's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (weights, LayerNorm, scales)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--checkpoint", help="checkpoint file (default OUT.ckpt.pt)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--stop-after", type=int,
                   help="stop after this many steps of this run, with a checkpoint and no OUT (continue with --resume)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    try:
        return run(a)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(a) -> int:
    import torch
    import torch.nn.functional as F
    from mnq_torch import MnqModel, ModelDirError, RangeError
    from mnq_torch.calib import calibrate

    out = Path(a.out)
    ckpt_path = Path(a.checkpoint) if a.checkpoint else out.with_name(out.name + ".ckpt.pt")
    if out.exists() and not a.force:
        raise UserError(f"{out} exists; pass --force to replace it")
    if a.epochs <= 0 or (a.steps is not None and a.steps <= 0) or a.batch_size <= 0:
        raise UserError("--epochs, --steps and --batch-size must be positive")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to this PyTorch")
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    data = Path(a.data)

    try:
        mm = MnqModel(a.model, bits=a.bits, assignment=a.assign, preset=a.preset, manifest=a.manifest,
                      allow_uncalibrated=True)
    except ModelDirError as e:
        raise UserError(str(e)) from None
    m = mm.m
    if Path(a.assign).suffix == ".json":
        made_for = json.loads(Path(a.assign).read_text())
        if made_for.get("model") != m["name"] or made_for.get("bits") != a.bits:
            print(f"note: the assignment was made for model '{made_for.get('model')}' at {made_for.get('bits')} bits; "
                  f"training '{m['name']}' at {a.bits}", file=sys.stderr)
    mean, std = m["input"]["mean"], m["input"]["std"]
    calib_note = "the manifest's quant section" + (f" ({a.manifest})" if a.manifest else "")
    if not mm.calibrated:
        ci = load_npy(data / "calib_images.npy", "calibration images")[: a.calib_count]
        xq = torch.from_numpy(MnqModel.normalise(ci, mean, std))
        mm.set_quant(calibrate(mm, xq, a.bits))
        calib_note = f"calibrated here on {len(ci)} images of {data / 'calib_images.npy'} (min/max, PTF)"
    mm.to(device)

    tx, ty = load_train(Path(a.train_data))
    if a.train_count:
        sub = np.random.default_rng(12345).permutation(len(tx))[: a.train_count]
        tx, ty = tx[np.sort(sub)], ty[np.sort(sub)]
    if m["num_classes"] and (ty.min() < 0 or ty.max() >= m["num_classes"]):
        raise UserError(f"training labels outside 0..{m['num_classes']}")
    tx = MnqModel.normalise(tx, mean, std)
    if tx.shape[1:] != (m["in_chans"], m["img_size"], m["img_size"]):
        raise UserError(f"training images have shape {tx.shape[1:]} but the model takes "
                        f"{(m['in_chans'], m['img_size'], m['img_size'])}")
    ex = ey = None
    if a.eval_count:
        ex = MnqModel.normalise(load_npy(data / "eval_images.npy", "evaluation images")[: a.eval_count], mean, std)
        ey = load_npy(data / "eval_labels.npy", "evaluation labels")[: a.eval_count].astype(np.int64)

    steps_per_epoch = len(tx) // a.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"{len(tx)} training images are fewer than one batch of {a.batch_size}")
    total = int(round(a.epochs * steps_per_epoch))
    if a.steps is not None:
        total = min(total, a.steps)
    warmup = max(1, int(a.warmup * total))

    def decays(n, p):
        return p.ndim > 1 and "token" not in n and "pos_embed" not in n

    named = list(mm.params.items())
    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": a.weight_decay},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
        {"params": [p for p in mm.scales.values() if p.requires_grad], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=a.lr)
    config = {"model": str(Path(a.model).resolve()), "assignment": mm.assignment, "bits": a.bits, "preset": a.preset,
              "total_steps": total, "batch_size": a.batch_size, "lr": a.lr, "train_count": len(tx), "seed": a.seed}
    step, log, ck = 0, [], None
    if a.resume:
        if not ckpt_path.is_file():
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        ck = torch.load(ckpt_path, map_location="cpu")  # the RNG state must stay a CPU tensor
        if ck["config"] != config:
            diff = [k for k in config if ck["config"].get(k) != config[k]]
            raise UserError(f"--resume: {ckpt_path} was made with other settings ({', '.join(diff)})")
        mm.load_state_dict(ck["model"])
        mm.ptf = ck["ptf"]
        opt.load_state_dict(ck["opt"])
        step, log = ck["step"], ck["log"]
        rng = np.random.default_rng()
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from {ckpt_path} at step {step}/{total}", file=sys.stderr)

    t0, c0 = time.time(), time.process_time()
    bar = Progress(total, f"QAT {a.bits}-bit", a.quiet)
    # Each epoch's order is drawn from rng at its first step; a checkpoint stores the current
    # order with the rng state, so a resumed run continues exactly as an uninterrupted one.
    order = ck.get("order") if a.resume else None
    run_loss, n_loss = 0.0, 0
    stop_at = total if a.stop_after is None else min(total, step + a.stop_after)
    try:
        while step < stop_at:
            e_idx, b_idx = divmod(step, steps_per_epoch)
            if b_idx == 0:
                order = rng.permutation(len(tx))
            idx = order[b_idx * a.batch_size:(b_idx + 1) * a.batch_size]
            flip = rng.random(len(idx)) < 0.5
            xb = tx[idx].copy()
            xb[flip] = xb[flip, ..., ::-1]
            xb = torch.from_numpy(np.ascontiguousarray(xb)).to(device)
            yb = torch.from_numpy(ty[idx]).to(device)
            lr = cosine_lr(step, total, warmup, a.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            mm.train()
            o = mm(xb, "qat")
            loss = F.cross_entropy(o["surrogate"], yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            bad = [n for n, p in list(mm.params.items()) + list(mm.scales.items())
                   if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            if bad:
                raise UserError(f"non-finite gradient at step {step} in {', '.join(bad[:3])}; lower --lr")
            opt.step()
            mm.clamp_scales()
            step += 1
            run_loss += float(loss)
            n_loss += 1
            bar.update(step, f"loss {run_loss / n_loss:.4f}")
            epoch_end = step % steps_per_epoch == 0 or step == total
            if epoch_end:
                rec = {"step": step, "epoch": step / steps_per_epoch, "loss": run_loss / n_loss,
                       "wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
                if ex is not None:
                    mm.eval()
                    rec["eval_top1"], _ = evaluate(mm, ex, ey, 250, device)
                print(f"step {step}/{total} (epoch {rec['epoch']:.2f}): loss {rec['loss']:.4f}"
                      + (f", integer top-1 {100 * rec['eval_top1']:.2f} % on {len(ey)} eval images" if ex is not None else ""),
                      file=sys.stderr, flush=True)
                log.append(rec)
                run_loss, n_loss = 0.0, 0
            if epoch_end or step % a.checkpoint_every == 0 or step == stop_at:
                atomic_torch_save({"config": config, "model": mm.state_dict(), "ptf": mm.ptf, "opt": opt.state_dict(),
                                   "step": step, "log": log, "rng": rng.bit_generator.state,
                                   "torch_rng": torch.get_rng_state(), "order": order}, ckpt_path)
    except RangeError as e:
        raise UserError(f"the integer forward left its exact range: {e}") from None

    if step < total:
        print(f"stopped at step {step}/{total}; checkpoint {ckpt_path}; continue with --resume", file=sys.stderr)
        return 0
    # Final evaluation (the last epoch's record when it has one) and the model directory.
    final = log[-1] if log and log[-1]["step"] == step else None
    if ex is not None and (final is None or "eval_top1" not in final):
        mm.eval()
        top1, _ = evaluate(mm, ex, ey, 250, device)
    else:
        top1 = final["eval_top1"] if final else None
    write_model_dir(mm, out, a, {
        "steps": step, "epochs": step / steps_per_epoch, "train_images": len(tx), "train_data": str(a.train_data),
        "batch_size": a.batch_size, "lr": a.lr, "weight_decay": a.weight_decay, "optimizer": "AdamW, warm-up + cosine",
        "preset": a.preset, "seed": a.seed, "start": calib_note, "device": str(device),
        "torch": torch.__version__, "eval_top1": top1, "eval_images": 0 if ey is None else len(ey), "log": log,
        "scales": "act_bits scales learned (LSQ); 16-bit residual scales and PTF parameters as calibrated",
    })
    print(f"wrote {out} ({step} steps, {time.time() - t0:.0f} s wall"
          + (f", integer top-1 {100 * top1:.2f} % on {len(ey)} eval images" if top1 is not None else "") + ")")
    print(f"use it with: mnq infer --model {out}")
    return 0


def write_model_dir(mm, out: Path, a, qat_info: dict):
    """model.safetensors + manifest.json (quant: trained scales, bits, assignment, PTF, qat record),
    written into a fresh folder beside OUT and renamed into place."""
    from safetensors.torch import save_file
    m = dict(mm.m)
    q = {"weight_bits": mm.weight_bits, "act_bits": mm.bits, "act_scales": mm.act_scales(),
         "assignment": {n: u for (n, _), u in zip(mm.layers, mm.assignment)}, "ptf": mm.ptf, "qat": qat_info}
    m["quant"] = q
    m["source"] = (m.get("source") or "") + f"; QAT by sim/qat.py ({qat_info['steps']} steps, {mm.bits} bits)"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=str(out.parent)))
    try:
        save_file(mm.state_tensors(), str(tmp / "model.safetensors"))
        (tmp / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
