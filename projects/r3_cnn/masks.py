"""R3-CNN's mask strategy: the core's "every" (every stage's positives train a mask head, with the
stage's weight) for loops that share their modules, so one mask head (Detectron2's, named
``mask_head``) learns from every loop's positives. R3CNNROIHeads.mask_strategy_from_config puts
it in place of the core's EveryStageMask; "first" and "last" train one head already and stay the
core's.

Shapes: R boxes, C channels, M mask resolution, K foreground classes.
"""

from typing import Dict, List, Optional

import torch
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Instances
from torch import nn

from box_cascade.head_rule import StageModule
from box_cascade.masks import EveryStageMask

__all__ = ["LoopsShareMaskHead"]


class LoopsShareMaskHead(EveryStageMask):
    """Loop t's positives train the one mask head (through the chain of t+1 links with the
    HTC-style information flow, ``heads.mask_chain``), times w_t, and the mask-IoU head when there
    is one; at test the head (or the chain of L_t links, the links' mask probabilities averaged)
    on the final boxes, then the masks' IoU scores."""

    def build_head(self, cfg, head: nn.Module, input_shape) -> nn.Module:
        return head

    def stage_module(self) -> Optional[StageModule]:
        return None  # one head for all loops: no per-stage 1/w_t (R3-CNN runs without it)

    def losses(self, heads, features, stage_proposals) -> Dict[str, torch.Tensor]:
        head = heads.mask_head
        losses = {}
        for t in self.training_stages():
            fg, _ = select_foreground_proposals(stage_proposals[t], heads.num_classes)
            x = heads.mask_inputs(features, [p.proposal_boxes for p in fg])
            logits = heads.mask_chain(x, t + 1)[-1] if heads.mask_flow else head.layers(x)
            loss = mask_rcnn_loss(logits, fg, head.vis_period) * head.loss_weight
            losses[f"loss_mask_stage{t}"] = loss * heads.plan.loss_weights[t]
            if heads.mask_iou_head is not None:
                losses[f"loss_mask_iou_stage{t}"] = heads.mask_iou_loss(x, logits, fg) * (
                    heads.mask_iou_loss_weight * heads.plan.loss_weights[t]
                )
        return losses

    def inference(self, heads, features, instances: List[Instances]) -> List[Instances]:
        x = heads.mask_inputs(features, [i.pred_boxes for i in instances])
        if heads.mask_flow is None:
            logits = heads.mask_head.layers(x)
        else:
            links = heads.mask_chain(x, heads.num_cascade_stages)
            logits = torch.logit(sum(torch.sigmoid(y) for y in links) / len(links), eps=1e-6)
        mask_rcnn_inference(logits, instances)
        if heads.mask_iou_head is not None:
            heads.score_masks(x, instances)
        return instances
