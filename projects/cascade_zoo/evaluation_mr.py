"""Log-average miss rate (MR^-2) and AP50 for pedestrian / crowd detection (CrowdHuman, as in
RGA + PRM's Table 7).

Matching, per image: detections in decreasing score order; each is a true positive if its
best-IoU unmatched ground-truth box (not an ignore region) has IoU >= 0.5, which it then takes;
otherwise, if its intersection with an ignore region covers at least half of the detection, it
is ignored (neither true nor false positive); otherwise it is a false positive. Over the dataset,
detections are sorted by score: recall = TP / number of ground-truth boxes, miss rate = 1 -
recall, FPPI = FP / number of images.

MR^-2: at each of the 9 reference FPPIs 10^-2, 10^-1.75, ..., 10^0, the miss rate at the first
point of the curve whose FPPI is >= the reference (the last point when none is), then the
geometric mean of the 9 (each clipped below at 1e-10). This is the definition of CrowdHuman's
evaluation code. AP50: the area under the precision/recall curve with precision made monotone
(all-point interpolation).
"""

import itertools
import logging
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_ioa, pairwise_iou
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["MissRateEvaluator", "match_image", "miss_rate_curve", "log_average_miss_rate"]

REFERENCE_FPPI = np.power(10.0, np.linspace(-2.0, 0.0, 9))


def match_image(
    gt: np.ndarray, ignore: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5
) -> List[Tuple[float, int]]:
    """(score, 1 true positive / 0 false positive) for each detection of one image that is not
    ignored. Boxes are XYXY arrays (n, 4)."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    taken = np.zeros(len(gt), dtype=bool)
    ious = (
        pairwise_iou(Boxes(torch.as_tensor(boxes)), Boxes(torch.as_tensor(gt))).numpy()
        if len(gt) and len(boxes)
        else np.zeros((len(boxes), len(gt)))
    )
    ioas = (
        pairwise_ioa(Boxes(torch.as_tensor(ignore)), Boxes(torch.as_tensor(boxes))).numpy().T
        if len(ignore) and len(boxes)
        else np.zeros((len(boxes), len(ignore)))
    )
    out = []
    for i in range(len(boxes)):
        candidates = np.where(~taken)[0]
        if len(candidates):
            j = candidates[np.argmax(ious[i, candidates])]
            if ious[i, j] >= iou:
                taken[j] = True
                out.append((float(scores[i]), 1))
                continue
        if len(ignore) and ioas[i].max() >= 0.5:
            continue
        out.append((float(scores[i]), 0))
    return out


def miss_rate_curve(matches: Sequence[Tuple[float, int]], num_gt: int, num_images: int):
    """(fppi, miss_rate, precision, recall) arrays over the detections sorted by score."""
    if not matches:
        return (np.zeros(1), np.ones(1), np.zeros(1), np.zeros(1))
    ordered = sorted(matches, key=lambda m: -m[0])
    tp = np.cumsum([m[1] for m in ordered])
    fp = np.cumsum([1 - m[1] for m in ordered])
    recall = tp / max(num_gt, 1)
    return fp / max(num_images, 1), 1.0 - recall, tp / (tp + fp), recall


def log_average_miss_rate(fppi: np.ndarray, miss_rate: np.ndarray) -> float:
    """MR^-2 of a curve (see module doc)."""
    picked = []
    for ref in REFERENCE_FPPI:
        above = np.where(fppi >= ref)[0]
        picked.append(miss_rate[above[0]] if len(above) else miss_rate[-1])
    return float(np.exp(np.mean(np.log(np.maximum(picked, 1e-10)))))


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision/recall curve, precision made monotone (all-point)."""
    r = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    steps = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _xyxy(annotations) -> Tuple[np.ndarray, np.ndarray]:
    gt, ignore = [], []
    for a in annotations:
        box = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
        (ignore if a.get("iscrowd", 0) else gt).append(box)
    as_array = lambda x: np.asarray(x, dtype=np.float32).reshape(-1, 4)  # noqa: E731
    return as_array(gt), as_array(ignore)


class MissRateEvaluator(DatasetEvaluator):
    """MR^-2 (in %, lower is better) and AP50 (in %) of one-class detections against a dataset
    whose ignore regions are ``iscrowd`` annotations (e.g. :func:`register_crowdhuman`)."""

    def __init__(self, dataset_name: str, class_id: int = 0):
        self.dataset_name = dataset_name
        self.class_id = class_id
        self._gts = None
        self.reset()

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            keep = inst.pred_classes == self.class_id
            self._predictions.append(
                (
                    x["image_id"],
                    inst.pred_boxes.tensor[keep].numpy(),
                    inst.scores[keep].numpy(),
                )
            )

    def evaluate(self):
        predictions = self._predictions
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if self._gts is None:
            self._gts = {
                d["image_id"]: _xyxy(d.get("annotations", []))
                for d in DatasetCatalog.get(self.dataset_name)
            }
        result = evaluate_miss_rate(self._gts, predictions)
        logger.info(
            f"{self.dataset_name}: MR^-2 {result['MR']:.2f}%, AP50 {result['AP50']:.2f}% "
            f"({result['images']} images, {result['num_gt']} boxes)"
        )
        return OrderedDict({"crowdhuman": result})


def evaluate_miss_rate(gts: Dict, predictions) -> Dict[str, float]:
    """MR^-2 and AP50 (in %) of ``predictions`` [(image_id, XYXY boxes, scores)] against
    ``gts`` {image_id: (gt XYXY, ignore XYXY)}; images without predictions count, with none."""
    matches = []
    for image_id, boxes, scores in predictions:
        if image_id not in gts:
            raise KeyError(f"prediction for image {image_id!r}, which the dataset does not have")
        gt, ignore = gts[image_id]
        matches += match_image(gt, ignore, boxes, scores)
    num_gt = sum(len(g) for g, _ in gts.values())
    fppi, mr, precision, recall = miss_rate_curve(matches, num_gt, len(gts))
    return {
        "MR": 100.0 * log_average_miss_rate(fppi, mr),
        "AP50": 100.0 * average_precision(precision, recall),
        "images": len(gts),
        "num_gt": num_gt,
    }
