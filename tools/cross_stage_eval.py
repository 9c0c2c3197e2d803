#!/usr/bin/env python
"""Every cascade stage's detector on every stage's proposals (Cascade R-CNN Fig. 8), and with the
ground-truth boxes added to the proposals (Fig. 7b): T x T tables of AP and AP at each IoU,
written as Markdown, JSON and one AP-vs-IoU plot per proposal stage.

    python tools/cross_stage_eval.py --config-file CONFIG --dataset shapes_val \
        --output-dir out/cross_stage [--add-gt] MODEL.WEIGHTS output/model_final.pth
"""

import argparse
import json
import logging
import os
import sys
from collections import OrderedDict

from detectron2.utils.logger import setup_logger

from box_cascade.cross_stage import cross_stage_tables, evaluate_cross_stage
from cascade_zoo import setup_cfg
from cascade_zoo.analysis import plot_ap_curves
from cascade_zoo.analysis.ap_iou import AP_KEYS
from cascade_zoo.engine.checkpoint import build_checkpointer
from cascade_zoo.modeling import build_model


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 3)[3],
    )  # fmt: skip
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--add-gt", action="store_true", help="also evaluate with ground truth added to proposals"
    )
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole dataset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="cascade_zoo")
    setup_logger(name="box_cascade")
    logger = logging.getLogger("cascade_zoo")
    cfg = setup_cfg(args.config_file, args.opts)
    weights = cfg.MODEL.WEIGHTS
    if not weights or (not os.path.isfile(weights) and "://" not in weights):
        sys.exit(f"error: MODEL.WEIGHTS '{weights}' does not exist (give a trained model)")
    model = build_model(cfg)
    if not hasattr(model.roi_heads, "run_test_stages"):
        sys.exit(f"error: {cfg.MODEL.ROI_HEADS.NAME} is not a box-cascade core head")
    build_checkpointer(cfg, model).load(weights)
    os.makedirs(args.output_dir, exist_ok=True)
    report = OrderedDict()
    for add_gt in [False, True] if args.add_gt else [False]:
        name = "with_gt" if add_gt else "proposals"
        results = evaluate_cross_stage(
            cfg, model, args.dataset, add_gt=add_gt, max_images=args.max_images
        )
        report[name] = results
        title = "ground truth added to the proposals" if add_gt else "the cascade's proposals"
        text = f"### Detectors on {title}\n\n{cross_stage_tables(results)}\n"
        with open(os.path.join(args.output_dir, f"cross_stage_{name}.md"), "w") as f:
            f.write(text)
        print(text)
        stages = sorted({int(k.split("/")[0][len("proposals") :]) for k in results})
        for i in stages:
            curves = OrderedDict(
                (f"detector {j}", [results[f"proposals{i}/detector{j}"][k] for k in AP_KEYS])
                for j in stages
            )
            path = os.path.join(args.output_dir, f"cross_stage_{name}_proposals{i}.png")
            plot_ap_curves(curves, path, title=f"stage {i} proposals ({title})")
    with open(os.path.join(args.output_dir, "cross_stage.json"), "w") as f:
        json.dump(report, f, indent=1)
    logger.info(f"wrote {args.output_dir}/cross_stage*.md, .json, .png")


if __name__ == "__main__":
    main()
