#!/usr/bin/env python
"""Scores of the parallel R-CNN modules of a PRM model on the same test boxes (RGA + PRM's
Fig. 6): their distributions and that of their differences, as a PNG and a JSON summary.

    python tools/plot_module_scores.py \\
        --config-file configs/RGA_PRM/faster_rcnn_R_18_FPN_prm_shapes.yaml --dataset shapes_val \\
        --num-images 50 --output-dir out/ MODEL.WEIGHTS model_final.pth
"""

import argparse
import json
import os
import sys

from cascade_zoo import setup_cfg
from cascade_zoo.data import check_dataset_files
from cascade_zoo.engine.checkpoint import build_checkpointer
from cascade_zoo.modeling import build_model
from rga_prm.analysis import module_scores, plot_module_scores, score_difference_summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--num-images", type=int, default=50)
    parser.add_argument("--output-dir", default=".")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    check_dataset_files(args.dataset)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    try:
        scores = module_scores(model, cfg, args.dataset, args.num_images)
    except ValueError as e:
        sys.exit(f"error: {e} ({cfg.MODEL.ROI_HEADS.NAME})")
    os.makedirs(args.output_dir, exist_ok=True)
    png = plot_module_scores(
        scores,
        os.path.join(args.output_dir, "module_scores.png"),
        title=f"{os.path.basename(args.config_file)} on {args.dataset}",
    )
    summary = score_difference_summary(scores)
    with open(os.path.join(args.output_dir, "module_scores.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
