#!/usr/bin/env python
"""Draw a model's predictions (left) and the ground truth (right) for images of a dataset, or,
with --stages, each cascade stage's detections side by side.

    python tools/visualize.py --config-file CONFIG --dataset shapes_val \
        --output predictions.png MODEL.WEIGHTS output/model_final.pth
"""

import argparse
import logging
import os
import sys

from detectron2.utils.logger import setup_logger

from cascade_zoo import setup_cfg
from cascade_zoo.visualize import draw_predictions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--no-ground-truth", action="store_true")
    parser.add_argument(
        "--stages", action="store_true", help="one panel per cascade stage (and the ensemble)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="cascade_zoo")
    cfg = setup_cfg(args.config_file, args.opts)
    if (
        cfg.MODEL.WEIGHTS
        and not os.path.isfile(cfg.MODEL.WEIGHTS)
        and "://" not in cfg.MODEL.WEIGHTS
    ):
        sys.exit(f"error: MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' does not exist")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    try:
        path = draw_predictions(
            cfg,
            args.dataset,
            args.output,
            num_images=args.num_images,
            score_threshold=args.score_threshold,
            with_ground_truth=not args.no_ground_truth,
            stages=args.stages,
        )
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    logging.getLogger("cascade_zoo").info(f"wrote {path}")


if __name__ == "__main__":
    main()
