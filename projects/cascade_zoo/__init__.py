"""cascade-zoo's shared infrastructure: datasets, the trainer, launch and config set-up."""

from . import data  # noqa: F401  (registers the shapes datasets)
from .config import add_cascade_zoo_config, get_zoo_cfg, setup_cfg, setup_project_loggers

__all__ = ["add_cascade_zoo_config", "get_zoo_cfg", "setup_cfg", "setup_project_loggers"]
