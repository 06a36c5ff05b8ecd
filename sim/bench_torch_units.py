#!/usr/bin/env python3
"""Side by side: PyTorch's float32 softmax, GELU (erf) and layer_norm against mnq's units.

Times torch.softmax over 6×197 rows of 197, torch.nn.functional.gelu (erf form) on 197×768 and
torch.nn.functional.layer_norm on 197×384 (the shapes of benches/units.rs), one thread, and
runs `cargo bench --bench units` in the same invocation. It prints one Markdown table: unit,
mnq M elements/s (criterion's throughput estimate, Integer mode), PyTorch op M elements/s.
Both sides are medians of single calls (`MNQ_BENCH_PER_CALL=1` for criterion), so a call that
another process preempts does not count on either side; `--batch-mean` gives criterion's usual
batch mean instead (lower on a loaded machine).

    /work/torchvenv/bin/python sim/bench_torch_units.py [--reps 2000] [--filter softmax] [--batch-mean]

Needs: torch importable by this Python (a PyPI-torch venv such as /work/torchvenv/bin/python,
or Debian's python3-torch with /usr/bin/python3: say which in the figures you quote), cargo on
PATH. It installs nothing. Run it on a quiet machine: both sides are single-thread timings.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"softmax": (6 * 197, 197), "gelu": (197, 768), "layernorm": (197, 384)}


def time_torch(reps: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ops = {
        "softmax": lambda x: torch.softmax(x, dim=-1),
        "gelu": lambda x: F.gelu(x),
        "layernorm": None,
    }
    out = {}
    with torch.inference_mode():
        for op, shape in SHAPES.items():
            x = torch.randn(*shape)
            if op == "layernorm":
                w, b = torch.randn(shape[1]), torch.randn(shape[1])
                f = lambda x, w=w, b=b: F.layer_norm(x, (shape[1],), w, b)  # noqa: E731
            else:
                f = ops[op]
            for _ in range(20):
                f(x)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f(x)
                ts.append(time.perf_counter() - t0)
            out[op] = x.numel() / statistics.median(ts) / 1e6
    return out


def time_mnq(filt: str, per_call: bool) -> dict:
    cmd = ["cargo", "bench", "--bench", "units", "--", filt] if filt else ["cargo", "bench", "--bench", "units"]
    env = dict(os.environ, MNQ_BENCH_PER_CALL="1" if per_call else "0")
    r = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env)
    res, name = {}, None
    for line in r.stdout.splitlines():
        m = re.match(r"units/(\S+)", line)
        if m:
            name = m[1]
        m = re.search(r"thrpt:\s+\[\S+ \S+ ([\d.]+) (\w)elem/s", line)
        if m and name:
            res[name] = float(m[1]) * {"K": 1e-3, "M": 1.0, "G": 1e3}.get(m[2], 1e-6)
            name = None
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="timed PyTorch calls per op")
    ap.add_argument("--filter", default="", help="criterion filter passed to cargo bench (default: every unit)")
    ap.add_argument("--batch-mean", action="store_true", help="criterion's batch mean instead of the median of single calls")
    a = ap.parse_args()
    torch_res = time_torch(a.reps)
    mnq = time_mnq(a.filter, not a.batch_mean)
    print("| unit | mnq M elem/s | PyTorch op | PyTorch M elem/s |")
    print("|---|---:|---|---:|")
    for name, v in mnq.items():
        op = name.split("_")[0]
        torch_op = {"softmax": "softmax", "gelu": "gelu (erf)", "layernorm": "layer_norm"}.get(op)
        t = f"{torch_res[op]:,.0f}" if op in torch_res else ""
        print(f"| {name} | {v:,.0f} | {torch_op or ''} | {t} |")


if __name__ == "__main__":
    main()
