"""R3-CNN's ROI heads: the box-cascade core with every loop (stage) running the one box head and
class-agnostic predictor, each loop trained at its own IoU threshold with its own loss weight, the
loops' class logits merged at test and the boxes of the last loop; one mask head trained on the
positives among every loop's output boxes (optionally with HTC-style information flow between
loops).

Shapes: R boxes, C channels, M mask resolution, K foreground classes, L_t training loops.
"""

from typing import List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
from torch import nn

from box_cascade import BoxCascadeROIHeads
from box_cascade.ensembles import register_test_ensemble
from box_cascade.masks import EveryStageMask
from box_cascade.samplers import ResampleRefinedBoxes

from .mask_iou import MaskIoUHead, mask_iou_targets
from .masks import LoopsShareMaskHead

__all__ = ["MASK_BOXES", "R3CNNROIHeads", "max_of_logits"]

#: MODEL.R3_CNN.MASK_BOXES values (config.py).
MASK_BOXES = ("output", "input")


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
    def __init__(
        self,
        *,
        mask_flow: nn.Module = None,
        mask_iou_head: nn.Module = None,
        mask_iou_loss_weight: float = 1.0,
        mask_iou_rescore: bool = False,
        mask_boxes: str = "output",
        **kwargs,
    ):
        """
        Args (beyond BoxCascadeROIHeads'):
            mask_flow: the 1x1 conv of the HTC-style mask information flow (None: no flow).
            mask_iou_head: R3-CNN-L's mask-IoU scoring head (mask_iou.py), or None.
            mask_iou_loss_weight: its loss weight.
            mask_iou_rescore: at test, replace the scores by score x predicted mask IoU.
            mask_boxes: one of MASK_BOXES, which boxes of a loop train its mask.
        """
        super().__init__(**kwargs)
        if mask_boxes not in MASK_BOXES:
            raise ValueError(
                f"MODEL.R3_CNN.MASK_BOXES must be one of {MASK_BOXES}, got {mask_boxes!r}"
            )
        self.mask_boxes = mask_boxes
        self.mask_flow = mask_flow
        self.mask_iou_head = mask_iou_head
        self.mask_iou_loss_weight = mask_iou_loss_weight
        self.mask_iou_rescore = mask_iou_rescore

    @classmethod
    def from_config(cls, cfg, input_shape):
        bc = cfg.MODEL.BOX_CASCADE
        if not bc.SHARED_HEAD:
            raise ValueError(
                "MODEL.BOX_CASCADE.SHARED_HEAD must be True for R3CNNROIHeads: R3-CNN applies one "
                "box head and predictor in every loop"
            )
        if bc.HEAD_GRADIENT_RESCALE and bc.LOSS_WEIGHTING != "detectron2":
            raise ValueError(
                "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE must be False for R3CNNROIHeads: the one "
                "head (and mask head) of all loops learns at the base learning rate from the sum "
                "of the loops' weighted losses, with weight decay applied once per step"
            )
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG must be True for R3CNNROIHeads: its one "
                "regressor is class-agnostic"
            )
        every_loop = isinstance(cls.mask_strategy_from_config(cfg), LoopsShareMaskHead)
        if cfg.MODEL.R3_CNN.MASK_INFO_FLOW:
            if not cfg.MODEL.MASK_ON:
                raise ValueError(
                    "MODEL.R3_CNN.MASK_INFO_FLOW needs MODEL.MASK_ON True (it links the mask "
                    "predictions of the loops)"
                )
            if not every_loop:
                raise ValueError(
                    "MODEL.R3_CNN.MASK_INFO_FLOW needs MODEL.BOX_CASCADE.MASK_STRATEGY 'every' "
                    f"(every loop's positives train the mask chain), got {bc.MASK_STRATEGY!r}"
                )
        r3 = cfg.MODEL.R3_CNN
        if r3.MASK_IOU_HEAD and not (cfg.MODEL.MASK_ON and every_loop):
            raise ValueError(
                "MODEL.R3_CNN.MASK_IOU_HEAD needs MODEL.MASK_ON True and "
                "MODEL.BOX_CASCADE.MASK_STRATEGY 'every' (it scores the masks of every loop's "
                "positives)"
            )
        ret = super().from_config(cfg, input_shape)
        ret.update(
            mask_iou_loss_weight=r3.MASK_IOU_LOSS_WEIGHT,
            mask_iou_rescore=r3.MASK_IOU_RESCORE,
            mask_boxes=r3.MASK_BOXES,
        )
        return ret

    @classmethod
    def mask_strategy_from_config(cls, cfg):
        """The core's strategy, but "every" is :class:`~r3_cnn.masks.LoopsShareMaskHead`: the
        loops share one mask head as they share the box head ("first" and "last" have one
        head already)."""
        strategy = super().mask_strategy_from_config(cfg)
        if isinstance(strategy, EveryStageMask):
            return LoopsShareMaskHead(strategy.num_stages)
        return strategy

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        """The strategy's one mask head, and the modules of the information flow and of the
        mask-IoU head."""
        ret = super()._init_mask_head(cfg, input_shape)
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
        if cfg.MODEL.MASK_ON and cfg.MODEL.R3_CNN.MASK_IOU_HEAD:
            r3 = cfg.MODEL.R3_CNN
            num_classes = (
                1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
            )
            ret["mask_iou_head"] = MaskIoUHead(
                input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels,
                cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION,
                num_classes,
                conv_dim=r3.MASK_IOU_CONV_DIM,
                num_convs=r3.MASK_IOU_NUM_CONVS,
                fc_dim=r3.MASK_IOU_FC_DIM,
            )
        return ret

    # ------------------------------------------------------------------ masks

    def mask_training_proposals(self, records, targets):
        """With ``mask_boxes`` "output", loop t's mask trains on loop t's regressed boxes (as
        the next loop receives them: clipped, empty ones dropped, ground truth per
        LATER_STAGE_GT), labelled at loop t's IoU threshold and sampled by the later loops'
        sampler, as HTC's interleaved mode re-assigns and re-samples the boxes that stage t
        regressed with stage t's assigner before its mask branch."""
        if self.mask_boxes == "input":
            return super().mask_training_proposals(records, targets)
        later = self.stage_samplers[-1] if len(self.stage_samplers) > 1 else ResampleRefinedBoxes()
        out = []
        for record in records:
            proposals, _ = self.next_stage_inputs(record, targets)
            out.append(later(self, record.stage, proposals, targets))
        return out

    def mask_iou_loss(self, x, mask_logits, fg) -> torch.Tensor:
        """L2 loss of the predicted IoU of the ground-truth class's mask against its IoU with the
        ground-truth mask, averaged over the positives (0 without positives)."""
        probs, target = mask_iou_targets(mask_logits, fg)
        if len(target) == 0:
            return mask_logits.sum() * 0 + sum(p.sum() * 0 for p in self.mask_iou_head.parameters())
        predicted = self.mask_iou_head(x, probs.detach())
        classes = torch.cat([f.gt_classes for f in fg]) if predicted.size(1) > 1 else None
        if classes is None:
            classes = torch.zeros(len(target), dtype=torch.long, device=target.device)
        return F.mse_loss(predicted[torch.arange(len(target)), classes], target)

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

    def score_masks(self, x, instances) -> None:
        """``mask_scores`` = score x the predicted IoU of each detection's mask (and ``scores``
        too with ``mask_iou_rescore``)."""
        probs = torch.cat([i.pred_masks for i in instances])
        predicted = self.mask_iou_head(x, probs)
        classes = torch.cat([i.pred_classes for i in instances])
        if predicted.size(1) == 1:
            classes = torch.zeros_like(classes)
        ious = predicted[torch.arange(len(classes)), classes].clamp(0, 1)
        for i, iou in zip(instances, ious.split([len(i) for i in instances])):
            i.mask_scores = i.scores * iou
            if self.mask_iou_rescore:
                i.scores = i.mask_scores
