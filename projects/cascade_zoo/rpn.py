"""RPN proposal selection with NMS on each image's best candidates only.

Detectron2's ``find_top_rpn_proposals`` takes each level's ``pre_nms_topk`` best proposals
(about 3200 per image at the shapes recipe's sizes), runs NMS per level over all of them, then
keeps the ``post_nms_topk`` best survivors (150 in training). Greedy NMS decides a box from the
boxes that score higher than it, so NMS on the boxes above some score threshold keeps exactly the
survivors of the full NMS that lie above that threshold; when at least ``post_nms_topk`` of them
survive, they are the full selection. :func:`find_top_rpn_proposals_prefix` runs the NMS on such
a prefix of each image's candidates (2 x ``post_nms_topk`` first, four times more until enough
survive or the prefix holds every candidate): the same proposals, in the same order, with NMS on
a tenth of the boxes once the RPN has learnt anything. On CPU, the full NMS was 9% of a Cascade
R-CNN training step at the shapes recipe.

``ZOO.RPN_PREFIX_NMS`` turns it on (the default) for CPU; CUDA, tracing and scripting always use
Detectron2's function unchanged.

Shapes: N images, L levels, A_l candidates of level l, P = post_nms_topk.
"""

from typing import List, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

from .utils.modules import set_module_class

__all__ = ["PrefixNMSRPN", "find_top_rpn_proposals_prefix", "use_rpn_prefix_nms"]


#: torchvision's batched_nms runs NMS class by class (per level here) above this many box
#: coordinates on CPU, and offsets the boxes to run one NMS below it.
_VANILLA_BATCHED_NMS_ABOVE = 4000


def nms_per_level(boxes, scores, levels, nms_thresh: float) -> torch.Tensor:
    """torchvision's batched NMS as it runs on CPU above ``_VANILLA_BATCHED_NMS_ABOVE`` box
    coordinates: NMS of each level's boxes on their own; the indices kept, best first.

    Args:
        boxes: (M, 4); scores, levels: (M,).
    """
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for level in torch.unique(levels):
        where = torch.where(levels == level)[0]
        keep[where[nms(boxes[where], scores[where], nms_thresh)]] = True
    kept = torch.where(keep)[0]
    return kept[scores[kept].sort(descending=True)[1]]


def find_top_rpn_proposals_prefix(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
    first_prefix: int = 2,
) -> List[Instances]:
    """Detectron2's ``find_top_rpn_proposals`` (same arguments, same result up to the order of
    exactly equal scores), with its NMS run on a score-ordered prefix of each image's candidates.

    Args:
        proposals: L tensors (N, A_l, 4), the decoded proposals of each level.
        pred_objectness_logits: L tensors (N, A_l).
        first_prefix: the first prefix holds ``first_prefix * post_nms_topk`` candidates.
    Returns:
        N Instances with ``proposal_boxes`` and ``objectness_logits``, best first.
    """
    results = []
    for n, image_size in enumerate(image_sizes):
        # each level's pre_nms_topk best, as Detectron2 selects them
        per_level = []
        for proposals_l, logits_l in zip(proposals, pred_objectness_logits):
            logits_n, idx = logits_l[n].sort(descending=True)
            k = min(logits_n.numel(), pre_nms_topk)
            per_level.append((proposals_l[n][idx[:k]], logits_n[:k]))
        boxes = Boxes(cat([b for b, _ in per_level]))
        scores = cat([s for _, s in per_level])
        levels = cat(
            [torch.full_like(s, i, dtype=torch.int64) for i, (_, s) in enumerate(per_level)]
        )
        valid = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        if not valid.all():
            if training:
                raise FloatingPointError(
                    "Predicted boxes or scores contain Inf/NaN. Training has diverged."
                )
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        if 4 * len(scores) <= _VANILLA_BATCHED_NMS_ABOVE:
            # few boxes: torchvision's batched NMS offsets them rather than going level by
            # level, which rounds differently; Detectron2's function does just that
            results.append(
                find_top_rpn_proposals(
                    [b[None] for b, _ in per_level],
                    [s[None] for _, s in per_level],
                    [image_size],
                    nms_thresh,
                    pre_nms_topk,
                    post_nms_topk,
                    min_box_size,
                    training,
                )[0]
            )
            continue
        size = first_prefix * post_nms_topk
        while True:
            if size >= len(scores):
                prefix = torch.arange(len(scores))
            else:
                prefix = torch.where(scores >= scores.topk(size).values[-1])[0]
            kept = prefix[
                nms_per_level(boxes.tensor[prefix], scores[prefix], levels[prefix], nms_thresh)
            ]
            if len(kept) >= post_nms_topk or len(prefix) == len(scores):
                break
            size *= 4
        kept = kept[:post_nms_topk]
        res = Instances(image_size)
        res.proposal_boxes = boxes[kept]
        res.objectness_logits = scores[kept]
        results.append(res)
    return results


class PrefixNMSRPN(RPN):
    """Detectron2's RPN whose proposals come from :func:`find_top_rpn_proposals_prefix` on CPU
    (outside tracing and scripting)."""

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        on_cpu = pred_objectness_logits[0].device.type == "cpu"
        if not on_cpu or torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().predict_proposals(
                anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes
            )
        with torch.no_grad():
            pred_proposals = self._decode_proposals(anchors, pred_anchor_deltas)
            return find_top_rpn_proposals_prefix(
                pred_proposals,
                pred_objectness_logits,
                image_sizes,
                self.nms_thresh,
                self.pre_nms_topk[self.training],
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
            )


def use_rpn_prefix_nms(model: torch.nn.Module, enabled: bool) -> int:
    """Make every Detectron2 ``RPN`` of ``model`` a :class:`PrefixNMSRPN` (``enabled``) or a plain
    ``RPN`` again; returns how many modules were set."""
    return set_module_class(model, (RPN, PrefixNMSRPN), PrefixNMSRPN if enabled else RPN)
