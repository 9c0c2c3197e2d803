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
    """Memory level and growth after warm-up, from samples (seconds, iteration, main MB, total
    MB, processes).

    The level is that of the training process alone: samples taken while it has more processes
    than usual (an evaluation's loader worker, a forked copy whose RSS double-counts the pages it
    shares with its parent) are left out of it and reported only in the peak. Growth is the
    median of the last fifth of those samples minus the median of the first fifth after
    warm-up; the slope is a least-squares line through them."""
    t = np.array([s[0] for s in samples], dtype=float)
    main = np.array([s[2] for s in samples], dtype=float)
    total = np.array([s[3] for s in samples], dtype=float)
    procs = np.array([s[4] for s in samples])
    started = main > 0
    usual = np.bincount(procs[started]).argmax() if started.any() else 0
    after = started & (t >= t[-1] * warmup_fraction) & (procs == usual)
    if after.sum() < 10:
        raise ValueError("too few samples after warm-up: run longer or sample more often")
    level = total[after]
    fifth = max(2, len(level) // 5)
    base, end = float(np.median(level[:fifth])), float(np.median(level[-fifth:]))
    slope = float(np.polyfit(t[after] / 3600.0, level, 1)[0])
    return {
        "samples": len(samples),
        "minutes": float(t[-1] / 60.0),
        "warmup_mb": base,
        "end_mb": end,
        "growth_mb": end - base,
        "growth_pct": 100.0 * (end - base) / base,
        "slope_mb_per_hour": slope,
        "peak_mb": float(total[started].max()),
    }


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [
        (float(r["seconds"]), int(r["iteration"]), float(r["main_rss_mb"]),
         float(r["total_rss_mb"]), int(r["processes"]))
        for r in rows
    ]  # fmt: skip


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
    parser.add_argument(
        "--summarize", metavar="CSV", help="only summarize the samples of an earlier run"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        samples = _read_csv(args.summarize)
        return _report(args, argv, samples, Path(args.summarize))
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
    return _report(args, argv, samples, out / "soak_memory.csv")


def _report(args, argv, samples, csv_path) -> int:
    s = summarize(samples, args.warmup)
    verdict = "within" if s["growth_pct"] <= args.bound_pct else "ABOVE"
    table = markdown_table(
        ["minutes", "iterations", "samples", "level after warm-up (MB)", "level at the end (MB)",
         "growth (MB)", "growth (%)", "slope (MB/hour)", "peak, evaluations included (MB)"],
        [[s["minutes"], max(x[1] for x in samples) + 1, s["samples"], s["warmup_mb"],
          s["end_mb"], s["growth_mb"], s["growth_pct"], s["slope_mb_per_hour"], s["peak_mb"]]],
        cell=lambda v: format_number(v, 1),
    )  # fmt: skip
    command = "python tools/soak.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = (
        f"## {TITLE}\n\nMeasured {date.today().isoformat()} on: {machine_description()}.\n\n"
        f"Command: `{command}`\n\n{table}\n\n"
        f"Resident memory (RSS) of the training process and its data-loader workers, sampled "
        f"every {args.interval:g} s. Warm-up is the first {100 * args.warmup:.0f}% of the run. "
        "The level leaves out the samples taken during evaluations (when an evaluation loader "
        "worker runs: a forked process whose RSS counts again the pages it shares with the "
        "trainer); the growth is the median of the last fifth of the level's samples minus "
        f"that of the first fifth after warm-up: {s['growth_pct']:.1f}%, {verdict} the stated "
        f"bound of {args.bound_pct:g}%. Samples: `{csv_path}` (not in git).\n"
    )
    print(text)
    if args.output:
        write_markdown_section(args.output, TITLE, text)
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
