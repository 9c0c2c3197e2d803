#!/usr/bin/env python
"""What the regression does to the proposals (IoU-Uniform R-CNN, Fig. 3 and 6): every RPN
proposal's IoU with its ground truth before and after the detector's regression. Writes the mean
IoU gain per input-IoU interval (Fig. 3) and the histogram of the refined boxes' IoU for the
proposals with IoU >= 0.5 (Fig. 6), as PNGs and Markdown tables, and a JSON file of the pairs,
which --compare shows beside a later run.

    python tools/iou_uniform_refinement.py \\
        --config-file configs/Baselines/faster_rcnn_R_18_FPN_shapes.yaml --dataset shapes_val \\
        --label faster --output-dir out/refinement MODEL.WEIGHTS faster_final.pth
    python tools/iou_uniform_refinement.py \\
        --config-file configs/IoUUniform/iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml \\
        --dataset shapes_val --label iou_uniform --compare out/refinement/faster.json \\
        --output-dir out/refinement MODEL.WEIGHTS iou_uniform_final.pth
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np

from cascade_zoo import setup_cfg
from cascade_zoo.analysis import AnalysisInputError
from cascade_zoo.data import check_dataset_files
from cascade_zoo.engine.checkpoint import build_checkpointer
from cascade_zoo.modeling import build_model
from iou_uniform.analysis import (
    localization_gain_table,
    plot_localization_gain,
    plot_refined_histograms,
    refined_histogram_table,
    refinement_ious,
)


def _load(item):
    path, _, label = item.partition(":")
    try:
        data = json.load(open(path))
        run = {k: np.array(data[k], float) for k in ("input_iou", "output_iou")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AnalysisInputError(f"{path}: not an iou_uniform_refinement.py output ({e})") from None
    return label or data.get("label") or path, run


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--num-images", type=int, help="the first N images (default: all)")
    parser.add_argument("--label", help="the run's name (default: the config's file name)")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="JSON[:LABEL]",
        help="outputs of earlier runs of this tool, shown beside this one",
    )
    parser.add_argument("--output-dir", default=".")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    label = args.label or os.path.splitext(os.path.basename(args.config_file))[0]
    cfg = setup_cfg(args.config_file, args.opts)
    try:
        runs = OrderedDict(_load(item) for item in args.compare)
        check_dataset_files(args.dataset)
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
        runs[label] = refinement_ious(model, cfg, args.dataset, args.num_images)
    except (AnalysisInputError, FileNotFoundError, KeyError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, label)
    with open(stem + ".json", "w") as f:
        json.dump({"label": label, "config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                   "dataset": args.dataset,
                   **{k: v.tolist() for k, v in runs[label].items()}}, f)  # fmt: skip
    text = (
        "Fig. 3: the IoU gain of the regression by the proposal's IoU\n\n"
        + localization_gain_table(runs)
        + "\n\nFig. 6: IoU of the refined boxes (proposals with IoU >= 0.5)\n\n"
        + refined_histogram_table(runs)
        + "\n"
    )
    with open(stem + ".md", "w") as f:
        f.write(text)
    plot_localization_gain(runs, stem + "_gain.png", title=f"regression gain on {args.dataset}")
    plot_refined_histograms(runs, stem + "_histogram.png", title=f"refined boxes, {args.dataset}")
    print(text)
    print(f"wrote {stem}_gain.png, {stem}_histogram.png, {stem}.md, {stem}.json")


if __name__ == "__main__":
    main()
