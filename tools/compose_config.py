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

import yaml

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
from cascade_zoo.config import get_zoo_cfg


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def flat_dump(cfg) -> str:
    """``cfg.dump()`` with every value written out: PyYAML writes a value that two keys share as
    the same Python object once (``&id001`` ... ``*id001``), which depends on how the config was
    loaded, not on its settings."""
    return yaml.dump(yaml.safe_load(cfg.dump()), Dumper=_NoAliasDumper)


def compose(config_files) -> str:
    """The files merged in order over the project's defaults, as YAML (:func:`flat_dump`), under
    a comment naming them."""
    cfg = get_zoo_cfg()
    for path in config_files:
        cfg.merge_from_file(path)
    sources = " + ".join(os.path.relpath(p) for p in config_files)
    return f"# Written by tools/compose_config.py from {sources}\n" + flat_dump(cfg)


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
