"""Configs: ``add_cascade_zoo_config`` for the shared infrastructure, and ``get_zoo_cfg`` /
``setup_cfg``, which every entry point uses so that any config file of the project loads."""

import argparse
import importlib
import logging
import os
import re
import warnings
from typing import Dict, List, Sequence, Union

import yaml
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

# Keys that were renamed: old name -> current name, in the order of the renames (a key renamed
# twice has both old names here, each mapped to the current one). A config file, at any level of
# its _BASE_ chain, or a KEY VALUE override may still use the old name: it sets the current key,
# with a FutureWarning. A results' config hash counts a renamed key under its first name
# (cascade_zoo.results.identity), so a rename alone leaves recorded results valid.
RENAMED_KEYS = {
    # it scales the stage heads' gradients; the learning rate stays the optimizer's
    "MODEL.BOX_CASCADE.HEAD_LR_RESCALE": "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE",
}


class ZooCfgNode(CN):
    """Detectron2's CfgNode that also reads the old names of renamed keys (RENAMED_KEYS), in
    config files and in ``merge_from_list``."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict:
        # Detectron2 loads each _BASE_ through this method, so the files of a chain are renamed
        # before a file is merged over its base: the old name in a file overrides the new one
        # in its base, and the other way round.
        loaded = super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        for old, new in RENAMED_KEYS.items():
            *parents, leaf = old.split(".")
            node = loaded
            for name in parents:
                node = node.get(name) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:
                _warn_renamed(old, new, filename)
                *parents, new_leaf = new.split(".")
                value, target = node.pop(leaf), loaded
                for name in parents:
                    target = target.setdefault(name, {})
                target[new_leaf] = value
        return loaded

    def merge_from_list(self, cfg_list: list):
        cfg_list = list(cfg_list)
        for i in range(0, len(cfg_list) - 1, 2):
            if cfg_list[i] in RENAMED_KEYS:
                _warn_renamed(cfg_list[i], RENAMED_KEYS[cfg_list[i]], "the KEY VALUE overrides")
                cfg_list[i] = RENAMED_KEYS[cfg_list[i]]
        return super().merge_from_list(cfg_list)


def _warn_renamed(old: str, new: str, where: str) -> None:
    message = f"{old} (in {where}) is deprecated: it was renamed {new}, which it sets"
    warnings.warn(message, FutureWarning, stacklevel=2)


def get_zoo_cfg() -> CN:
    """Detectron2's default config plus every project package's keys (importing the packages
    registers their heads), as a :class:`ZooCfgNode` (every node of it: yacs merges a node only
    into one of the same class)."""
    cfg = get_cfg()
    for name in PROJECT_PACKAGES:
        module = importlib.import_module(name)
        getattr(module, f"add_{name}_config")(cfg)
    return ZooCfgNode(cfg)


def config_files(config_file: Union[str, os.PathLike, Sequence, None]) -> List[str]:
    """``config_file`` as a list of paths: a path, or a sequence of them (empty entries left
    out)."""
    if config_file is None:
        return []
    if isinstance(config_file, (str, os.PathLike)):
        config_file = [config_file]
    return [os.fspath(f) for f in config_file if f]


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def flat_dump(cfg: CN) -> str:
    """``cfg.dump()`` with every value written out: PyYAML writes a value that two keys share as
    the same Python object once (``&id001`` ... ``*id001``), which depends on how the config was
    loaded, not on its settings."""
    return yaml.dump(yaml.safe_load(cfg.dump()), Dumper=_NoAliasDumper)


def compose_config_text(config_file: Union[str, Sequence[str]]) -> str:
    """The files merged in order over the project's defaults, as one flat YAML config
    (:func:`flat_dump`: every key, no ``_BASE_``), under a comment naming them. A single
    ``--config-file`` of it gives the same model as the files given in order; MODEL.DEVICE is
    written as the files say."""
    cfg = get_zoo_cfg()
    paths = config_files(config_file)
    for path in paths:
        cfg.merge_from_file(path)
    sources = " + ".join(os.path.relpath(p) for p in paths)
    return f"# Written by cascade-zoo from {sources}\n" + flat_dump(cfg)


# A train_net.py command in a config file's leading comment: how a delta (a file without
# _BASE_, e.g. an ablation) is applied, "--config-file configs/BASE.yaml --config-file
# configs/DELTA.yaml", one command per config it applies over.
_COMMAND = re.compile(r"^#.*\btrain_net\.py((?: --config-file configs/\S+\.yaml)+)(?:\s|$)")


def documented_compositions(path: Union[str, os.PathLike]) -> List[List[str]]:
    """The config files (relative to ``configs/``) of each ``train_net.py`` command in the leading
    comment of a config file, e.g. ``[["CascadeRCNN/cascade_rcnn_R_50_FPN_1x.yaml",
    "CascadeRCNN/ablations/integral_loss.yaml"], ...]``: the configs a delta declares it applies
    over (tests compose each one)."""
    out = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            match = _COMMAND.match(line)
            if match:
                out.append(re.findall(r"--config-file configs/(\S+\.yaml)", match.group(1)))
    return out


def setup_cfg(config_file: Union[str, Sequence[str]] = "", opts=(), *, freeze: bool = True) -> CN:
    """Config from YAML files and ``KEY VALUE`` overrides, as train_net.py builds it.

    ``config_file`` is one file or several, merged in order: a config and then files that
    change it (an ablation's delta, a benchmark protocol), each of which may have a ``_BASE_``.
    Unknown keys and wrong types raise yacs's errors, naming the key. MODEL.DEVICE "cuda" falls
    back to "cpu" when CUDA is missing, so one config serves both.
    """
    cfg = get_zoo_cfg()
    for path in config_files(config_file):
        cfg.merge_from_file(path)
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


def argument_parser(epilog: str = None) -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` (``--num-gpus``, ``--resume``, ``--eval-only``,
    ``opts`` ...) with a repeatable ``--config-file``: the files are merged in order (see
    :func:`setup_cfg`), e.g. ``--config-file configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x.yaml
    --config-file configs/CascadeRCNN/ablations/integral_loss.yaml``. ``args.config_file`` is a list
    (None when not given)."""
    from detectron2.engine import default_argument_parser

    parser = argparse.ArgumentParser(
        parents=[default_argument_parser(epilog)],
        conflict_handler="resolve",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_file_argument(parser)
    return parser


def add_config_file_argument(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """Add the repeatable ``--config-file FILE`` of :func:`argument_parser` to a tool's parser
    (one that has no ``--config-file`` yet, or was made with ``conflict_handler="resolve"``)."""
    parser.add_argument(
        "--config-file",
        action="append",
        default=None,
        required=required,
        metavar="FILE",
        help="path to a config file; give it several times to merge files in order (a config, "
        "then an ablation's delta or a benchmark protocol)",
    )
