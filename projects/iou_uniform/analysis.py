"""The paper's analyses behind tools/iou_uniform_*.py, from a model run over a dataset (images at
the model's test size, ground truth scaled to it, crowd boxes left out):

- refinement (Fig. 3 and 6): every RPN proposal's IoU with its best ground truth before and after
  the detector's regression (the output stage's box, of the ground truth's class for a
  class-specific regressor): the mean gain per input-IoU interval (Fig. 3) and the histogram of
  the refined boxes' IoU (Fig. 6);
- IoU prediction (Fig. 8): each final detection's IoU with the best ground truth of its class,
  beside the IoU the branch predicts at its input box (no EFO) and at its regressed box (EFO).

Works with the box-cascade core's heads (and subclasses) and Detectron2's StandardROIHeads
(refinement only).
"""

import itertools
from collections import OrderedDict
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from box_cascade import BoxCascadeROIHeads
from box_cascade.ensembles import build_test_ensemble
from box_cascade.stages import d2_pair
from cascade_zoo.analysis import AnalysisInputError, binned_means
from cascade_zoo.utils.markdown import markdown_table

from .roi_heads import IoUUniformROIHeads

__all__ = [
    "FIG3_EDGES",
    "iou_predictions",
    "iou_prediction_table",
    "localization_gain_table",
    "plot_iou_predictions",
    "plot_localization_gain",
    "plot_refined_histograms",
    "refined_histogram_table",
    "refinement_ious",
]

#: The input-IoU intervals of Fig. 3.
FIG3_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _passes(model, cfg, dataset: str, num_images: Optional[int]) -> Iterator:
    """Per image: (heads, pooled-feature list, RPN proposals of it, ground-truth boxes (G, 4) at
    the test size, their classes (G,))."""
    truth = {d["image_id"]: d for d in DatasetCatalog.get(dataset)}
    model.eval()
    heads = model.roi_heads
    seen = 0
    for batch in itertools.islice(build_detection_test_loader(cfg, dataset), num_images):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        feats = [features[f] for f in heads.box_in_features]
        for i, (inputs, props) in enumerate(zip(batch, proposals)):
            seen += 1
            anns = [a for a in truth[inputs["image_id"]].get("annotations", [])
                    if not a.get("iscrowd", 0)]  # fmt: skip
            device = props.proposal_boxes.device
            boxes = torch.tensor(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                dtype=torch.float32, device=device,
            ).reshape(-1, 4)  # fmt: skip
            h, w = props.image_size
            scale = boxes.new_tensor([w / inputs["width"], h / inputs["height"]] * 2)
            classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.long,
                                   device=device)  # fmt: skip
            yield heads, [f[i : i + 1] for f in feats], props, boxes * scale, classes
    if not seen:
        raise AnalysisInputError(f"dataset '{dataset}' gave no images")


def _final_regression(heads, features, proposals):
    """The detector's regression of each proposal: per proposal (R, 4) or (R, 4K) boxes."""
    if isinstance(heads, BoxCascadeROIHeads):
        last = heads.run_test_stages(features, [proposals])[-1]
        predictor = heads.stage_predictor(last.stage)
        return predictor.predict_boxes(d2_pair(last.predictions), last.proposals)[0]
    if hasattr(heads, "box_predictor") and not isinstance(heads.box_predictor, torch.nn.ModuleList):
        pooled = heads.box_pooler(features, [proposals.proposal_boxes])
        predictions = heads.box_predictor(heads.box_head(pooled))
        return heads.box_predictor.predict_boxes(predictions, [proposals])[0]
    raise AnalysisInputError(
        f"{type(heads).__name__}: not the box-cascade core's heads or StandardROIHeads"
    )


@torch.no_grad()
def refinement_ious(model, cfg, dataset: str, num_images: Optional[int] = None) -> Dict:
    """Every RPN proposal with some overlap: ``input_iou`` (its best IoU with a ground truth) and
    ``output_iou`` (the IoU of its regressed box, clipped to the image, with the same ground
    truth), (M,) numpy arrays."""
    inputs, outputs = [], []
    for heads, features, props, gt, classes in _passes(model, cfg, dataset, num_images):
        if len(gt) == 0 or len(props) == 0:
            continue
        boxes = _final_regression(heads, features, props)
        best, index = pairwise_iou(props.proposal_boxes, Boxes(gt)).max(dim=1)
        if boxes.shape[1] > 4:  # class-specific: the box of the ground truth's class
            boxes = boxes.view(len(boxes), -1, 4)[torch.arange(len(boxes)), classes[index]]
        refined = Boxes(boxes.clone())
        refined.clip(props.image_size)
        after = (pairwise_iou(refined, Boxes(gt))).gather(1, index[:, None])[:, 0]
        keep = best > 0
        inputs.append(best[keep].cpu().numpy())
        outputs.append(after[keep].cpu().numpy())
    if not inputs:
        raise AnalysisInputError(f"dataset '{dataset}': no proposal overlaps a ground truth")
    return {"input_iou": np.concatenate(inputs).astype(float),
            "output_iou": np.concatenate(outputs).astype(float)}  # fmt: skip


