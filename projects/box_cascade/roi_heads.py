"""The box-cascade core: Cascade R-CNN / Cascade Mask R-CNN ROI heads (Cai & Vasconcelos, TPAMI)
generalised so that the other papers of this project are subclasses or configs of it.

Shapes: N images, R boxes over all images (Ri in image i), K foreground classes, T stages,
C channels, P pooler resolution.

A stage k (0-based here; 1-based in configs and reports) gets its training boxes from a stage
sampler, pools at them, runs a box head and a predictor (class logits + box deltas with its own
regression weights) and adds its losses times w_k; its regressed boxes (detached) are the next
stage's input. Each pass of a stage is a :class:`~box_cascade.stages.StageRecord`; which
modules a stage runs and how many stages run at test is the :class:`~box_cascade.stages.StagePlan`;
test-time ensembles are registered functions (``ensembles.py``), mask strategies registered
classes (``masks.py``), training boxes in ``samplers.py``.

Parameter names are Detectron2's CascadeROIHeads' (``box_head.k``, ``box_predictor.k``,
``mask_head``), so a Detectron2 Cascade R-CNN checkpoint loads as it is.

Extension points (each pinned by a contract test in tests/box_cascade/test_extension_points.py):
``stage_features`` (per-box memory), ``stage_samples`` / ``run_branches`` / ``stage_losses``
(branches trained on their own samples, parallel modules), ``predict`` (merging parallel
modules at test), ``rescore`` (scores from extra outputs, before NMS), the stage plan (shared
modules, test loops), ``rcnn_parameter_names`` (gradient schedules such as RGA's).
"""

from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from cascade_zoo.engine.gradients import GradientScale, group_by_value

from .build import BoxCascadeBuild, check_lengths, check_memory_support
from .ensembles import build_test_ensemble
from .head_rule import StageModule, head_gradient_multipliers, stage_module_owners
from .masks import MaskStrategy, build_mask_strategy
from .samplers import append_ground_truth, drop_ground_truth
from .stages import Predictions, StagePlan, StageRecord, as_predictions, d2_pair
from .statistics import TrainingIoUStats, TrainingIoUStatsHook

LATER_STAGE_GT = ("readd", "keep")

__all__ = ["BoxCascadeROIHeads", "LATER_STAGE_GT"]


