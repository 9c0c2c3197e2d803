"""The box-cascade core: Cascade R-CNN / Cascade Mask R-CNN ROI heads (Cai & Vasconcelos, TPAMI)
generalised so that the other papers of this project are subclasses or configs of it.

Shapes: N images, R boxes over all images (Ri in image i), K foreground classes, T stages,
C channels, P pooler resolution.

One stage k (0-based here; 1-based in configs and reports) is: its training boxes (a stage
sampler), a box head (pooled features -> features), a predictor (class logits + box deltas with
its own regression weights), a loss weight w_k. Between stages the boxes are refined by the
stage's deltas (detached). At test time an ensemble policy gives the scores, the output stage
the boxes.

Parameter names are Detectron2's CascadeROIHeads' (``box_head.k``, ``box_predictor.k``,
``mask_head``), so a Detectron2 Cascade R-CNN checkpoint loads as it is.

Extension points (see docs/architecture.md):
- ``_stage_features(stage, box_features, memory)``: the head of a stage; ``memory`` is a dict of
  per-box tensors (aligned with the stage's boxes) carried from stage to stage (FSCascade);
- ``stage_head_indices`` / ``num_test_stages``: stages sharing modules, loop counts decoupled
  from the thresholds (R3-CNN);
- ``_train_stage`` / ``_predict`` / ``_stage_losses``: what a stage runs in training (its
  samples, modules, losses) and at test (parallel modules with a merge policy, PRM);
- ``rcnn_parameter_names()`` and ``lr_multipliers()``: named parameter groups (RGA, stage LRs);
- ``STAGE_SAMPLER_REGISTRY``: training boxes per stage; ``_rescore(features, instances)``: a
  test-time rescoring step (IoU-Uniform).
"""

import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.modeling.roi_heads.mask_head import build_mask_head, mask_rcnn_inference
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from .samplers import build_stage_sampler
from .statistics import TrainingIoUStats, TrainingIoUStatsHook

logger = logging.getLogger(__name__)

LOSS_WEIGHTINGS = ("decay", "avg", "explicit", "detectron2")
TEST_ENSEMBLES = ("all_on_final", "mean_probs", "mean_logits", "none")
MASK_STRATEGIES = ("first", "last", "every")


def stage_loss_weights(scheme: str, num_stages: int, explicit=()) -> List[float]:
    """w_t of the paper's stage-loss schemes (Sec. 6.3): "decay" 1/2^(t-1), "avg" 1/T,
    "explicit" the given list, "detectron2" 1 (Detectron2 scales the pooled-feature gradient by
    1/T instead)."""
    if scheme == "decay":
        return [1.0 / 2**t for t in range(num_stages)]
    if scheme == "avg":
        return [1.0 / num_stages] * num_stages
    if scheme == "detectron2":
        return [1.0] * num_stages
    if scheme == "explicit":
        if len(explicit) != num_stages or min(explicit, default=0) <= 0:
            raise ValueError(
                "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS must hold one positive weight per stage "
                f"({num_stages} stages from MODEL.ROI_BOX_CASCADE_HEAD.IOUS), got {list(explicit)}"
            )
        return [float(w) for w in explicit]
    raise ValueError(
        f"MODEL.BOX_CASCADE.LOSS_WEIGHTING must be one of {LOSS_WEIGHTINGS}: {scheme!r}"
    )


