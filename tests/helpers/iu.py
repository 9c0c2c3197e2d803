"""Helpers of the IoU-Uniform tests: configs, and the paper's pieces written out slowly with
explicit loops (IoU, box encoding, smooth L1, the generator's filter). Models, batches and passes
are ``helpers.core``'s."""

import torch
from conftest import ROOT

D = ROOT / "configs" / "IoUUniform"
FASTER = D / "iou_uniform_faster_rcnn_instant_test.yaml"
CASCADE = D / "iou_uniform_cascade_rcnn_instant_test.yaml"
# What turns an IoU-Uniform config into the box-cascade core with the branch off.
OFF = ["MODEL.IOU_UNIFORM.ENABLED", "False", "MODEL.IOU_UNIFORM.EFO", "False"]
# torch's seed before a training pass (proposal sampling, generated boxes), so that a failure
# reproduces.
PASS_SEED = 123


def slow_iou(a, b) -> float:
    """IoU of two XYXY boxes (sequences of 4 numbers), written out."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(ix, 0.0) * max(iy, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def slow_clip(box, image_size):
    h, w = image_size
    x1, y1, x2, y2 = box
    return [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]


def slow_in_interval(iou, low, high) -> bool:
    return iou >= low and (iou < high or high >= 1.0)


def slow_deltas(box, gt, weights):
    """Fast R-CNN's box encoding of ``gt`` relative to ``box`` with weights (wx, wy, ww, wh)."""
    import math

    pw, ph = box[2] - box[0], box[3] - box[1]
    px, py = box[0] + pw / 2, box[1] + ph / 2
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    gx, gy = gt[0] + gw / 2, gt[1] + gh / 2
    wx, wy, ww, wh = weights
    return [
        wx * (gx - px) / pw,
        wy * (gy - py) / ph,
        ww * math.log(gw / pw),
        wh * math.log(gh / ph),
    ]


def slow_decode(box, deltas, weights):
    """Fast R-CNN's box decoding of ``deltas`` from ``box`` with weights (wx, wy, ww, wh), the
    log-size deltas clamped at log(1000 / 16) as Detectron2 does."""
    import math

    pw, ph = box[2] - box[0], box[3] - box[1]
    px, py = box[0] + pw / 2, box[1] + ph / 2
    wx, wy, ww, wh = weights
    limit = math.log(1000.0 / 16)
    cx, cy = px + deltas[0] / wx * pw, py + deltas[1] / wy * ph
    w, h = pw * math.exp(min(deltas[2] / ww, limit)), ph * math.exp(min(deltas[3] / wh, limit))
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def slow_smooth_l1(x: float, beta: float) -> float:
    x = abs(x)
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


def slow_interval_index(iou, intervals):
    for j, (low, high) in enumerate(intervals):
        if slow_in_interval(iou, low, high):
            return j
    raise AssertionError(f"IoU {iou} in no interval of {intervals}")


def spread(model, seed=1, iou_bias=0.6):
    """Non-trivial predictor weights (scores, deltas and IoUs that differ from box to box)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("box_predictor" in name or "iou_predictor" in name) and name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for p in getattr(model.roi_heads, "iou_predictor", []):
            if p.iou_pred is not None:
                p.iou_pred.bias.fill_(iou_bias)


def fc(head, x):
    """Two fc layers with ReLU (Detectron2's FastRCNNConvFCHead), written out."""
    x = x.flatten(1)
    x = torch.relu(x @ head.fc1.weight.T + head.fc1.bias)
    return torch.relu(x @ head.fc2.weight.T + head.fc2.bias)
