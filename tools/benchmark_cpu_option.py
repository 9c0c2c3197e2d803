#!/usr/bin/env python
"""Training step (and inference) time under each value of one of the project's CPU speed
options, as Markdown with the machine and the command.

    python tools/benchmark_cpu_option.py --output docs/benchmarks.md  # ROIAlign's backward
    python tools/benchmark_cpu_option.py --key ZOO.RPN_PREFIX_NMS --values False True \\
        --infer-images 40 --output docs/benchmarks.md

The options (``ZOO.ROI_ALIGN_CPU_BACKWARD``, ``ZOO.RPN_PREFIX_NMS``) change the speed, not the
result. For each config, the models of all values start from the same weights and take turns on
the same batches in one process (cascade_zoo.benchmark.measure_interleaved), timed by the
process's CPU clock by default, so that other work on the machine does not enter the ratio.
"""

import argparse
import shlex
import sys
from datetime import date

from cascade_zoo.utils.markdown import markdown_table, write_markdown_section

DEFAULT_CONFIGS = [
    "configs/Baselines/faster_rcnn_R_18_FPN_shapes.yaml",
    "configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml",
    "configs/IoUUniform/iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml",
]
#: The title of each option's section in docs/benchmarks.md.
TITLES = {
    "ZOO.ROI_ALIGN_CPU_BACKWARD": "ROIAlign's CPU backward: torchvision's against vectorized",
    "ZOO.RPN_PREFIX_NMS": "The RPN's NMS on CPU: all candidates against a prefix",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--key", default="ZOO.ROI_ALIGN_CPU_BACKWARD", choices=sorted(TITLES))
    parser.add_argument(
        "--values", nargs=2, default=["torchvision", "vectorized"], help="reference, then new"
    )
    parser.add_argument("--train-iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--infer-images", type=int, default=0, help="also time inference on this many images"
    )
    parser.add_argument(
        "--weights", help="start every model from this checkpoint (default: each config's)"
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--output", help="Markdown file to write (default: print only)")
    parser.add_argument("--title", help="the Markdown section (default: the option's)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every config")
    args = parser.parse_args(argv)

    from cascade_zoo import setup_cfg
    from cascade_zoo.benchmark import machine_description, measure_interleaved

    reference, new = args.values
    extra = ["MODEL.WEIGHTS", args.weights] if args.weights else []
    body = []
    for path in args.configs:
        print(f"benchmarking {path} ...", flush=True)
        cfgs = [setup_cfg(path, args.opts + extra + [args.key, v]) for v in args.values]
        results = measure_interleaved(
            cfgs,
            train_iters=args.train_iters,
            warmup=args.warmup,
            infer_images=max(args.infer_images, 1),
            clock=args.clock,
            own_weights=bool(args.weights),
        )
        row = [f"`{path}`"]
        columns = [("train_s_per_iter", "{:.3f}")]
        if args.infer_images:
            columns.append(("infer_ms_per_image", "{:.1f}"))
        for key, form in columns:
            a, b = (r[key] for r in results)
            row += [form.format(a), form.format(b), f"{a / b:.2f}x"]
        body.append(row)
    header = ["config"]
    for what in ["train s/iter"] + (["inference ms/image"] if args.infer_images else []):
        header += [f"{what}, {reference}", f"{what}, {new}", "speed-up"]
    table = markdown_table(header, body)
    command = "python tools/benchmark_cpu_option.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    clock = "CPU seconds of the measuring process" if args.clock == "cpu" else "elapsed seconds"
    timed = f"Median of {args.train_iters} training steps after {args.warmup} warm-up steps"
    if args.infer_images:
        timed += f", and of inference on {args.infer_images} test images after {args.warmup}"
    weights = f"`{args.weights}`" if args.weights else "the same weights"
    title = args.title or TITLES[args.key]
    text = (
        f"## {title}\n\nMeasured {date.today().isoformat()} on: {machine_description()}.\n\n"
        f"Command: `{command}`\n\n{table}\n\n{timed} ({clock}); `{args.key}` "
        f"{reference} against {new}, both models in one process, from {weights}, taking turns "
        "on the same inputs.\n"
    )
    print(text)
    if args.output:
        write_markdown_section(args.output, title, text)


if __name__ == "__main__":
    main()
