"""R3-CNN's ROI heads: the box-cascade core with every loop (stage) running the one box head and
class-agnostic predictor, each loop trained at its own IoU threshold with its own loss weight, the
loops' class logits merged at test and the boxes of the last loop; one mask head trained on every
loop's positives (optionally with HTC-style information flow between loops).

Shapes: R boxes, C channels, M mask resolution, K foreground classes, L_t training loops.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from torch import nn

from box_cascade import BoxCascadeROIHeads
from box_cascade.ensembles import register_test_ensemble

__all__ = ["R3CNNROIHeads", "max_of_logits"]


@register_test_ensemble("max_logits")
def max_of_logits(heads, records) -> List[torch.Tensor]:
    """Each loop's logits on its own input boxes, their element-wise maximum, then the output
    loop's softmax (R3-CNN's alternative to the mean)."""
    last = records[-1]
    logits = torch.stack([r.predictions["scores"] for r in records]).max(dim=0).values
    return heads.stage_probs(last, {**last.predictions, "scores": logits})


@ROI_HEADS_REGISTRY.register()
class R3CNNROIHeads(BoxCascadeROIHeads):
    """R3-CNN (see module doc and config.py for the keys)."""

    @configurable
    def __init__(self, *, mask_flow: nn.Module = None, **kwargs):
        """
        Args (beyond BoxCascadeROIHeads'):
            mask_flow: the 1x1 conv of the HTC-style mask information flow (None: no flow).
        """
        super().__init__(**kwargs)
        self.mask_flow = mask_flow

    @classmethod
    def from_config(cls, cfg, input_shape):
        bc = cfg.MODEL.BOX_CASCADE
        if not bc.SHARED_HEAD:
            raise ValueError(
                "MODEL.BOX_CASCADE.SHARED_HEAD must be True for R3CNNROIHeads: R3-CNN applies one "
                "box head and predictor in every loop"
            )
        if bc.HEAD_LR_RESCALE and bc.LOSS_WEIGHTING != "detectron2":
            raise ValueError(
                "MODEL.BOX_CASCADE.HEAD_LR_RESCALE must be False for R3CNNROIHeads: the one head "
                "(and mask head) of all loops learns at the base learning rate from the sum of "
                "the loops' weighted losses, with weight decay applied once per step"
            )
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG must be True for R3CNNROIHeads: its one "
                "regressor is class-agnostic"
            )
        if cfg.MODEL.R3_CNN.MASK_INFO_FLOW:
            if not cfg.MODEL.MASK_ON:
                raise ValueError(
                    "MODEL.R3_CNN.MASK_INFO_FLOW needs MODEL.MASK_ON True (it links the mask "
                    "predictions of the loops)"
                )
            if bc.MASK_STRATEGY != "every":
                raise ValueError(
                    "MODEL.R3_CNN.MASK_INFO_FLOW needs MODEL.BOX_CASCADE.MASK_STRATEGY 'every' "
                    f"(every loop's positives train the mask chain), got {bc.MASK_STRATEGY!r}"
                )
        return super().from_config(cfg, input_shape)

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        # One mask head whatever the strategy ("every" here means every loop's positives train
        # the shared head), not the core's head per stage.
        ret = StandardROIHeads._init_mask_head.__func__(cls, cfg, input_shape)
        if cfg.MODEL.MASK_ON and cfg.MODEL.R3_CNN.MASK_INFO_FLOW:
            head = ret["mask_head"]
            if not isinstance(head, MaskRCNNConvUpsampleHead):
                raise ValueError(
                    "MODEL.R3_CNN.MASK_INFO_FLOW needs MODEL.ROI_MASK_HEAD.NAME "
                    f"'MaskRCNNConvUpsampleHead', got {type(head).__name__}"
                )
            channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
            conv_dim = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM
            if conv_dim != channels:
                raise ValueError(
                    f"MODEL.R3_CNN.MASK_INFO_FLOW adds the mask head's conv features "
                    f"(MODEL.ROI_MASK_HEAD.CONV_DIM {conv_dim}) to the pooled features "
                    f"({channels} channels): they must be equal"
                )
            ret["mask_flow"] = Conv2d(conv_dim, channels, kernel_size=1)
        return ret

    # ------------------------------------------------------------------ masks

    def mask_losses(self, features, stage_proposals) -> Dict[str, torch.Tensor]:
        """Strategy "every": each loop's positives train the one mask head (through the chain of
        t+1 links for loop t with the information flow), times the loop's weight; "first" /
        "last" as in the core."""
        if self.mask_strategy != "every":
            return super().mask_losses(features, stage_proposals)
        head = self.mask_head
        losses = {}
        for t, proposals in enumerate(stage_proposals):
            fg, _ = select_foreground_proposals(proposals, self.num_classes)
            x = self.mask_inputs(features, [p.proposal_boxes for p in fg])
            logits = self.mask_chain(x, t + 1)[-1] if self.mask_flow else head.layers(x)
            loss = mask_rcnn_loss(logits, fg, head.vis_period) * head.loss_weight
            losses[f"loss_mask_stage{t}"] = loss * self.plan.loss_weights[t]
        return losses

    def mask_chain(self, x: torch.Tensor, links: int) -> List[torch.Tensor]:
        """The HTC-style chain of the shared mask head on pooled features (R, C, M, M): link 0 is
        the head; link j runs it on x + flow(conv features of link j-1). The mask logits of every
        link."""
        convs = list(self.mask_head.conv_norm_relus)
        rest = [m for m in self.mask_head if all(m is not c for c in convs)]
        logits, previous = [], None
        for _ in range(links):
            h = x if previous is None else x + self.mask_flow(previous)
            for conv in convs:
                h = conv(h)
            previous = y = h
            for layer in rest:
                y = layer(y)
            logits.append(y)
        return logits

    def _forward_mask(self, features, instances):
        if self.training or not self.mask_on:
            return super()._forward_mask(features, instances)
        if self.mask_flow is None:
            return StandardROIHeads._forward_mask(self, features, instances)
        x = self.mask_inputs(features, [i.pred_boxes for i in instances])
        links = self.mask_chain(x, self.num_cascade_stages)
        probs = sum(torch.sigmoid(y) for y in links) / len(links)
        mask_rcnn_inference(torch.logit(probs, eps=1e-6), instances)
        return instances
