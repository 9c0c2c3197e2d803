"""Detectron2's optimizer with per-parameter learning-rate multipliers."""

from collections import defaultdict
from typing import Dict

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping


def collect_lr_multipliers(model: torch.nn.Module) -> Dict[str, float]:
    """Full parameter name -> multiplier, from every submodule with an ``lr_multipliers()``
    method (which returns names relative to itself)."""
    out = {}
    for prefix, module in model.named_modules():
        if hasattr(module, "lr_multipliers"):
            for name, factor in module.lr_multipliers().items():
                out[f"{prefix}.{name}" if prefix else name] = factor
    return out


def build_optimizer_with_lr_multipliers(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD as Detectron2's ``build_optimizer`` makes it (norm/bias weight decay and bias LR
    factor, gradient clipping), with each parameter's LR times its multiplier."""
    multipliers = collect_lr_multipliers(model)
    groups = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    if multipliers:
        names = {id(p): n for n, p in model.named_parameters()}
        split = []
        for group in groups:
            by_factor = defaultdict(list)
            for p in group["params"]:
                by_factor[multipliers.get(names[id(p)], 1.0)].append(p)
            for factor, params in by_factor.items():
                split.append({**group, "params": params, "lr": group["lr"] * factor})
        groups = split
    return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
        groups,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
