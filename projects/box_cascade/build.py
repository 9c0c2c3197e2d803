"""Building the box-cascade core from a config: stage loss weights, the checks of the stage lists,
per-stage heads and predictors (class-agnostic or class-specific), the mask strategy and its
heads, and loading checkpoints of Detectron2's heads. ``BoxCascadeBuild`` is a mixin of
:class:`~box_cascade.roi_heads.BoxCascadeROIHeads`."""

from typing import List

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from .masks import MaskStrategy, build_mask_strategy
from .samplers import build_stage_sampler

LOSS_WEIGHTINGS = ("decay", "avg", "explicit", "detectron2")


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


class BoxCascadeBuild:
    """``from_config`` and the ``_init_*`` builders of the core's ROI heads (a mixin placed before
    Detectron2's CascadeROIHeads), and its checkpoint compatibility."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        bc = cfg.MODEL.BOX_CASCADE
        num_stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        samplers = list(bc.STAGE_SAMPLERS) or ["sample"] + ["refined"] * (num_stages - 1)
        check_lengths(num_stages, **{"MODEL.BOX_CASCADE.STAGE_SAMPLERS": samplers})
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
        if bc.NUM_TEST_STAGES < 0:
            raise ValueError(
                f"MODEL.BOX_CASCADE.NUM_TEST_STAGES must be >= 0, got {bc.NUM_TEST_STAGES}"
            )
        ret["num_test_stages"] = bc.NUM_TEST_STAGES or num_stages
        ret.update(
            stage_loss_weights=stage_loss_weights(
                bc.LOSS_WEIGHTING, num_stages, bc.STAGE_LOSS_WEIGHTS
            ),
            scale_pooled_gradient=bc.LOSS_WEIGHTING == "detectron2",
            head_gradient_rescale=bc.HEAD_GRADIENT_RESCALE and bc.LOSS_WEIGHTING != "detectron2",
            stage_samplers=[build_stage_sampler(name, cfg) for name in samplers],
            later_stage_gt=bc.LATER_STAGE_GT,
            test_stage=bc.TEST_STAGE,
            test_ensemble=bc.TEST_ENSEMBLE,
            stagewise_test=bc.STAGEWISE_TEST,
            mask_strategy=cls.mask_strategy_from_config(cfg),
            iou_histogram_bins=bc.IOU_HISTOGRAM_BINS,
            iou_stats_period=bc.IOU_STATS_PERIOD or cfg.SOLVER.CHECKPOINT_PERIOD,
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
        check_lengths(len(ious), **{"MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS": weights})
        if cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0] != ious[0]:
            raise ValueError(
                "MODEL.ROI_HEADS.IOU_THRESHOLDS[0] must equal MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] "
                f"(the first stage's threshold): {cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS} vs {ious}"
            )
        ret = super()._init_box_head(agnostic_view(cfg), input_shape)
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
    def mask_strategy_from_config(cls, cfg) -> MaskStrategy:
        """The mask strategy of ``cfg``: the one registered in masks.MASK_STRATEGY_REGISTRY as
        MODEL.BOX_CASCADE.MASK_STRATEGY. It builds the mask head(s) and trains and runs them; a
        subclass whose stages share their modules gives its own (R3-CNN)."""
        num_stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
        return build_mask_strategy(cfg.MODEL.BOX_CASCADE.MASK_STRATEGY, num_stages)

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        """Detectron2's mask head, made into the strategy's mask module(s)."""
        ret = super()._init_mask_head(cfg, input_shape)
        if cfg.MODEL.MASK_ON:
            strategy = cls.mask_strategy_from_config(cfg)
            ret["mask_head"] = strategy.build_head(cfg, ret["mask_head"], input_shape)
        return ret

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


def check_lengths(num_stages: int, **lists) -> None:
    for key, values in lists.items():
        if len(values) != num_stages:
            raise ValueError(
                f"{key} has {len(values)} entries but there are {num_stages} stages "
                f"(MODEL.ROI_BOX_CASCADE_HEAD.IOUS): {list(values)}"
            )


def agnostic_view(cfg):
    """``cfg`` with CLS_AGNOSTIC_BBOX_REG True, for CascadeROIHeads._init_box_head's assertion;
    the predictors are rebuilt from the real ``cfg`` afterwards."""
    if cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        return cfg
    view = cfg.clone()
    view.defrost()
    view.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    return view


def check_memory_support(heads) -> None:
    """Heads that read per-box memory need their later stages on the previous stage's boxes, in
    order: configs that reorder or replace boxes between stages are refused, naming the key."""
    if not heads.reads_memory or heads.num_cascade_stages == 1:
        return
    name = type(heads).__name__
    reorder = [k + 1 for k, s in enumerate(heads.stage_samplers) if k and not s.keeps_order]
    if reorder:
        raise ValueError(
            f"MODEL.BOX_CASCADE.STAGE_SAMPLERS: stages {reorder} re-sample their boxes, but "
            f"{name} carries per-box memory from stage to stage: use 'refined' after the "
            "first stage"
        )
    if heads.later_stage_gt != "keep":
        raise ValueError(
            f"MODEL.BOX_CASCADE.LATER_STAGE_GT {heads.later_stage_gt!r} replaces the "
            f"regressed ground-truth boxes between stages, but {name} carries per-box memory "
            "from stage to stage: use 'keep'"
        )
