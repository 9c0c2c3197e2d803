"""Mask strategies of Cascade Mask R-CNN (Sec. 5.2, Fig. 6): which stages' positives train the
mask branch, and how the mask is predicted on the final boxes.

- "first" (b): one head (``mask_head``, Detectron2's names) on the first stage's positives;
- "last" (c): one head on the last stage's positives;
- "every" (d): one head per stage (:class:`PerStageMaskHeads`, ``mask_head.k``), each on its
  stage's positives with the stage's loss weight; their mask probabilities averaged at test.
"""

from typing import Dict, List

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import build_mask_head, mask_rcnn_inference
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Instances
from torch import nn

MASK_STRATEGIES = ("first", "last", "every")


def check_mask_strategy(strategy: str) -> None:
    if strategy not in MASK_STRATEGIES:
        raise ValueError(
            f"MODEL.BOX_CASCADE.MASK_STRATEGY must be one of {MASK_STRATEGIES}, got {strategy!r}"
        )


def mask_training_stages(strategy: str, num_stages: int) -> List[int]:
    """The stages whose positives train a mask head, in head order."""
    check_mask_strategy(strategy)
    last = num_stages - 1
    return {"first": [0], "last": [last], "every": list(range(num_stages))}[strategy]


class PerStageMaskHeads(nn.ModuleList):
    """One Detectron2 mask head per stage (parameter names ``mask_head.k.*``)."""

    @classmethod
    def build(cls, cfg, first: nn.Module, input_shape: ShapeSpec, num_stages: int):
        return cls([first] + [build_mask_head(cfg, input_shape) for _ in range(num_stages - 1)])

    def losses(self, pooled_per_stage, instances_per_stage, weights) -> Dict[str, torch.Tensor]:
        """Each stage's mask loss on its positives, times the stage's weight."""
        return {
            f"loss_mask_stage{k}": head(x, fg)["loss_mask"] * w
            for k, (head, x, fg, w) in enumerate(
                zip(self, pooled_per_stage, instances_per_stage, weights)
            )
        }

    def inference(self, pooled: torch.Tensor, instances: List[Instances]) -> List[Instances]:
        """The mean of the heads' mask probabilities, written as ``pred_masks``."""
        probs = sum(torch.sigmoid(head.layers(pooled)) for head in self) / len(self)
        mask_rcnn_inference(torch.logit(probs, eps=1e-6), instances)
        return instances


def mask_train_losses(heads, features, stage_proposals) -> Dict[str, torch.Tensor]:
    """The mask losses of ``heads`` (BoxCascadeROIHeads) under its strategy, from each training
    stage's labelled boxes."""
    stages = mask_training_stages(heads.mask_strategy, len(stage_proposals))
    if heads.mask_strategy != "every":
        return StandardROIHeads._forward_mask(heads, features, stage_proposals[stages[0]])
    foreground = [
        select_foreground_proposals(stage_proposals[k], heads.num_classes)[0] for k in stages
    ]
    pooled = [heads.mask_inputs(features, [p.proposal_boxes for p in fg]) for fg in foreground]
    return heads.mask_head.losses(pooled, foreground, [heads.plan.loss_weights[k] for k in stages])
