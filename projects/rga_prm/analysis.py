"""The modules' scores (Fig. 6 of the paper): each module's foreground score for the same test
boxes, their distributions and the distribution of their absolute differences."""

import itertools
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import build_detection_test_loader

from box_cascade import ParallelModulesROIHeads

__all__ = ["module_scores", "score_difference_summary", "plot_module_scores"]


@torch.no_grad()
def module_scores(model, cfg, dataset: str, num_images: int) -> Dict[str, np.ndarray]:
    """{module label: (N,) foreground score} over the boxes the output stage scores on the first
    ``num_images`` images of ``dataset``. A module's foreground score of a box is 1 - its
    background probability (softmax of its own logits). Labels: "module<m> (fraction f)", m in
    the config's order."""
    heads = model.roi_heads
    if not isinstance(heads, ParallelModulesROIHeads) or heads.num_modules < 2:
        raise ValueError("module_scores needs ROI heads with at least 2 parallel modules")
    model.eval()
    fractions = list(cfg.MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS)
    out: Dict[str, List[np.ndarray]] = {}
    loader = build_detection_test_loader(cfg, dataset)
    for batch in itertools.islice(loader, num_images):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        feats = [features[f] for f in heads.box_in_features]
        last = heads.run_test_stages(feats, proposals)[-1]
        for m, fraction in enumerate(fractions):
            pred = heads.predict_module(last.stage, m, last.box_features)
            fg = 1.0 - pred["scores"].softmax(dim=1)[:, -1]
            out.setdefault(f"module{m} (fraction {fraction:g})", []).append(fg.cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def score_difference_summary(scores: Dict[str, np.ndarray], threshold: float = 0.1) -> Dict:
    """Mean score per module, and for the first two modules the share of boxes whose scores
    differ by more than ``threshold`` (the paper: 21.9% differ by more than 0.1 on COCO)."""
    labels = list(scores)
    a, b = scores[labels[0]], scores[labels[1]]
    diff = np.abs(a - b)
    return {
        "boxes": int(len(a)),
        "mean_score": {k: float(v.mean()) for k, v in scores.items()},
        "share_differing": float((diff > threshold).mean()),
        "threshold": threshold,
    }


def plot_module_scores(scores: Dict[str, np.ndarray], output_path: str, title: str = "") -> str:
    """Left: each module's score histogram; right: histogram of |score_1 - score_2|."""
    from cascade_zoo.analysis._plot import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(0, 1, 41)
    for label, s in scores.items():
        left.hist(s, bins=bins, histtype="step", label=label, density=True)
    left.set_xlabel("foreground score")
    left.set_ylabel("density")
    left.legend()
    labels = list(scores)
    right.hist(np.abs(scores[labels[0]] - scores[labels[1]]), bins=bins)
    right.set_xlabel(f"|{labels[0]} - {labels[1]}|")
    right.set_ylabel("boxes")
    return save_figure(fig, output_path, title)
