#!/usr/bin/env python
"""AP against the IoU threshold (0.50..0.95) per model and per stage, with difference curves,
as a PNG plus Markdown and CSV tables.

    python tools/plot_ap_iou.py \\
        --inputs output/run/inference/shapes_val/stagewise_results.json:cascade \\
        output/frcnn/metrics.json:faster --diff cascade/stage3 cascade/stage2 \\
        --diff cascade/ensemble faster --output-dir output/analysis

Inputs are this project's evaluation outputs: a stagewise_results.json (curves "LABEL/stage1",
..., "LABEL/ensemble") or a metrics.json with per-IoU AP (curve "LABEL", plus "LABEL/stageN" if
it holds stage-wise results). LABEL defaults to the file's folder name.
"""

import argparse
import os
import sys
from collections import OrderedDict

from cascade_zoo.analysis import (
    AnalysisInputError,
    curves_table,
    difference_curves,
    load_ap_curves,
    plot_ap_curves,
)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )  # fmt: skip
    parser.add_argument("--inputs", nargs="+", required=True, metavar="PATH[:LABEL]")
    parser.add_argument("--diff", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="also plot curve A minus curve B (repeatable)")  # fmt: skip
    parser.add_argument("--output-dir", help="default: the first input's folder")
    parser.add_argument("--name", default="ap_vs_iou", help="file name stem of the outputs")
    parser.add_argument("--title", default="AP vs IoU threshold")
    args = parser.parse_args(argv)
    try:
        curves = OrderedDict()
        for item in args.inputs:
            path, _, label = item.partition(":")
            for name, values in load_ap_curves(path, label).items():
                if name in curves:
                    raise AnalysisInputError(f"two curves named '{name}': give labels (PATH:LABEL)")
                curves[name] = values
        diffs = difference_curves(curves, args.diff) if args.diff else None
    except AnalysisInputError as e:
        sys.exit(f"error: {e}")
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.inputs[0].partition(":")[0]))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, args.name)
    plot_ap_curves(curves, stem + ".png", diffs, title=args.title)
    everything = OrderedDict(curves, **(diffs or {}))
    with open(stem + ".md", "w") as f:
        f.write(curves_table(everything))
    with open(stem + ".csv", "w") as f:
        f.write(curves_table(everything, fmt="csv"))
    print(curves_table(everything))
    print(f"wrote {stem}.png, {stem}.md, {stem}.csv")


if __name__ == "__main__":
    main()
