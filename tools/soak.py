#!/usr/bin/env python
"""Soak test (a benchmark, not a test): a long training run of train_net.py with periodic
evaluation, whose resident memory is sampled, to show that it does not grow after warm-up.

    python tools/soak.py --config-file configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml \\
        --minutes 30 --output docs/benchmarks.md SOLVER.MAX_ITER 100000 TEST.EVAL_PERIOD 200

Every ``--interval`` seconds it reads the resident set size (VmRSS) of the training process and
of all its descendants (data-loader workers) from /proc. It stops the run after ``--minutes``
(or when training ends), writes the samples to ``<OUTPUT_DIR>/soak_memory.csv`` and a Markdown
section (warm-up level, growth after warm-up, slope) to ``--output``. Linux only.
"""

import argparse
import csv
import shlex
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from cascade_zoo.benchmark import machine_description
from cascade_zoo.utils.markdown import format_number, markdown_table, write_markdown_section

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Soak: resident memory of a long training run"


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _descendants(pid: int):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def _iteration(output_dir: Path) -> int:
    """The last iteration logged to metrics.json (-1 before the first)."""
    import json

    path = output_dir / "metrics.json"
    if not path.exists():
        return -1
    last = -1
    for line in path.read_text().splitlines():
        try:
            last = max(last, int(json.loads(line).get("iteration", -1)))
        except ValueError:
            continue
    return last


def summarize(samples, warmup_fraction: float):
    """Warm-up level, the largest growth above it afterwards, and the slope after warm-up."""
    t = np.array([s[0] for s in samples])
    total = np.array([s[3] for s in samples])
    after = t >= t[-1] * warmup_fraction
    if after.sum() < 3:
        raise ValueError("too few samples after warm-up: run longer or sample more often")
    base = float(np.median(total[after][: max(3, after.sum() // 10)]))
    peak = float(total[after].max())
    slope = float(np.polyfit(t[after] / 3600.0, total[after], 1)[0])
    return {
        "samples": len(samples),
        "minutes": float(t[-1] / 60.0),
        "warmup_mb": base,
        "peak_after_warmup_mb": peak,
        "growth_mb": peak - base,
        "growth_pct": 100.0 * (peak - base) / base,
        "slope_mb_per_hour": slope,
        "final_mb": float(total[-1]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=0.2, help="share of the run that is warm-up"
    )
    parser.add_argument(
        "--bound-pct", type=float, default=5.0, help="largest growth after warm-up (%%)"
    )
    parser.add_argument("--output-dir", default="output/soak")
    parser.add_argument("--output", help="Markdown file to write the section into")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "train_net.py"), "--config-file", args.config_file,
           *args.opts, "OUTPUT_DIR", str(out)]  # fmt: skip
    log = open(out / "soak_stdout.txt", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    start = time.monotonic()
    samples = []
    try:
        while proc.poll() is None and time.monotonic() - start < args.minutes * 60:
            main_mb = _rss_mb(proc.pid)
            kids = _descendants(proc.pid)
            total = main_mb + sum(_rss_mb(k) for k in kids)
            samples.append((time.monotonic() - start, _iteration(out), main_mb, total, len(kids)))
            time.sleep(args.interval)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    with open(out / "soak_memory.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seconds", "iteration", "main_rss_mb", "total_rss_mb", "processes"])
        writer.writerows(samples)
    s = summarize(samples, args.warmup)
    verdict = "within" if s["growth_pct"] <= args.bound_pct else "ABOVE"
    table = markdown_table(
        ["minutes", "iterations", "samples", "RSS after warm-up (MB)", "peak after warm-up (MB)",
         "growth (MB)", "growth (%)", "slope (MB/hour)", "final (MB)"],
        [[s["minutes"], max(x[1] for x in samples) + 1, s["samples"], s["warmup_mb"],
          s["peak_after_warmup_mb"], s["growth_mb"], s["growth_pct"], s["slope_mb_per_hour"],
          s["final_mb"]]],
        cell=lambda v: format_number(v, 1),
    )  # fmt: skip
    command = "python tools/soak.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = (
        f"## {TITLE}\n\nMeasured {date.today().isoformat()} on: {machine_description()}.\n\n"
        f"Command: `{command}`\n\n{table}\n\n"
        f"Resident memory of the training process and its data-loader workers, sampled every "
        f"{args.interval:g} s; warm-up is the first {100 * args.warmup:.0f}% of the run (its "
        f"level: the median of the first samples after it). Growth after warm-up is "
        f"{s['growth_pct']:.1f}%, {verdict} the stated bound of {args.bound_pct:g}%. Samples: "
        f"`{out / 'soak_memory.csv'}` (not in git).\n"
    )
    print(text)
    if args.output:
        write_markdown_section(args.output, TITLE, text)
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
