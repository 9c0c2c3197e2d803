"""Parameters and FLOPs of a detector, in total and per module group (backbone, RPN, each
stage's head and predictor, mask heads), for cost tables such as R3-CNN Table 1 and Cascade
R-CNN Table 6. FLOPs are fvcore's count (one multiply-add counts as one) on one image."""

from collections import OrderedDict
from typing import Dict, Tuple

import torch
from torch import nn


def module_group(parameter_name: str) -> str:
    """The reporting group of a parameter: "backbone.bottom_up", "backbone.fpn",
    "proposal_generator", "roi_heads.box_head.0", "roi_heads.box_predictor.2",
    "roi_heads.mask_head", ... (indexed lists keep their index)."""
    parts = parameter_name.split(".")
    if parts[0] == "backbone":
        return (
            "backbone.bottom_up" if len(parts) > 1 and parts[1] == "bottom_up" else "backbone.fpn"
        )
    if parts[0] == "roi_heads" and len(parts) > 2:
        return ".".join(parts[:3]) if parts[2].isdigit() else ".".join(parts[:2])
    return parts[0]


def parameter_breakdown(model: nn.Module) -> "OrderedDict[str, int]":
    """Parameter count per group (shared parameters counted once, in the first group that
    names them); the values sum to the model's parameter count."""
    out: OrderedDict[str, int] = OrderedDict()
    for name, p in model.named_parameters():
        group = module_group(name)
        out[group] = out.get(group, 0) + p.numel()
    return out


class _ImageToDetections(nn.Module):
    """Image tensor (3, H, W) -> (boxes, scores), so that fvcore can trace a detector."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return out.pred_boxes.tensor, out.scores


def flop_breakdown(model: nn.Module, image: torch.Tensor) -> Tuple[int, Dict[str, int]]:
    """fvcore's FLOP count of one inference on ``image`` (3, H, W), in total and per group of
    :func:`parameter_breakdown` (work outside those modules, e.g. box decoding, counts in the
    total only; ops fvcore cannot count, e.g. ROIAlign and NMS, in neither)."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(_ImageToDetections(model), (image,))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            by_module = analysis.by_module()
    finally:
        model.train(was_training)
    groups: Dict[str, int] = OrderedDict()
    for group in parameter_breakdown(model):
        if group == "backbone.fpn":  # the backbone minus its bottom-up network
            flops = by_module.get("model.backbone", 0) - by_module.get(
                "model.backbone.bottom_up", 0
            )
        else:
            flops = by_module.get(f"model.{group}", 0)
        groups[group] = int(flops)
    return total, groups
