"""IoU-Uniform R-CNN's ROI heads (Fig. 4b): in every stage of the box-cascade core, the stage's
box head classifies the sampled RPN proposals as usual, and a regression + IoU branch (two fc
layers, 4 class-agnostic deltas, one predicted IoU) trains on boxes generated around the ground
truth with a uniform IoU distribution (``sampler.py``), its regression loss weighted per IoU
interval (Eq. 2). At test the branch regresses the boxes, which the next stage refines; the
output boxes are scored by class probability x predicted IoU, the IoU predicted again on features
pooled at the regressed boxes (eliminating feature offsets, EFO, Sec. 3.2), before NMS.

Built on the core's extension points: a sample set of the stage's own (``stage_samples``,
``run_branches``, ``stage_losses``), an extra "iou" output of ``predict``, and ``rescore``.
With ``MODEL.IOU_UNIFORM.ENABLED`` False every override defers to the core.

Shapes: N images, R boxes (Ri in image i), K foreground classes, S generated samples, D the
branch's fc width, P the pooler resolution.
"""

from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import build_box_head
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from fvcore.nn import smooth_l1_loss
from torch import nn

from box_cascade import BoxCascadeROIHeads, StageRecord, build_stage_sampler
from box_cascade.head_rule import StageModule
from box_cascade.stages import d2_pair

from .sampler import per_stage_values, resample_evenly, sample_count

__all__ = [
    "IoUBranchPredictor",
    "IoUUniformROIHeads",
    "NoBoxRegression",
    "interval_weighted_smooth_l1",
    "iou_guided_scores",
]

SAMPLE_SOURCES = ("generated", "rpn")
BRANCH_PREFIXES = ("iou_head.", "iou_predictor.")
# The NMS threshold while the IoU-guided scores carry the score threshold themselves: below every
# kept score (>= 0), above the -1 of those that fail it.
KEEP_RESCORED = -0.5


class NoBoxRegression(nn.Module):
    """Stands in for the ``bbox_pred`` of a stage's classification predictor (the official code's
    ``with_reg=False``): no parameters, zero deltas, which the heads replace by the regression
    branch's; class-agnostic (``out_features`` 4), as the branch is."""

    out_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], 4))


class IoUBranchPredictor(nn.Module):
    """The branch's outputs from its fc features (R, D): "proposal_deltas" (R, 4), class-agnostic,
    and, with ``iou_output``, "iou" (R, 1), the predicted IoU with the ground truth (a sigmoid on
    it with ``sigmoid``)."""

    def __init__(self, input_shape: ShapeSpec, *, iou_output: bool = True, sigmoid: bool = False):
        super().__init__()
        dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.bbox_pred = nn.Linear(dim, 4)
        # Sec. 3.1: the regressor starts from N(0, 0.001) (Detectron2's init of its regressor)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.bbox_pred.bias, 0)
        self.iou_pred = nn.Linear(dim, 1) if iou_output else None
        if self.iou_pred is not None:
            nn.init.normal_(self.iou_pred.weight, std=0.01)
            nn.init.constant_(self.iou_pred.bias, 0)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = x.flatten(1)
        out = {"proposal_deltas": self.bbox_pred(x)}
        if self.iou_pred is not None:
            iou = self.iou_pred(x)
            out["iou"] = torch.sigmoid(iou) if self.sigmoid else iou
        return out


def interval_weighted_smooth_l1(
    pred_deltas: torch.Tensor,
    target_deltas: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
    mean_over_coordinates: bool = False,
) -> torch.Tensor:
    """Eq. 2: sum over the samples of w_j(i) x smooth L1 (summed over the 4 deltas), divided by
    the number of samples (S, 4), (S, 4), (S,) -> scalar; with ``mean_over_coordinates`` divided
    by 4 S instead (mmdetection's mean). 0, with the graph kept, without samples."""
    if len(pred_deltas) == 0:
        return pred_deltas.sum() * 0.0
    loss = smooth_l1_loss(pred_deltas, target_deltas, beta, reduction="none").sum(dim=1)
    loss = (loss * weights).sum() / len(pred_deltas)
    return loss / pred_deltas.shape[1] if mean_over_coordinates else loss


