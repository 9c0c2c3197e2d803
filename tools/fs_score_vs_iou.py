#!/usr/bin/env python
"""Confidence of the last stage's detections against their IoU with the ground truth (FSCascade's
Fig. 5: IoU in [0.5, 0.75]; --iou-range for others): runs a model on a dataset with the last stage
alone (MODEL.BOX_CASCADE.TEST_ENSEMBLE none) and writes a PNG, a Markdown table of the scores per
IoU bin and a JSON file of the detections' (IoU, score), which --compare shows beside a later
run.

    python tools/fs_score_vs_iou.py \\
        --config-file configs/FSCascade/fs_cascade_R_18_FPN_shapes.yaml --dataset shapes_val \\
        --label fscascade --output-dir out/fig5 MODEL.WEIGHTS fs_final.pth
    python tools/fs_score_vs_iou.py \\
        --config-file configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml --dataset shapes_val \\
        --label cascade --compare out/fig5/fscascade.json --output-dir out/fig5 \\
        MODEL.WEIGHTS cascade_final.pth
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
from fs_cascade.analysis import (
    FIG5_IOU_RANGE,
    in_iou_range,
    plot_score_vs_iou,
    score_vs_iou,
    score_vs_iou_table,
)


def _load(item):
    path, _, label = item.partition(":")
    try:
        data = json.load(open(path))
        run = {"iou": np.array(data["iou"], float), "score": np.array(data["score"], float)}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AnalysisInputError(f"{path}: not a fs_score_vs_iou.py output ({e})") from None
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
        "--compare", nargs="*", default=[], metavar="JSON[:LABEL]",
        help="outputs of earlier runs of this tool, shown beside this one",
    )  # fmt: skip
    parser.add_argument(
        "--iou-range",
        nargs=2,
        type=float,
        default=list(FIG5_IOU_RANGE),
        metavar=("LOW", "HIGH"),
        help="the detections kept, by IoU with the ground truth (default: Fig. 5's)",
    )
    parser.add_argument("--output-dir", default=".")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    label = args.label or os.path.splitext(os.path.basename(args.config_file))[0]
    cfg = setup_cfg(args.config_file, [*args.opts, "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none"])
    try:
        runs = OrderedDict(_load(item) for item in args.compare)
        check_dataset_files(args.dataset)
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
        matches = score_vs_iou(model, cfg, args.dataset, args.num_images)
        matches = in_iou_range(matches, args.iou_range)
    except AnalysisInputError as e:
        sys.exit(f"error: {e}")
    runs[label] = matches
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, label)
    with open(stem + ".json", "w") as f:
        record = {
            "label": label,
            "config": args.config_file,
            "weights": cfg.MODEL.WEIGHTS,
            "dataset": args.dataset,
            "iou_range": list(args.iou_range),
            "iou": matches["iou"].tolist(),
            "score": matches["score"].tolist(),
        }
        json.dump(record, f)
    table = score_vs_iou_table(runs, args.iou_range)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    plot_score_vs_iou(runs, stem + ".png", args.iou_range, title=f"last stage on {args.dataset}")
    print(table)
    print(f"wrote {stem}.png, {stem}.md, {stem}.json")


if __name__ == "__main__":
    main()
