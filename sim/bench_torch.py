#!/usr/bin/env python3
"""Side by side: PyTorch's float forward against mnq's forwards on the same timm models.

For each timm model (seeded random weights, as `sim/export.py --seed` builds them) this times
PyTorch's eval-mode float forward at batch 1 and at batch 8 (per image), exports the same
model with sim/export.py, and runs `cargo bench --bench model` on it with MNQ_BENCH_MODEL and
MNQ_CPU_TIME set (mnq's float f32 forward on 1 thread, each single-method integer forward at
8 bits on 1 thread and on a 2-thread pool over batches of 8). It prints one Markdown table.

    /usr/bin/python3 sim/bench_torch.py [--models deit_tiny_patch16_224,vit_small_patch16_224]
        [--threads 2] [--reps 20] [--mnq-reps 16] [--work /tmp/bench_torch]

Needs: torch and timm importable by this Python (Debian's python3-torch plus the --no-deps
timm/safetensors of .ci/run, or a venv with PyPI torch: say which in the figures you quote,
they differ several-fold), cargo on PATH. It installs nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def time_torch(name: str, threads: int, reps: int) -> dict:
    import timm
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    out = {}
    with torch.inference_mode():
        for batch in (1, 8):
            x = torch.randn(batch, *size)
            for _ in range(3):
                model(x)
            ts = []
            for _ in range(max(3, reps // batch)):
                t0 = time.perf_counter()
                model(x)
                ts.append((time.perf_counter() - t0) / batch)
            out[batch] = 1e3 * statistics.median(ts)
    return out


def export(name: str, work: Path) -> Path:
    d = work / name
    if not (d / "manifest.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "sim" / "export.py"), "--model", name, "--seed", "0",
                        "--ref-count", "1", "--out", str(d), "--force"], check=True)
    return d


def time_mnq(model_dir: Path, reps: int) -> dict:
    env = dict(os.environ, MNQ_BENCH_MODEL=str(model_dir), MNQ_CPU_TIME=str(reps))
    r = subprocess.run(["cargo", "bench", "--bench", "model"], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True)
    res = {}
    for line in r.stdout.splitlines():
        m = re.match(r"integer_(\w+?)8 1 thread: ([\d.]+) ms CPU per image, ([\d.]+) ms wall", line)
        if m:
            res[f"int_{m[1]}_1t"] = float(m[3])
        m = re.match(r"integer_(\w+?)8 2 threads, batches of \d+: ([\d.]+) ms wall", line)
        if m:
            res[f"int_{m[1]}_2t"] = float(m[2])
        m = re.match(r"float_f32 \(mnq\) 1 thread: ([\d.]+) ms CPU, ([\d.]+) ms wall", line)
        if m:
            res["float_1t"] = float(m[2])
        m = re.match(r"peak resident memory \(VmHWM\): (.*)", line)
        if m:
            res["peak"] = m[1]
    if "float_1t" not in res:
        raise SystemExit(f"error: no timings in `cargo bench --bench model` output:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="deit_tiny_patch16_224,vit_small_patch16_224")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--reps", type=int, default=20, help="PyTorch forwards per figure (batch 1)")
    p.add_argument("--mnq-reps", type=int, default=16, help="MNQ_CPU_TIME: mnq forwards per figure")
    p.add_argument("--work", default="/tmp/bench_torch", help="folder for the exported models")
    a = p.parse_args()
    try:
        import timm  # noqa: F401
        import torch
    except ImportError as e:
        print(f"error: {e}: this script needs torch and timm (see its docstring)", file=sys.stderr)
        return 1
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.models.split(","):
        t = time_torch(name, a.threads, a.reps)
        m = time_mnq(export(name, work), a.mnq_reps)
        rows.append((name, t, m))
        print(f"{name}: torch {t}, mnq {m}", file=sys.stderr)
    print(f"PyTorch {torch.__version__} ({a.threads} threads), ms per image (wall; mnq's integer "
          "figures at 8 bits, batch 8 = a 2-thread pool over 8 images)\n")
    print("| model | PyTorch float b1 | PyTorch float b8 | mnq float f32 (1 thread) | mnq int ivit / ibert / fqvit (1 thread) "
          "| mnq int ivit / ibert / fqvit (2 threads, b8) | mnq peak memory |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, t, m in rows:
        ones = " / ".join(f"{m.get(f'int_{k}_1t', float('nan')):.1f}" for k in ("ivit", "ibert", "fqvit"))
        twos = " / ".join(f"{m.get(f'int_{k}_2t', float('nan')):.1f}" for k in ("ivit", "ibert", "fqvit"))
        print(f"| {name} | {t[1]:.1f} | {t[8]:.1f} | {m['float_1t']:.1f} | {ones} | {twos} | {m.get('peak', '?')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