@ROI_HEADS_REGISTRY.register()
class BoxCascadeROIHeads(BoxCascadeBuild, CascadeROIHeads):
    """Cascade R-CNN and Cascade Mask R-CNN of the TPAMI paper, complete (see module doc)."""

    #: Subclasses whose ``stage_features`` read the previous stage's per-box memory set this:
    #: their later stages must then run on the previous stage's boxes, in order (checked when
    #: built).
    reads_memory = False
    #: The per-stage modules, declared once: attribute -> StageModule (which stages each entry
    #: serves; whether it is part of the R-CNN module). The head rule's factors and their
    #: installation, and the parameters of gradient schedules (``rcnn_parameter_names``), all
    #: come from it. A subclass extends it, e.g.
    #: ``{**BoxCascadeROIHeads.STAGE_MODULES, "loc_head": StageModule("stage")}``, and passes
    #: the modules to ``__init__`` as ``stage_modules={"loc_head": ...}``.
    STAGE_MODULES = {"box_head": StageModule("head"), "box_predictor": StageModule("predictor")}

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
        head_gradient_rescale: bool = True,
        stage_samplers: List[Callable],
        later_stage_gt: str = "readd",
        test_stage: int = -1,
        test_ensemble: str = "all_on_final",
        stagewise_test: bool = False,
        mask_strategy: Union[str, MaskStrategy] = "first",
        iou_histogram_bins: int = 20,
        iou_stats_period: int = 0,
        stage_head_indices: Optional[List[int]] = None,
        stage_predictor_indices: Optional[List[int]] = None,
        num_test_stages: Optional[int] = None,
        stage_modules: Optional[Dict[str, Optional[nn.Module]]] = None,
        **kwargs,
    ):
        """
        Args (beyond CascadeROIHeads'):
            stage_loss_weights: w_t for each of the T training stages.
            scale_pooled_gradient: Detectron2's scheme: scale the pooled features' gradient by
                1/T in each stage in training (use with weights of 1).
            head_gradient_rescale: the paper's head rule: stage t's head (box head, predictor, and
                its mask head when the mask strategy has one per stage) gets its gradient times
                1/w_t.
            stage_samplers: per training stage, a callable giving its training boxes
                (see samplers.py).
            later_stage_gt: one of LATER_STAGE_GT (see samplers.py).
            test_stage: 1-based output stage at test time, -1 for the last.
            test_ensemble: a name in TEST_ENSEMBLE_REGISTRY.
            stagewise_test: also return per-stage detections and proposals at test time.
            mask_strategy: a masks.MaskStrategy, or its name in MASK_STRATEGY_REGISTRY (Fig. 6
                b/c/d); it trains and runs ``mask_head``, which it built (``build_head``).
            iou_histogram_bins: bins of the training-box IoU histograms.
            iou_stats_period: iterations between writes of the IoU statistics (0: never
                periodically, only at the end).
            stage_head_indices: for each stage, the index of the box head it uses (default: its
                own). Stages may share modules.
            stage_predictor_indices: the same for the predictors (default: stage_head_indices).
            num_test_stages: stages run at test time (default: T); stages beyond T run the
                last training stage's modules (StagePlan).
            stage_modules: a subclass's per-stage modules by attribute name (each declared in
                its STAGE_MODULES; None: absent), set before the head rule is installed.
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
        heads = list(stage_head_indices or range(num_stages))
        predictors = list(stage_predictor_indices or heads)
        check_lengths(
            num_stages,
            stage_loss_weights=stage_loss_weights,
            stage_samplers=stage_samplers,
            stage_head_indices=heads,
            stage_predictor_indices=predictors,
        )
        if max(heads) >= len(self.box_head) or max(predictors) >= len(self.box_predictor):
            raise ValueError("stage_head_indices / stage_predictor_indices exceed the modules")
        self.plan = StagePlan(
            head_indices=tuple(heads),
            predictor_indices=tuple(predictors),
            loss_weights=tuple(float(w) for w in stage_loss_weights),
            num_test_stages=num_test_stages or num_stages,
            test_stage=test_stage,
        )
        build_test_ensemble(test_ensemble)  # an unknown name fails here, naming the key
        if isinstance(mask_strategy, str):
            mask_strategy = build_mask_strategy(mask_strategy, num_stages)
        if later_stage_gt not in LATER_STAGE_GT:
            raise ValueError(
                f"MODEL.BOX_CASCADE.LATER_STAGE_GT must be one of {LATER_STAGE_GT}, "
                f"got {later_stage_gt!r}"
            )
        self.proposal_matchers = proposal_matchers
        self.num_cascade_stages = num_stages
        self.scale_pooled_gradient = scale_pooled_gradient
        self.stage_samplers = list(stage_samplers)
        self.later_stage_gt = later_stage_gt
        self.test_ensemble = test_ensemble
        self.stagewise_test = stagewise_test
        self.mask_strategy = mask_strategy
        self.iou_stats = TrainingIoUStats(num_stages, iou_histogram_bins, proposal_matchers)
        self.iou_stats_period = iou_stats_period
        check_memory_support(self)
        own = {"box_head", "box_predictor"}
        undeclared = sorted(set(stage_modules or {}) - (set(self.STAGE_MODULES) - own))
        if undeclared:
            raise ValueError(
                f"{type(self).__name__}: stage modules {undeclared} are not declared in its "
                "STAGE_MODULES (or are the core's own)"
            )
        for name in self.STAGE_MODULES:  # in declaration order: parameter order is fixed
            if name not in own:
                setattr(self, name, (stage_modules or {}).get(name))
        self.head_rule = head_gradient_rescale
        self._gradient_scales = []
        self.install_head_rule()

    # ------------------------------------------------------------------ forward

    def forward(self, images, features, proposals, targets=None):
        del images
        if self.training:
            if targets is None:
                raise ValueError("BoxCascadeROIHeads needs targets in training")
            losses, records = self._forward_box_train(features, proposals, targets)
            stage_proposals = [r.proposals for r in records]
            if self.mask_on:
                mask_proposals = self.mask_training_proposals(records, targets)
                losses.update(self.mask_losses(features, mask_proposals))
            losses.update(self._forward_keypoint(features, stage_proposals[0]))
            return stage_proposals[0], losses
        pred_instances, extras = self._forward_box_test(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, extras

    def _forward_box_train(self, features, proposals, targets):
        """Returns the weighted losses of all stages and each stage's record."""
        features = [features[f] for f in self.box_in_features]
        self.iou_stats.record_proposals(proposals, targets)
        losses, records, memory = {}, [], {}
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals, memory = self.next_stage_inputs(records[-1], targets)
            samples = self.stage_samples(k, proposals, targets)
            self.iou_stats.record_stage(k, samples["main"])
            record = self.run_stage(k, features, samples.pop("main"), memory)
            record.branches = self.run_branches(record, features, samples)
            with get_event_storage().name_scope(f"stage{k}"):
                stage_losses = self.stage_losses(record)
            losses.update({f"{name}_stage{k}": v for name, v in stage_losses.items()})
            record.boxes, record.fg_scores = self.refine_boxes(record)
            records.append(record)
        return losses, records

    def _forward_box_test(self, features, proposals):
        """Returns the final detections and, when ``stagewise_test``, an extras dict with
        "stage_instances" (name -> per-image Instances) and "stage_proposals"."""
        features = [features[f] for f in self.box_in_features]
        records = self.run_test_stages(features, proposals)
        scores = build_test_ensemble(self.test_ensemble)(self, records)
        instances = self.detect(features, records[-1], scores)
        if not self.stagewise_test:
            return instances, {}
        per_stage = {f"stage{r.stage + 1}": self.detect(features, r) for r in records}
        per_stage["ensemble"] = instances
        stage_proposals = {"rpn": proposals}
        stage_proposals.update({f"stage{r.stage + 1}": _as_proposals(r) for r in records})
        return instances, {"stage_instances": per_stage, "stage_proposals": stage_proposals}

    def run_test_stages(self, features, proposals, num_stages: int = None) -> List[StageRecord]:
        """The test-time chain on ``proposals`` (pooled features from ``box_in_features``):
        stages 1..num_stages (default: up to the output stage), each refining the last."""
        records, memory = [], {}
        for k in range(num_stages or self.plan.num_run_at_test):
            if k > 0:
                proposals, memory = self.next_stage_inputs(records[-1])
            record = self.run_stage(k, features, proposals, memory)
            record.boxes, record.fg_scores = self.refine_boxes(record)
            records.append(record)
        return records

    # ------------------------------------------------------------------ one stage

    def stage_predictor(self, stage: int) -> nn.Module:
        """The box predictor that stage ``stage`` (0-based, test stages included) runs."""
        return self.box_predictor[self.plan.predictor_index(stage)]

    def stage_head(self, stage: int) -> nn.Module:
        """The box head that stage ``stage`` (0-based, test stages included) runs."""
        return self.box_head[self.plan.head_index(stage)]

    def pool(self, features: List[torch.Tensor], proposals: List[Instances]) -> torch.Tensor:
        """ROI features (R, C, P, P) at the proposals' boxes."""
        return self.box_pooler(features, [p.proposal_boxes for p in proposals])

    def stage_samples(self, stage: int, proposals, targets) -> Dict[str, List[Instances]]:
        """The named training sample sets of a stage. "main" (the stage sampler's boxes) trains
        the stage's head and is what the next stage refines; a subclass may add sets for other
        branches of the stage (``run_branches``), which never reach the next stage."""
        return {"main": self.stage_samplers[stage](self, stage, proposals, targets)}

    def label_and_sample(
        self, stage: int, proposals, targets, batch_size_per_image=None, positive_fraction=None
    ) -> List[Instances]:
        """Detectron2's ``label_and_sample_proposals`` at stage ``stage``: matched with the
        stage's IoU threshold, sampled with ``batch_size_per_image`` / ``positive_fraction``
        (None: ROI_HEADS'), without appending ground truth (samplers do that with
        ``samplers.append_ground_truth``, which marks the boxes it adds)."""
        names = ("proposal_matcher", "proposal_append_gt", "batch_size_per_image",
                 "positive_fraction")  # fmt: skip
        saved = [getattr(self, n) for n in names]
        self.proposal_matcher = self.proposal_matchers[stage]
        self.proposal_append_gt = False
        if batch_size_per_image is not None:
            self.batch_size_per_image = batch_size_per_image
        if positive_fraction is not None:
            self.positive_fraction = positive_fraction
        try:
            return self.label_and_sample_proposals(proposals, targets)
        finally:
            for name, value in zip(names, saved):
                setattr(self, name, value)

    def run_stage(self, stage: int, features, proposals, memory) -> StageRecord:
        """Pool at ``proposals``, run the stage's head and predictor."""
        box_features = self.pool(features, proposals)
        predictions, memory_out = self.predict(stage, box_features, memory)
        return StageRecord(stage, proposals, box_features, predictions, memory_out)

    def run_branches(self, record: StageRecord, features, samples) -> Dict[str, StageRecord]:
        """Other modules of the stage, each on its own sample set from ``stage_samples``; their
        records go to ``record.branches`` (and their losses come from ``stage_losses``)."""
        if samples:
            raise NotImplementedError(
                f"{type(self).__name__}.stage_samples gave sample sets {sorted(samples)} besides "
                "'main', but run_branches does not run them"
            )
        return {}

    def pooled_for_modules(self, box_features: torch.Tensor) -> torch.Tensor:
        """The pooled features as a stage's modules read them: in training with
        ``scale_pooled_gradient`` (Detectron2's scheme), their gradient times 1/T. The stage's
        head and a subclass's branch on the same features (IoU-Uniform's) read them through
        this."""
        if self.scale_pooled_gradient and self.training:
            return _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        return box_features

    def weighted_stage_losses(self, stage: int, losses: Dict[str, torch.Tensor]):
        """``losses`` of training stage ``stage`` (any of its modules) times its weight w_t."""
        weight = self.plan.loss_weights[stage]
        return {k: v * weight for k, v in losses.items()} if weight != 1.0 else losses

    def predict(self, stage: int, box_features: torch.Tensor, memory: Dict):
        """The stage's modules on pooled features: (predictions, memory for the next stage)."""
        box_features = self.pooled_for_modules(box_features)
        x, memory_out = self.stage_features(stage, box_features, memory)
        return as_predictions(self.stage_predictor(stage)(x)), memory_out

    def stage_features(self, stage: int, box_features: torch.Tensor, memory: Dict):
        """The stage's head on pooled features (R, C, P, P) -> ((R, D), memory out). ``memory``
        is what the previous stage's head wrote for the same boxes (rows aligned with
        ``box_features``); what this returns as memory goes to the next stage (training drops
        the rows of boxes that become empty). Subclasses that read it set ``reads_memory``."""
        return self.stage_head(stage)(box_features), {}

    def stage_losses(self, record: StageRecord) -> Dict[str, torch.Tensor]:
        """The stage's predictor losses on its samples, times w_t. Subclasses with branches add
        the branches' losses."""
        losses = self.stage_predictor(record.stage).losses(
            d2_pair(record.predictions), record.proposals
        )
        return self.weighted_stage_losses(record.stage, losses)

    def stage_probs(
        self, record: StageRecord, predictions: Predictions = None, stage: int = None
    ) -> List[torch.Tensor]:
        """Per image (Ri, K+1) class probabilities at ``record``'s boxes: of ``predictions``
        (default: the record's) by the predictor of ``stage`` (default: the record's)."""
        predictor = self.stage_predictor(record.stage if stage is None else stage)
        return predictor.predict_probs(d2_pair(predictions or record.predictions), record.proposals)

    def refine_boxes(self, record: StageRecord) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The stage's regressed boxes, one per input box (R_i, 4) per image, and each box's
        foreground probability. With class-specific regression the box of the ground-truth class
        is taken for positives in training, else that of the most probable foreground class."""
        predictor = self.stage_predictor(record.stage)
        pair, proposals = d2_pair(record.predictions), record.proposals
        boxes = predictor.predict_boxes(pair, proposals)
        probs = predictor.predict_probs(pair, proposals)
        fg_scores = [1.0 - p[:, -1] for p in probs]
        if predictor.bbox_pred.out_features == 4:  # class-agnostic
            return list(boxes), fg_scores
        out = []
        for b, p, props in zip(boxes, probs, proposals):
            cls = p[:, :-1].argmax(dim=1)
            if self.training and props.has("gt_classes"):
                gt = props.gt_classes
                cls = torch.where(gt < self.num_classes, gt, cls)
            out.append(b.view(len(b), -1, 4)[torch.arange(len(b), device=b.device), cls])
        return out, fg_scores

    def next_stage_inputs(self, record: StageRecord, targets=None):
        """The next stage's proposals from ``record``'s regressed boxes (detached and clipped;
        in training, empty boxes dropped as Detectron2 does, and ground truth handled by
        ``later_stage_gt``) and the memory rows that go with them."""
        proposals, keeps = [], []
        for b, s, props in zip(record.boxes, record.fg_scores, record.proposals):
            b = Boxes(b.detach())
            b.clip(props.image_size)
            p = Instances(props.image_size, proposal_boxes=b, objectness_logits=s.detach())
            if self.training:
                if props.has("from_gt"):
                    p.from_gt = props.from_gt
                keep = b.nonempty()
                p = p[keep]
                keeps.append(keep)
            proposals.append(p)
        memory = record.memory
        if self.training:
            if memory:
                keep = cat(keeps)
                memory = {name: value[keep] for name, value in memory.items()}
            if self.later_stage_gt == "readd":
                proposals = append_ground_truth(drop_ground_truth(proposals), targets)
        return proposals, memory

    # ------------------------------------------------------------------ inference

    def detect(self, features, record: StageRecord, probs=None) -> List[Instances]:
        """Detections from a stage's regression of its boxes and class probabilities ``probs``
        (default: the stage's own), rescored (``rescore``), then per-class NMS."""
        predictor = self.stage_predictor(record.stage)
        boxes = predictor.predict_boxes(d2_pair(record.predictions), record.proposals)
        probs = self.stage_probs(record) if probs is None else probs
        score_thresh = predictor.test_score_thresh
        scores = self.rescore(features, record, boxes, probs, score_thresh)
        instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            [p.image_size for p in record.proposals],
            self.nms_score_thresh(score_thresh),
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return instances

    def rescore(self, features, record: StageRecord, boxes, probs, score_thresh: float):
        """Scores that NMS ranks, per image (Ri, K+1), from the class probabilities ``probs``, the
        output stage's ``record`` (its extra predictor outputs) and regressed ``boxes`` (per
        image, (Ri, 4) or (Ri, 4K)); ``features`` allow re-pooling; ``score_thresh`` is the
        test score threshold (ROI_HEADS.SCORE_THRESH_TEST). Identity here."""
        return probs

    def nms_score_thresh(self, score_thresh: float) -> float:
        """The score threshold NMS applies to what ``rescore`` returns: the test threshold here.
        A subclass whose ``rescore`` applies the threshold itself returns one that keeps every
        score it let through."""
        return score_thresh

    # ------------------------------------------------------------------ masks

    def mask_training_proposals(self, records: List[StageRecord], targets) -> List[List[Instances]]:
        """Per training stage, the labelled boxes whose positives may train the mask branch (the
        strategy picks the stages): here each stage's own training samples, its input boxes, as
        Cascade Mask R-CNN does. A subclass may give other boxes (e.g. the stage's output)."""
        del targets
        return [r.proposals for r in records]

    def mask_losses(self, features, stage_proposals) -> Dict[str, torch.Tensor]:
        """The mask losses in training, from each training stage's labelled boxes
        (``stage_proposals``), under the mask strategy (masks.py)."""
        return self.mask_strategy.losses(self, features, stage_proposals)

    def mask_inputs(self, features, boxes):
        if self.mask_pooler is None:
            return {f: features[f] for f in self.mask_in_features}
        return self.mask_pooler([features[f] for f in self.mask_in_features], boxes)

    def _forward_mask(self, features, instances):
        """Detectron2's hook: at test, the final boxes' masks by the mask strategy."""
        if self.training or not self.mask_on:
            return super()._forward_mask(features, instances)
        return self.mask_strategy.inference(self, features, instances)

    # ------------------------------------------------------------------ trainer contract

    def training_hooks(self) -> list:
        """The IoU statistics writer (cascade_zoo.engine.contract)."""
        return [TrainingIoUStatsHook(self.iou_stats, self.iou_stats_period)]

    def stage_modules(self) -> Dict[str, StageModule]:
        """The declared per-stage modules (STAGE_MODULES) and, when the mask strategy has one
        mask head per stage ("every"), ``mask_head`` (not part of the R-CNN module)."""
        out = dict(self.STAGE_MODULES)
        mask_head = self.mask_strategy.stage_module() if self.mask_on else None
        if mask_head is not None:
            out["mask_head"] = mask_head
        return out

    def head_gradient_multipliers(self) -> Dict[str, float]:
        """The paper's head rule as a gradient factor per parameter name (head_rule.py) over
        every declared per-stage module; {} when it is off. Installed on the parameters when
        the heads are built."""
        if not self.head_rule:
            return {}
        declarations = self.stage_modules()
        modules = {name: getattr(self, name, None) for name in declarations}
        owners = stage_module_owners(modules, declarations, self.plan)
        return head_gradient_multipliers(self.plan, [n for n, _ in self.named_parameters()], owners)

    def install_head_rule(self) -> None:
        """Install the head rule's gradient factors (``head_gradient_multipliers``) on the
        parameters (once, when the heads are built)."""
        params = dict(self.named_parameters())
        self._gradient_scales += [
            GradientScale([params[n] for n in names], factor)
            for factor, names in group_by_value(self.head_gradient_multipliers())
        ]

    @property
    def rcnn_module_prefixes(self) -> Tuple[str, ...]:
        """Parameter-name prefixes of the R-CNN module: the declared modules with ``rcnn``."""
        return tuple(f"{name}." for name, d in self.STAGE_MODULES.items() if d.rcnn)

    def rcnn_parameter_names(self) -> List[str]:
        """The R-CNN module's parameters (cascade_zoo.engine.contract): every stage's box head
        and predictor, and every module under ``rcnn_module_prefixes``."""
        prefixes = tuple(self.rcnn_module_prefixes)
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes)]


def _as_proposals(record: StageRecord) -> List[Instances]:
    """A stage's regressed boxes as proposals (clipped), scored by their foreground probability."""
    out = []
    for b, s, props in zip(record.boxes, record.fg_scores, record.proposals):
        boxes = Boxes(b.detach().clone())
        boxes.clip(props.image_size)
        out.append(Instances(props.image_size, proposal_boxes=boxes, objectness_logits=s))
    return out
