"""Test-time score ensembles over the stages, one registered function each, picked by
``MODEL.BOX_CASCADE.TEST_ENSEMBLE``; and the merge of parallel modules' predictions.

An ensemble is ``fn(heads, records) -> List[Tensor]``: from the stage records of one test pass
(stage 1 .. output stage, see :class:`~box_cascade.stages.StageRecord`), the class
probabilities (Ri, K+1) per image of the output stage's input boxes, whose regression gives the
output boxes.
"""

from typing import Dict, List

import torch
from detectron2.utils.registry import Registry

from .stages import Predictions, StageRecord

TEST_ENSEMBLE_REGISTRY = Registry("TEST_ENSEMBLE")
TEST_ENSEMBLE_REGISTRY.__doc__ = "Test-time score ensembles over cascade stages (see module doc)."


def register_test_ensemble(name: str):
    """Register the decorated function in TEST_ENSEMBLE_REGISTRY under ``name``, its config name
    (fvcore's registry keys by ``__name__``)."""

    def deco(fn):
        fn.__name__ = name
        return TEST_ENSEMBLE_REGISTRY.register(fn)

    return deco


def _mean(per_stage: List[List[torch.Tensor]]) -> List[torch.Tensor]:
    return [sum(s) * (1.0 / len(per_stage)) for s in zip(*per_stage)]


@register_test_ensemble("none")
def output_stage_only(heads, records: List[StageRecord]) -> List[torch.Tensor]:
    """The output stage's own probabilities."""
    return heads.stage_probs(records[-1])


@register_test_ensemble("mean_probs")
def mean_of_probabilities(heads, records: List[StageRecord]) -> List[torch.Tensor]:
    """Each stage's probabilities on its own input boxes, averaged (Detectron2's
    CascadeROIHeads)."""
    return _mean([heads.stage_probs(r) for r in records])


@register_test_ensemble("mean_logits")
def mean_of_logits(heads, records: List[StageRecord]) -> List[torch.Tensor]:
    """Each stage's logits on its own input boxes, averaged, then the output stage's softmax
    (mmdetection's cascade; R3-CNN's official code)."""
    last = records[-1]
    logits = sum(r.predictions["scores"] for r in records) / len(records)
    return heads.stage_probs(last, {**last.predictions, "scores": logits})


@register_test_ensemble("all_on_final")
def all_classifiers_on_final_boxes(heads, records: List[StageRecord]) -> List[torch.Tensor]:
    """The paper's "1~3" ensemble (Table 2): every stage's classifier applied to the output
    stage's input boxes, probabilities averaged. Earlier stages are re-run on those boxes in
    order, each with the memory the stage before it wrote on the same boxes, so heads that read
    the previous stage's per-box memory see what they see in training."""
    last = records[-1]
    per_stage, memory = [], {}
    for r in records[:-1]:
        predictions, memory = heads.predict(r.stage, last.box_features, memory)
        per_stage.append(heads.stage_probs(last, predictions, stage=r.stage))
    per_stage.append(heads.stage_probs(last))
    return _mean(per_stage)


def build_test_ensemble(name: str):
    if name not in TEST_ENSEMBLE_REGISTRY:
        known = sorted(n for n, _ in TEST_ENSEMBLE_REGISTRY)
        raise ValueError(
            f"MODEL.BOX_CASCADE.TEST_ENSEMBLE: unknown ensemble {name!r}; known: {known}"
        )
    return TEST_ENSEMBLE_REGISTRY.get(name)


def merge_branch_predictions(
    branches: Dict[str, Predictions], box_branch: str, how: str = "mean_logits"
) -> Predictions:
    """Parallel modules of one stage at test time: their class logits averaged ("mean_logits")
    or their element-wise maximum ("max_logits"), the box deltas (and any other output) of
    ``box_branch``."""
    if box_branch not in branches:
        raise KeyError(f"no branch named {box_branch!r} (have: {sorted(branches)})")
    logits = torch.stack([p["scores"] for p in branches.values()])
    if how == "mean_logits":
        merged = logits.mean(dim=0)
    elif how == "max_logits":
        merged = logits.max(dim=0).values
    else:
        raise ValueError(f"unknown branch merge {how!r}: 'mean_logits' or 'max_logits'")
    return {**branches[box_branch], "scores": merged}
