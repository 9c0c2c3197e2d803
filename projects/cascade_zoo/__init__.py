"""cascade-zoo's shared infrastructure: datasets, the trainer, launch and config set-up."""

from . import (
    backbone,  # noqa: F401  (registers build_any_width_resnet_fpn_backbone)
    data,  # noqa: F401  (registers the shapes datasets)
    model_zoo,  # its cascade_zoo:// path handler is registered below
)
from .config import add_cascade_zoo_config, get_zoo_cfg, setup_cfg, setup_project_loggers

model_zoo.register_handler()  # cascade_zoo:// paths for Detectron2's PathManager

__all__ = ["add_cascade_zoo_config", "get_zoo_cfg", "setup_cfg", "setup_project_loggers"]
