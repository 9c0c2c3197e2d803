#!/usr/bin/env python
"""Cost report: configs side by side (parameters, FLOPs, train s/iter, inference ms/image, peak
memory, with ratios to a baseline; parameters and FLOPs per module) as Markdown, with the
machine and the command.

    python tools/benchmark.py --output docs/benchmarks.md
    python tools/benchmark.py --configs A.yaml B.yaml --baseline A.yaml --train-iters 20

Each config runs in its own process, one after the other, so that peak memory is its own; with
--repeat N the configs run N times in turn (A B A B ...) and the table gives the mean of the
runs' medians, so that slow drifts of the machine hit every config alike.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
from datetime import date

from cascade_zoo.utils.markdown import format_number, markdown_table, write_markdown_section

DEFAULT_CONFIGS = [
    "configs/Baselines/faster_rcnn_R_18_FPN_shapes.yaml",
    "configs/Baselines/cascade_rcnn_R_18_FPN_shapes.yaml",
]


def _measure_one(args):
    from cascade_zoo import setup_cfg
    from cascade_zoo.benchmark import measure

    cfg = setup_cfg(args.single, args.opts)
    out = measure(
        cfg,
        train_iters=args.train_iters,
        warmup=args.warmup,
        infer_images=args.infer_images,
        flops=not args.no_flops,
        clock=args.clock,
    )
    print("BENCHMARK_JSON " + json.dumps(out))


def _measure_interleaved(args):
    from cascade_zoo import setup_cfg
    from cascade_zoo.benchmark import measure_interleaved

    paths = args.interleaved_run.split(",")
    weights = args.interleaved_weights.split(",") if args.interleaved_weights else None
    cfgs = [
        setup_cfg(path, args.opts + (["MODEL.WEIGHTS", weights[i]] if weights else []))
        for i, path in enumerate(paths)
    ]
    out = measure_interleaved(
        cfgs,
        train_iters=args.train_iters,
        warmup=args.warmup,
        infer_images=args.infer_images,
        clock=args.clock,
        own_weights=weights is not None,
    )
    print("BENCHMARK_JSON " + json.dumps(out))


def _run(cmd, what):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCHMARK_JSON ")]
    if proc.returncode != 0 or not found:
        sys.exit(f"error: benchmarking {what} failed:\n{proc.stdout[-4000:]}")
    return json.loads(found[-1].split(" ", 1)[1])


def _mean(results):
    out = dict(results[0])
    for key in ("train_s_per_iter", "infer_ms_per_image", "peak_memory_mb"):
        if key in out:
            out[key] = sum(r[key] for r in results) / len(results)
    return out


def _breakdown(rows):
    """Parameters (M) and GFLOPs per module group, one column pair per config."""
    groups = []
    for r in rows:
        groups += [g for g in r["params_by_group"] if g not in groups]
    names = [r["config"].replace("configs/", "").replace(".yaml", "") for r in rows]
    header = ["module"] + [f"{n} {what}" for n in names for what in ("params (M)", "GFLOPs")]
    body = []
    for g in groups:
        cells = []
        for r in rows:
            p = r["params_by_group"].get(g)
            cells += [None if p is None else p / 1e6, r.get("gflops_by_group", {}).get(g)]
        body.append([g] + cells)
    return markdown_table(header, body, cell=lambda v: format_number(v, 3))


def _table(rows, baseline):
    base = next((r for r in rows if r["config"] == baseline), None)
    header = ["config", "params (M)", "GFLOPs", "train s/iter", "inference ms/image",
              "peak memory (MB)"]  # fmt: skip
    if base:
        header += ["train ratio", "inference ratio", "memory ratio"]
    body = []
    for r in rows:
        row = [f"`{r['config']}`", f"{r['params'] / 1e6:.2f}",
               f"{r.get('gflops', float('nan')):.2f}", f"{r['train_s_per_iter']:.3f}",
               f"{r['infer_ms_per_image']:.1f}",
               f"{r['peak_memory_mb']:.0f} ({r['peak_memory_kind']})"]  # fmt: skip
        if base:
            ratios = ("train_s_per_iter", "infer_ms_per_image", "peak_memory_mb")
            row += [f"{r[k] / base[k]:.3f}" for k in ratios]
        body.append(row)
    return markdown_table(header, body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--baseline", help="config whose figures the ratios divide by")
    parser.add_argument("--train-iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--infer-images", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all configs")
    parser.add_argument("--no-flops", action="store_true", help="skip fvcore's FLOP count")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="time all configs in one process on the same inputs, taking turns at every step "
        "(for ratios: removes process-to-process noise); memory still per config process",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed seconds; cpu: CPU seconds of the measuring process, all threads "
        "(the cost of the code itself on a machine shared with other work)",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        help="one checkpoint per config (in --configs' order) for each to load, e.g. trained "
        "models: the cost after the score threshold depends on how many boxes pass it",
    )
    parser.add_argument("--interleaved-run", help=argparse.SUPPRESS)  # comma-separated configs
    parser.add_argument("--interleaved-weights", help=argparse.SUPPRESS)  # comma-separated
    parser.add_argument("--output", help="Markdown file to write (default: print only)")
    parser.add_argument("--title", default="CPU configs on the shapes dataset")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every config")
    args = parser.parse_args(argv)
    if args.single:
        return _measure_one(args)
    if args.interleaved_run:
        return _measure_interleaved(args)

    from cascade_zoo.benchmark import machine_description

    for path in args.configs:
        if not os.path.isfile(path):
            sys.exit(f"error: config '{path}' not found")
    weights = args.weights or []
    if weights:
        if len(weights) != len(args.configs):
            sys.exit(
                f"error: --weights: {len(weights)} checkpoint(s) for {len(args.configs)} "
                "config(s); give one per config, in --configs' order"
            )
        for w in weights:
            if "://" not in w and not os.path.isfile(w):
                sys.exit(f"error: --weights: checkpoint '{w}' not found")
        if any("," in w for w in weights):
            sys.exit("error: --weights: a checkpoint path holds a comma")
    runs = {path: [] for path in args.configs}
    for round_ in range(args.repeat):
        for k, path in enumerate(args.configs):
            counts = ["--train-iters", args.train_iters, "--warmup", args.warmup]
            counts += ["--infer-images", args.infer_images, "--clock", args.clock]
            flags = ["--no-flops"] if args.no_flops else []
            cmd = [sys.executable, __file__, "--single", path, *map(str, counts), *flags]
            cmd += args.opts
            if weights:
                cmd += ["MODEL.WEIGHTS", weights[k]]
            print(f"benchmarking {path} (round {round_ + 1}/{args.repeat}) ...", flush=True)
            runs[path].append(_run(cmd, path))
    rows = [{"config": path, **_mean(results)} for path, results in runs.items()]
    timing = (
        f"Train: median of {args.train_iters} steps after {args.warmup} warm-up steps, batches "
        f"preloaded. Inference: median over {args.infer_images} test images, one per batch. "
        f"{args.repeat} round(s) over the configs, each config in its own process, mean of the "
        "rounds."
    )
    if args.interleave:
        counts = ["--train-iters", args.train_iters, "--warmup", args.warmup]
        counts += ["--infer-images", args.infer_images, "--clock", args.clock]
        for round_ in range(args.repeat):
            print(f"benchmarking interleaved (round {round_ + 1}/{args.repeat}) ...", flush=True)
            cmd = [sys.executable, __file__, *map(str, counts)]
            cmd += ["--interleaved-run", ",".join(args.configs)]
            if weights:
                cmd += ["--interleaved-weights", ",".join(weights)]
            cmd += args.opts
            results = _run(cmd, "interleaved")
            for row, res in zip(rows, results):
                for key, value in res.items():
                    row.setdefault("_interleaved", []).append((key, value))
        for row in rows:
            values = row.pop("_interleaved")
            for key in ("train_s_per_iter", "infer_ms_per_image"):
                picked = [v for k, v in values if k == key]
                row[key] = sum(picked) / len(picked)
        timing = (
            f"Times: all configs in one process on the same inputs, taking turns at every step "
            f"(train: median of {args.train_iters} steps after {args.warmup} warm-up; inference: "
            f"median over {args.infer_images} test images), mean of {args.repeat} rounds; peak "
            "memory, parameters and FLOPs: each config in its own process."
        )
    if weights:
        timing += (
            " Each config loads its own checkpoint (--weights) and its inference is timed first, "
            "on the weights as loaded."
        )
    if args.clock == "cpu":
        timing += (
            " Times are CPU seconds of the measuring process (all its threads), not elapsed time."
        )
    table = _table(rows, args.baseline) + "\n\n" + _breakdown(rows)
    command = "python tools/benchmark.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    text = (
        f"## {args.title}\n\nMeasured {date.today().isoformat()} on: {machine_description()}.\n\n"
        f"Command: `{command}`\n\n{table}\n\n{timing}\n"
    )
    print(text)
    if args.output:
        write_markdown_section(args.output, args.title, text)


if __name__ == "__main__":
    main()
