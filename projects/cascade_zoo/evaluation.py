"""COCO evaluation that also reports AP at every IoU threshold 0.50:0.05:0.95, and a registry of
extra evaluators that project packages add to every evaluation run by the trainer."""

import logging
from collections import defaultdict
from typing import Dict

import numpy as np
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator, pascal_voc_evaluation
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


class PerIoUVOCEvaluator(PascalVOCDetectionEvaluator):
    """Detectron2's Pascal VOC evaluator, reporting the mAP at every IoU threshold it computes
    (AP50, AP55, ..., AP95; IoU-Uniform R-CNN's Table 1 reads AP50-AP90) beside its AP, AP50 and
    AP75. Detectron2 evaluates every threshold but returns three numbers; this records the
    per-class AP that each of its ``voc_eval`` calls returns."""

    def evaluate(self):
        per_iou = defaultdict(list)
        original = pascal_voc_evaluation.voc_eval

        def recording(*args, ovthresh=0.5, **kwargs):
            rec, prec, ap = original(*args, ovthresh=ovthresh, **kwargs)
            per_iou[int(round(ovthresh * 100))].append(ap * 100)
            return rec, prec, ap

        pascal_voc_evaluation.voc_eval = recording
        try:
            ret = super().evaluate()
        finally:
            pascal_voc_evaluation.voc_eval = original
        if ret:
            for iou, aps in sorted(per_iou.items()):
                ret["bbox"][f"AP{iou}"] = float(np.mean(aps))
        return ret
