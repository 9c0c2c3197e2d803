#!/usr/bin/env python
"""Print statistics of registered COCO-format datasets (objects per image, sizes, aspect ratios)
as Markdown, e.g. for docs/datasets.md:

    python tools/dataset_stats.py shapes_train shapes_val
"""

import argparse
import json
import sys

from detectron2.data import MetadataCatalog

from cascade_zoo.data import check_dataset_files
from cascade_zoo.data.stats import coco_statistics, statistics_markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", help="registered dataset names")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    for name in args.datasets:
        try:
            check_dataset_files(name)
        except (KeyError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        json_file = MetadataCatalog.get(name).get("json_file")
        if json_file is None:
            sys.exit(f"error: dataset '{name}' has no COCO json_file")
        stats = coco_statistics(json_file)
        print(
            json.dumps({name: stats}, indent=1) if args.json else statistics_markdown(name, stats)
        )


if __name__ == "__main__":
    main()
