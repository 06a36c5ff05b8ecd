#!/usr/bin/env python3
"""Train mnq's bundled models on Fashion-MNIST on the CPU: a small DeiT (default) or Swin.

    apt-get install -y dataset-fashion-mnist python3-torch python3-torchvision libopenblas0
    /usr/bin/python3 -m pip install --break-system-packages --no-deps timm safetensors
    /usr/bin/python3 sim/train_tiny.py --force

Reads Debian's dataset-fashion-mnist files (no network), trains a small CNN teacher, then a
timm VisionTransformerDistilled (img 28, 1 channel, patch 7, dim 96, depth 4, 3 heads,
MLP ratio 4) with DeiT hard-label distillation: the class token learns the labels, the
distillation token the teacher's argmax. `--arch swin` trains a small timm SwinTransformer
instead (img 28, patch 2: a 14x14 grid in 7x7 windows, W-MSA and masked SW-MSA; patch merging
to 7x7, one window; widths 32/64, heads 2/4), without teacher, into sim/models/swin_tiny_fmnist.
Writes the model directory (sim/export.py) and the bundled evaluation data, and prints the test
accuracy. Seeded: the same command, thread count and PyTorch build give the same model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import export  # noqa: E402

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Fashion-MNIST train-set pixel mean and std (of p/255), rounded; the manifest carries these.
MEAN, STD = 0.2860, 0.3530
MODEL_ARGS = dict(img_size=28, in_chans=1, patch_size=7, embed_dim=96, depth=4, num_heads=3,
                  mlp_ratio=4.0, num_classes=10)
SWIN_ARGS = dict(img_size=28, in_chans=1, patch_size=2, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                 window_size=7, mlp_ratio=4.0, num_classes=10, drop_path_rate=0.0)
TIMM_NAMES = {"deit": "deit_tiny_distilled_patch16_224", "vit": "vit_tiny_patch16_224",
              "swin": "swin_tiny_patch4_window7_224"}
# Per-architecture defaults of --out, --epochs and --lr.
DEFAULT_OUT = {"deit": "deit_tiny_fmnist", "vit": "deit_tiny_fmnist", "swin": "swin_tiny_fmnist"}
DEFAULT_EPOCHS = {"deit": 4, "vit": 4, "swin": 15}
DEFAULT_LR = {"deit": 2e-3, "vit": 2e-3, "swin": 2e-3}


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise SystemExit(f"error: {path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SystemExit(f"error: {path} is truncated: {body.size} bytes for shape {dims}")
    return body.reshape(dims).copy()


def load_fmnist(root: Path):
    """(train_x, train_y, test_x, test_y) as uint8 arrays from Debian's dataset-fashion-mnist."""
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for n in names:
        if not (root / n).is_file():
            raise SystemExit(f"error: {root / n} is missing: apt-get install dataset-fashion-mnist "
                             "(or pass --data-dir)")
    return tuple(read_idx(root / n) for n in names)


