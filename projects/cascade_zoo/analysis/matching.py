"""Detections matched to ground truth: each detection's IoU with the best ground-truth box of its
class in its image, beside its score (FSCascade Fig. 5, PRM Fig. 6) and, when the model
predicts one, its predicted IoU (IoU-Uniform Fig. 8)."""

import json
import os
from typing import Dict

import numpy as np
import pycocotools.mask as mask_util

from ._plot import pyplot, save_figure
from .ap_iou import AnalysisInputError


def match_detections(gt_json: str, results_json: str, min_score: float = 0.0) -> Dict:
    """Match COCO-format detections (``coco_instances_results.json``) to the ground truth.

    Returns a dict of equal-length numpy arrays: ``score``, ``iou`` (with the best ground-truth
    box of the same category in the same image, 0 if none), ``category_id``, and
    ``predicted_iou`` when the detections carry a "predicted_iou" field.

    Raises:
        AnalysisInputError: a file is missing or not COCO JSON, or the detections name images
            that the ground truth does not have (results of another dataset).
    """
    for path in (gt_json, results_json):
        if not os.path.isfile(path):
            raise AnalysisInputError(f"{path}: no such file")
    try:
        gt = json.load(open(gt_json))
        dets = json.load(open(results_json))
    except json.JSONDecodeError as e:
        raise AnalysisInputError(f"not JSON: {e}") from None
    if not isinstance(gt, dict) or "annotations" not in gt or "images" not in gt:
        raise AnalysisInputError(f"{gt_json}: not a COCO ground-truth file")
    if not isinstance(dets, list):
        raise AnalysisInputError(f"{results_json}: not a list of COCO detections")
    image_ids = {img["id"] for img in gt["images"]}
    unknown = {d.get("image_id") for d in dets} - image_ids
    if unknown:
        raise AnalysisInputError(
            f"{results_json}: {len(unknown)} image ids not in {gt_json} (e.g. "
            f"{sorted(unknown)[:3]}): detections and ground truth of different datasets?"
        )
    boxes_by_key: Dict = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            boxes_by_key.setdefault((ann["image_id"], ann["category_id"]), []).append(ann["bbox"])
    dets = [d for d in dets if d["score"] >= min_score]
    ious = np.zeros(len(dets))
    for i, det in enumerate(dets):
        gts = boxes_by_key.get((det["image_id"], det["category_id"]))
        if gts:
            ious[i] = mask_util.iou([det["bbox"]], gts, [0] * len(gts)).max()
    out = {
        "score": np.array([d["score"] for d in dets], dtype=float),
        "iou": ious,
        "category_id": np.array([d["category_id"] for d in dets], dtype=int),
    }
    if dets and all("predicted_iou" in d for d in dets):
        out["predicted_iou"] = np.array([d["predicted_iou"] for d in dets], dtype=float)
    return out


def plot_matches(matches: Dict, output_path: str, title: str = "") -> str:
    """Score against true IoU (and, if present, predicted against true IoU) as 2-D histograms
    (log colour scale), with the mean per IoU bin overlaid. Returns ``output_path``."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    panels = [("score", "score")]
    if "predicted_iou" in matches:
        panels.append(("predicted_iou", "predicted IoU"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, (key, label) in zip(axes[0], panels):
        if len(matches["iou"]):
            ax.hist2d(matches["iou"], matches[key], bins=[bins, bins], cmap="Blues", norm=LogNorm())
            centres, means = binned_means(matches["iou"], matches[key], bins)
            ax.plot(centres, means, color="tab:red", marker="o", markersize=3, label="mean")
            ax.legend(fontsize=8)
        ax.set_xlabel("IoU with ground truth")
        ax.set_ylabel(label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    return save_figure(fig, output_path, title)


def binned_means(x: np.ndarray, y: np.ndarray, bins: np.ndarray):
    """Centres of the non-empty bins of ``x`` and the mean of ``y`` in each."""
    index = np.clip(np.digitize(x, bins) - 1, 0, len(bins) - 2)
    centres, means = [], []
    for b in range(len(bins) - 1):
        sel = index == b
        if sel.any():
            centres.append((bins[b] + bins[b + 1]) / 2)
            means.append(float(y[sel].mean()))
    return np.array(centres), np.array(means)
