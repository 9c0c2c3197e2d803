#!/usr/bin/env python
"""Train and evaluate any cascade-zoo model with Detectron2's conventions.

    python train_net.py --config-file configs/Baselines/cascade_rcnn_R_18_FPN_shapes.yaml
    python train_net.py --config-file CONFIG --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CONFIG --resume
    python train_net.py --config-file CONFIG --config-file DELTA.yaml   # files merged in order
    torchrun --nproc_per_node 8 train_net.py --config-file CONFIG

Without CUDA the model runs on the CPU, and --num-gpus N starts N CPU processes (gloo).
"""

import argparse
import logging

import cascade_zoo  # noqa: F401  (first: it filters the warnings of the libraries it imports)

# isort: split
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from cascade_zoo import argument_parser, setup_cfg, setup_project_loggers
from cascade_zoo.config import config_files
from cascade_zoo.data import register_coco_dataset
from cascade_zoo.engine import ZooTrainer, launch, started_by_torchrun
from cascade_zoo.engine.checkpoint import build_checkpointer

logger = logging.getLogger("cascade_zoo")
EPILOG = __doc__


def build_parser():
    parser = argument_parser(EPILOG)
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register a COCO-format instance dataset under NAME (repeatable), then use it in "
        "DATASETS.TRAIN / DATASETS.TEST",
    )
    return parser


def setup(args):
    for name, json_file, image_root in args.register_coco:
        register_coco_dataset(name, json_file, image_root)
    files = config_files(args.config_file)
    cfg = setup_cfg(files, args.opts)
    # Detectron2 logs the contents of one config file; the merged config goes to config.yaml
    default_setup(
        cfg, argparse.Namespace(**{**vars(args), "config_file": files[0] if files else ""})
    )
    if len(files) > 1:
        logger.info(f"Config files merged in order: {files}")
    setup_project_loggers(cfg.OUTPUT_DIR, comm.get_rank())
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = ZooTrainer.build_model(cfg)
        build_checkpointer(cfg, model, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = ZooTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = ZooTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = build_parser().parse_args()
    if started_by_torchrun() and args.num_gpus != 1:
        logger.warning("Started by torchrun: --num-gpus is ignored (use --nproc_per_node)")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
