#!/usr/bin/env python
"""Detections matched to ground truth: score against true IoU (and predicted against true IoU
when the detections carry "predicted_iou"), as a PNG and a Markdown table of means per IoU bin.

    python tools/plot_score_iou.py --dataset shapes_val \\
        --results output/run/inference/shapes_val/coco_instances_results.json
"""

import argparse
import os
import sys

import numpy as np

from cascade_zoo.analysis import AnalysisInputError, binned_means, match_detections, plot_matches


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )  # fmt: skip
    parser.add_argument("--results", required=True, help="coco_instances_results.json")
    gt = parser.add_mutually_exclusive_group(required=True)
    gt.add_argument("--dataset", help="registered dataset whose ground truth to use")
    gt.add_argument("--gt-json", help="COCO ground-truth JSON")
    parser.add_argument("--min-score", type=float, default=0.05)
    parser.add_argument("--output-dir", help="default: the results' folder")
    parser.add_argument("--name", default="score_vs_iou")
    args = parser.parse_args(argv)
    try:
        gt_json = args.gt_json
        if args.dataset:
            from detectron2.data import MetadataCatalog

            from cascade_zoo.data import check_dataset_files

            check_dataset_files(args.dataset)
            gt_json = MetadataCatalog.get(args.dataset).get("json_file")
            if not gt_json:
                raise AnalysisInputError(f"dataset '{args.dataset}' has no COCO json_file")
        matches = match_detections(gt_json, args.results, args.min_score)
    except (AnalysisInputError, KeyError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if len(matches["score"]) == 0:
        sys.exit(f"error: no detections with score >= {args.min_score} in {args.results}")
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.results))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, args.name)
    plot_matches(matches, stem + ".png")
    bins = np.linspace(0, 1, 11)
    lines = ["| IoU bin centre | detections | mean score |"
             + (" mean predicted IoU |" if "predicted_iou" in matches else ""), "|---|---|---|"
             + ("---|" if "predicted_iou" in matches else "")]  # fmt: skip
    centres, scores = binned_means(matches["iou"], matches["score"], bins)
    counts = np.histogram(np.clip(matches["iou"], 0, 1), bins)[0]
    counts = counts[counts > 0]
    predicted = (binned_means(matches["iou"], matches["predicted_iou"], bins)[1]
                 if "predicted_iou" in matches else None)  # fmt: skip
    for i, (c, s, n) in enumerate(zip(centres, scores, counts)):
        extra = f" {predicted[i]:.3f} |" if predicted is not None else ""
        lines.append(f"| {c:.2f} | {n} | {s:.3f} |" + extra)
    corr = (
        float(np.corrcoef(matches["iou"], matches["score"])[0, 1])
        if len(matches["iou"]) > 1
        else float("nan")
    )
    text = "\n".join(lines) + f"\n\nPearson correlation of score and IoU: {corr:.3f}\n"
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {stem}.png, {stem}.md")


if __name__ == "__main__":
    main()
