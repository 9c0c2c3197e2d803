"""Configs: ``add_cascade_zoo_config`` for the shared infrastructure, and ``get_zoo_cfg`` /
``setup_cfg``, which every entry point uses so that any config file of the project loads."""

import importlib
import logging

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .utils.env import default_device

logger = logging.getLogger(__name__)


def add_cascade_zoo_config(cfg: CN) -> None:
    """Add ``cfg.ZOO``: options of this project's training/evaluation infrastructure."""
    cfg.ZOO = CN()
    # What a training loader does with an image that is missing or cannot be decoded:
    # "error" (raise, naming the file) or "skip" (log a warning naming it, use another image).
    # Evaluation always raises.
    cfg.ZOO.ON_BAD_IMAGE = "error"
    # The training data stream: "resumable" (cascade_zoo.data.stream: the images and
    # augmentations of iteration i are a function of the seed and i, so --resume continues the
    # stream where it stopped and N processes see together what one process sees) or
    # "detectron2" (Detectron2's TrainingSampler + AspectRatioGroupedDataset, which restart from
    # the beginning on --resume).
    cfg.ZOO.DATA_STREAM = "resumable"
    # The input gradient of ROIAlign on CPU: "vectorized" (cascade_zoo.roi_align: batched matrix
    # products, several times faster than torchvision's one-thread kernel; equal to it up to
    # floating-point summation order) or "torchvision" (its kernel, as in runs made before the
    # option existed). CUDA and inference always use torchvision's kernels.
    cfg.ZOO.ROI_ALIGN_CPU_BACKWARD = "vectorized"
    # True: on CPU, the RPN runs its NMS only on each image's best-scoring candidates, as many as
    # it takes to fill POST_NMS_TOPK (cascade_zoo.rpn); the proposals are the same as with
    # Detectron2's find_top_rpn_proposals (False), which runs it on all of them. CUDA always uses
    # Detectron2's.
    cfg.ZOO.RPN_PREFIX_NMS = True
    cfg.ZOO.CHECKPOINT = CN()
    # Checkpoints load with torch.load(weights_only=True) (model-zoo .pkl files with an unpickler
    # that accepts numpy arrays only): a file that needs arbitrary unpickling, which can run code,
    # is refused. True: load such files anyway (only for files from a source you trust).
    cfg.ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE = False
    # True: missing keys, unexpected keys or shape mismatches when loading MODEL.WEIGHTS are an
    # error (default: logged, and what matches is loaded, as Detectron2 does for fine-tuning).
    cfg.ZOO.CHECKPOINT.STRICT = False


# The project's packages, each with ``add_<package>_config``; importing one registers its heads.
PROJECT_PACKAGES = ("cascade_zoo", "box_cascade", "rga_prm", "r3_cnn", "fs_cascade", "iou_uniform")


def get_zoo_cfg() -> CN:
    """Detectron2's default config plus every project package's keys (importing the packages
    registers their heads)."""
    cfg = get_cfg()
    for name in PROJECT_PACKAGES:
        module = importlib.import_module(name)
        getattr(module, f"add_{name}_config")(cfg)
    return cfg


def setup_cfg(config_file: str = "", opts=(), *, freeze: bool = True) -> CN:
    """Config from a YAML file and ``KEY VALUE`` overrides, as train_net.py builds it.

    Unknown keys and wrong types raise yacs's errors, naming the key. MODEL.DEVICE "cuda" falls
    back to "cpu" when CUDA is missing, so one config serves both.
    """
    cfg = get_zoo_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    device = default_device(cfg.MODEL.DEVICE)
    if device != cfg.MODEL.DEVICE:
        logger.info(f"MODEL.DEVICE {cfg.MODEL.DEVICE} is not available: using {device}")
        cfg.MODEL.DEVICE = device
    if freeze:
        cfg.freeze()
    return cfg


def setup_project_loggers(output_dir: str = None, rank: int = 0) -> None:
    """Route the project packages' loggers to the console and OUTPUT_DIR/log.txt, as
    Detectron2's default_setup does for its own."""
    from detectron2.utils.logger import setup_logger

    for name in PROJECT_PACKAGES:
        setup_logger(output_dir, distributed_rank=rank, name=name, abbrev_name=name)
