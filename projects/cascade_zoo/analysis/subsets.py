"""AP on subsets of a dataset's images by their number of ground-truth objects (RGA + PRM's
Fig. 2: images with 1-3 objects against images with 8 or more), for any model's COCO results
(the ``coco_instances_results.json`` that evaluation writes under
``OUTPUT_DIR/inference/<dataset>/``)."""

import contextlib
import io
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..evaluation import ap_per_iou
from .ap_iou import AnalysisInputError

#: Fig. 2's subsets, and the middle ones between them: (lowest, highest or None) object counts.
DEFAULT_BINS: Tuple[Tuple[int, Optional[int]], ...] = ((1, 3), (4, 7), (8, None))


def bin_label(low: int, high: Optional[int]) -> str:
    return f"[{low},{high}]" if high is not None else f"[{low},inf)"


def images_by_object_count(gt: COCO, low: int, high: Optional[int]) -> List[int]:
    """Ids of the images whose number of non-crowd objects is in [low, high] (high None: no
    upper bound)."""
    out = []
    for image_id in sorted(gt.getImgIds()):
        n = sum(1 for a in gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0))
        if n >= low and (high is None or n <= high):
            out.append(image_id)
    return out


def _evaluate(gt: COCO, dt: COCO, image_ids: Sequence[int], iou_type: str) -> Dict[str, float]:
    ev = COCOeval(gt, dt, iou_type)
    ev.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {"AP": float(ev.stats[0] * 100)}
    out.update(ap_per_iou(ev))
    return out


def ap_by_object_count(
    gt_json: str,
    results_json: str,
    bins: Sequence[Tuple[int, Optional[int]]] = DEFAULT_BINS,
    iou_type: str = "bbox",
) -> "Dict[str, Dict[str, float]]":
    """{subset label: {"images": n, "AP": .., "AP50": .., ..., "AP95": ..}} for each bin and
    for "all"; AP in %, by pycocotools restricted to the subset's images."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
    with open(results_json) as f:
        results = json.load(f)
    if not isinstance(results, list):
        raise AnalysisInputError(f"'{results_json}' is not a COCO results list")
    if not results:
        raise AnalysisInputError(f"'{results_json}' holds no detections")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
    out = {}
    for low, high in bins:
        ids = images_by_object_count(gt, low, high)
        if not ids:
            out[bin_label(low, high)] = {"images": 0}
            continue
        out[bin_label(low, high)] = {"images": len(ids), **_evaluate(gt, dt, ids, iou_type)}
    out["all"] = {"images": len(gt.getImgIds()), **_evaluate(gt, dt, gt.getImgIds(), iou_type)}
    return out


def subsets_table(results: "Dict[str, Dict[str, Dict[str, float]]]") -> str:
    """A Markdown table: one row per model and subset."""
    from ..utils.markdown import format_number, markdown_table

    keys = ["AP", "AP50", "AP75", "AP90"]
    rows = []
    for model, subsets in results.items():
        for label, r in subsets.items():
            rows.append([model, label, r["images"], *[r.get(k, np.nan) for k in keys]])
    return markdown_table(["model", "objects per image", "images", *keys], rows,
                          cell=lambda v: format_number(v, 1))  # fmt: skip
