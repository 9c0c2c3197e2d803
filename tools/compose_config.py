#!/usr/bin/env python
"""Write a config and the deltas merged over it as one flat config file.

    python tools/compose_config.py configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x.yaml \
        configs/CascadeRCNN/ablations/integral_loss.yaml -o integral_loss_R_50_FPN_1x.yaml

The files are merged in order, as `train_net.py --config-file BASE --config-file DELTA ...` merges
them; the output is the whole resolved config (every key, no _BASE_), so a single
`--config-file OUT.yaml` gives the same model in this project's tools, and it loads into
`cascade_zoo.get_zoo_cfg()` (Detectron2's defaults plus the project's keys, which importing
cascade_zoo's packages registers) with Detectron2's `merge_from_file`. MODEL.DEVICE is written as
the files say (train_net.py falls back to the CPU without CUDA).
"""

import argparse
import os
import sys

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
from cascade_zoo.config import compose_config_text


def compose(config_files) -> str:
    """The files merged in order over the project's defaults, as one flat YAML config."""
    return compose_config_text(list(config_files))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("base", metavar="BASE", help="a config file (it may have a _BASE_)")
    parser.add_argument("deltas", nargs="+", metavar="DELTA", help="files merged over it, in order")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.yaml")
    args = parser.parse_args(argv)
    text = compose([args.base, *args.deltas])
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
