"""The per-stage modules of the cascade heads, declared once, and the paper's head rule
(Sec. 6.3) computed from them: stage t's head learns from its loss at 1/w_t times the rate its
weighted loss gives it. Applied to the gradient (as the authors' code does), so weight decay and
momentum act on the heads as they would without loss weights."""

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence

from torch import nn

INDEX_KINDS = ("head", "predictor", "stage")


@dataclass(frozen=True)
class StageModule:
    """How the entries of a per-stage module attribute (an ``nn.ModuleList``) belong to stages.

    ``index``: "head": entry i serves the stages whose box head index (``StagePlan.head_indices``)
    is i, as ``box_head`` does; "predictor": the same with the predictor indices; "stage": entry
    t serves training stage t. ``branches``: the attribute holds one such list per branch (entry
    i of branch b is ``<name>.b.i``). ``rcnn``: the entries belong to the R-CNN module that
    gradient schedules scale (``rcnn_parameter_names``)."""

    index: str
    branches: bool = False
    rcnn: bool = True

    def __post_init__(self):
        if self.index not in INDEX_KINDS:
            raise ValueError(f"StageModule index must be one of {INDEX_KINDS}, got {self.index!r}")

    def stages_of(self, plan, i: int) -> List[int]:
        """The training stages that entry ``i`` serves."""
        if self.index == "stage":
            return [i] if i < len(plan.loss_weights) else []
        indices = plan.head_indices if self.index == "head" else plan.predictor_indices
        return [t for t, j in enumerate(indices) if j == i]


def stage_module_owners(
    modules: Dict[str, nn.Module], declarations: Dict[str, StageModule], plan
) -> Dict[str, List[int]]:
    """Parameter-name prefix of every entry of the declared modules (``"box_head.1."``,
    ``"parallel_box_head.0.2."``) -> the training stages it serves. Modules that are None are
    skipped."""
    owners = {}
    for name, declaration in declarations.items():
        module = modules.get(name)
        if module is None:
            continue
        groups = list(module) if declaration.branches else [module]
        for b, group in enumerate(groups):
            base = f"{name}.{b}." if declaration.branches else f"{name}."
            for i in range(len(group)):
                owners[f"{base}{i}."] = declaration.stages_of(plan, i)
    return owners


def head_gradient_multipliers(
    plan, parameter_names: Iterable[str], owners: Dict[str, List[int]]
) -> Dict[str, float]:
    """Gradient factor per parameter name: 1/w_t for the entries stage t owns (``owners``, see
    :func:`stage_module_owners`), 1 elsewhere. An entry shared by stages with different weights
    has no single 1/w_t: that is refused, naming the key."""
    weights = plan.loss_weights
    factors = {}
    for prefix, stages in owners.items():
        if not stages:
            continue
        other = next((t for t in stages if weights[t] != weights[stages[0]]), None)
        if other is not None:
            raise ValueError(_shared_error(prefix, stages[0], other, weights))
        factors[prefix] = 1.0 / weights[stages[0]]
    return {
        name: next((f for prefix, f in factors.items() if name.startswith(prefix)), 1.0)
        for name in parameter_names
    }


def _shared_error(prefix: str, first: int, t: int, weights: Sequence[float]) -> str:
    return (
        f"MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE: {prefix[:-1]} is shared by stages {first + 1} "
        f"and {t + 1}, whose loss weights differ ({weights[first]} vs {weights[t]}), so no single "
        "1/w_t applies: set HEAD_GRADIENT_RESCALE False (the shared module then learns from the "
        "sum of the weighted losses) or give the stages equal weights"
    )
