"""cascade-zoo's shared infrastructure: datasets, the trainer, launch and config set-up."""

import warnings

# Deprecation notices that the project's dependencies print on every command, about their own
# code, which a user can do nothing about: fvcore and Detectron2 call torch.jit.script at import,
# Detectron2's anchor generator calls torch.meshgrid without indexing=, its RLE-mask path hands
# torch a read-only array, v0.6 uses Pillow's LINEAR, np.int and torch.cuda.amp (its AMPTrainer,
# SOLVER.AMP.ENABLED), and detectron2.model_zoo imports pkg_resources. Installed before the
# imports below; entry points import cascade_zoo before Detectron2, so that the import-time ones
# are filtered too.
for _category, _message in (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass"),
    (UserWarning, r"The given NumPy array is not writable"),
    (UserWarning, r"pkg_resources is deprecated"),
    (DeprecationWarning, r"LINEAR is deprecated"),
    (DeprecationWarning, r"`np\.int` is a deprecated alias"),
    (FutureWarning, r"`torch\.cuda\.amp\.\w+\(args\.\.\.\)` is deprecated"),
):
    warnings.filterwarnings("ignore", message=_message, category=_category)

from . import (  # noqa: E402
    backbone,  # noqa: F401  (registers build_any_width_resnet_fpn_backbone)
    data,  # noqa: F401  (registers the shapes datasets)
    model_zoo,  # its cascade_zoo:// path handler is registered below
)
from .config import (  # noqa: E402
    add_cascade_zoo_config,
    add_config_file_argument,
    argument_parser,
    get_zoo_cfg,
    setup_cfg,
    setup_project_loggers,
)
from .modeling import build_model  # noqa: E402
from .predictor import ZooPredictor  # noqa: E402

model_zoo.register_handler()  # cascade_zoo:// paths for Detectron2's PathManager

__all__ = [
    "ZooPredictor",
    "add_cascade_zoo_config",
    "build_model",
    "get_zoo_cfg",
    "setup_cfg",
    "add_config_file_argument",
    "argument_parser",
    "setup_project_loggers",
]
