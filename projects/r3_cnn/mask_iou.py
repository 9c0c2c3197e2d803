"""The optional mask-IoU scoring head of R3-CNN-L (the paper's new segmentation task after Mask
Scoring R-CNN): it regresses the IoU between a box's predicted mask and its ground-truth mask, and
at test scales the box's score by that IoU to score the mask.

Shapes: R boxes, C channels of the mask features, S their resolution (14), M = 2S the mask
resolution (28), K foreground classes.
"""

from typing import List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, cat
from detectron2.structures import Instances
from torch import nn


class MaskIoUHead(nn.Module):
    """[mask features (R, C, S, S), max-pooled mask probabilities (R, 1, S, S)] -> convs (the last
    with stride 2) -> two fc layers -> (R, K) predicted mask IoU per class."""

    def __init__(self, in_channels: int, resolution: int, num_classes: int, conv_dim: int = 256,
                 num_convs: int = 4, fc_dim: int = 1024):  # fmt: skip
        super().__init__()
        if num_convs < 1 or resolution % 2:
            raise ValueError(
                "MODEL.R3_CNN.MASK_IOU_NUM_CONVS must be >= 1 and the mask pooler resolution even"
            )
        self.convs = nn.ModuleList()
        channels = in_channels + 1
        for k in range(num_convs):
            stride = 2 if k == num_convs - 1 else 1
            conv = Conv2d(channels, conv_dim, 3, stride=stride, padding=1, activation=nn.ReLU())
            weight_init.c2_msra_fill(conv)
            self.convs.append(conv)
            channels = conv_dim
        flat = conv_dim * (resolution // 2) ** 2
        self.fc1, self.fc2 = nn.Linear(flat, fc_dim), nn.Linear(fc_dim, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_classes)
        for fc in (self.fc1, self.fc2):
            weight_init.c2_xavier_fill(fc)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(self, features: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        x = cat([features, F.max_pool2d(mask_probs, kernel_size=2, stride=2)], dim=1)
        for conv in self.convs:
            x = conv(x)
        x = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return self.predictor(x)


def mask_iou_targets(mask_logits: torch.Tensor, instances: List[Instances]):
    """For the positives ``instances`` (with ``gt_classes``, ``gt_masks``, ``proposal_boxes``) and
    their mask logits (R, K or 1, M, M): (the ground-truth class's mask probabilities (R, 1, M, M),
    the IoU of that mask binarised at 0.5 with the ground-truth mask cropped to the box, (R,)),
    both on the M x M grid of the box. Empty when there are no positives."""
    m = mask_logits.size(2)
    if mask_logits.size(0) == 0:
        return mask_logits[:, :1].sigmoid(), mask_logits.new_zeros(0)
    classes = cat([x.gt_classes for x in instances])
    gt = cat([x.gt_masks.crop_and_resize(x.proposal_boxes.tensor, m) for x in instances]) >= 0.5
    index = classes if mask_logits.size(1) > 1 else torch.zeros_like(classes)
    probs = mask_logits[torch.arange(len(classes)), index][:, None].sigmoid()
    pred = probs[:, 0].detach() > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return probs, torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