def write_atomic(path: Path, write):
    """Call write(tmp_path) and move the result onto `path`, so no partial file is left."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the safetensors writer creates private files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _labels_json() -> str:
    return json.dumps(LABELS, indent=2) + "\n"


def _same_npy(path: Path, arr: np.ndarray) -> bool:
    """Whether `path` holds exactly `arr` (dtype, shape and values)."""
    try:
        old = np.load(path)
    except (OSError, ValueError):
        return False
    return old.dtype == arr.dtype and old.shape == arr.shape and np.array_equal(old, arr)


def to_input(x_u8):
    import torch
    x = torch.from_numpy(np.ascontiguousarray(x_u8)).float().div_(255.0).unsqueeze(1)
    return (x - MEAN) / STD


def make_teacher():
    import torch.nn as nn
    # About 2 MFLOP per image: a teacher that costs a fraction of the student's training.
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def predict(model, x_u8, batch=1000):
    import torch
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x_u8), batch):
            out.append(model(to_input(x_u8[i:i + batch])).argmax(1))
    return torch.cat(out).numpy()


def cosine_lr(step, total, warmup, peak):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + np.cos(np.pi * t))


def _decays(name, p):
    """Weight decay for matrices only: not biases, norms, tokens, position embeddings or bias tables."""
    return p.ndim > 1 and "token" not in name and "pos_embed" not in name and "relative_position" not in name


def random_shift(xb, rng, max_shift):
    """Translate each image by up to max_shift pixels in x and y, filling with zeros (black)."""
    if max_shift <= 0:
        return xb
    n, h, w = xb.shape
    pad = np.zeros((n, h + 2 * max_shift, w + 2 * max_shift), xb.dtype)
    pad[:, max_shift:max_shift + h, max_shift:max_shift + w] = xb
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return np.stack([pad[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(model, x_u8, y, epochs, batch, lr, wd, rng, loss_fn, label="model", warmup_frac=0.1, max_shift=0,
          eval_fn=None):
    """Minibatch AdamW with linear warm-up and cosine decay; random horizontal flips (and shifts)."""
    import torch
    decay = [p for n, p in model.named_parameters() if _decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not _decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = len(x_u8) // batch
    total = epochs * steps_per_epoch
    warmup = max(1, int(warmup_frac * total))
    step = 0
    t0, c0 = time.time(), time.process_time()
    for ep in range(epochs):
        model.train()
        order = rng.permutation(len(x_u8))
        run_loss = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            flip = rng.random(len(idx)) < 0.5
            xb = x_u8[idx].copy()
            xb[flip] = xb[flip, :, ::-1]
            xb = random_shift(xb, rng, max_shift)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, warmup, lr)
            loss = loss_fn(model, to_input(xb), idx, flip)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += loss.item()
            step += 1
        extra = f", {eval_fn()}" if eval_fn is not None else ""
        print(f"{label} epoch {ep + 1}/{epochs}: loss {run_loss / steps_per_epoch:.4f}{extra} "
              f"({time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU)", file=sys.stderr, flush=True)
    return time.process_time() - c0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                   help="folder with the Fashion-MNIST .gz IDX files (Debian's dataset-fashion-mnist)")
    p.add_argument("--out", help="model directory to write (default: sim/models/deit_tiny_fmnist, "
                   "or sim/models/swin_tiny_fmnist for --arch swin)")
    p.add_argument("--data-out", default=str(HERE / "data" / "fashion_mnist"),
                   help="folder for the bundled evaluation/calibration data")
    p.add_argument("--teacher-out", default=str(HERE / "models" / "fmnist_cnn_teacher.safetensors"),
                   help="where to save the CNN teacher's state dict (deit only; '' to skip)")
    p.add_argument("--arch", choices=["deit", "vit", "swin"], default="deit",
                   help="deit: distilled (class + distillation token), vit: plain ViT without teacher, "
                   "swin: SwinTransformer without teacher")
    p.add_argument("--epochs", type=int, help="student epochs (default 4; swin 15)")
    p.add_argument("--teacher-epochs", type=int, default=2, help="CNN teacher epochs (default 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, help="student peak learning rate (default 2e-3)")
    p.add_argument("--shift", type=int, help="random translation of training images by up to this many "
                   "pixels (default 0; swin 2)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch threads (default 1: on a busy 2-core machine 2 threads are much slower)")
    p.add_argument("--train-count", type=int, default=0,
                   help="train on the first N train images only (a quick smoke run; default: all 60000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-count", type=int, default=2000, help="test images in the bundled eval split")
    p.add_argument("--calib-count", type=int, default=256, help="train images in the calibration set")
    p.add_argument("--force", action="store_true", help="replace existing --out / --data-out files")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = str(HERE / "models" / DEFAULT_OUT[a.arch])
    if a.epochs is None:
        a.epochs = DEFAULT_EPOCHS[a.arch]
    if a.lr is None:
        a.lr = DEFAULT_LR[a.arch]
    if a.shift is None:
        a.shift = 2 if a.arch == "swin" else 0
    model_args = SWIN_ARGS if a.arch == "swin" else MODEL_ARGS

    import torch
    import torch.nn.functional as F
    timm = export._timm()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    out, data_out = Path(a.out), Path(a.data_out)
    data_files = [data_out / n for n in ("eval_images.npy", "eval_labels.npy", "calib_images.npy", "labels.json")]
    teacher_out = Path(a.teacher_out) if a.teacher_out and a.arch == "deit" else None
    t_start, c_start = time.time(), time.process_time()
    train_x, train_y, test_x, test_y = load_fmnist(Path(a.data_dir))
    arrays = {"eval_images.npy": test_x[:a.eval_count], "eval_labels.npy": test_y[:a.eval_count].astype(np.uint8),
              "calib_images.npy": train_x[:a.calib_count]}
    if not a.force:
        for f in [out] + data_files + ([teacher_out] if teacher_out else []):
            # The bundled data are the first images of each split: rewriting them with the same
            # bytes (a second model trained on the same split) needs no --force.
            same = f.name in arrays and f.is_file() and _same_npy(f, arrays[f.name])
            same = same or (f.name == "labels.json" and f.is_file() and f.read_text() == _labels_json())
            if f.exists() and not same:
                raise SystemExit(f"error: {f} exists: pass --force to replace it")
    if a.train_count > 0:
        train_x, train_y = train_x[:a.train_count], train_y[:a.train_count]
    train_y = train_y.astype(np.int64)
    print(f"Fashion-MNIST: {len(train_x)} train, {len(test_x)} test images; torch {torch.__version__}, "
          f"timm {timm.__version__}, {a.threads} thread(s)", file=sys.stderr)

    teacher_time = 0.0
    if a.arch == "deit":
        teacher = make_teacher()
        yt = torch.from_numpy(train_y)
        teacher_time = train(teacher, train_x, train_y, a.teacher_epochs, a.batch_size, 2e-3, 1e-4, rng,
                             lambda m, x, idx, flip: F.cross_entropy(m(x), yt[torch.from_numpy(idx)]), label="teacher")
        t_acc = float((predict(teacher, test_x) == test_y).mean())
        print(f"teacher test accuracy {t_acc:.4f} on all {len(test_y)} test images", file=sys.stderr)
        # The teacher's hard label of every train image, computed once. Fashion-MNIST classes do
        # not change under a horizontal flip, so a flipped image keeps its original's label.
        t0 = time.process_time()
        hard = torch.from_numpy(predict(teacher, train_x))
        teacher_time += time.process_time() - t0

    model = timm.create_model(TIMM_NAMES[a.arch], pretrained=False, **model_args)
    yt = torch.from_numpy(train_y)
    if a.arch == "deit":
        model.set_distilled_training(True)

        def loss_fn(m, x, idx, flip):
            cls, dist = m(x)
            return 0.5 * F.cross_entropy(cls, yt[torch.from_numpy(idx)]) + 0.5 * F.cross_entropy(dist, hard[torch.from_numpy(idx)])
    else:
        def loss_fn(m, x, idx, flip):
            return F.cross_entropy(m(x), yt[torch.from_numpy(idx)])
    eval_fn = None
    if a.arch == "swin":
        # Progress only (the last epoch's weights are exported whatever these say).
        def eval_fn():
            acc = float((predict(model, test_x[:a.eval_count]) == test_y[:a.eval_count]).mean())
            return f"test accuracy {acc:.4f} (first {a.eval_count})"
    student_time = train(model, train_x, train_y, a.epochs, a.batch_size, a.lr, a.weight_decay, rng, loss_fn,
                         label=a.arch, max_shift=a.shift, eval_fn=eval_fn)
    if a.arch == "deit":
        model.set_distilled_training(False)
    model.eval()

    pred = predict(model, test_x)
    acc_full = float((pred == test_y).mean())
    acc_eval = float((pred[:a.eval_count] == test_y[:a.eval_count]).mean())

    cmd = f"{sys.executable} sim/train_tiny.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    source = (f"timm {TIMM_NAMES[a.arch]} with {json.dumps(model_args)}, trained on Fashion-MNIST by "
              f"`{cmd.strip()}` (torch {torch.__version__}, timm {timm.__version__}, {a.threads} thread(s)); "
              "float test accuracy "
              f"{acc_full:.4f} (10000 images), {acc_eval:.4f} (first {a.eval_count})")
    export.export_model(model, out, name=out.name, mean=[MEAN], std=[STD], labels=LABELS, source=source,
                        ref_images=test_x[:8], ref_count=8, force=a.force)
    if teacher_out:
        from safetensors.torch import save_file
        teacher_out.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.contiguous() for k, v in teacher.state_dict().items()}
        # One metadata key: safetensors orders several at random, and the file should be reproducible.
        write_atomic(teacher_out, lambda t: save_file(sd, str(t), metadata={
            "model": f"sim/train_tiny.py make_teacher; test accuracy {t_acc:.4f}"}))
    data_out.mkdir(parents=True, exist_ok=True)
    for fname, arr in arrays.items():
        def save(t, arr=arr):
            with open(t, "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
        write_atomic(data_out / fname, save)
    write_atomic(data_out / "labels.json", lambda t: t.write_text(_labels_json()))

    print(f"training CPU time: teacher {teacher_time:.0f} s, student {student_time:.0f} s; whole run "
          f"{time.process_time() - c_start:.0f} s CPU, {time.time() - t_start:.0f} s wall ({a.threads} thread(s))")
    print(f"float test accuracy: {acc_full:.4f} on all {len(test_y)} test images, "
          f"{acc_eval:.4f} on the first {a.eval_count} (the bundled eval split)")
    print(f"wrote {out} and {data_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
