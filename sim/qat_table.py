#!/usr/bin/env python3
"""The QAT evidence table (the seed's Table 5 for our model): PTQ against 1 epoch of QAT against
several epochs, at 8, 6 and 4 bits, for each single method and the rules' mixed assignments,
top-1 measured by `mnq infer` on the bundled 2000-image evaluation split.

    /usr/bin/python3 sim/qat_table.py [--bits 8,6,4] [--epochs 1,4] [--train-count 10000] \\
        [--work /tmp/qat_table] [--out reports/qat] [--jobs 1]

For each width B: `mnq calibrate --bits B` (min/max on the 256 calibration images) gives the
PTQ manifest; `mnq infer --manifest` gives PTQ top-1 for every assignment; `sim/qat.py` starts
from that manifest for each assignment and epoch count (each its own run, with its own
warm-up + cosine schedule), and `mnq infer --model <qat dir>` measures the result. The rules'
assignments are `mnq run`'s: reports/deit_tiny_fmnist/assignment_<rule>_<B>b.json for 8 and 6
bits, reports/qat/assignments/ (from `mnq run --bits 4`) for 4 bits. Finished runs found in
--work are reused, so an interrupted table continues where it stopped.

Writes OUT/table.md, OUT/table.csv and OUT/table.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RULES = ["sqnr-diff", "sqnr-output", "abs-sqnr-diff"]


def rule_file(rule: str, bits: int) -> Path:
    if bits in (8, 6):
        return ROOT / "reports" / "deit_tiny_fmnist" / f"assignment_{rule}_{bits}b.json"
    return ROOT / "reports" / "qat" / "assignments" / f"assignment_{rule}_{bits}b.json"


def sh(cmd, log: Path | None = None):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    if log is not None:
        log.write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
    return r


def infer_top1(mnq, args, json_path: Path) -> dict:
    if not json_path.is_file():
        sh([mnq, "infer", *args, "--json", json_path, "--threads", "1"])
    rep = json.loads(json_path.read_text())["report"]
    return {"top1": rep["int_top1"], "agreement": rep["agreement"], "float_top1": rep["float_top1"], "images": rep["images"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", default="8,6,4")
    p.add_argument("--epochs", default="1,4",
                   help="epoch counts of the QAT runs: '1,4' for every width, or per width '4:1,4;6:1;8:1'")
    p.add_argument("--train-count", type=int, default=10000, help="training subset per QAT run")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: qat.py's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--work", default="/tmp/qat_table", help="folder for manifests, QAT runs and logs")
    p.add_argument("--out", default=str(ROOT / "reports" / "qat"))
    p.add_argument("--jobs", type=int, default=1, help="QAT runs at once (one torch thread each)")
    p.add_argument("--mnq", default=str(ROOT / "target" / "release" / "mnq"))
    p.add_argument("--only", help="only assignments whose name contains this (for partial runs)")
    p.add_argument("--merge", help="an earlier table.json whose rows and columns this run's results join "
                   "(a later run of other epoch counts completes a table instead of replacing it)")
    a = p.parse_args(argv)
    bits_list = [int(b) for b in a.bits.split(",")]
    if ":" in a.epochs:
        per = {int(k): [float(e) for e in v.split(",")] for k, v in (x.split(":") for x in a.epochs.split(";"))}
    else:
        per = {b: [float(e) for e in a.epochs.split(",")] for b in bits_list}
    missing = [b for b in bits_list if b not in per]
    if missing:
        raise SystemExit(f"error: --epochs gives no epoch counts for {missing} bits")
    epochs = sorted({e for b in bits_list for e in per[b]})
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if not Path(a.mnq).is_file():
        raise SystemExit(f"error: {a.mnq} is missing: cargo build --release")
    t0 = time.time()

    rows = []
    jobs = []
    for bits in bits_list:
        man = work / f"manifest_{bits}b.json"
        if not man.is_file():
            sh([a.mnq, "calibrate", "--bits", bits, "--out", man, "--threads", "1", "--force"])
        assigns = [(f"single_{m}", ["--method", m], m) for m in ("ibert", "fqvit", "ivit")]
        assigns += [(f"rule_{r}", ["--assign", rule_file(r, bits)], str(rule_file(r, bits))) for r in RULES]
        for name, flag, qat_assign in assigns:
            if a.only and a.only not in name:
                continue
            ptq = infer_top1(a.mnq, ["--manifest", man, "--bits", bits, *flag], work / f"ptq_{bits}b_{name}.json")
            row = {"bits": bits, "model": name, "assignment": qat_assign if "/" not in qat_assign else
                   os.path.relpath(qat_assign, ROOT), "ptq_top1": ptq["top1"], "float_top1": ptq["float_top1"],
                   "images": ptq["images"]}
            rows.append(row)
            for e in per[bits]:
                out = work / f"qat_{bits}b_{name}_{e:g}ep"
                cmd = [sys.executable, HERE / "qat.py", "--model", ROOT / "sim" / "models" / "deit_tiny_fmnist",
                       "--manifest", man, "--assign", qat_assign, "--bits", bits, "--epochs", e,
                       "--train-count", a.train_count, "--batch-size", a.batch_size, "--out", out, "--quiet", "--force"]
                if a.lr:
                    cmd += ["--lr", a.lr]
                jobs.append((row, e, out, cmd))

    def run_job(job):
        row, e, out, cmd = job
        if not (out / "manifest.json").is_file():
            ck = out.with_name(out.name + ".ckpt.pt")
            sh(cmd + (["--resume"] if ck.is_file() else []), work / f"{out.name}.log")
        q = json.loads((out / "manifest.json").read_text())["quant"]["qat"]
        res = infer_top1(a.mnq, ["--model", out, "--bits", row["bits"]], work / f"{out.name}_infer.json")
        return row, e, q, res

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        for row, e, q, res in ex.map(run_job, jobs):
            key = f"qat_{e:g}ep"
            row[f"{key}_top1"] = res["top1"]
            row[f"{key}_torch_top1"] = q["eval_top1"]
            row[f"{key}_steps"] = q["steps"]
            row[f"{key}_cpu_s"] = q["log"][-1]["cpu_s"] if q["log"] else None
            print(f"{row['bits']}-bit {row['model']:<20} PTQ {100 * row['ptq_top1']:.2f} %  QAT {e:g} ep "
                  f"{100 * res['top1']:.2f} % (mnq infer; qat.py's own evaluation {100 * q['eval_top1']:.2f} %)",
                  file=sys.stderr, flush=True)

    meta = {
        "command": "/usr/bin/python3 sim/qat_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_count": a.train_count, "epochs": {str(b): per[b] for b in bits_list}, "batch_size": a.batch_size,
        "lr": a.lr, "wall_s": round(time.time() - t0), "eval_images": rows[0]["images"] if rows else 0,
    }
    if a.merge:
        rows, epochs, meta = merge(Path(a.merge), rows, epochs, meta)
    write(Path(a.out), rows, epochs, meta)
    return 0


def merge(path: Path, rows, epochs, meta):
    """Join this run's rows to an earlier table's: same (bits, model) rows gain the new columns,
    and a PTQ figure that differs between the two runs is an error (they must share calibration)."""
    try:
        old = json.loads(path.read_text())
        old_rows, old_meta = old["rows"], old["meta"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: --merge {path}: not a table.json written by this script ({e})")
    by_key = {(r["bits"], r["model"]): dict(r) for r in old_rows}
    for r in rows:
        k = (r["bits"], r["model"])
        if k in by_key and by_key[k]["ptq_top1"] != r["ptq_top1"]:
            raise SystemExit(f"error: --merge {path}: PTQ top-1 of {r['bits']}-bit {r['model']} differs "
                             f"({by_key[k]['ptq_top1']} there, {r['ptq_top1']} here): not the same calibration")
        by_key.setdefault(k, {}).update(r)
    per = {b: set(v) for b, v in old_meta["epochs"].items()}
    for b, v in meta["epochs"].items():
        per.setdefault(b, set()).update(v)
    all_epochs = sorted({float(e) for v in per.values() for e in v} | set(epochs))
    merged = {
        "command": old_meta["command"] + "`, then `" + meta["command"],
        "train_count": meta["train_count"], "batch_size": meta["batch_size"], "lr": meta["lr"],
        "epochs": {b: sorted(v) for b, v in per.items()},
        "wall_s": old_meta["wall_s"] + meta["wall_s"], "eval_images": meta["eval_images"] or old_meta["eval_images"],
    }
    if (old_meta["train_count"], old_meta["batch_size"], old_meta["lr"]) != (meta["train_count"], meta["batch_size"], meta["lr"]):
        raise SystemExit(f"error: --merge {path}: that table used another --train-count, --batch-size or --lr")
    return list(by_key.values()), all_epochs, merged


def pct(v):
    return "—" if v is None else f"{100 * v:.2f} %"


def write(out: Path, rows, epochs, meta):
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: -r["bits"])  # 8, 6, 4 whatever order they ran in
    keys = [f"qat_{e:g}ep_top1" for e in epochs]
    ft = rows[0]["float_top1"] if rows else None
    md = io.StringIO()
    md.write("# QAT against PTQ (the seed's Table 5 for deit_tiny_fmnist)\n\n")
    md.write(f"Top-1 of the integer model on the bundled {meta['eval_images']}-image evaluation split, measured by "
             f"`mnq infer`; float model {pct(ft)}. PTQ: `mnq calibrate` (min/max, 256 calibration images). QAT: "
             f"`sim/qat.py` from the PTQ manifest on a {meta['train_count']}-image subset of the Fashion-MNIST train split "
             f"(batch {meta['batch_size']}), each column its own run.\n\n")
    md.write("| bits | model | PTQ | " + " | ".join(f"QAT {e:g} epoch{'s' if e != 1 else ''}" for e in epochs) + " |\n")
    md.write("|---:|---|---:|" + "---:|" * len(epochs) + "\n")
    for r in rows:
        md.write(f"| {r['bits']} | {r['model']} | {pct(r['ptq_top1'])} | " + " | ".join(pct(r.get(k)) for k in keys) + " |\n")
    not_run = [f"{e:g} epoch{'s' if e != 1 else ''} at {b} bits" for e in epochs for b in map(int, meta["epochs"])
               if e not in meta["epochs"][str(b)]]
    if not_run:
        md.write(f"\n— = not run: {', '.join(not_run)}.\n")
    md.write(f"\nCommand{'s' if '`, then `' in meta['command'] else ''}: `{meta['command']}` ({meta['wall_s']} s wall).\n")
    (out / "table.md").write_text(md.getvalue())
    buf = io.StringIO()
    cols = ["bits", "model", "assignment", "ptq_top1"] + keys + [k.replace("_top1", "_torch_top1") for k in keys] + \
        [k.replace("_top1", "_steps") for k in keys] + [k.replace("_top1", "_cpu_s") for k in keys]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    (out / "table.csv").write_text(buf.getvalue())
    (out / "table.json").write_text(json.dumps({"meta": meta, "float_top1": ft, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}/table.md, table.csv, table.json", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
