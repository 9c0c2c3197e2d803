#!/usr/bin/env python
r"""Publish a trained model into a model-zoo directory, as Detectron2's model zoo holds one.

    python tools/publish_model.py output/Baselines/faster_rcnn_R_18_FPN_shapes/seed0 \
        --name Baselines/faster_rcnn_R_18_FPN_shapes --seed 0 [--ship | --zoo-dir DIR]

RUN_DIR is a train_net.py OUTPUT_DIR: its model_final.pth (or --checkpoint FILE) and its
metrics.json are published as <zoo>/<name>/seed<k>/model_final.pth (the model's weights only: no
optimizer, scheduler or iteration state), metrics.json and SHA256SUMS (check it with
`sha256sum -c SHA256SUMS` in that directory). The checkpoint is loaded with
torch.load(weights_only=True) and checked against the config's model (every key and shape) first.

A model trained from several config files is named by them, merged in order with a protocol
last, as tools/run_results.py runs it, e.g. for a protocol v4 run:

    python tools/publish_model.py RUN_DIR --seed 0 \
        --name "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+Protocols/shapes_v4.yaml"

which is published as shapes_v4/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes (the run's name; that
name works as --name too).

<zoo> is the model-zoo base that cascade_zoo:// names resolve to ($CASCADE_ZOO_MODEL_ZOO, by
default $CASCADE_ZOO_CACHE/model_zoo), or with --ship the repository's own benchmarks/model_zoo/,
which every clone finds (commit the three files). Afterwards
cascade_zoo.model_zoo.get("<name>.yaml", trained=True, seed=<k>) loads it.
"""

import argparse
import os
import sys

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
from cascade_zoo import model_zoo
from cascade_zoo.engine.checkpoint import UnsafeCheckpointError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training's OUTPUT_DIR")
    parser.add_argument(
        "--name",
        required=True,
        help="the config, relative to configs/ (.yaml optional), or A.yaml+B.yaml[+Protocols/P]",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="default: RUN_DIR/model_final.pth")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--zoo-dir", help="model-zoo directory (default: the model-zoo base)")
    where.add_argument(
        "--ship", action="store_true", help=f"into the repository's {model_zoo.SHIPPED_DIR}"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a published model")
    args = parser.parse_args(argv)

    name = args.name if args.name.endswith(".yaml") else args.name + ".yaml"  # a config
    checkpoint = args.checkpoint or os.path.join(args.run_dir, model_zoo.CHECKPOINT_FILE)
    metrics = os.path.join(args.run_dir, model_zoo.METRICS_FILE)
    if not os.path.isfile(checkpoint):
        sys.exit(f"error: checkpoint '{checkpoint}' does not exist")
    if not os.path.isfile(metrics):
        print(f"warning: no {metrics}: publishing the weights without metrics", file=sys.stderr)
        metrics = None
    zoo_dir = str(model_zoo.SHIPPED_DIR) if args.ship else args.zoo_dir
    try:
        target = model_zoo.publish_model(
            checkpoint, name, args.seed, metrics=metrics, zoo_dir=zoo_dir, overwrite=args.overwrite
        )
    except (RuntimeError, ValueError, FileExistsError, UnsafeCheckpointError) as e:
        sys.exit(f"error: {e}")
    for line in (target / model_zoo.MANIFEST_FILE).read_text().splitlines():
        print(f"{target}/{line.split()[1]}  sha256 {line.split()[0]}")
    url = f"{model_zoo.PREFIX}{model_zoo.config_name(model_zoo.resolve_config_path(name))}"
    url += f"/seed{args.seed}/"
    print(f"published as {url}{model_zoo.CHECKPOINT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
