"""Gradient multipliers on named parameters, applied inside backward.

A :class:`GradientScale` registers a tensor hook on each of its parameters, so that the gradient
that reaches the parameter is multiplied by ``scale.value``. The multiplication happens while
``loss.backward()`` runs: before DistributedDataParallel's all-reduce (the factor is the same on
every process, so the all-reduced gradient is scaled the same), before gradient clipping (which
Detectron2 applies inside ``optimizer.step``) and before the optimizer adds weight decay. With
AMP, the loss scale and this factor commute. It needs no after-backward hook point, which
Detectron2 v0.6's trainers lack, and works the same on Detectron2 main.

Two users:

- the box-cascade core's head rule (1/w_t on stage t's head, a constant), installed by the heads;
- a per-iteration schedule (e.g. RGA's annealing), through :class:`GradientScaleHook`, a training
  hook that installs a scale on the model's R-CNN parameters (``rcnn_parameter_names()``, see
  :mod:`cascade_zoo.engine.contract`) and sets its value before every step.
"""

from typing import Callable, Dict, Iterable, List, Tuple

import torch
from detectron2.engine import HookBase
from torch import nn


class GradientScale:
    """Multiplies the gradients of the given parameters by ``value`` (changeable at any time)."""

    def __init__(self, params: Iterable[nn.Parameter], value: float = 1.0):
        self.value = float(value)
        self._handles = [p.register_hook(self._scale) for p in params if p.requires_grad]

    def _scale(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self.value == 1.0 else grad * self.value

    def __len__(self) -> int:
        return len(self._handles)

    def remove(self) -> None:
        """Remove the hooks: the gradients are no longer changed."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def collect_parameter_names(model: nn.Module, method: str) -> List[str]:
    """Full names of the parameters that the submodules of ``model`` list through ``method()``
    (names relative to themselves), e.g. "rcnn_parameter_names"."""
    out = []
    for prefix, module in model.named_modules():
        fn = getattr(module, method, None)
        if callable(fn):
            out += [f"{prefix}.{n}" if prefix else n for n in fn()]
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class GradientScaleHook(HookBase):
    """A training hook that multiplies the gradients of the model's parameters named by
    ``select(model) -> names`` (default: every ``rcnn_parameter_names()``) by
    ``schedule(iteration, max_iter)``, set before each step and logged to EventStorage as
    ``scalar_name``. The iteration is the trainer's global one, so ``--resume`` continues the
    schedule."""

    def __init__(
        self,
        schedule: Callable[[int, int], float],
        *,
        select: Callable[[nn.Module], List[str]] = None,
        scalar_name: str = "grad_scale",
    ):
        self.schedule = schedule
        self.select = select or (lambda m: collect_parameter_names(m, "rcnn_parameter_names"))
        self.scalar_name = scalar_name
        self.scale = None

    def before_train(self):
        model = unwrap(self.trainer.model)
        names = self.select(model)
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing or not names:
            raise ValueError(
                f"GradientScaleHook: parameters not found in the model: {missing[:5]}"
                if missing
                else "GradientScaleHook: the model names no parameters to scale "
                "(no module has rcnn_parameter_names())"
            )
        self.scale = GradientScale([params[n] for n in names])

    def before_step(self):
        self.scale.value = float(self.schedule(self.trainer.iter, self.trainer.max_iter))
        self.trainer.storage.put_scalar(self.scalar_name, self.scale.value, smoothing_hint=False)

    def after_train(self):
        if self.scale is not None:
            self.scale.remove()


def group_by_value(multipliers: Dict[str, float]) -> List[Tuple[float, List[str]]]:
    """``{name: factor}`` as ``[(factor, [names])]``, factors in first-seen order, 1.0 left out."""
    groups: Dict[float, List[str]] = {}
    for name, factor in multipliers.items():
        if factor != 1.0:
            groups.setdefault(float(factor), []).append(name)
    return list(groups.items())
