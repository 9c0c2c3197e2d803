"""The paper's analyses behind tools/fs_gap_plot.py and tools/fs_score_vs_iou.py:

- the gaps at each IoU 0.50..0.95 between the last stage and the stage before it, and between
  the last stage and Faster R-CNN (Fig. 1 and 3), from the stage-wise results of runs;
- the confidence of the last stage's detections against their IoU with the ground truth, for
  IoU in [0.5, 0.75] (Fig. 5).
"""

import itertools
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from cascade_zoo.analysis import AnalysisInputError, binned_means, difference_curves
from cascade_zoo.utils.markdown import markdown_table

__all__ = [
    "FIG5_IOU_RANGE",
    "in_iou_range",
    "last_stage",
    "plot_score_vs_iou",
    "score_vs_iou",
    "score_vs_iou_table",
    "stage_gaps",
]

#: The IoU range of the detections whose scores Fig. 5 shows.
FIG5_IOU_RANGE = (0.5, 0.75)


def last_stage(curves: Dict[str, List[float]], label: str) -> int:
    """The highest N with a curve "label/stageN"."""
    pattern = re.compile(rf"{re.escape(label)}/stage(\d+)")
    stages = [int(m.group(1)) for m in map(pattern.fullmatch, curves) if m]
    if not stages:
        raise AnalysisInputError(f"run '{label}' has no stage curves ('{label}/stageN')")
    return max(stages)


def stage_gaps(
    runs: "OrderedDict[str, OrderedDict[str, List[float]]]",
    faster: Optional[Tuple[str, List[float]]] = None,
    stage: Optional[int] = None,
) -> "OrderedDict[str, List[float]]":
    """For each run (label -> its curves from ``load_ap_curves``): "label/stageN -
    label/stageN-1" and, with ``faster`` = (name, curve), "label/stageN - name", AP points at
    each IoU 0.50..0.95. N is ``stage`` or the run's last stage."""
    pairs, curves = [], OrderedDict()
    for label, run in runs.items():
        curves.update(run)
        n = stage or last_stage(run, label)
        if n < 2:
            raise AnalysisInputError(f"run '{label}': stage {n} has no stage before it")
        pairs.append((f"{label}/stage{n}", f"{label}/stage{n - 1}"))
        if faster is not None:
            pairs.append((f"{label}/stage{n}", faster[0]))
    if faster is not None:
        curves[faster[0]] = faster[1]
    return difference_curves(curves, pairs)


@torch.no_grad()
def score_vs_iou(model, cfg, dataset: str, num_images: Optional[int] = None) -> Dict:
    """Every final detection of ``model`` on the first ``num_images`` images of ``dataset``
    (all: None): its score, and its IoU with the best ground-truth box of its class in its
    image (0 if none; crowd boxes left out). Returns {"score": (M,), "iou": (M,), "class":
    (M,)} numpy arrays."""
    truth = {d["image_id"]: d for d in DatasetCatalog.get(dataset)}
    model.eval()
    scores, ious, classes = [], [], []
    loader = build_detection_test_loader(cfg, dataset)
    for batch in itertools.islice(loader, num_images):
        for inputs, outputs in zip(batch, model(batch)):
            det = outputs["instances"].to("cpu")
            anns = [a for a in truth[inputs["image_id"]].get("annotations", [])
                    if not a.get("iscrowd", 0)]  # fmt: skip
            gt_boxes = Boxes(
                torch.tensor(
                    [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                    dtype=torch.float32,
                ).reshape(-1, 4)
            )
            gt_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
            iou = pairwise_iou(det.pred_boxes, gt_boxes)
            iou = iou * (det.pred_classes[:, None] == gt_classes[None, :])
            best = iou.max(dim=1).values if len(anns) else torch.zeros(len(det))
            scores.append(det.scores.numpy())
            ious.append(best.numpy())
            classes.append(det.pred_classes.numpy())
    if not scores:
        raise AnalysisInputError(f"dataset '{dataset}' gave no images")
    return {
        "score": np.concatenate(scores).astype(float),
        "iou": np.concatenate(ious).astype(float),
        "class": np.concatenate(classes).astype(int),
    }


def in_iou_range(matches: Dict, iou_range: Sequence[float] = FIG5_IOU_RANGE) -> Dict:
    """The detections whose IoU lies in ``iou_range`` = [low, high]."""
    low, high = iou_range
    keep = (matches["iou"] >= low) & (matches["iou"] <= high)
    return {k: np.asarray(v)[keep] for k, v in matches.items()}


def score_vs_iou_table(
    runs: "OrderedDict[str, Dict]", iou_range: Sequence[float] = FIG5_IOU_RANGE, step: float = 0.05
) -> str:
    """Markdown: per run and IoU bin of width ``step`` in ``iou_range``, the number of
    detections and their mean and median score."""
    bins = np.arange(iou_range[0], iou_range[1] + step / 2, step)
    rows = []
    for label, m in runs.items():
        index = np.clip(np.digitize(m["iou"], bins) - 1, 0, len(bins) - 2)
        for b in range(len(bins) - 1):
            s = m["score"][index == b]
            rows.append([label, f"{bins[b]:.2f}-{bins[b + 1]:.2f}", len(s),
                         float(s.mean()) if len(s) else None,
                         float(np.median(s)) if len(s) else None])  # fmt: skip
    return markdown_table(["run", "IoU", "detections", "mean score", "median score"], rows)


def plot_score_vs_iou(
    runs: "OrderedDict[str, Dict]",
    output_path: str,
    iou_range: Sequence[float] = FIG5_IOU_RANGE,
    title: str = "",
) -> str:
    """Fig. 5: one panel per run, the scores of its detections against their IoU (2-D
    histogram) with the mean score per IoU bin. Returns ``output_path``."""
    from matplotlib.colors import LogNorm

    from cascade_zoo.analysis._plot import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.2), squeeze=False)
    x_bins = np.linspace(iou_range[0], iou_range[1], 11)
    y_bins = np.linspace(0, 1, 21)
    for ax, (label, m) in zip(axes[0], runs.items()):
        if len(m["iou"]):
            ax.hist2d(m["iou"], m["score"], bins=[x_bins, y_bins], cmap="Blues", norm=LogNorm())
            centres, means = binned_means(m["iou"], m["score"], x_bins)
            ax.plot(centres, means, color="tab:red", marker="o", markersize=3, label="mean")
            ax.legend(fontsize=8)
        ax.set_title(f"{label} ({len(m['iou'])} detections)")
        ax.set_xlabel("IoU with ground truth")
        ax.set_ylabel("score")
        ax.set_xlim(*iou_range)
        ax.set_ylim(0, 1)
    return save_figure(fig, output_path, title)
