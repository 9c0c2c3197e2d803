"""Proposal-generation hooks: how a cascade stage gets its training boxes.

A stage sampler is a class registered in ``STAGE_SAMPLER_REGISTRY`` under the name that
``MODEL.BOX_CASCADE.STAGE_SAMPLERS`` uses for it (``register_as("sample")``; ``register()``: its
class name), built as ``cls(cfg)`` (``cfg`` may be None in tests) and called as
``sampler(heads, stage, proposals, targets)``:

- ``heads``: the :class:`BoxCascadeROIHeads`, read-only: its matchers, batch size, positive
  fraction, and ``label_and_sample`` (Detectron2's labelling and sampling at a stage's IoU);
- ``stage``: 0-based stage index;
- ``proposals``: per image, ``Instances`` with ``proposal_boxes`` (and ``objectness_logits``): the
  RPN proposals for the first stage, the previous stage's refined boxes otherwise;
- ``targets``: per image, the ground truth ``Instances``.

It returns, per image, the boxes the stage trains on, with ``gt_classes`` (background =
num_classes), every ``gt_*`` field of the targets (``gt_boxes``, ``gt_masks``, ...) of the
matched ground truth, and ``from_gt`` (bool: the box is a ground-truth box added to the
proposals, or a later stage's regression of one). A paper adds its own (e.g. IoU-uniform jitter
around the ground truth) by registering a class; ``MODEL.BOX_CASCADE.STAGE_SAMPLERS`` picks one
per stage. Samplers may also serve a branch of a stage (a head trained on its own samples), see
``BoxCascadeROIHeads.stage_samples``.

Ground truth at later stages (``MODEL.BOX_CASCADE.LATER_STAGE_GT``) is applied by the heads
before a later stage's sampler runs: "readd" (the authors' code, mmdetection) drops the
regressed copies of ground-truth boxes and adds the exact ground truth; "keep" (Detectron2) keeps
the regressed copies and adds nothing.
"""

from typing import List

import torch
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.structures import Boxes, Instances, pairwise_iou

from cascade_zoo.utils.registry import NamedRegistry

STAGE_SAMPLER_REGISTRY = NamedRegistry("STAGE_SAMPLER")
STAGE_SAMPLER_REGISTRY.__doc__ = "How a cascade stage chooses its training boxes (see module doc)."


class StageSampler:
    """Base class: ``__call__(heads, stage, proposals, targets) -> List[Instances]``."""

    #: Whether the output boxes are the input boxes, in order, with none added or dropped
    #: (needed by heads that carry per-proposal memory from stage to stage).
    keeps_order = False

    def __init__(self, cfg=None):
        pass

    def __call__(self, heads, stage: int, proposals: List[Instances], targets: List[Instances]):
        raise NotImplementedError


