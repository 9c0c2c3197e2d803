#!/usr/bin/env python
"""Predicted against true IoU of an IoU-Uniform R-CNN's detections, without and with eliminating
the feature offsets (Fig. 8): every final detection with IoU > 0.5 with a ground truth of its
class, the IoU its branch predicts at the detection's input box and at its regressed box (EFO).
Writes a PNG, a Markdown table (mean predictions per true-IoU bin, correlations) and a JSON file.

    python tools/iou_uniform_iou_prediction.py \\
        --config-file configs/IoUUniform/iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml \\
        --dataset shapes_val --output-dir out/fig8 MODEL.WEIGHTS iou_uniform_final.pth
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

from cascade_zoo import setup_cfg
from cascade_zoo.analysis import AnalysisInputError
from cascade_zoo.data import check_dataset_files
from cascade_zoo.engine.checkpoint import build_checkpointer
from cascade_zoo.modeling import build_model
from iou_uniform.analysis import iou_prediction_table, iou_predictions, plot_iou_predictions


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--num-images", type=int, help="the first N images (default: all)")
    parser.add_argument("--min-iou", type=float, default=0.5, help="detections kept: IoU above")
    parser.add_argument("--label", help="the run's name (default: the config's file name)")
    parser.add_argument("--output-dir", default=".")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    label = args.label or os.path.splitext(os.path.basename(args.config_file))[0]
    cfg = setup_cfg(args.config_file, args.opts)
    try:
        check_dataset_files(args.dataset)
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
        matches = iou_predictions(model, cfg, args.dataset, args.num_images, args.min_iou)
    except (AnalysisInputError, FileNotFoundError, KeyError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, label)
    with open(stem + ".json", "w") as f:
        json.dump({"label": label, "config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                   "dataset": args.dataset,
                   **{k: v.tolist() for k, v in matches.items()}}, f)  # fmt: skip
    table = iou_prediction_table(OrderedDict([(label, matches)]))
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    plot_iou_predictions(matches, stem + ".png", title=f"{label} on {args.dataset}")
    print(table)
    print(f"wrote {stem}.png, {stem}.md, {stem}.json")


if __name__ == "__main__":
    main()
