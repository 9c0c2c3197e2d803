"""Proposal-generation hooks: how a cascade stage gets its training boxes.

A stage sampler is a class registered in ``STAGE_SAMPLER_REGISTRY``, built as ``cls(cfg)``
(``cfg`` may be None in tests) and called as ``sampler(heads, stage, proposals, targets)``:

- ``heads``: the :class:`BoxCascadeROIHeads` (its matchers, batch size, positive fraction);
- ``stage``: 0-based stage index;
- ``proposals``: per image, ``Instances`` with ``proposal_boxes`` (and ``objectness_logits``): the
  RPN proposals for the first stage, the previous stage's refined boxes otherwise;
- ``targets``: per image, the ground truth ``Instances``.

It returns, per image, the boxes the stage trains on, with ``gt_classes`` (background =
num_classes) and every ``gt_*`` field of the targets (``gt_boxes``, ``gt_masks``, ...) of the
matched ground truth. A paper adds its own (e.g. IoU-uniform jitter around the ground truth) by
registering a class; ``MODEL.BOX_CASCADE.STAGE_SAMPLERS`` picks one per stage.
"""

import contextlib
from typing import List

import torch
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.registry import Registry

STAGE_SAMPLER_REGISTRY = Registry("STAGE_SAMPLER")
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


@contextlib.contextmanager
def _matcher_of_stage(heads, stage: int):
    """Let Detectron2's label_and_sample_proposals (which uses ``heads.proposal_matcher``) match
    with the given stage's IoU threshold."""
    saved = heads.proposal_matcher
    heads.proposal_matcher = heads.proposal_matchers[stage]
    try:
        yield
    finally:
        heads.proposal_matcher = saved


@STAGE_SAMPLER_REGISTRY.register()
class SampleProposals(StageSampler):
    """Fast R-CNN sampling, as Detectron2's ``label_and_sample_proposals``: ground-truth boxes
    added to the proposals (ROI_HEADS.PROPOSAL_APPEND_GT), matched at the stage's IoU, then
    ROI_HEADS.BATCH_SIZE_PER_IMAGE boxes sampled with at most ROI_HEADS.POSITIVE_FRACTION
    positives. The first stage of the paper and of Detectron2. Registered as "sample"."""

    def __call__(self, heads, stage, proposals, targets):
        proposals = _with_objectness(proposals)
        with _matcher_of_stage(heads, stage):
            return heads.label_and_sample_proposals(proposals, targets)


@STAGE_SAMPLER_REGISTRY.register()
class RefinedBoxes(StageSampler):
    """All boxes refined by the previous stage, labelled at this stage's IoU threshold, none
    added or dropped (the paper's re-sampling by regression, Sec. 4.3; Detectron2's
    CascadeROIHeads). Registered as "refined"."""

    keeps_order = True

    def __call__(self, heads, stage, proposals, targets):
        return [
            label_boxes(p, t, heads.proposal_matchers[stage], heads.num_classes)
            for p, t in zip(proposals, targets)
        ]


@STAGE_SAMPLER_REGISTRY.register()
class ResampleRefinedBoxes(SampleProposals):
    """The previous stage's refined boxes plus the ground truth, re-sampled like the first stage
    (batch size and positive fraction) at this stage's IoU threshold, as mmdetection's cascade
    does. Registered as "resample"."""


# Names used in configs.
SAMPLER_NAMES = {
    "sample": SampleProposals,
    "refined": RefinedBoxes,
    "resample": ResampleRefinedBoxes,
}


def build_stage_sampler(name: str, cfg=None) -> StageSampler:
    """A sampler by its config name ("sample", "refined", "resample") or registered class name."""
    cls = SAMPLER_NAMES.get(name)
    if cls is None:
        try:
            cls = STAGE_SAMPLER_REGISTRY.get(name)
        except KeyError:
            known = sorted(set(SAMPLER_NAMES) | set(STAGE_SAMPLER_REGISTRY._obj_map))
            raise KeyError(
                f"MODEL.BOX_CASCADE.STAGE_SAMPLERS: unknown sampler '{name}'; known: {known}"
            ) from None
    return cls(cfg)


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


def _with_objectness(proposals: List[Instances]) -> List[Instances]:
    # Detectron2 appends ground truth with an objectness logit, so every box needs one.
    for p in proposals:
        if not p.has("objectness_logits"):
            p.objectness_logits = torch.zeros(len(p), device=p.proposal_boxes.device)
    return proposals