def localization_gain_table(
    runs: "OrderedDict[str, Dict]", edges: Sequence[float] = FIG3_EDGES
) -> str:
    """Fig. 3 as Markdown: per run and input-IoU interval, the proposals, their mean IoU before
    and after the regression and the mean gain."""
    rows = []
    for label, r in runs.items():
        index = np.digitize(r["input_iou"], edges) - 1
        index[r["input_iou"] >= edges[-1]] = len(edges) - 2
        for b in range(len(edges) - 1):
            sel = index == b
            before, after = r["input_iou"][sel], r["output_iou"][sel]
            rows.append([label, f"[{edges[b]:.1f}, {edges[b + 1]:.1f})", int(sel.sum()),
                         float(before.mean()) if sel.any() else None,
                         float(after.mean()) if sel.any() else None,
                         float((after - before).mean()) if sel.any() else None])  # fmt: skip
    header = ["run", "input IoU", "proposals", "mean IoU before", "mean IoU after", "mean gain"]
    return markdown_table(header, rows, cell=_cell3)


def refined_histogram_table(
    runs: "OrderedDict[str, Dict]", min_input_iou: float = 0.5, bins: int = 10
) -> str:
    """Fig. 6 as Markdown: per run, the share of the refined boxes (of proposals with input IoU
    >= ``min_input_iou``) in each output-IoU bin."""
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for label, r in runs.items():
        out = r["output_iou"][r["input_iou"] >= min_input_iou]
        counts = np.histogram(np.clip(out, 0, 1), edges)[0]
        rows.append([label, len(out)] + [f"{c / max(len(out), 1):.1%}" for c in counts])
    header = ["run", "boxes"] + [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:])]
    return markdown_table(header, rows)


def _cell3(value):
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def plot_localization_gain(
    runs: "OrderedDict[str, Dict]", output_path: str, edges: Sequence[float] = FIG3_EDGES,
    title: str = "",
) -> str:  # fmt: skip
    """Fig. 3: the mean IoU gain of the regression per input-IoU interval, one bar per run."""
    from cascade_zoo.analysis._plot import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(runs), 1)
    for i, (label, r) in enumerate(runs.items()):
        index = np.clip(np.digitize(r["input_iou"], edges) - 1, 0, len(edges) - 2)
        gain = (r["output_iou"] - r["input_iou"])[r["input_iou"] >= edges[0]]
        index = index[r["input_iou"] >= edges[0]]
        gains = [float(gain[index == b].mean()) if (index == b).any() else 0.0
                 for b in range(len(edges) - 1)]  # fmt: skip
        ax.bar(np.arange(len(gains)) + i * width, gains, width=width, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(edges) - 1) + width * (len(runs) - 1) / 2)
    ax.set_xticklabels([f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:])])
    ax.set_xlabel("IoU of the proposal")
    ax.set_ylabel("mean IoU gain of the regression")
    ax.legend(fontsize=8)
    return save_figure(fig, output_path, title)


def plot_refined_histograms(
    runs: "OrderedDict[str, Dict]", output_path: str, min_input_iou: float = 0.5, title: str = ""
) -> str:
    """Fig. 6: histograms of the refined boxes' IoU (proposals with input IoU >=
    ``min_input_iou``), one outline per run."""
    from cascade_zoo.analysis._plot import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.linspace(0, 1, 21)
    for label, r in runs.items():
        out = r["output_iou"][r["input_iou"] >= min_input_iou]
        weights = np.full(len(out), 1.0 / max(len(out), 1))
        ax.hist(np.clip(out, 0, 1), bins=edges, weights=weights, histtype="step", linewidth=1.5,
                label=f"{label} ({len(out)})")  # fmt: skip
    ax.set_xlabel("IoU of the refined box")
    ax.set_ylabel("share of boxes")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    return save_figure(fig, output_path, title)


