"""The one trainer behind train_net.py: Detectron2's DefaultTrainer with checked datasets, the
right COCO evaluation for the install, and distributed training on CPUs."""

import logging
import os
import weakref

from detectron2.data import (
    DatasetFromList,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.engine.hooks import PeriodicCheckpointer
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import Registry

from ..data.datasets import check_dataset_files, check_test_dataset, validate_dataset_dicts
from ..data.mapper import CheckedDatasetMapper
from ..data.stream import ResumableBatchSampler, build_stream_loader, check_total_batch_size
from ..evaluation import EXTRA_EVALUATOR_REGISTRY, PerIoUCOCOEvaluator, PerIoUVOCEvaluator
from ..evaluation_mr import MissRateEvaluator
from ..modeling import apply_zoo_options
from ..utils.env import compiled_ops_available
from .checkpoint import build_checkpointer
from .optim import build_optimizer
from .resume import ResumeStateHook, preserved_rng

DATA_STREAMS = ("resumable", "detectron2")

TRAINING_HOOK_REGISTRY = Registry("TRAINING_HOOK")
TRAINING_HOOK_REGISTRY.__doc__ = """Functions ``(cfg) -> list of Detectron2 hooks`` registered by
project packages for training methods that are not part of a model (e.g. RGA's gradient
annealing); ZooTrainer registers what each returns, before its checkpointer."""


def check_at_start(cfg) -> None:
    """What can be checked before a model or a training set is built, so that it stops the run
    at once rather than after the first evaluation: ``SOLVER.IMS_PER_BATCH`` (a positive
    multiple of the number of processes) and the test datasets (files, COCO file contents)."""
    check_total_batch_size(cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())
    for name in cfg.DATASETS.TEST:
        check_test_dataset(name)


class ZooTrainer(DefaultTrainer):
    """DefaultTrainer with:

    - checks before anything is built (:func:`check_at_start`) and dataset checks before a
      loader is built (missing files: an error naming the path);
    - :class:`CheckedDatasetMapper` (unreadable images: an error naming the file, or a skip);
    - COCO evaluation through pycocotools when Detectron2's compiled fast evaluation is missing;
    - DistributedDataParallel on CPU processes (gloo), which Detectron2 v0.6 does not set up;
    - the optimizer state in checkpoints (Detectron2 v0.6 saves only the iteration and the
      scheduler; current Detectron2 does the same as here), every process's RNG states and a
      data stream that resumes where it stopped (``ZOO.DATA_STREAM``), so that ``--resume``
      trains the model an uninterrupted run trains;
    - :class:`~cascade_zoo.engine.checkpoint.ZooCheckpointer`: atomic saves, fallback to the
      newest good checkpoint at resume, weights-only loading, optional strict loading;
    - evaluation that leaves the training RNGs as they were.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except for the DDP wrapper: Detectron2 passes
        # device_ids=[local_rank], which DistributedDataParallel rejects for a CPU model.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_at_start(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        ddp_kwargs = {"device_ids": None} if on_cpu else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(
            cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """Detectron2's, except that the iteration continues only when a checkpoint was actually
        resumed from (every checkpoint of OUTPUT_DIR unreadable: MODEL.WEIGHTS, iteration 0)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from:
            self.start_iter = self.iter + 1

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()  # holds the optimizer (and AMP scaler)
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logging.getLogger(__name__).warning(
                "Checkpoint has no optimizer state: resuming with a fresh optimizer"
            )

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, with ROIAlign's CPU input gradient chosen by
        ``ZOO.ROI_ALIGN_CPU_BACKWARD`` and the RPN's CPU NMS by ``ZOO.RPN_PREFIX_NMS``."""
        return apply_zoo_options(super().build_model(cfg), cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.ZOO.DATA_STREAM not in DATA_STREAMS:
            raise ValueError(
                f"ZOO.DATA_STREAM must be one of {DATA_STREAMS}, got {cfg.ZOO.DATA_STREAM!r}"
            )
        check_total_batch_size(cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())
        for name in cfg.DATASETS.TRAIN:
            check_dataset_files(name)
        # The dataset dicts as Detectron2's loader builds them; built here so that the mapper can
        # draw replacements for unreadable images from them.
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        validate_dataset_dicts(dicts, cfg.DATASETS.TRAIN, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        dataset = DatasetFromList(dicts, copy=False)
        mapper = CheckedDatasetMapper(cfg, is_train=True, fallback_dataset=dataset)
        if cfg.ZOO.DATA_STREAM == "detectron2":
            return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_stream_loader(
            dataset,
            mapper,
            records=dicts,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            seed=seed,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_files(dataset_name)
        return build_detection_test_loader(
            cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCO AP (pycocotools when the compiled fast evaluation is missing) or VOC AP, by the
        dataset's ``evaluator_type``."""
        check_dataset_files(dataset_name)
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "pascal_voc":
            return PerIoUVOCEvaluator(dataset_name)
        if evaluator_type == "crowdhuman":
            return MissRateEvaluator(dataset_name)
        if evaluator_type != "coco":
            raise NotImplementedError(
                f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}'; this project "
                "evaluates 'coco', 'pascal_voc' and 'crowdhuman' datasets"
            )
        evaluators = [
            PerIoUCOCOEvaluator(
                dataset_name, output_dir=output_folder, use_fast_impl=compiled_ops_available()
            )
        ]
        for _, build in EXTRA_EVALUATOR_REGISTRY:
            extra = build(cfg, dataset_name, output_folder)
            if extra is not None:
                evaluators.append(extra)
        return DatasetEvaluators(evaluators)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, with SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" besides its own
        per-tensor clipping (cascade_zoo.engine.optim)."""
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation, leaving every RNG of the process as it was (so a periodic
        evaluation does not change what training draws next)."""
        with preserved_rng():
            return super().test(cfg, model, evaluators)

    def build_hooks(self):
        """Detectron2's hooks, plus those model modules give through ``training_hooks()`` (see
        cascade_zoo.engine.contract) and the resume state (RNGs, data stream), placed before the
        checkpointer so that their state is current when it saves."""
        hooks = super().build_hooks()
        model = self.model.module if hasattr(self.model, "module") else self.model
        extra = [
            h for m in model.modules() if hasattr(m, "training_hooks") for h in m.training_hooks()
        ]
        for _, build in TRAINING_HOOK_REGISTRY:
            extra += list(build(self.cfg) or [])
        loader = self._trainer.data_loader
        stream = (
            loader
            if isinstance(getattr(loader, "batch_sampler", None), ResumableBatchSampler)
            else None
        )
        extra.append(ResumeStateHook(self.cfg.SOLVER.CHECKPOINT_PERIOD, stream))
        index = next(
            (i for i, h in enumerate(hooks) if isinstance(h, PeriodicCheckpointer)), len(hooks) - 1
        )
        return hooks[:index] + extra + hooks[index:]
