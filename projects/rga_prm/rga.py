"""R-CNN Gradient Annealing (RGA, Sec. 3.1 and appendix B of the paper).

The gradients of the R-CNN module's parameters are multiplied by lambda(t) after the backward
pass and before gradient clipping and the optimizer step, so that one plain SGD step moves them
by lr * lambda(t) * g and every other parameter by lr * g (Eq. 1). The factor is applied by
``cascade_zoo.engine.gradients.GradientScaleHook``: tensor hooks on those parameters, run inside
``backward`` (hence before DistributedDataParallel's all-reduce, with the same factor on every
process, and before Detectron2's clipping inside ``optimizer.step``), with the factor set from
the trainer's global iteration before each step (so ``--resume`` continues the schedule) and
logged to EventStorage as ``rga_lambda``.

The R-CNN module's parameters are what the model's ``rcnn_parameter_names()`` list (the
box-cascade core's heads: every stage's and parallel module's box head and predictor); for a
model whose ROI heads do not list them (Detectron2's StandardROIHeads / CascadeROIHeads) they are
the parameters under ``roi_heads.box_head`` and ``roi_heads.box_predictor``, as the paper's
mmdetection code takes those under ``bbox_head``. ``MODEL.RGA.INCLUDE_MASK_HEAD`` adds
``roi_heads.mask_head``.
"""

from typing import Callable, List

from torch import nn

from cascade_zoo.engine import TRAINING_HOOK_REGISTRY
from cascade_zoo.engine.gradients import GradientScaleHook, collect_parameter_names

__all__ = ["rga_lambda", "rga_schedule", "rga_parameter_names", "build_rga_hooks"]


def rga_lambda(t: int, total: int, lambda0: float, anneal: bool = True) -> float:
    """lambda(t) of Eq. 1: lambda0 - (lambda0 - 1) * t / T, or lambda0 when not annealing."""
    if not anneal:
        return float(lambda0)
    return float(lambda0) - (float(lambda0) - 1.0) * float(t) / float(total)


def rga_schedule(lambda0: float, anneal: bool = True) -> Callable[[int, int], float]:
    """The schedule ``(iteration, max_iter) -> factor`` for GradientScaleHook."""
    if lambda0 < 1.0:
        raise ValueError(
            f"MODEL.RGA.LAMBDA0 must be >= 1 (the gradients are magnified), got {lambda0}"
        )
    return lambda t, total: rga_lambda(t, total, lambda0, anneal)


def rga_parameter_names(model: nn.Module, include_mask_head: bool = False) -> List[str]:
    """The R-CNN module's parameter names in ``model`` (see module doc)."""
    names = collect_parameter_names(model, "rcnn_parameter_names")
    if not names:
        names = [
            n
            for n, _ in model.named_parameters()
            if n.startswith(("roi_heads.box_head.", "roi_heads.box_predictor."))
        ]
    if include_mask_head:
        names += [n for n, _ in model.named_parameters() if n.startswith("roi_heads.mask_head.")]
    return list(dict.fromkeys(names))


@TRAINING_HOOK_REGISTRY.register()
def build_rga_hooks(cfg) -> list:
    """[the RGA hook] when ``MODEL.RGA.ENABLED``, else []."""
    rga = cfg.MODEL.RGA
    if not rga.ENABLED:
        return []
    schedule = rga_schedule(rga.LAMBDA0, rga.ANNEAL)
    include_mask = bool(rga.INCLUDE_MASK_HEAD)
    return [
        GradientScaleHook(
            schedule,
            select=lambda model: rga_parameter_names(model, include_mask),
            scalar_name="rga_lambda",
        )
    ]
