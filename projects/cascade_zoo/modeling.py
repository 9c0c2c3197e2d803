"""``build_model``: Detectron2's, with this project's ``ZOO.*`` CPU options applied. Every place
of the project that builds a model goes through it (ZooTrainer, ZooPredictor, the tools), so a
model runs the same way whichever entry point built it."""

from detectron2.modeling import build_model as build_detectron2_model
from torch import nn

from .roi_align import use_roi_align_backward
from .rpn import use_rpn_prefix_nms

__all__ = ["apply_zoo_options", "build_model"]


def apply_zoo_options(model: nn.Module, cfg) -> nn.Module:
    """Set ROIAlign's CPU input gradient (``ZOO.ROI_ALIGN_CPU_BACKWARD``) and the RPN's CPU NMS
    (``ZOO.RPN_PREFIX_NMS``) on a built model; a config without ``ZOO`` (a plain Detectron2
    one) leaves the model as it is. Returns the model."""
    if "ZOO" in cfg:
        use_roi_align_backward(model, cfg.ZOO.ROI_ALIGN_CPU_BACKWARD)
        use_rpn_prefix_nms(model, cfg.ZOO.RPN_PREFIX_NMS)
    return model


def build_model(cfg) -> nn.Module:
    """Detectron2's ``build_model`` with :func:`apply_zoo_options`."""
    return apply_zoo_options(build_detectron2_model(cfg), cfg)
