"""Detectron2's optimizer, with gradient clipping of the whole model's norm
(``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"``), which Detectron2 v0.6 lacks: its "norm" clips
each parameter tensor on its own."""

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

FULL_MODEL = "full_model"


def with_full_model_clipping(optimizer_class, max_norm: float, norm_type: float):
    """A subclass of ``optimizer_class`` whose ``step`` first scales every parameter's gradient
    by ``min(1, max_norm / ||g||)``, ``||g||`` being the norm of all its parameters' gradients
    together (``torch.nn.utils.clip_grad_norm_``, as mmdetection's ``grad_clip`` does)."""

    class FullModelClippedOptimizer(optimizer_class):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure)

    FullModelClippedOptimizer.__name__ = f"FullModelClipped{optimizer_class.__name__}"
    return FullModelClippedOptimizer


def _clipped_optimizer_class(cfg, optimizer_class):
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL:
        if clip.CLIP_VALUE <= 0:
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 for CLIP_TYPE {FULL_MODEL!r}, "
                f"got {clip.CLIP_VALUE}"
            )
        return with_full_model_clipping(optimizer_class, clip.CLIP_VALUE, clip.NORM_TYPE)
    if clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm"):
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value', 'norm' (each parameter tensor) or "
            f"{FULL_MODEL!r} (all parameters together), got {clip.CLIP_TYPE!r}"
        )
    return maybe_add_gradient_clipping(cfg, optimizer_class)


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD as Detectron2's ``build_optimizer`` makes it (norm/bias weight decay and bias LR
    factor), with gradient clipping per tensor (Detectron2's) or of the whole model."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    return _clipped_optimizer_class(cfg, torch.optim.SGD)(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
