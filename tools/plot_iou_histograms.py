#!/usr/bin/env python
"""IoU histograms of each stage's training boxes (Cascade R-CNN Fig. 4), as a PNG and a Markdown
table of the share of positives at each stage threshold.

From a training run's statistics:
    python tools/plot_iou_histograms.py --stats output/run/training_iou_stats.json
Or by running a config's samplers over N training batches, with a checkpoint:
    python tools/plot_iou_histograms.py --config-file CONFIG --batches 20 \\
        --output-dir output/analysis MODEL.WEIGHTS output/run/model_final.pth
"""

import argparse
import json
import os
import sys

from cascade_zoo.analysis import (
    AnalysisInputError,
    collect_iou_stats,
    load_iou_stats,
    plot_iou_histograms,
)
from cascade_zoo.utils.markdown import markdown_table


def table(stats):
    thresholds = [f"{u:g}" for u in stats["thresholds"]]
    header = ["boxes", "count"] + [f"IoU >= {u}" for u in thresholds]
    body = [[name, row["total"]] + [f"{row['positive_share'][u]:.1%}" for u in thresholds]
            for name, row in stats["rows"].items()]  # fmt: skip
    return markdown_table(header, body) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stats", help="a training_iou_stats.json")
    source.add_argument("--config-file", help="run this config's samplers")
    parser.add_argument("--batches", type=int, default=20, help="with --config-file")
    parser.add_argument("--output-dir", help="default: the stats' folder or OUTPUT_DIR/analysis")
    parser.add_argument("--name", default="training_iou_histograms")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        if args.stats:
            stats = load_iou_stats(args.stats)
            out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.stats))
        else:
            from detectron2.utils.logger import setup_logger

            from cascade_zoo import setup_cfg

            setup_logger(name="cascade_zoo")
            cfg = setup_cfg(args.config_file, args.opts)
            stats = collect_iou_stats(cfg, args.batches)
            out_dir = args.output_dir or os.path.join(cfg.OUTPUT_DIR, "analysis")
    except (AnalysisInputError, FileNotFoundError, KeyError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, args.name)
    plot_iou_histograms(stats, stem + ".png")
    with open(stem + ".md", "w") as f:
        f.write(table(stats))
    if not args.stats:
        with open(stem + ".json", "w") as f:
            json.dump(stats, f, indent=1)
    print(table(stats))
    print(f"wrote {stem}.png, {stem}.md")


if __name__ == "__main__":
    main()
