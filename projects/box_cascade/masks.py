"""Mask strategies of Cascade Mask R-CNN (Sec. 5.2, Fig. 6): which stages' positives train the
mask branch, with which weight, and how the mask is predicted on the final boxes. One class per
strategy, registered in ``MASK_STRATEGY_REGISTRY`` under its ``MODEL.BOX_CASCADE.MASK_STRATEGY``
name:

- "first" (b): one head (``mask_head``, Detectron2's names) on the first stage's positives;
- "last" (c): one head on the last stage's positives;
- "every" (d): one head per stage (:class:`PerStageMaskHeads`, ``mask_head.k``), each on its
  stage's positives with the stage's loss weight; their mask probabilities averaged at test.

A strategy is built as ``cls(num_stages)`` and the heads call it (``heads``: the
:class:`~box_cascade.roi_heads.BoxCascadeROIHeads`):

- ``build_head(cfg, head, input_shape)``, when the heads are built: the ``mask_head`` module
  from Detectron2's one head;
- ``stage_module()``: how ``mask_head`` belongs to the stages (a
  :class:`~box_cascade.head_rule.StageModule`, so that the head rule covers it), or None;
- ``training_stages()``: the stages whose positives train masks;
- ``losses(heads, features, stage_proposals)``: the mask losses in training, from each training
  stage's labelled boxes (``heads.mask_training_proposals``);
- ``inference(heads, features, instances)``: ``pred_masks`` of the final detections.

Which strategy a heads class runs for a config is its classmethod ``mask_strategy_from_config``
(build.py); a subclass whose stages share their modules gives its own there (R3-CNN's loops
train one mask head).
"""

from typing import Dict, List, Optional

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import build_mask_head, mask_rcnn_inference
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Instances
from torch import nn

from cascade_zoo.utils.registry import NamedRegistry

from .head_rule import StageModule

MASK_STRATEGY_REGISTRY = NamedRegistry("MASK_STRATEGY")
MASK_STRATEGY_REGISTRY.__doc__ = "Cascade Mask R-CNN's mask strategies (see box_cascade.masks)."


def build_mask_strategy(name: str, num_stages: int) -> "MaskStrategy":
    """The strategy registered as ``name`` for ``num_stages`` training stages."""
    if name not in MASK_STRATEGY_REGISTRY:
        raise ValueError(
            f"MODEL.BOX_CASCADE.MASK_STRATEGY must be one of {MASK_STRATEGY_REGISTRY.names()}, "
            f"got {name!r}"
        )
    return MASK_STRATEGY_REGISTRY.get(name)(num_stages)


class MaskStrategy:
    """Base: one mask head (Detectron2's) trained by Detectron2's mask branch on the positives of
    the one stage ``training_stages()`` names, unweighted, and run on the final boxes at test.
    Subclasses name the stage, or override the hooks (module doc)."""

    def __init__(self, num_stages: int):
        self.num_stages = num_stages

    def training_stages(self) -> List[int]:
        raise NotImplementedError

    def build_head(self, cfg, head: nn.Module, input_shape) -> nn.Module:
        return head

    def stage_module(self) -> Optional[StageModule]:
        return None

    def losses(self, heads, features, stage_proposals) -> Dict[str, torch.Tensor]:
        (stage,) = self.training_stages()
        fg, _ = select_foreground_proposals(stage_proposals[stage], heads.num_classes)
        pooled = heads.mask_inputs(features, [p.proposal_boxes for p in fg])
        return heads.mask_head(pooled, fg)

    def inference(self, heads, features, instances: List[Instances]) -> List[Instances]:
        pooled = heads.mask_inputs(features, [i.pred_boxes for i in instances])
        return heads.mask_head(pooled, instances)


@MASK_STRATEGY_REGISTRY.register_as("first")
class FirstStageMask(MaskStrategy):
    """(b) The first stage's positives train the one head (the paper's choice, Detectron2's)."""

    def training_stages(self) -> List[int]:
        return [0]


@MASK_STRATEGY_REGISTRY.register_as("last")
class LastStageMask(MaskStrategy):
    """(c) The last stage's positives train the one head."""

    def training_stages(self) -> List[int]:
        return [self.num_stages - 1]


@MASK_STRATEGY_REGISTRY.register_as("every")
class EveryStageMask(MaskStrategy):
    """(d) Stage t's mask head on stage t's positives, its loss times w_t (and, with the head
    rule, its gradient times 1/w_t like the stage's box head); at test the heads' mask
    probabilities averaged on the final boxes."""

    def training_stages(self) -> List[int]:
        return list(range(self.num_stages))

    def build_head(self, cfg, head: nn.Module, input_shape) -> nn.Module:
        resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        shape = ShapeSpec(channels=channels, width=resolution, height=resolution)
        return PerStageMaskHeads.build(cfg, head, shape, self.num_stages)

    def stage_module(self) -> Optional[StageModule]:
        return StageModule("stage", rcnn=False)

    def losses(self, heads, features, stage_proposals) -> Dict[str, torch.Tensor]:
        stages = self.training_stages()
        foreground = [
            select_foreground_proposals(stage_proposals[k], heads.num_classes)[0] for k in stages
        ]
        pooled = [heads.mask_inputs(features, [p.proposal_boxes for p in fg]) for fg in foreground]
        weights = [heads.plan.loss_weights[k] for k in stages]
        return heads.mask_head.losses(pooled, foreground, weights)

    def inference(self, heads, features, instances: List[Instances]) -> List[Instances]:
        pooled = heads.mask_inputs(features, [i.pred_boxes for i in instances])
        return heads.mask_head.inference(pooled, instances)


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
