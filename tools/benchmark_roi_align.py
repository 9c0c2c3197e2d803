#!/usr/bin/env python
"""Training step time with each CPU backward of ROIAlign (ZOO.ROI_ALIGN_CPU_BACKWARD), as
Markdown with the machine and the command.

    python tools/benchmark_roi_align.py --output docs/benchmarks.md

For each config, the two settings' models start from the same weights and take turns on the
same batches in one process (cascade_zoo.benchmark.measure_interleaved), timed by the process's
CPU clock by default, so that other work on the machine does not enter the ratio.
"""

import argparse
import shlex
import sys
from datetime import date

from cascade_zoo.utils.markdown import markdown_table, write_markdown_section

DEFAULT_CONFIGS = [
    "configs/Benchmark/faster_rcnn_R_18_FPN_shapes.yaml",
    "configs/Benchmark/cascade_rcnn_R_18_FPN_shapes.yaml",
    "configs/Benchmark/iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--output", help="Markdown file to write (default: print only)")
    parser.add_argument(
        "--title", default="ROIAlign's CPU backward: torchvision's against vectorized"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every config")
    args = parser.parse_args(argv)

    from cascade_zoo import setup_cfg
    from cascade_zoo.benchmark import machine_description, measure_interleaved
    from cascade_zoo.roi_align import BACKWARDS

    body = []
    for path in args.configs:
        print(f"benchmarking {path} ...", flush=True)
        cfgs = [setup_cfg(path, args.opts + ["ZOO.ROI_ALIGN_CPU_BACKWARD", b]) for b in BACKWARDS]
        results = measure_interleaved(
            cfgs, train_iters=args.train_iters, warmup=args.warmup, infer_images=1, clock=args.clock
        )
        times = {b: r["train_s_per_iter"] for b, r in zip(BACKWARDS, results)}
        body.append(
            [
                f"`{path}`",
                f"{times['torchvision']:.3f}",
                f"{times['vectorized']:.3f}",
                f"{times['torchvision'] / times['vectorized']:.2f}x",
            ]  # fmt: skip
        )
    table = markdown_table(
        ["config", "train s/iter, torchvision", "train s/iter, vectorized", "speed-up"], body
    )
    command = "python tools/benchmark_roi_align.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    clock = "CPU seconds of the measuring process" if args.clock == "cpu" else "elapsed seconds"
    text = (
        f"## {args.title}\n\nMeasured {date.today().isoformat()} on: {machine_description()}.\n\n"
        f"Command: `{command}`\n\n{table}\n\nMedian of {args.train_iters} training steps after "
        f"{args.warmup} warm-up steps ({clock}); both models in one process, from the same "
        "weights, taking turns on the same batches.\n"
    )
    print(text)
    if args.output:
        write_markdown_section(args.output, args.title, text)


if __name__ == "__main__":
    main()
