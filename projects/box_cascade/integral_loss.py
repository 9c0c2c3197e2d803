"""The integral-loss detector that the paper compares Cascade R-CNN with (Table 1, Fig. 3d,
eq. 14), as a configuration of the core: one box head and one box regressor trained at the
first IoU threshold, and one classifier per threshold in U, all on the same boxes (no
refinement between "stages"); the classification losses are summed, and the classifiers'
probabilities averaged at test."""

from typing import Dict

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY

from .roi_heads import BoxCascadeROIHeads
from .samplers import RefinedBoxes
from .stages import StageRecord


@ROI_HEADS_REGISTRY.register()
class IntegralLossROIHeads(BoxCascadeROIHeads):
    """Stages = classifiers at the thresholds of ROI_BOX_CASCADE_HEAD.IOUS, sharing the first
    stage's box head and box regressor (``box_predictor.k.bbox_pred`` is
    ``box_predictor.0.bbox_pred``); each stage trains on the first stage's sampled boxes,
    re-labelled at its threshold."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        num_stages = len(ret["proposal_matchers"])
        if any(not isinstance(s, RefinedBoxes) for s in ret["stage_samplers"][1:]):
            raise ValueError(
                "IntegralLossROIHeads: stages after the first must use the 'refined' sampler "
                "(which here re-labels the same boxes)"
            )
        # The later "stages" re-label the first stage's boxes: nothing to refine, no ground truth
        # to re-add.
        ret["later_stage_gt"] = "keep"
        ret["box_heads"] = ret["box_heads"][:1]
        ret["stage_head_indices"] = [0] * num_stages
        ret["stage_predictor_indices"] = list(range(num_stages))
        first = ret["box_predictors"][0]
        for predictor in ret["box_predictors"][1:]:
            predictor.bbox_pred = first.bbox_pred  # one regressor, shared
            predictor.box2box_transform = first.box2box_transform
        return ret

    def refine_boxes(self, record: StageRecord):
        """No refinement: every classifier sees the boxes of the first stage."""
        probs = self.stage_probs(record)
        return [p.proposal_boxes.tensor for p in record.proposals], [1.0 - q[:, -1] for q in probs]

    def stage_losses(self, record: StageRecord) -> Dict[str, torch.Tensor]:
        """Eq. 14: a classification loss per threshold; the one regressor's loss only once."""
        losses = super().stage_losses(record)
        if record.stage > 0:
            losses.pop("loss_box_reg")
        return losses
