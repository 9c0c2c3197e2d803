"""IoU histograms of training samples per stage (Cascade R-CNN Fig. 4, R3-CNN Fig. 2,
IoU-Uniform Fig. 1 and 6): from the statistics a training run writes, or by running a
config's samplers over training batches with given weights."""

import itertools
import json
import os
from typing import Dict

import torch
from detectron2.utils.events import EventStorage

from ..modeling import build_model
from ._plot import pyplot, save_figure
from .ap_iou import AnalysisInputError


def load_iou_stats(path: str) -> Dict:
    """A ``training_iou_stats.json`` (see box_cascade.statistics). Raises AnalysisInputError."""
    if not os.path.isfile(path):
        raise AnalysisInputError(f"{path}: no such file")
    try:
        data = json.load(open(path))
    except json.JSONDecodeError as e:
        raise AnalysisInputError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or "rows" not in data or "bin_edges" not in data:
        raise AnalysisInputError(
            f"{path}: not a training_iou_stats.json (no 'rows' / 'bin_edges'); it is written by "
            "models with the box-cascade core's ROI heads"
        )
    return data


def collect_iou_stats(cfg, num_batches: int, weights: str = "") -> Dict:
    """Run the model's training path (no optimisation) over ``num_batches`` training batches and
    return the IoU statistics of each stage's training boxes, as ``training_iou_stats.json``
    holds them. ``weights``: a checkpoint (else cfg.MODEL.WEIGHTS; a fresh model if empty).

    Raises:
        AnalysisInputError: the model's ROI heads record no IoU statistics.
    """
    from ..engine import ZooTrainer
    from ..engine.checkpoint import build_checkpointer

    model = build_model(cfg)
    path = weights or cfg.MODEL.WEIGHTS
    if path:
        build_checkpointer(cfg, model).load(path)
    stats = getattr(model.roi_heads, "iou_stats", None)
    if stats is None:
        raise AnalysisInputError(
            f"ROI heads {cfg.MODEL.ROI_HEADS.NAME} record no training IoU statistics: use a "
            "config whose ROI_HEADS.NAME is BoxCascadeROIHeads or a subclass"
        )
    stats.reset()
    model.train()
    loader = ZooTrainer.build_train_loader(cfg)
    with torch.no_grad(), EventStorage(0):
        for batch in _progress(itertools.islice(loader, num_batches), num_batches):
            model(batch)
    return {"iteration": num_batches, **stats.as_dict()}


def _progress(iterable, total):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc="batches")
    except ImportError:  # pragma: no cover
        return iterable


def plot_iou_histograms(stats: Dict, output_path: str, title: str = "") -> str:
    """One panel per row (RPN proposals, stage 1, ...): the share of training boxes in each IoU
    bin, with the share of positives at each stage threshold written in the panel."""
    plt = pyplot()

    rows = stats["rows"]
    edges = stats["bin_edges"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, (name, row) in zip(axes[0], rows.items()):
        total = max(row["total"], 1)
        shares = [c / total for c in row["counts"]]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        ax.bar(edges[:-1], shares, width=widths, align="edge", edgecolor="white")
        text = "\n".join(f"IoU>={u}: {s:.1%}" for u, s in row["positive_share"].items())
        ax.text(0.97, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=8,
                color="tab:red")  # fmt: skip
        ax.set_title(f"{name} ({row['total']} boxes)", fontsize=9)
        ax.set_xlabel("IoU with ground truth")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("share of training boxes")
    return save_figure(fig, output_path, title)
