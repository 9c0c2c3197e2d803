"""Predictions from a config and its weights, with the weights loaded safely.

:class:`ZooPredictor` is Detectron2's ``DefaultPredictor`` (same input: one BGR or RGB image as
``cfg.INPUT.FORMAT`` says; same resizing; same output: ``{"instances": Instances}``, plus
``"stage_instances"`` for a cascade of this project with ``MODEL.BOX_CASCADE.STAGEWISE_TEST``)
whose ``MODEL.WEIGHTS`` load through :class:`~cascade_zoo.engine.checkpoint.ZooCheckpointer`:
``.pth`` files with ``torch.load(weights_only=True)`` and model-zoo ``.pkl`` files after a check
that they hold only numpy arrays, so that a file whose unpickling would run code is refused
(``UnsafeCheckpointError``) unless ``ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE`` is True.
``DefaultPredictor`` itself loads with Detectron2's ``DetectionCheckpointer``, which unpickles
``.pkl`` files in full (and ``.pth`` files too, with torch < 2.6).
"""

import argparse
import contextlib
import logging
import os
import re

from detectron2.engine import DefaultPredictor
from detectron2.utils.file_io import PathManager

from . import model_zoo
from .engine.checkpoint import ZooCheckpointer
from .modeling import apply_zoo_options

__all__ = [
    "ZooPredictor",
    "add_config_arguments",
    "config_overrides",
    "missing_weights_message",
]


@contextlib.contextmanager
def _without_message(logger_name: str, prefix: str):
    """Drop the log records of ``logger_name`` whose message starts with ``prefix``."""
    log = logging.getLogger(logger_name)

    def keep(record):
        return not record.getMessage().startswith(prefix)

    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


class ZooPredictor(DefaultPredictor):
    """``DefaultPredictor`` whose weights load through ``ZooCheckpointer`` (see module doc).

    ``cfg`` is a config of this project (``setup_cfg``, ``model_zoo.get_config``), whose
    ``ZOO.CHECKPOINT`` settings apply, or a plain Detectron2 config (safe loading, not strict).

    Raises:
        UnsafeCheckpointError: ``MODEL.WEIGHTS`` needs arbitrary unpickling.
        FileNotFoundError: ``MODEL.WEIGHTS`` is a local path that does not exist.
    """

    def __init__(self, cfg):
        unloaded = cfg.clone()
        unloaded.defrost()
        unloaded.MODEL.WEIGHTS = ""  # DefaultPredictor builds the model; the weights load below
        with _without_message("fvcore.common.checkpoint", "No checkpoint found"):
            super().__init__(unloaded)
        apply_zoo_options(self.model, cfg)
        self.cfg = cfg.clone()
        settings = cfg.ZOO.CHECKPOINT if "ZOO" in cfg else None
        self.checkpointer = ZooCheckpointer(
            self.model,
            allow_unsafe_pickle=bool(settings and settings.ALLOW_UNSAFE_PICKLE),
            strict=bool(settings and settings.STRICT),
        )
        self.checkpointer.load(cfg.MODEL.WEIGHTS)


def missing_weights_message(weights: str) -> str:
    """Why ``weights`` (a MODEL.WEIGHTS value) cannot be found, or "" if it can (or may: URLs
    and ``detectron2://`` names are only known when downloaded). A ``cascade_zoo://`` name the
    zoo lacks gets where the zoo looked and how to point it elsewhere."""
    if not weights:
        return ""
    if "://" not in weights:
        return "" if os.path.isfile(weights) else f"MODEL.WEIGHTS '{weights}' does not exist"
    if weights.startswith(model_zoo.PREFIX) and not PathManager.exists(weights):
        return f"MODEL.WEIGHTS '{weights}' is not in the model zoo.\n" + model_zoo.where_looked(
            weights
        )
    return ""


# ------------------------------------------------------------------------------------------------
# The command lines of the tools that run a trained model (tools/demo.py, tools/visualize.py,
# tools/deploy/export_model.py): Detectron2's `--opts KEY VALUE ...`, and the older trailing
# `KEY VALUE ...`, which still works.

_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config-file FILE``, ``--opts KEY VALUE ...`` (last on the command line, as in
    Detectron2's tools) and trailing ``KEY VALUE ...``; read them with
    :func:`config_overrides`."""
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. --opts MODEL.WEIGHTS model_final.pth (last on the line)",
    )
    parser.add_argument(
        "trailing_opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides without --opts (the older form)",
    )


def config_overrides(parser: argparse.ArgumentParser, args, *list_options: str) -> list:
    """The config overrides of a command line parsed with :func:`add_config_arguments`: the
    trailing ``KEY VALUE`` pairs, then ``--opts``'. A list option (``list_options``: attribute
    names, e.g. ``"input"`` for ``--input FILE ...``) followed directly by overrides takes them
    as its own values: from its first value that looks like a config key (``MODEL.WEIGHTS``)
    and is not a file, they are moved to the overrides."""
    overrides = []
    for name in list_options:
        values = getattr(args, name) or []
        cut = next(
            (i for i, v in enumerate(values) if _CONFIG_KEY.fullmatch(v) and not os.path.exists(v)),
            len(values),
        )
        overrides += values[cut:]
        setattr(args, name, values[:cut])
    trailing = list(args.trailing_opts)
    if "--opts" in trailing:  # "... KEY VALUE --opts KEY VALUE": the positional took --opts too
        i = trailing.index("--opts")
        trailing = trailing[:i] + trailing[i + 1 :]
    overrides += trailing + list(args.opts)
    options = [v for v in overrides if v.startswith("--")]
    if options:
        parser.error(
            f"{options[0]} after the config overrides: put options first and the KEY VALUE "
            "overrides last (or after --opts)"
        )
    return overrides
