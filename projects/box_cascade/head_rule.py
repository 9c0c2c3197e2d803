"""The paper's head rule (Sec. 6.3): stage t's head learns from its loss at 1/w_t times the rate
its weighted loss gives it. Applied to the gradient (as the authors' code does), so weight decay
and momentum act on the heads as they would without loss weights."""

from typing import Dict, Iterable, Sequence, Tuple


def head_gradient_multipliers(
    plan, parameter_names: Iterable[str], mask_heads_per_stage: bool
) -> Dict[str, float]:
    """Gradient factor per parameter name: 1/w_t for stage t's box head, predictor and (with a
    mask head per stage) mask head, 1 elsewhere. A module shared by stages with different
    weights has no single 1/w_t: that is refused, naming the key."""
    modules: Dict[str, Tuple[float, int]] = {}
    for t, w in enumerate(plan.loss_weights):
        owned = [f"box_head.{plan.head_indices[t]}.", f"box_predictor.{plan.predictor_indices[t]}."]
        if mask_heads_per_stage:
            owned.append(f"mask_head.{t}.")
        for prefix in owned:
            factor, first = modules.setdefault(prefix, (1.0 / w, t))
            if factor != 1.0 / w:
                raise ValueError(_shared_error(prefix, first, t, plan.loss_weights))
    return {name: _factor(name, modules) for name in parameter_names}


def _factor(name: str, modules: Dict[str, Tuple[float, int]]) -> float:
    return next((f for prefix, (f, _) in modules.items() if name.startswith(prefix)), 1.0)


def _shared_error(prefix: str, first: int, t: int, weights: Sequence[float]) -> str:
    return (
        f"MODEL.BOX_CASCADE.HEAD_LR_RESCALE: {prefix[:-1]} is shared by stages {first + 1} and "
        f"{t + 1}, whose loss weights differ ({weights[first]} vs {weights[t]}), so no single "
        "1/w_t applies: set HEAD_LR_RESCALE False (the shared module then learns from the sum of "
        "the weighted losses) or give the stages equal weights"
    )
