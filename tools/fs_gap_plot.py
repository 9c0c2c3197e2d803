#!/usr/bin/env python
"""FSCascade's gap analysis (Fig. 1 and 3 of the paper): at each IoU 0.50..0.95, the last stage's
AP minus the stage before it, and minus Faster R-CNN's, for one or more runs; a PNG (the curves
and the gaps) and Markdown and CSV tables.

    python tools/fs_gap_plot.py \\
        --runs out/cascade/inference/coco_2017_val/stagewise_results.json:cascade \\
        out/fs/inference/coco_2017_val/stagewise_results.json:fscascade \\
        --faster out/faster/metrics.json:faster --output-dir out/gaps

--runs take the stage-wise results of the box-cascade core's evaluation
(stagewise_results.json); --faster any file tools/plot_ap_iou.py reads (a metrics.json with
per-IoU AP, or a stagewise_results.json, whose final output is used). LABEL defaults to the
file's folder name.
"""

import argparse
import os
import sys
from collections import OrderedDict

from cascade_zoo.analysis import AnalysisInputError, curves_table, load_ap_curves, plot_ap_curves
from fs_cascade.analysis import last_stage, stage_gaps


def _faster_curve(item):
    path, _, label = item.partition(":")
    curves = load_ap_curves(path, label)
    label = next(iter(curves)).split("/")[0]
    for name in (label, f"{label}/ensemble"):  # the final output
        if name in curves:
            return label, curves[name]
    raise AnalysisInputError(f"{path}: no final-output curve ('{label}' or '{label}/ensemble')")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--runs", nargs="+", required=True, metavar="PATH[:LABEL]")
    parser.add_argument("--faster", metavar="PATH[:LABEL]", help="the Faster R-CNN reference")
    parser.add_argument("--stage", type=int, help="the stage N of the gaps (default: the last)")
    parser.add_argument("--output-dir", help="default: the first run's folder")
    parser.add_argument("--name", default="fs_gaps", help="file name stem of the outputs")
    args = parser.parse_args(argv)
    try:
        runs = OrderedDict()
        for item in args.runs:
            path, _, label = item.partition(":")
            curves = load_ap_curves(path, label)
            label = next(iter(curves)).rsplit("/", 1)[0]
            if label in runs:
                raise AnalysisInputError(f"two runs labelled '{label}': give labels (PATH:LABEL)")
            runs[label] = curves
        faster = _faster_curve(args.faster) if args.faster else None
        gaps = stage_gaps(runs, faster, args.stage)
    except AnalysisInputError as e:
        sys.exit(f"error: {e}")
    shown = OrderedDict()  # the two stages of each run the gaps compare
    for label, curves in runs.items():
        n = args.stage or last_stage(curves, label)
        for name in (f"{label}/stage{n - 1}", f"{label}/stage{n}"):
            shown[name] = curves[name]
    if faster is not None:
        shown[faster[0]] = faster[1]
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.runs[0].partition(":")[0]))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, args.name)
    plot_ap_curves(shown, stem + ".png", gaps, title="AP of the last stages")
    everything = OrderedDict(shown, **gaps)
    with open(stem + ".md", "w") as f:
        f.write(curves_table(everything))
    with open(stem + ".csv", "w") as f:
        f.write(curves_table(everything, fmt="csv"))
    print(curves_table(gaps))
    print(f"wrote {stem}.png, {stem}.md, {stem}.csv")


if __name__ == "__main__":
    main()