@torch.no_grad()
def iou_predictions(
    model, cfg, dataset: str, num_images: Optional[int] = None, min_iou: float = 0.5
) -> Dict:
    """Every final detection (the model's test path: ensemble, IoU-guided scores, NMS) whose IoU
    with the best ground truth of its class exceeds ``min_iou`` (Fig. 8): ``iou`` (that IoU),
    ``first_pass`` (the IoU predicted at the detection's input box), ``efo`` (at its regressed
    box) and ``score``, (M,) numpy arrays."""
    heads = model.roi_heads
    if not isinstance(heads, IoUUniformROIHeads) or not heads.iou_prediction:
        raise AnalysisInputError(
            "iou_predictions needs ROI_HEADS.NAME IoUUniformROIHeads with "
            "MODEL.IOU_UNIFORM.ENABLED and IOU_PREDICTION True"
        )
    out = {k: [] for k in ("iou", "first_pass", "efo", "score")}
    for _, features, props, gt, classes in _passes(model, cfg, dataset, num_images):
        records = heads.run_test_stages(features, [props])
        last = records[-1]
        predictor = heads.stage_predictor(last.stage)
        probs = build_test_ensemble(heads.test_ensemble)(heads, records)
        boxes = predictor.predict_boxes(d2_pair(last.predictions), last.proposals)
        first = heads.first_pass_ious(last)[0][:, 0]
        efo = heads.efo_ious(features, last, boxes)[0][:, 0]
        thresh = predictor.test_score_thresh
        scores = heads.rescore(features, last, boxes, probs, thresh)
        dets, kept = fast_rcnn_inference(
            boxes, scores, [props.image_size], heads.nms_score_thresh(thresh),
            predictor.test_nms_thresh, predictor.test_topk_per_image,
        )  # fmt: skip
        dets, kept = dets[0], kept[0]
        if len(gt) == 0 or len(dets) == 0:
            continue
        iou = pairwise_iou(dets.pred_boxes, Boxes(gt)) * (dets.pred_classes[:, None] == classes)
        best = iou.max(dim=1).values
        keep = best > min_iou
        out["iou"].append(best[keep])
        out["first_pass"].append(first[kept][keep])
        out["efo"].append(efo[kept][keep])
        out["score"].append(dets.scores[keep])
    return {k: (torch.cat(v).cpu().numpy().astype(float) if v else np.zeros(0))
            for k, v in out.items()}  # fmt: skip


def iou_prediction_table(runs: "OrderedDict[str, Dict]", step: float = 0.1) -> str:
    """Fig. 8 as Markdown: per run and true-IoU bin, the detections and their mean predicted IoU
    without and with EFO, and each prediction's Pearson correlation with the true IoU."""
    rows = []
    for label, m in runs.items():
        edges = np.arange(0.5, 1.0 + step / 2, step)
        for (c, first), (_, efo), n in zip(
            zip(*binned_means(m["iou"], m["first_pass"], edges)),
            zip(*binned_means(m["iou"], m["efo"], edges)),
            [int(x) for x in np.histogram(m["iou"], edges)[0] if x],
        ):
            rows.append([label, f"{c - step / 2:.1f}-{c + step / 2:.1f}", n, first, efo])
        rows.append([label, "correlation", len(m["iou"]), _corr(m["iou"], m["first_pass"]),
                     _corr(m["iou"], m["efo"])])  # fmt: skip
    header = ["run", "true IoU", "detections", "predicted IoU, no EFO", "predicted IoU, EFO"]
    return markdown_table(header, rows, cell=_cell3)


def _corr(x, y) -> Optional[float]:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def plot_iou_predictions(m: Dict, output_path: str, title: str = "") -> str:
    """Fig. 8: predicted against true IoU, without (a) and with (b) EFO, as 2-D histograms with
    the mean per true-IoU bin."""
    from matplotlib.colors import LogNorm

    from cascade_zoo.analysis._plot import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), squeeze=False)
    x_bins, y_bins = np.linspace(0.5, 1, 11), np.linspace(0, 1, 21)
    for ax, (key, name) in zip(axes[0], (("first_pass", "(a) without EFO"), ("efo", "(b) EFO"))):
        if len(m["iou"]):
            y = np.clip(m[key], 0, 1)
            ax.hist2d(m["iou"], y, bins=[x_bins, y_bins], cmap="Blues", norm=LogNorm())
            centres, means = binned_means(m["iou"], y, x_bins)
            ax.plot(centres, means, color="tab:red", marker="o", markersize=3, label="mean")
            ax.plot([0.5, 1], [0.5, 1], color="gray", linewidth=0.8, linestyle="--")
            ax.legend(fontsize=8)
        ax.set_title(f"{name} ({len(m['iou'])} detections)")
        ax.set_xlabel("IoU with ground truth")
        ax.set_ylabel("predicted IoU")
        ax.set_xlim(0.5, 1)
        ax.set_ylim(0, 1)
    return save_figure(fig, output_path, title)