def append_ground_truth(proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
    """Detectron2's ``add_ground_truth_to_proposals`` (same order, same objectness logit), with
    ``from_gt`` True on the added boxes and kept on the others."""
    proposals = _with_objectness(proposals)
    flags = [p.from_gt if p.has("from_gt") else None for p in proposals]
    bare = [_fields(p, ("proposal_boxes", "objectness_logits")) for p in proposals]
    out = add_ground_truth_to_proposals([t.gt_boxes for t in targets], bare)
    for p, q, flag in zip(out, proposals, flags):
        added = torch.ones(len(p) - len(q), dtype=torch.bool, device=p.objectness_logits.device)
        if flag is None:
            flag = torch.zeros(len(q), dtype=torch.bool, device=added.device)
        p.from_gt = torch.cat([flag, added])
    return out


def drop_ground_truth(proposals: List[Instances]) -> List[Instances]:
    """The boxes that do not come from ground truth (``from_gt`` False)."""
    return [p[~p.from_gt] if p.has("from_gt") else p for p in proposals]


def _fields(instances: Instances, names) -> Instances:
    out = Instances(instances.image_size)
    for name in names:
        out.set(name, instances.get(name))
    return out


@STAGE_SAMPLER_REGISTRY.register_as("sample")
class SampleProposals(StageSampler):
    """Fast R-CNN sampling, as Detectron2's ``label_and_sample_proposals``: ground-truth boxes
    added to the proposals (ROI_HEADS.PROPOSAL_APPEND_GT), matched at the stage's IoU, then
    ROI_HEADS.BATCH_SIZE_PER_IMAGE boxes sampled with at most ROI_HEADS.POSITIVE_FRACTION
    positives. The first stage of the paper and of Detectron2.

    ``batch_size_per_image`` / ``positive_fraction`` override the heads' settings, for branches
    of a stage that sample with their own (e.g. parallel modules with different ratios)."""

    def __init__(self, cfg=None, *, batch_size_per_image=None, positive_fraction=None):
        self.settings = dict(
            batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction
        )

    def __call__(self, heads, stage, proposals, targets):
        proposals = _with_objectness(proposals)
        if heads.proposal_append_gt:
            proposals = append_ground_truth(proposals, targets)
        else:
            proposals = [_flagged(p) for p in proposals]
        return heads.label_and_sample(stage, proposals, targets, **self.settings)


@STAGE_SAMPLER_REGISTRY.register_as("refined")
class RefinedBoxes(StageSampler):
    """All boxes refined by the previous stage, labelled at this stage's IoU threshold, none
    added or dropped (the paper's re-sampling by regression, Sec. 4.3; Detectron2's
    CascadeROIHeads)."""

    keeps_order = True

    def __call__(self, heads, stage, proposals, targets):
        return [
            label_boxes(_flagged(p), t, heads.proposal_matchers[stage], heads.num_classes)
            for p, t in zip(proposals, targets)
        ]


@STAGE_SAMPLER_REGISTRY.register_as("resample")
class ResampleRefinedBoxes(SampleProposals):
    """The previous stage's refined boxes, re-sampled like the first stage (batch size and
    positive fraction) at this stage's IoU threshold. Ground truth is whatever
    LATER_STAGE_GT made of them: with "readd" (the default) the regressed copies of ground-truth
    boxes are gone and the exact ground truth is in, which is mmdetection's cascade."""

    def __call__(self, heads, stage, proposals, targets):
        proposals = [_flagged(p) for p in _with_objectness(proposals)]
        return heads.label_and_sample(stage, proposals, targets, **self.settings)


def build_stage_sampler(name: str, cfg=None) -> StageSampler:
    """The sampler registered as ``name`` in STAGE_SAMPLER_REGISTRY ("sample", "refined",
    "resample", or a paper's, e.g. "UniformIoUSampler"), built with ``cfg``."""
    if name not in STAGE_SAMPLER_REGISTRY:
        raise KeyError(
            f"MODEL.BOX_CASCADE.STAGE_SAMPLERS: unknown sampler '{name}'; known: "
            f"{sorted(STAGE_SAMPLER_REGISTRY.names())}"
        )
    return STAGE_SAMPLER_REGISTRY.get(name)(cfg)


def label_boxes(proposals: Instances, targets: Instances, matcher, num_classes: int) -> Instances:
    """Label every box of one image by ``matcher``: ``gt_classes`` (num_classes for background)
    and every ``gt_*`` field of the best-matching ground truth (zeros without ground truth).
    Returns the same Instances, with those fields set."""
    if len(targets) > 0:
        matched_idxs, labels = matcher(pairwise_iou(targets.gt_boxes, proposals.proposal_boxes))
        gt_classes = targets.gt_classes[matched_idxs]
        gt_classes[labels == 0] = num_classes
        proposals.gt_classes = gt_classes
        for name, value in targets.get_fields().items():
            if name.startswith("gt_") and name != "gt_classes":
                proposals.set(name, value[matched_idxs])
    else:
        device = proposals.proposal_boxes.device
        proposals.gt_classes = torch.full((len(proposals),), num_classes, device=device)
        proposals.gt_boxes = Boxes(torch.zeros((len(proposals), 4), device=device))
    return proposals


def _flagged(p: Instances) -> Instances:
    if not p.has("from_gt"):
        p.from_gt = torch.zeros(len(p), dtype=torch.bool, device=p.proposal_boxes.device)
    return p


def _with_objectness(proposals: List[Instances]) -> List[Instances]:
    # Detectron2 appends ground truth with an objectness logit, so every box needs one.
    for p in proposals:
        if not p.has("objectness_logits"):
            p.objectness_logits = torch.zeros(len(p), device=p.proposal_boxes.device)
    return proposals