def iou_guided_scores(
    probs: torch.Tensor, ious: torch.Tensor, score_thresh: float, threshold_before_iou: bool = True
) -> torch.Tensor:
    """The scores NMS ranks (Sec. 3.2): class probability x predicted IoU (clamped to [0, 1]),
    (R, K+1) and (R, 1) -> (R, K+1). Entries failing ``score_thresh`` (tested on the probability
    with ``threshold_before_iou``, as the official code does, else on the product) are -1."""
    product = probs * ious.clamp(0.0, 1.0)
    passed = (probs if threshold_before_iou else product) > score_thresh
    return torch.where(passed, product, torch.full_like(product, -1.0))


@ROI_HEADS_REGISTRY.register()
class IoUUniformROIHeads(BoxCascadeROIHeads):
    """IoU-Uniform R-CNN on Faster R-CNN (one stage) or Cascade R-CNN (see module doc and
    config.py). The branch of stage t is ``iou_head.t`` (fc layers, as ``box_head.t``) and
    ``iou_predictor.t``; ``box_predictor.t`` only classifies."""

    #: ``iou_head.k`` / ``iou_predictor.k``: the branch, indexed like the core's box heads and
    #: predictors (None without the branch).
    STAGE_MODULES = {
        **BoxCascadeROIHeads.STAGE_MODULES,
        "iou_head": StageModule("head"),
        "iou_predictor": StageModule("predictor"),
    }

    @configurable
    def __init__(
        self,
        *,
        generator=None,
        reg_weights: Sequence[Sequence[float]] = (),
        reg_samples: str = "generated",
        iou_samples: str = "generated",
        efo: bool = True,
        threshold_before_iou: bool = True,
        test_iou_scoring: bool = True,
        samples_vs_rpn: float = 0.0,
        reg_mean_over_coordinates: bool = True,
        iou_loss_weight: float = 1.0,
        iou_smooth_l1_beta: float = 0.5,
        **kwargs,
    ):
        """
        Args (beyond BoxCascadeROIHeads'):
            stage_modules: ``iou_head`` and ``iou_predictor``, the branch's fc layers and
                IoUBranchPredictors (``nn.ModuleList``, one per box head / predictor of the
                core; the core's predictors then only classify: ``from_config`` gives them a
                NoBoxRegression); absent: no branch (the core as it is).
            generator: the stage sampler of the generated boxes (a UniformIoUSampler).
            reg_weights: per training stage, the regression loss weight of each IoU interval.
            reg_samples, iou_samples: what the regression / the IoU output train on, one of
                SAMPLE_SOURCES.
            efo: at test, the IoU predicted again at the regressed boxes.
            threshold_before_iou: the test score threshold applies to the class probability
                (else to the product with the IoU).
            test_iou_scoring: at test, scores are class probability x predicted IoU (False:
                the class probability alone).
            samples_vs_rpn: > 0: generated samples per image = this x the sampled positives.
            reg_mean_over_coordinates: the regression loss averaged over the 4 deltas as well.
            iou_loss_weight, iou_smooth_l1_beta: the IoU loss's weight and smooth L1 beta.
        """
        for name, value in (("REG_SAMPLES", reg_samples), ("IOU_SAMPLES", iou_samples)):
            if value not in SAMPLE_SOURCES:
                raise ValueError(
                    f"MODEL.IOU_UNIFORM.{name} must be one of {SAMPLE_SOURCES}, got {value!r}"
                )
        super().__init__(**kwargs)
        self.branch_on = self.iou_head is not None
        self.iou_prediction = self.branch_on and all(
            p.iou_pred is not None for p in self.iou_predictor
        )
        if efo and not self.iou_prediction:
            raise ValueError(
                "MODEL.IOU_UNIFORM.EFO re-runs the IoU branch at the regressed boxes: it needs "
                "MODEL.IOU_UNIFORM.ENABLED and MODEL.IOU_UNIFORM.IOU_PREDICTION True"
            )
        self.efo = efo
        self.reg_samples = reg_samples
        self.iou_samples = iou_samples
        self.threshold_before_iou = threshold_before_iou
        self.test_iou_scoring = test_iou_scoring
        self.samples_vs_rpn = samples_vs_rpn
        self.reg_mean_over_coordinates = reg_mean_over_coordinates
        self.iou_loss_weight = iou_loss_weight
        self.iou_smooth_l1_beta = iou_smooth_l1_beta
        self.reg_weights = [tuple(float(w) for w in ws) for ws in reg_weights]
        self.generator = generator
        if not self.branch_on:
            return
        if len(self.iou_head) != len(self.box_head) or len(self.iou_predictor) != len(
            self.box_predictor
        ):
            raise ValueError("one IoU-branch head and predictor per box head and predictor")
        if len(self.reg_weights) != self.num_cascade_stages:
            raise ValueError(
                f"MODEL.IOU_UNIFORM.REG_WEIGHTS has {len(self.reg_weights)} entries but there "
                f"are {self.num_cascade_stages} stages (MODEL.ROI_BOX_CASCADE_HEAD.IOUS)"
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        iu = cfg.MODEL.IOU_UNIFORM
        ret.update(
            efo=iu.EFO,
            reg_samples=iu.REG_SAMPLES,
            iou_samples=iu.IOU_SAMPLES,
            threshold_before_iou=iu.THRESHOLD_BEFORE_IOU,
            test_iou_scoring=iu.TEST_IOU_SCORING,
            samples_vs_rpn=iu.NUM_SAMPLES_VS_RPN,
            reg_mean_over_coordinates=iu.REG_LOSS_MEAN_OVER_COORDINATES,
            iou_loss_weight=iu.IOU_LOSS_WEIGHT,
            iou_smooth_l1_beta=iu.IOU_SMOOTH_L1_BETA,
        )
        if iu.NUM_SAMPLES_VS_RPN < 0:
            raise ValueError(
                f"MODEL.IOU_UNIFORM.NUM_SAMPLES_VS_RPN must be >= 0, got {iu.NUM_SAMPLES_VS_RPN}"
            )
        if not iu.ENABLED:
            return ret
        generator = build_stage_sampler("UniformIoUSampler", cfg)  # checks the generation keys
        num_stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        weights = per_stage_values(cfg, "REG_WEIGHTS", num_stages)
        for k, (ws, settings) in enumerate(zip(weights, generator.settings)):
            if len(ws) != len(settings.intervals) or min(ws) < 0:
                raise ValueError(
                    f"MODEL.IOU_UNIFORM.REG_WEIGHTS: stage {k + 1} needs one weight >= 0 per "
                    f"interval ({len(settings.intervals)} in MODEL.IOU_UNIFORM.INTERVALS), got "
                    f"{list(ws)}"
                )
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooled = ShapeSpec(channels=channels, height=resolution, width=resolution)
        heads = [build_box_head(cfg, pooled) for _ in ret["box_heads"]]
        predictors = [
            IoUBranchPredictor(h.output_shape, iou_output=iu.IOU_PREDICTION, sigmoid=iu.IOU_SIGMOID)
            for h in heads[: len(ret["box_predictors"])]
        ]
        for predictor in ret["box_predictors"]:  # the stages' own predictors only classify
            predictor.bbox_pred = NoBoxRegression()
        ret.update(
            stage_modules={
                "iou_head": nn.ModuleList(heads),
                "iou_predictor": nn.ModuleList(predictors),
            },
            generator=generator,
            reg_weights=weights,
        )
        return ret

    # ------------------------------------------------------------------ the branch

    @property
    def _branch_trains_on_rpn(self) -> bool:
        return self.reg_samples == "rpn" or (self.iou_prediction and self.iou_samples == "rpn")

    @property
    def _needs_generated(self) -> bool:
        return self.reg_samples == "generated" or (
            self.iou_prediction and self.iou_samples == "generated"
        )

    def branch_predict(self, stage: int, box_features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The stage's regression + IoU branch on pooled features (R, C, P, P): "proposal_deltas"
        (R, 4) and "iou" (R, 1)."""
        box_features = self.pooled_for_modules(box_features)
        head = self.iou_head[self.plan.head_index(stage)]
        return self.iou_predictor[self.plan.predictor_index(stage)](head(box_features))

    def predict(self, stage, box_features, memory):
        """The class logits of the stage's box head and the branch's deltas and IoU on the same
        boxes (in training without gradient unless the branch trains on them)."""
        predictions, memory = super().predict(stage, box_features, memory)
        if not self.branch_on:
            return predictions, memory
        grad = torch.is_grad_enabled() and (not self.training or self._branch_trains_on_rpn)
        with torch.set_grad_enabled(grad):
            predictions.update(self.branch_predict(stage, box_features))
        return predictions, memory

    def stage_samples(self, stage, proposals, targets):
        """The sets "main" (the stage sampler's proposals, for classification) and "generated"
        (the boxes generated around the ground truth; Table 5: a multiple of main's positives)."""
        samples = super().stage_samples(stage, proposals, targets)
        if not (self.branch_on and self._needs_generated):
            return samples
        generated = self.generator(self, stage, proposals, targets)
        if self.samples_vs_rpn > 0:
            generated = [
                resample_evenly(g, sample_count(int((m.gt_classes < self.num_classes).sum()),
                                                self.samples_vs_rpn))
                for g, m in zip(generated, samples["main"])
            ]  # fmt: skip
        samples["generated"] = generated
        return samples

    def run_branches(self, record, features, samples):
        samples = dict(samples)
        generated = samples.pop("generated", None)
        branches = super().run_branches(record, features, samples)
        if generated is not None:
            box_features = self.pool(features, generated)
            predictions = self.branch_predict(record.stage, box_features)
            branches["generated"] = StageRecord(record.stage, generated, box_features, predictions)
        return branches

    def stage_losses(self, record):
        """loss_cls on the sampled proposals; loss_box_reg of the branch (Eq. 2 on the generated
        boxes, or Fast R-CNN's on the proposals' positives); loss_iou; all times w_t."""
        if not self.branch_on:
            return super().stage_losses(record)
        predictor = self.stage_predictor(record.stage)
        # Detectron2's losses with the branch's deltas: loss_cls, and loss_box_reg on the
        # proposals' positives (used when the regression trains on them)
        main = predictor.losses(d2_pair(record.predictions), record.proposals)
        losses = {"loss_cls": main["loss_cls"]}
        generated = record.branches.get("generated")
        if generated is not None:
            get_event_storage().put_scalar(
                "iou_uniform/generated_per_image",
                sum(generated.num_boxes) / max(len(generated.proposals), 1),
            )
        if self.reg_samples == "rpn":
            losses["loss_box_reg"] = main["loss_box_reg"]
        else:
            losses["loss_box_reg"] = self.generated_box_loss(generated) * predictor.loss_weight.get(
                "loss_box_reg", 1.0
            )
        if self.iou_prediction:
            predicted, target = self.iou_pairs(record)
            if len(target):
                loss = smooth_l1_loss(predicted, target, self.iou_smooth_l1_beta, reduction="mean")
            else:
                loss = predicted.sum() * 0.0
            losses["loss_iou"] = loss * self.iou_loss_weight
        return self.weighted_stage_losses(record.stage, losses)

    def generated_box_loss(self, record: StageRecord) -> torch.Tensor:
        """Eq. 2 on a stage's generated boxes: the deltas to their ground truth (the stage's
        regression weights), each box's smooth L1 times its interval's weight."""
        predictor = self.stage_predictor(record.stage)
        deltas = record.predictions["proposal_deltas"]
        if not record.proposals:
            return deltas.sum() * 0.0
        boxes = cat([p.proposal_boxes.tensor for p in record.proposals])
        gt = cat([p.gt_boxes.tensor for p in record.proposals])
        intervals = cat([p.iou_interval for p in record.proposals])
        table = torch.as_tensor(
            self.reg_weights[self.plan.trained_stage(record.stage)], device=deltas.device
        )
        return interval_weighted_smooth_l1(
            deltas,
            predictor.box2box_transform.get_deltas(boxes, gt),
            table[intervals],
            predictor.smooth_l1_beta,
            self.reg_mean_over_coordinates,
        )

    def iou_pairs(self, record: StageRecord):
        """(predicted IoU (S,), target IoU (S,)) of the samples the IoU output trains on: the
        generated boxes (their IoU with their ground truth) or the positives of the sampled
        proposals (theirs with the matched ground truth)."""
        if self.iou_samples == "generated":
            generated = record.branches["generated"]
            target = cat([p.target_ious for p in generated.proposals])
            return generated.predictions["iou"][:, 0], target
        predicted, target = [], []
        for iou, p in zip(
            record.predictions["iou"][:, 0].split(record.num_boxes), record.proposals
        ):
            if p.has("gt_boxes"):  # Detectron2 sets none in an image without ground truth
                fg = p.gt_classes < self.num_classes
                predicted.append(iou[fg])
                target.append(matched_pairwise_iou(p.proposal_boxes[fg], p.gt_boxes[fg]))
        if not predicted:
            return record.predictions["iou"][:0, 0], record.predictions["iou"].new_zeros(0)
        return cat(predicted), cat(target)

    # ------------------------------------------------------------------ inference

    def first_pass_ious(self, record: StageRecord) -> List[torch.Tensor]:
        """Per image (Ri, 1): the IoU the branch predicts at the boxes the stage ran on."""
        return list(record.predictions["iou"].split(record.num_boxes))

    def efo_ious(self, features, record: StageRecord, boxes, live=None) -> List[torch.Tensor]:
        """Sec. 3.2: per image (Ri, 1), the IoU the stage's branch predicts from features pooled
        again at its regressed ``boxes`` (per image (Ri, 4), clipped to the image as the
        detections are). ``live``: per image (Ri,) bool, the boxes to pool again; the others get
        IoU 0 (for boxes no score can keep, see ``rescore``)."""
        refined = []
        for i, (b, p) in enumerate(zip(boxes, record.proposals)):
            b = Boxes(b.reshape(-1, 4).clone())
            b.clip(p.image_size)
            refined.append(b if live is None else b[live[i]])
        pooled = self.box_pooler(features, refined)
        ious = self.branch_predict(record.stage, pooled)["iou"].split([len(b) for b in refined])
        if live is None:
            return list(ious)
        out = []
        for keep, iou in zip(live, ious):
            full = iou.new_zeros((len(keep), iou.shape[1]))
            full[keep] = iou
            out.append(full)
        return out

    def rescore(self, features, record, boxes, probs, score_thresh):
        """Class probability x predicted IoU (EFO's, or the first pass's), the score threshold
        applied (see ``iou_guided_scores``). EFO pools again only the boxes with a class
        probability above the threshold: the IoU is clamped to [0, 1], so it can only lower a
        score, and the other boxes are dropped whatever their IoU: the same detections, pooling
        again only the boxes that can be kept. Without ``test_iou_scoring``: the core's scores
        (the class probabilities)."""
        if not self.scores_with_iou:
            return super().rescore(features, record, boxes, probs, score_thresh)
        if self.efo:
            live = [(p[:, :-1] > score_thresh).any(dim=1) for p in probs]
            ious = self.efo_ious(features, record, boxes, live)
        else:
            ious = self.first_pass_ious(record)
        return [iou_guided_scores(p, i, score_thresh, self.threshold_before_iou)
                for p, i in zip(probs, ious)]  # fmt: skip

    def nms_score_thresh(self, score_thresh):
        """The IoU-guided scores hold the threshold already (failing entries are -1): NMS keeps
        every score >= 0."""
        return KEEP_RESCORED if self.scores_with_iou else score_thresh

    @property
    def scores_with_iou(self) -> bool:
        """Whether test scores are class probability x predicted IoU."""
        return self.iou_prediction and self.test_iou_scoring
