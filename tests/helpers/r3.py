"""Literal re-statements of R3-CNN's loops for the tests: IoU, box encoding, labels, losses and
the test-time merge, written out with explicit loops over the loops and explicit module calls."""

import math

import torch
import torch.nn.functional as F

SCALE_CLAMP = math.log(1000.0 / 16)  # Detectron2's Box2BoxTransform clamp of dw, dh


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) XYXY boxes -> (N, M) IoU."""
    x1 = torch.max(a[:, None, 0], b[None, :, 0])
    y1 = torch.max(a[:, None, 1], b[None, :, 1])
    x2 = torch.min(a[:, None, 2], b[None, :, 2])
    y2 = torch.min(a[:, None, 3], b[None, :, 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _centre_size(boxes):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode(proposals, gt, weights):
    wx, wy, ww, wh = weights
    px, py, pw, ph = _centre_size(proposals)
    gx, gy, gw, gh = _centre_size(gt)
    return torch.stack(
        [
            wx * (gx - px) / pw,
            wy * (gy - py) / ph,
            ww * torch.log(gw / pw),
            wh * torch.log(gh / ph),
        ],
        dim=1,
    )


def decode(proposals, deltas, weights):
    wx, wy, ww, wh = weights
    px, py, pw, ph = _centre_size(proposals)
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = (deltas[:, 2] / ww).clamp(max=SCALE_CLAMP)
    dh = (deltas[:, 3] / wh).clamp(max=SCALE_CLAMP)
    cx, cy = dx * pw + px, dy * ph + py
    w, h = torch.exp(dw) * pw, torch.exp(dh) * ph
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def clip(boxes, image_size):
    h, w = image_size
    return torch.stack(
        [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
         boxes[:, 3].clamp(0, h)], dim=1,
    )  # fmt: skip


def smooth_l1(x, beta):
    if beta == 0:
        return x.abs()
    return torch.where(x.abs() < beta, 0.5 * x * x / beta, x.abs() - 0.5 * beta)


def labels_at(boxes, gt_boxes, gt_classes, threshold, background):
    """Per box: the class of its highest-IoU ground truth if that IoU >= threshold, else
    background; and the index of that ground truth."""
    if len(gt_boxes) == 0:
        return torch.full((len(boxes),), background, dtype=torch.long), None
    overlaps = iou(boxes, gt_boxes)
    best, index = overlaps.max(dim=1)
    labels = torch.where(best >= threshold, gt_classes[index], torch.full_like(index, background))
    return labels, index


def head_outputs(heads, features, boxes_per_image):
    """The one head and predictor on the boxes: (logits, deltas), explicit module calls."""
    from detectron2.structures import Boxes

    pooled = heads.box_pooler(features, [Boxes(b) for b in boxes_per_image])
    h = heads.box_head[0](pooled)
    return heads.box_predictor[0].cls_score(h), heads.box_predictor[0].bbox_pred(h)


def loop_losses(heads, features, boxes, targets, u, w, reg_weights, beta):
    """One loop's literal losses on its boxes (per image (R_i, 4)), labelled at IoU ``u``:
    (weighted cls loss, weighted box loss, deltas (R, 4), labels (R,))."""
    background = heads.num_classes
    logits, deltas = head_outputs(heads, features, boxes)
    labels, targets_t = [], []
    for b, tgt in zip(boxes, targets):
        lab, index = labels_at(b, tgt.gt_boxes.tensor, tgt.gt_classes, u, background)
        labels.append(lab)
        pos = lab < background
        targets_t.append(
            encode(b[pos], tgt.gt_boxes.tensor[index[pos]], reg_weights)
            if index is not None else torch.zeros(0, 4)
        )  # fmt: skip
    labels = torch.cat(labels)
    positives = labels < background
    log_probs = torch.log_softmax(logits, dim=1)
    cls = -log_probs[torch.arange(len(labels)), labels].mean()
    box = smooth_l1(deltas[positives] - torch.cat(targets_t), beta).sum() / len(labels)
    return w * cls, w * box, deltas, labels


def refine(boxes, deltas, targets, reg_weights):
    """Every box decoded, clipped, the empty ones dropped: per image (refined (R_i', 4), kept
    (R_i,) bool)."""
    out, start = [], 0
    for b, tgt in zip(boxes, targets):
        d = deltas[start : start + len(b)].detach()
        start += len(b)
        r = clip(decode(b, d, reg_weights), tgt.image_size)
        keep = (r[:, 2] - r[:, 0] > 0) & (r[:, 3] - r[:, 1] > 0)
        out.append((r[keep], keep))
    return out


def training_loops(heads, features, first_boxes, targets, ious, loss_weights, reg_weights, beta):
    """The literal R3-CNN training pass with every loop on all boxes of the previous one (carry-all
    mode, ground-truth copies kept): per loop, (weighted cls loss, weighted box loss)."""
    boxes = [b.detach() for b in first_boxes]
    out = []
    for u, w in zip(ious, loss_weights):
        cls, box, deltas, _ = loop_losses(heads, features, boxes, targets, u, w, reg_weights, beta)
        out.append((cls, box))
        boxes = [r for r, _ in refine(boxes, deltas, targets, reg_weights)]
    return out


def test_loops(heads, features, proposals, num_loops, reg_weights, merge="mean"):
    """The literal test pass: the head applied num_loops times, each on the previous loop's
    clipped boxes; the loops' logits merged (mean or max), softmax; the last loop's boxes. Per
    image: (probabilities (R, K+1), regressed boxes (R, 4))."""
    boxes = [p.proposal_boxes.tensor for p in proposals]
    logits_per_loop = []
    for t in range(num_loops):
        logits, deltas = head_outputs(heads, features, boxes)
        logits_per_loop.append(logits)
        regressed, start = [], 0
        for b in boxes:
            regressed.append(decode(b, deltas[start : start + len(b)], reg_weights))
            start += len(b)
        if t < num_loops - 1:
            boxes = [clip(r, p.image_size) for r, p in zip(regressed, proposals)]
    stacked = torch.stack(logits_per_loop)
    merged = stacked.mean(dim=0) if merge == "mean" else stacked.max(dim=0).values
    probs = F.softmax(merged, dim=1)
    out, start = [], 0
    for r in regressed:
        out.append((probs[start : start + len(r)], r))
        start += len(r)
    return out


def detections(probs, boxes, image_size, score_thresh, nms_thresh, topk):
    """Per-class NMS of (probs (R, K+1), class-agnostic boxes (R, 4)): (boxes, scores, classes),
    sorted by score."""
    from torchvision.ops import batched_nms

    boxes = clip(boxes, image_size)
    scores = probs[:, :-1]
    rows, classes = torch.nonzero(scores > score_thresh, as_tuple=True)
    b, s = boxes[rows], scores[rows, classes]
    keep = batched_nms(b, s, classes, nms_thresh)[:topk]
    b, s, c = b[keep], s[keep], classes[keep]
    order = torch.argsort(s, descending=True)
    return b[order], s[order], c[order]