@ROI_HEADS_REGISTRY.register()
class BoxCascadeROIHeads(CascadeROIHeads):
    """Cascade R-CNN and Cascade Mask R-CNN of the TPAMI paper, complete (see module doc)."""

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: nn.Module,
        box_heads: List[nn.Module],
        box_predictors: List[nn.Module],
        proposal_matchers: List[Matcher],
        stage_loss_weights: List[float],
        scale_pooled_gradient: bool = False,
        head_lr_rescale: bool = True,
        stage_samplers: List[Callable],
        test_stage: int = -1,
        test_ensemble: str = "all_on_final",
        stagewise_test: bool = False,
        mask_strategy: str = "first",
        iou_histogram_bins: int = 20,
        stage_head_indices: Optional[List[int]] = None,
        stage_predictor_indices: Optional[List[int]] = None,
        num_test_stages: Optional[int] = None,
        **kwargs,
    ):
        """
        Args (beyond CascadeROIHeads'):
            stage_loss_weights: w_t for each of the T training stages.
            scale_pooled_gradient: Detectron2's scheme: scale the pooled features' gradient by
                1/T in each stage (use with weights of 1).
            head_lr_rescale: multiply stage t's head learning rate by 1/w_t (paper).
            stage_samplers: per training stage, a callable giving its training boxes
                (see samplers.py).
            test_stage: 1-based output stage at test time, -1 for the last.
            test_ensemble: one of TEST_ENSEMBLES.
            stagewise_test: also return per-stage detections and proposals at test time.
            mask_strategy: one of MASK_STRATEGIES (Fig. 6 b/c/d).
            iou_histogram_bins: bins of the training-box IoU histograms.
            stage_head_indices: for each stage, the index of the box head it uses (default: its
                own). Stages may share modules.
            stage_predictor_indices: the same for the predictors (default: stage_head_indices).
            num_test_stages: stages run at test time (default: T, the training stages); may
                exceed T when heads are shared, the extra stages using the last stage's head.
        """
        num_stages = len(proposal_matchers)
        # StandardROIHeads.__init__ directly: CascadeROIHeads.__init__ only adds the requirement
        # of one head and predictor per stage, which shared modules relax.
        super(CascadeROIHeads, self).__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            proposal_matcher=proposal_matchers[0],
            **kwargs,
        )
        self.proposal_matchers = proposal_matchers
        self.num_cascade_stages = num_stages
        self.stage_head_indices = list(stage_head_indices or range(num_stages))
        self.stage_predictor_indices = list(stage_predictor_indices or self.stage_head_indices)
        self.num_test_stages = num_test_stages or num_stages
        _check_lengths(
            num_stages,
            stage_loss_weights=stage_loss_weights,
            stage_samplers=stage_samplers,
            stage_head_indices=self.stage_head_indices,
            stage_predictor_indices=self.stage_predictor_indices,
        )
        if max(self.stage_head_indices) >= len(self.box_head) or max(
            self.stage_predictor_indices
        ) >= len(self.box_predictor):
            raise ValueError("stage_head_indices / stage_predictor_indices exceed the modules")
        if test_ensemble not in TEST_ENSEMBLES:
            raise ValueError(f"MODEL.BOX_CASCADE.TEST_ENSEMBLE must be one of {TEST_ENSEMBLES}")
        if mask_strategy not in MASK_STRATEGIES:
            raise ValueError(f"MODEL.BOX_CASCADE.MASK_STRATEGY must be one of {MASK_STRATEGIES}")
        if not (test_stage == -1 or 1 <= test_stage <= self.num_test_stages):
            raise ValueError(
                f"MODEL.BOX_CASCADE.TEST_STAGE must be -1 or in 1..{self.num_test_stages}, "
                f"got {test_stage}"
            )
        self.stage_loss_weights = list(stage_loss_weights)
        self.scale_pooled_gradient = scale_pooled_gradient
        self.head_lr_rescale = head_lr_rescale
        self.stage_samplers = list(stage_samplers)
        self.test_stage = test_stage
        self.test_ensemble = test_ensemble
        self.stagewise_test = stagewise_test
        self.mask_strategy = mask_strategy
        self.iou_stats = TrainingIoUStats(num_stages, iou_histogram_bins, proposal_matchers)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        bc = cfg.MODEL.BOX_CASCADE
        num_stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        samplers = list(bc.STAGE_SAMPLERS) or ["sample"] + ["refined"] * (num_stages - 1)
        _check_lengths(num_stages, **{"MODEL.BOX_CASCADE.STAGE_SAMPLERS": samplers})
        if bc.SHARED_HEAD:
            weights = {tuple(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS}
            if len(weights) != 1:
                raise ValueError(
                    "MODEL.BOX_CASCADE.SHARED_HEAD needs one MODEL.ROI_BOX_CASCADE_HEAD."
                    f"BBOX_REG_WEIGHTS for all stages, got {sorted(weights)}"
                )
            ret["box_heads"] = ret["box_heads"][:1]
            ret["box_predictors"] = ret["box_predictors"][:1]
            ret["stage_head_indices"] = [0] * num_stages
        ret["num_test_stages"] = bc.NUM_TEST_STAGES or num_stages
        ret.update(
            stage_loss_weights=stage_loss_weights(
                bc.LOSS_WEIGHTING, num_stages, bc.STAGE_LOSS_WEIGHTS
            ),
            scale_pooled_gradient=bc.LOSS_WEIGHTING == "detectron2",
            head_lr_rescale=bc.HEAD_LR_RESCALE and bc.LOSS_WEIGHTING != "detectron2",
            stage_samplers=[build_stage_sampler(name, cfg) for name in samplers],
            test_stage=bc.TEST_STAGE,
            test_ensemble=bc.TEST_ENSEMBLE,
            stagewise_test=bc.STAGEWISE_TEST,
            mask_strategy=bc.MASK_STRATEGY,
            iou_histogram_bins=bc.IOU_HISTOGRAM_BINS,
        )
        return ret

    @classmethod
    def num_stages_at_test(cls, cfg) -> int:
        """How many stages run at test time under ``cfg`` (the stage-wise outputs' count)."""
        bc = cfg.MODEL.BOX_CASCADE
        run = bc.NUM_TEST_STAGES or len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        return run if bc.TEST_STAGE == -1 else bc.TEST_STAGE

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        """CascadeROIHeads' stages, with clear errors and class-specific regression allowed."""
        ious = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        _check_lengths(len(ious), **{"MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS": weights})
        if cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0] != ious[0]:
            raise ValueError(
                "MODEL.ROI_HEADS.IOU_THRESHOLDS[0] must equal MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] "
                f"(the first stage's threshold): {cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS} vs {ious}"
            )
        ret = super()._init_box_head(_agnostic_view(cfg), input_shape)
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            # CascadeROIHeads only builds class-agnostic predictors.
            ret["box_predictors"] = [
                FastRCNNOutputLayers(
                    cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=w)
                )
                for head, w in zip(ret["box_heads"], weights)
            ]
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        ret = super()._init_mask_head(cfg, input_shape)
        if cfg.MODEL.MASK_ON and cfg.MODEL.BOX_CASCADE.MASK_STRATEGY == "every":
            num_stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
            resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
            channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
            shape = ShapeSpec(channels=channels, width=resolution, height=resolution)
            ret["mask_head"] = nn.ModuleList(
                [ret["mask_head"]] + [build_mask_head(cfg, shape) for _ in range(num_stages - 1)]
            )
        return ret

    # ------------------------------------------------------------------ forward

    def forward(self, images, features, proposals, targets=None):
        del images
        if self.training:
            if targets is None:
                raise ValueError("BoxCascadeROIHeads needs targets in training")
            losses, stage_proposals = self._forward_box_train(features, proposals, targets)
            losses.update(self._forward_mask_train(features, stage_proposals))
            losses.update(self._forward_keypoint(features, stage_proposals[0]))
            return stage_proposals[0], losses
        pred_instances, extras = self._forward_box_test(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, extras

    def _forward_box_train(self, features, proposals, targets):
        """Returns the weighted losses of all stages and each stage's training boxes."""
        features = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        self.iou_stats.record_proposals(proposals, targets)
        memory: Dict[str, torch.Tensor] = {}
        losses, stage_proposals = {}, []
        boxes = scores = None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals, keep = self._next_stage_proposals(boxes, image_sizes, scores)
                memory = self._filter_memory(memory, keep, k)
            proposals, stage_losses, boxes, scores = self._train_stage(
                features, k, proposals, targets, memory
            )
            losses.update({f"{name}_stage{k}": v for name, v in stage_losses.items()})
            stage_proposals.append(proposals)
        return losses, stage_proposals

    def _train_stage(self, features, stage, proposals, targets, memory):
        """One training stage: sample its boxes, run it, its weighted losses, its refined boxes.
        Returns (training boxes, losses, refined boxes per image, their foreground scores).
        Override to run several modules in a stage, each on its own samples (PRM)."""
        proposals = self.stage_samplers[stage](self, stage, proposals, targets)
        self.iou_stats.record_stage(stage, proposals)
        predictions = self._run_stage(features, proposals, stage, memory)
        with get_event_storage().name_scope(f"stage{stage}"):
            losses = self._stage_losses(stage, predictions, proposals)
        boxes, scores = self._refine_boxes(stage, predictions, proposals)
        return proposals, losses, boxes, scores

    def _forward_box_test(self, features, proposals):
        """Returns the final detections and, when ``stagewise_test``, an extras dict with
        "stage_instances" (name -> per-image Instances) and "stage_proposals"."""
        features = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        num_run = self.num_test_stages if self.test_stage == -1 else self.test_stage
        memory: Dict[str, torch.Tensor] = {}
        outputs = []  # per stage: (stage, box_features, predictions, proposals)
        stage_proposals = {"rpn": proposals}
        boxes = scores = None
        for k in range(num_run):
            if k > 0:
                proposals, _ = self._next_stage_proposals(boxes, image_sizes, scores)
            box_features = self._pool(features, proposals)
            predictions = self._predict(k, box_features, memory)
            outputs.append((k, box_features, predictions, proposals))
            boxes, scores = self._refine_boxes(k, predictions, proposals)
            if self.stagewise_test:
                stage_proposals[f"stage{k + 1}"] = self._as_proposals(boxes, scores, image_sizes)

        last, _, last_predictions, last_proposals = outputs[-1]
        predictor = self._predictor(last)
        out_boxes = predictor.predict_boxes(last_predictions, last_proposals)
        scores = self._ensemble_scores(outputs)
        instances = self._inference(predictor, out_boxes, scores, image_sizes)
        extras = {}
        if self.stagewise_test:
            per_stage = {}
            for k, _, predictions, props in outputs:
                p = self._predictor(k)
                per_stage[f"stage{k + 1}"] = self._inference(
                    p, p.predict_boxes(predictions, props), p.predict_probs(predictions, props),
                    image_sizes,
                )  # fmt: skip
            per_stage["ensemble"] = instances
            extras = {"stage_instances": per_stage, "stage_proposals": stage_proposals}
        return self._rescore(features, instances), extras

    # ------------------------------------------------------------------ one stage

    def _predictor(self, stage: int) -> nn.Module:
        """The predictor of a stage; test stages beyond the trained ones use the last's."""
        indices = self.stage_predictor_indices
        return self.box_predictor[indices[min(stage, len(indices) - 1)]]

    def _head(self, stage: int) -> nn.Module:
        indices = self.stage_head_indices
        return self.box_head[indices[min(stage, len(indices) - 1)]]

    def _pool(self, features: List[torch.Tensor], proposals: List[Instances]) -> torch.Tensor:
        """ROI features (R, C, P, P) at the proposals' boxes."""
        return self.box_pooler(features, [p.proposal_boxes for p in proposals])

    def _stage_features(self, stage: int, box_features: torch.Tensor, memory: Dict) -> torch.Tensor:
        """The stage's head on pooled features (R, C, P, P) -> (R, D). Override to read or write
        ``memory``: a dict of (R, ...) tensors aligned with this stage's boxes, carried to the
        next stage (training drops the rows of boxes that become empty)."""
        return self._head(stage)(box_features)

    def _predict(self, stage: int, box_features: torch.Tensor, memory: Dict):
        """Head and predictor of a stage on pooled features: (logits (R, K+1), deltas)."""
        if self.scale_pooled_gradient:
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        return self._predictor(stage)(self._stage_features(stage, box_features, memory))

    def _run_stage(self, features, proposals, stage, memory=None):
        """Pool at the proposals and predict: the training path of one stage."""
        return self._predict(
            stage, self._pool(features, proposals), {} if memory is None else memory
        )

    def _stage_losses(self, stage: int, predictions, proposals) -> Dict[str, torch.Tensor]:
        """The predictor's losses for the stage, times w_t."""
        weight = self.stage_loss_weights[stage]
        losses = self._predictor(stage).losses(predictions, proposals)
        return {k: v * weight for k, v in losses.items()} if weight != 1.0 else losses

    def _refine_boxes(self, stage: int, predictions, proposals) -> Tuple[List[torch.Tensor], List]:
        """The stage's regressed boxes, one per input box (R_i, 4) per image, and each box's
        foreground probability. With class-specific regression the box of the ground-truth class
        is taken for positives in training, else that of the most probable foreground class."""
        predictor = self._predictor(stage)
        boxes = predictor.predict_boxes(predictions, proposals)
        probs = predictor.predict_probs(predictions, proposals)
        fg_scores = [1.0 - p[:, -1] for p in probs]
        if predictor.bbox_pred.out_features == 4:  # class-agnostic
            return boxes, fg_scores
        out = []
        for b, p, props in zip(boxes, probs, proposals):
            cls = p[:, :-1].argmax(dim=1)
            if self.training and props.has("gt_classes"):
                gt = props.gt_classes
                cls = torch.where(gt < self.num_classes, gt, cls)
            out.append(b.view(len(b), -1, 4)[torch.arange(len(b), device=b.device), cls])
        return out, fg_scores

    def _next_stage_proposals(self, boxes, image_sizes, scores):
        """The next stage's proposals from refined boxes: detached and clipped; in training,
        empty boxes are dropped (as Detectron2 does). Returns (proposals, per-image keep masks
        or None)."""
        proposals, keeps = [], []
        for b, size, s in zip(boxes, image_sizes, scores):
            b = Boxes(b.detach())
            b.clip(size)
            s = s.detach()
            keep = None
            if self.training:
                keep = b.nonempty()
                b, s = b[keep], s[keep]
            p = Instances(size)
            p.proposal_boxes = b
            p.objectness_logits = s
            proposals.append(p)
            keeps.append(keep)
        return proposals, (keeps if self.training else None)

    def _filter_memory(self, memory: Dict, keeps, stage: int) -> Dict:
        if not memory or keeps is None:
            return memory
        if not self.stage_samplers[stage].keeps_order:
            raise ValueError(
                f"Stage {stage + 1} re-samples its boxes, so per-box stage memory cannot follow "
                "them: use the 'refined' sampler for stages after the first"
            )
        keep = cat(keeps)
        return {name: value[keep] for name, value in memory.items()}

    # ------------------------------------------------------------------ inference

    def _ensemble_scores(self, outputs) -> List[torch.Tensor]:
        """Per-image class probabilities (Ri, K+1) of the output stage's boxes under the test
        ensemble policy. ``outputs``: per stage (stage, box_features, predictions, proposals)."""
        last, last_features, last_predictions, last_proposals = outputs[-1]
        if self.test_ensemble == "none" or len(outputs) == 1:
            return self._predictor(last).predict_probs(last_predictions, last_proposals)
        if self.test_ensemble == "mean_probs":
            per_stage = [self._predictor(k).predict_probs(p, props) for k, _, p, props in outputs]
            return [sum(s) * (1.0 / len(outputs)) for s in zip(*per_stage)]
        if self.test_ensemble == "mean_logits":
            logits = sum(p[0] for _, _, p, _ in outputs) / len(outputs)
            return self._predictor(last).predict_probs((logits, None), last_proposals)
        # all_on_final: every stage's classifier on the output stage's input boxes
        per_stage = []
        for k, _, _, _ in outputs:
            predictions = last_predictions if k == last else self._predict(k, last_features, {})
            per_stage.append(self._predictor(k).predict_probs(predictions, last_proposals))
        return [sum(s) * (1.0 / len(outputs)) for s in zip(*per_stage)]

    @staticmethod
    def _inference(predictor, boxes, scores, image_sizes) -> List[Instances]:
        instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return instances

    @staticmethod
    def _as_proposals(boxes, scores, image_sizes) -> List[Instances]:
        out = []
        for b, s, size in zip(boxes, scores, image_sizes):
            p = Instances(size)
            p.proposal_boxes = Boxes(b.detach().clone())
            p.proposal_boxes.clip(size)
            p.objectness_logits = s
            out.append(p)
        return out

    def _rescore(self, features: List[torch.Tensor], instances: List[Instances]):
        """Test-time rescoring of the final detections (identity here)."""
        return instances

    # ------------------------------------------------------------------ masks

    def _mask_stage_indices(self) -> List[int]:
        last = self.num_cascade_stages - 1
        return {"first": [0], "last": [last], "every": list(range(last + 1))}[self.mask_strategy]

    def _forward_mask_train(self, features, stage_proposals) -> Dict[str, torch.Tensor]:
        """Mask losses: on the first stage's, the last stage's, or every stage's positives."""
        if not self.mask_on:
            return {}
        if self.mask_strategy != "every":
            return self._forward_mask(features, stage_proposals[self._mask_stage_indices()[0]])
        losses = {}
        for k in self._mask_stage_indices():
            fg, _ = select_foreground_proposals(stage_proposals[k], self.num_classes)
            pooled = self._mask_inputs(features, [p.proposal_boxes for p in fg])
            loss = self.mask_head[k](pooled, fg)["loss_mask"]
            losses[f"loss_mask_stage{k}"] = loss * self.stage_loss_weights[k]
        return losses

    def _mask_inputs(self, features, boxes):
        if self.mask_pooler is None:
            return {f: features[f] for f in self.mask_in_features}
        return self.mask_pooler([features[f] for f in self.mask_in_features], boxes)

    def _forward_mask(self, features, instances):
        if self.training or not self.mask_on or self.mask_strategy != "every":
            return super()._forward_mask(features, instances)
        # Test, one mask head per stage: average their mask probabilities on the final boxes.
        pooled = self._mask_inputs(features, [x.pred_boxes for x in instances])
        probs = sum(torch.sigmoid(head.layers(pooled)) for head in self.mask_head) / len(
            self.mask_head
        )
        mask_rcnn_inference(torch.logit(probs, eps=1e-6), instances)
        return instances

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A single-stage model of Detectron2's StandardROIHeads names its head "box_head.fc1...";
        # with one head here it is "box_head.0.fc1...": accept the former, so that a Faster
        # R-CNN checkpoint loads into a one-stage core (e.g. for iterative BBox at test time).
        if len(self.box_head) == 1:
            for name in ("box_head.", "box_predictor."):
                old = prefix + name
                for key in [k for k in state_dict if k.startswith(old)]:
                    if not key[len(old) :].split(".")[0].isdigit():
                        state_dict[old + "0." + key[len(old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ training hooks

    def training_hooks(self, cfg) -> list:
        """Hooks the trainer adds (ZooTrainer asks every module): the IoU statistics writer."""
        period = cfg.MODEL.BOX_CASCADE.IOU_STATS_PERIOD or cfg.SOLVER.CHECKPOINT_PERIOD
        return [TrainingIoUStatsHook(self.iou_stats, cfg.OUTPUT_DIR, period)]

    # ------------------------------------------------------------------ parameter groups

    def rcnn_parameter_names(self) -> List[str]:
        """Names (relative to this module) of the R-CNN module's parameters: every stage's box
        head and predictor."""
        return [
            n for n, _ in self.named_parameters() if n.startswith(("box_head.", "box_predictor."))
        ]

    def lr_multipliers(self) -> Dict[str, float]:
        """Learning-rate multiplier per parameter name (relative to this module): 1/w_t for
        stage t's head with the paper's rule (``head_lr_rescale``)."""
        if not self.head_lr_rescale:
            return {}
        out = {}
        for k, weight in enumerate(self.stage_loss_weights):
            head, predictor = self.stage_head_indices[k], self.stage_predictor_indices[k]
            prefixes = [f"box_head.{head}.", f"box_predictor.{predictor}."]
            if self.mask_on and self.mask_strategy == "every":
                prefixes.append(f"mask_head.{k}.")
            for name, _ in self.named_parameters():
                if name.startswith(tuple(prefixes)):
                    if name in out and out[name] != 1.0 / weight:
                        raise ValueError(
                            f"{name} is shared by stages with different loss weights: give "
                            "shared heads one learning rate (HEAD_LR_RESCALE False)"
                        )
                    out[name] = 1.0 / weight
        return out


def _check_lengths(num_stages: int, **lists) -> None:
    for key, values in lists.items():
        if len(values) != num_stages:
            raise ValueError(
                f"{key} has {len(values)} entries but there are {num_stages} stages "
                f"(MODEL.ROI_BOX_CASCADE_HEAD.IOUS): {list(values)}"
            )


def _agnostic_view(cfg):
    """``cfg`` with CLS_AGNOSTIC_BBOX_REG True, for CascadeROIHeads._init_box_head's assertion;
    the predictors are rebuilt from the real ``cfg`` afterwards."""
    if cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        return cfg
    view = cfg.clone()
    view.defrost()
    view.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    return view
