#!/usr/bin/env python
"""Draw a model's predictions (left) and the ground truth (right) for images of a dataset, or,
with --stages, each cascade stage's detections side by side.

    python tools/visualize.py --config-file CONFIG --dataset shapes_val \
        --output predictions.png --opts MODEL.WEIGHTS output/model_final.pth

Config overrides go after --opts (or, the older form, trailing KEY VALUE pairs). The weights load
through ZooPredictor: a checkpoint whose unpickling could run code is refused unless
ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE True.
"""

import argparse
import logging
import os
import sys

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
from detectron2.utils.logger import setup_logger

from cascade_zoo import setup_cfg
from cascade_zoo.engine.checkpoint import UnsafeCheckpointError
from cascade_zoo.predictor import add_config_arguments, config_overrides, missing_weights_message
from cascade_zoo.visualize import draw_predictions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--no-ground-truth", action="store_true")
    parser.add_argument(
        "--stages", action="store_true", help="one panel per cascade stage (and the ensemble)"
    )
    args = parser.parse_args(argv)
    opts = config_overrides(parser, args)
    setup_logger(name="cascade_zoo")
    cfg = setup_cfg(args.config_file, opts)
    missing = missing_weights_message(cfg.MODEL.WEIGHTS)
    if missing:
        sys.exit(f"error: {missing}")
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
    except (ValueError, KeyError, FileNotFoundError, UnsafeCheckpointError) as e:
        sys.exit(f"error: {e}")
    logging.getLogger("cascade_zoo").info(f"wrote {path}")


if __name__ == "__main__":
    main()
