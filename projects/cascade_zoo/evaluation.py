"""COCO evaluation that also reports AP at every IoU threshold 0.50:0.05:0.95, and a registry of
extra evaluators that project packages add to every evaluation run by the trainer."""

import logging
from typing import Dict

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.registry import Registry

logger = logging.getLogger(__name__)

EXTRA_EVALUATOR_REGISTRY = Registry("EXTRA_EVALUATOR")
EXTRA_EVALUATOR_REGISTRY.__doc__ = """Functions ``(cfg, dataset_name, output_folder) ->
DatasetEvaluator or None``, registered by project packages; ZooTrainer adds what each returns to
its evaluators (e.g. the box-cascade core's stage-wise evaluation)."""


def ap_per_iou(coco_eval) -> Dict[str, float]:
    """AP (in %) at each IoU threshold of an evaluated COCOeval, over all areas at the largest
    maxDets, keyed "AP50", "AP55", ..., "AP95" (NaN where no ground truth exists)."""
    precision = coco_eval.eval["precision"]  # (IoU, recall, class, area, maxDets)
    out = {}
    for t, iou in enumerate(coco_eval.params.iouThrs):
        p = precision[t, :, :, 0, -1]
        p = p[p > -1]
        out[f"AP{int(round(iou * 100))}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


class PerIoUCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator; its results also hold AP at every IoU of COCO's thresholds
    ("AP50" ... "AP95"), so metrics.json and TensorBoard carry the AP-vs-IoU curve."""

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is not None and iou_type in ("bbox", "segm"):
            per_iou = ap_per_iou(coco_eval)
            results.update({k: v for k, v in per_iou.items() if k not in results})
            logger.info(
                f"{iou_type} AP at each IoU: "
                + ", ".join(f"{k} {v:.2f}" for k, v in per_iou.items())
            )
        return results
