"""What a stage is and what it hands on: the stage plan (which modules each stage runs, in
training and at test, with which loss weight) and the per-stage record the loops pass around.

Shapes: N images, R boxes over all images (Ri in image i), K foreground classes.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances

#: Predictions of a stage: at least "scores" (R, K+1) logits and "proposal_deltas" (R, 4 or 4K);
#: a predictor may return more named outputs (e.g. "iou" (R, 1)), which the loops carry along.
Predictions = Dict[str, torch.Tensor]


def as_predictions(output) -> Predictions:
    """A predictor's output as a Predictions mapping: Detectron2's (scores, deltas) tuple, or a
    mapping holding at least "scores" and "proposal_deltas"."""
    if isinstance(output, dict):
        missing = {"scores", "proposal_deltas"} - set(output)
        if missing:
            raise KeyError(f"a box predictor's outputs must include {sorted(missing)}")
        return dict(output)
    scores, deltas = output
    return {"scores": scores, "proposal_deltas": deltas}


def d2_pair(predictions: Predictions) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scores, proposal_deltas): what Detectron2's FastRCNNOutputLayers methods take."""
    return predictions["scores"], predictions["proposal_deltas"]


@dataclass
class StageRecord:
    """One stage's pass over its boxes (training or test).

    Attributes:
        stage: 0-based stage (loop) index.
        proposals: per image, the boxes the stage ran on (in training, labelled with gt_* fields
            and ``from_gt``); the next stage starts from their regression.
        box_features: (R, C, P, P) pooled features at ``proposals``.
        predictions: the stage's outputs at ``proposals`` (see :data:`Predictions`).
        memory: per-box tensors (R, ...) the stage's head wrote for the next stage, aligned with
            ``proposals``.
        boxes: per image (Ri, 4), the regressed boxes (one per box, not per class).
        fg_scores: per image (Ri,), each box's foreground probability.
        branches: other modules of the stage trained on their own samples, by name (e.g. a
            regression branch on boxes generated around the ground truth, parallel modules);
            they never feed the next stage.
    """

    stage: int
    proposals: List[Instances]
    box_features: torch.Tensor
    predictions: Predictions
    memory: Dict[str, torch.Tensor] = field(default_factory=dict)
    boxes: Optional[List[torch.Tensor]] = None
    fg_scores: Optional[List[torch.Tensor]] = None
    branches: Dict[str, "StageRecord"] = field(default_factory=dict)

    @property
    def num_boxes(self) -> List[int]:
        return [len(p) for p in self.proposals]


@dataclass(frozen=True)
class StagePlan:
    """Which head and predictor each stage runs and its loss weight, for the T training stages;
    how many stages run at test and which one gives the boxes.

    The one rule for stages beyond the trained ones (test loops of an iterated or shared head):
    stage t >= T runs the modules of the last training stage, t = T - 1.
    """

    head_indices: Tuple[int, ...]
    predictor_indices: Tuple[int, ...]
    loss_weights: Tuple[float, ...]
    num_test_stages: int
    test_stage: int = -1  # 1-based output stage at test, -1: the last test stage

    def __post_init__(self):
        n = len(self.loss_weights)
        for name in ("head_indices", "predictor_indices"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"StagePlan: {name} must have one entry per stage ({n})")
        if self.num_test_stages < 1:
            raise ValueError(
                f"MODEL.BOX_CASCADE.NUM_TEST_STAGES must be >= 1 (or 0 for the training stages), "
                f"got {self.num_test_stages}"
            )
        if not (self.test_stage == -1 or 1 <= self.test_stage <= self.num_test_stages):
            raise ValueError(
                f"MODEL.BOX_CASCADE.TEST_STAGE must be -1 or in 1..{self.num_test_stages}, "
                f"got {self.test_stage}"
            )

    @property
    def num_train_stages(self) -> int:
        return len(self.loss_weights)

    @property
    def num_run_at_test(self) -> int:
        """Stages that run at test time: up to the output stage."""
        return self.num_test_stages if self.test_stage == -1 else self.test_stage

    def trained_stage(self, stage: int) -> int:
        """The training stage whose modules ``stage`` runs."""
        return min(stage, self.num_train_stages - 1)

    def head_index(self, stage: int) -> int:
        return self.head_indices[self.trained_stage(stage)]

    def predictor_index(self, stage: int) -> int:
        return self.predictor_indices[self.trained_stage(stage)]

    def stages_sharing(self, indices: Sequence[int], index: int) -> List[int]:
        """The training stages whose entry in ``indices`` is ``index``."""
        return [t for t, i in enumerate(indices) if i == index]
