#!/usr/bin/env python
"""AP on subsets of a dataset's images by their number of objects (RGA + PRM's Fig. 2), from the
COCO results that evaluation writes, for one model or several side by side.

    python tools/eval_subsets.py --dataset shapes_val \\
        --results Faster=output/faster/inference/shapes_val/coco_instances_results.json \\
                  PRM=output/prm/inference/shapes_val/coco_instances_results.json \\
        --bins 1-3 4-7 8- --output subsets.md

Bins are LOW-HIGH or LOW- (no upper bound); counts are of non-crowd objects.
"""

import argparse
import json
import sys

from detectron2.data import MetadataCatalog

import cascade_zoo  # noqa: F401  (registers the datasets)
from cascade_zoo.analysis.ap_iou import AnalysisInputError
from cascade_zoo.analysis.subsets import ap_by_object_count, subsets_table
from cascade_zoo.data import check_dataset_files


def _bin(text):
    low, _, high = text.partition("-")
    try:
        return int(low), (int(high) if high else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bin '{text}': use LOW-HIGH or LOW-") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a registered COCO-format dataset")
    parser.add_argument("--results", nargs="+", required=True, metavar="[NAME=]FILE")
    parser.add_argument("--bins", nargs="+", type=_bin, default=[(1, 3), (4, 7), (8, None)])
    parser.add_argument("--output", help="Markdown file for the table (and a .json beside it)")
    args = parser.parse_args(argv)
    check_dataset_files(args.dataset)
    gt_json = MetadataCatalog.get(args.dataset).json_file
    out = {}
    try:
        for spec in args.results:
            name, _, path = spec.rpartition("=")
            out[name or path] = ap_by_object_count(gt_json, path, args.bins)
    except (AnalysisInputError, OSError) as e:
        sys.exit(f"error: {e}")
    table = subsets_table(out)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
        with open(args.output.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
