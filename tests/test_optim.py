"""The optimizer that ZooTrainer builds: gradient clipping per tensor ("value", "norm",
Detectron2's) or of the whole model ("full_model"), each checked against the clipping written out
by hand on gradients set by hand."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from cascade_zoo.engine import ZooTrainer
from cascade_zoo.engine.optim import build_optimizer

LR = 0.1


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 1, bias=False)


# Gradients by hand: norms 5 (a.weight: 3-4-0 / 0-0-0), 1 (a.bias) and 12 (b.weight: 12, 0):
# together sqrt(25 + 1 + 144) = sqrt(170).
GRADS = {
    "a.weight": torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]),
    "a.bias": torch.tensor([0.0, -1.0]),
    "b.weight": torch.tensor([[12.0, 0.0]]),
}


def _cfg(clip_type=None, value=2.0, norm_type=2.0):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = LR
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip_type is not None
    if clip_type is not None:
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
        cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
    return cfg


def _step(cfg, scale=1.0):
    """One step of the built optimizer on ``scale`` x GRADS: {name: weight change / -LR}, i.e.
    the gradient the step applied."""
    torch.manual_seed(0)
    model = _Two()
    optimizer = build_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = GRADS[n] * scale
    optimizer.step()
    return optimizer, {n: (before[n] - p.detach()) / LR for n, p in model.named_parameters()}


def test_full_model_clipping_scales_every_gradient_by_one_global_factor():
    optimizer, applied = _step(_cfg("full_model", 2.0))
    # ||g|| over all parameters together; every gradient times min(1, max / ||g||)
    total = math.sqrt(3.0**2 + 4.0**2 + 1.0**2 + 12.0**2)
    factor = min(1.0, 2.0 / total)
    assert factor < 0.2  # the clipping is active
    for name, g in GRADS.items():
        assert torch.allclose(applied[name], g * factor, atol=1e-5), name
    assert type(optimizer).__name__ == "FullModelClippedSGD"
    # under the limit: the gradients as they are
    _, applied = _step(_cfg("full_model", 2.0), scale=0.1)  # ||g|| = 1.30 < 2
    for name, g in GRADS.items():
        assert torch.allclose(applied[name], g * 0.1, atol=1e-5), name
    # another norm: L-infinity, the largest entry (12)
    _, applied = _step(_cfg("full_model", 3.0, norm_type=float("inf")))
    for name, g in GRADS.items():
        assert torch.allclose(applied[name], g * 3.0 / 12.0, atol=1e-5), name


def test_norm_clipping_is_per_tensor_unlike_full_model():
    _, applied = _step(_cfg("norm", 2.0))
    # each tensor on its own: 5 -> 2, 1 stays, 12 -> 2
    want = {"a.weight": GRADS["a.weight"] * 2 / 5, "a.bias": GRADS["a.bias"],
            "b.weight": GRADS["b.weight"] * 2 / 12}  # fmt: skip
    for name in GRADS:
        assert torch.allclose(applied[name], want[name], atol=1e-5), name
    _, applied = _step(_cfg("value", 2.0))
    for name, g in GRADS.items():
        assert torch.allclose(applied[name], g.clamp(-2.0, 2.0), atol=1e-5), name
    _, applied = _step(_cfg(None))
    for name, g in GRADS.items():
        assert torch.allclose(applied[name], g, atol=1e-5), name


def test_full_model_clipping_is_what_the_trainer_builds():
    cfg = _cfg("full_model", 2.0)
    optimizer = ZooTrainer.build_optimizer(cfg, _Two())
    assert type(optimizer).__name__ == "FullModelClippedSGD"


@pytest.mark.parametrize(
    "clip_type,value,message",
    [
        ("global", 2.0, r"CLIP_TYPE must be 'value', 'norm' .* or 'full_model' .*got 'global'"),
        ("full_model", 0.0, r"CLIP_VALUE must be > 0 for CLIP_TYPE 'full_model', got 0.0"),
    ],
)
def test_bad_clipping_configs_name_the_key(clip_type, value, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(_cfg(clip_type, value), _Two())
