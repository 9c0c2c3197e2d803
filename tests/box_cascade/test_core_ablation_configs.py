"""Every ablation config of the paper resolves to the settings the paper gives (Tables 1, 3, 4 and
Sec. 6.3), written out here as a literal table; an ablation is one delta applied over the COCO
config and over its shapes version (Table 4's stage counts: a COCO file and a shapes file that
differ only in their base)."""

import pytest
from conftest import PROTOCOLS, ROOT, assert_under_the_protocol
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_roi_heads
from helpers.core import cfg_of

from box_cascade.samplers import STAGE_SAMPLER_REGISTRY
from cascade_zoo import setup_cfg
from cascade_zoo.config import documented_compositions
from cascade_zoo.engine.optim import build_optimizer

CONFIGS = ROOT / "configs" / "CascadeRCNN"
ABLATIONS = CONFIGS / "ablations"

# Sec. 6.3: mu = 0 and Sigma = (0.1, 0.1, 0.2, 0.2) for stage 1, Sigma/2, Sigma/3 after; a box
# delta divided by Sigma is Detectron2's regression weight 1/Sigma. A fourth stage (Table 4)
# takes Sigma/4 (the paper gives no value; this project's choice).
S1, S2, S3, S4 = (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15), (40, 40, 20, 20)
SAMPLE, REFINED, RESAMPLE = "sample", "refined", "resample"

# name: (IoU thresholds u_t, regression weights, loss weights w_t, head gradient factor 1/w_t of
#        each stage (None: the rule is off), training-box samplers, test ensemble, test stages,
#        box heads built, ground truth at later stages, smooth-L1 beta)
PAPER = {
    # the paper's Cascade R-CNN: u = 0.5/0.6/0.7, "decay" w_t = 1/2^(t-1), head rule, "1~3"
    "": ((0.5, 0.6, 0.7), (S1, S2, S3), (1, 0.5, 0.25), (1, 2, 4), (SAMPLE, REFINED, REFINED),
         "all_on_final", 3, 3, "readd", 1.0),
    # Table 4: number of stages
    "1_stage": ((0.5,), (S1,), (1,), (1,), (SAMPLE,), "all_on_final", 1, 1, "readd", 1.0),
    "2_stages": ((0.5, 0.6), (S1, S2), (1, 0.5), (1, 2), (SAMPLE, REFINED), "all_on_final", 2, 2,
                 "readd", 1.0),
    "4_stages": ((0.5, 0.6, 0.7, 0.75), (S1, S2, S3, S4), (1, 0.5, 0.25, 0.125), (1, 2, 4, 8),
                 (SAMPLE, REFINED, REFINED, REFINED), "all_on_final", 4, 4, "readd", 1.0),
    # Table 3: IoU thresholds and regression statistics; stage losses
    "equal_iou_fixed_stats": ((0.5, 0.5, 0.5), (S1, S1, S1), (1, 0.5, 0.25), (1, 2, 4),
                              (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "readd", 1.0),
    "rising_iou_fixed_stats": ((0.5, 0.6, 0.7), (S1, S1, S1), (1, 0.5, 0.25), (1, 2, 4),
                               (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "readd", 1.0),
    "equal_iou": ((0.5, 0.5, 0.5), (S1, S2, S3), (1, 0.5, 0.25), (1, 2, 4),
                  (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "readd", 1.0),
    "avg_loss": ((0.5, 0.6, 0.7), (S1, S2, S3), (1 / 3,) * 3, (3, 3, 3),
                 (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "readd", 1.0),
    # Table 1: iterative BBox (one head at u = 0.5 applied three times, last application's
    # scores) and the integral loss (one head and regressor, classifiers at 0.5/0.6/0.7, equal
    # weights, probabilities averaged)
    "iterative_bbox": ((0.5,), (S1,), (1,), (1,), (SAMPLE,), "none", 3, 1, "readd", 1.0),
    "integral_loss": ((0.5, 0.6, 0.7), (S1, S1, S1), (1, 1, 1), None, (SAMPLE, REFINED, REFINED),
                      "mean_probs", 3, 1, "keep", 1.0),
    # not the paper's: one key of the Detectron2-equivalent config each (the gap split by key)
    "d2_box_loss": ((0.5, 0.6, 0.7), (S1, S2, S3), (1, 0.5, 0.25), (1, 2, 4),
                    (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "readd", 0.0),
    "d2_loss_weighting": ((0.5, 0.6, 0.7), (S1, S2, S3), (1, 1, 1), None,
                          (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "readd", 1.0),
    "d2_later_stage_gt": ((0.5, 0.6, 0.7), (S1, S2, S3), (1, 0.5, 0.25), (1, 2, 4),
                          (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "keep", 1.0),
    # not in the paper's tables: class-specific regression; mmdetection's re-sampling
    "class_specific": ((0.5, 0.6, 0.7), (S1, S2, S3), (1, 0.5, 0.25), (1, 2, 4),
                       (SAMPLE, REFINED, REFINED), "all_on_final", 3, 3, "readd", 1.0),
    "resample": ((0.5, 0.6, 0.7), (S1, S2, S3), (1, 0.5, 0.25), (1, 2, 4),
                 (SAMPLE, RESAMPLE, RESAMPLE), "all_on_final", 3, 3, "readd", 1.0),
}  # fmt: skip


COCO, SHAPES = (
    CONFIGS / "cascade_rcnn_R_50_FPN_1x.yaml",
    CONFIGS / "cascade_rcnn_R_18_FPN_shapes.yaml",
)
# Table 9's mask strategies, deltas over the Cascade Mask R-CNN configs (strategy b)
MASK_STRATEGIES = ("last", "every")


def _files(name):
    """The COCO and the shapes config of an ablation, each as the files merged in order."""
    if not name:
        return [[COCO], [SHAPES]]
    return [[COCO, ABLATIONS / f"{name}.yaml"], [SHAPES, ABLATIONS / f"{name}.yaml"]]


def _heads(cfg):
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    shape = {f"p{i}": ShapeSpec(channels=channels, stride=2**i) for i in range(2, 7)}
    return build_roi_heads(cfg, shape)


def test_every_ablation_config_is_in_the_table():
    names = {p.name for p in ABLATIONS.glob("*.yaml")}
    listed = {files[-1].name for name in PAPER if name for files in _files(name)}
    assert names == listed | {f"mask_{strategy}.yaml" for strategy in MASK_STRATEGIES}


@pytest.mark.parametrize("name", list(PAPER), ids=lambda n: n or "paper")
def test_ablation_resolves_to_the_papers_settings(name):
    ious, weights, loss_w, factors, samplers, ensemble, test_stages, heads_built, gt, beta = PAPER[
        name
    ]
    for path in _files(name):
        cfg = setup_cfg(path)
        heads = _heads(cfg)
        assert tuple(m.thresholds[1] for m in heads.proposal_matchers) == ious, path
        got_weights = [heads.box_predictor[heads.plan.predictor_index(t)].box2box_transform.weights
                       for t in range(len(ious))]  # fmt: skip
        assert [tuple(map(float, w)) for w in got_weights] == [
            tuple(map(float, w)) for w in weights
        ]
        assert heads.plan.loss_weights == pytest.approx(loss_w)
        rule = heads.head_gradient_multipliers()
        if factors is None:
            assert rule == {}
        else:
            for t, factor in enumerate(factors):
                h = heads.plan.head_indices[t]
                assert rule[f"box_head.{h}.fc1.weight"] == pytest.approx(factor), (path, t)
                p = heads.plan.predictor_indices[t]
                assert rule[f"box_predictor.{p}.cls_score.weight"] == pytest.approx(factor)
        assert tuple(type(s) for s in heads.stage_samplers) == tuple(
            STAGE_SAMPLER_REGISTRY.get(s) for s in samplers
        )
        assert heads.test_ensemble == ensemble
        assert heads.plan.num_run_at_test == test_stages
        assert len(heads.box_head) == heads_built
        assert heads.later_stage_gt == gt
        assert heads.box_predictor[0].smooth_l1_beta == beta
        assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG == (name != "class_specific")
        # learning rate and weight decay: Detectron2's for every parameter (the head rule acts on
        # the gradient, not on the optimizer)
        groups = build_optimizer(cfg, heads).param_groups
        base = cfg.SOLVER.BASE_LR
        assert {g["lr"] for g in groups} <= {base, base * cfg.SOLVER.BIAS_LR_FACTOR}
        assert {g["weight_decay"] for g in groups} <= {
            cfg.SOLVER.WEIGHT_DECAY,
            cfg.SOLVER.WEIGHT_DECAY_NORM,
            cfg.SOLVER.WEIGHT_DECAY_BIAS,
        }


def test_the_three_detectron2_keys_and_its_test_ensemble_make_the_detectron2_config():
    """The gap deltas split the Detectron2-equivalent config's difference from the paper's: the
    three training keys together, with Detectron2's test ensemble (an eval variant of the paper
    model), are that config, key for key."""
    deltas = [ABLATIONS / f"d2_{k}.yaml" for k in ("box_loss", "loss_weighting", "later_stage_gt")]
    split = setup_cfg([SHAPES, *deltas], ["MODEL.BOX_CASCADE.TEST_ENSEMBLE", "mean_probs"])
    assert (
        split.dump() == setup_cfg(CONFIGS / "cascade_rcnn_R_18_FPN_detectron2_shapes.yaml").dump()
    )
    for delta in deltas:  # and each changes one key of the paper's config
        assert setup_cfg([SHAPES, delta]).dump() != setup_cfg(SHAPES).dump()


def test_detectron2_equivalent_configs_use_detectron2s_mechanics():
    for path in (CONFIGS / "cascade_rcnn_R_50_FPN_1x_detectron2.yaml",
                 CONFIGS / "cascade_rcnn_R_18_FPN_detectron2_shapes.yaml"):  # fmt: skip
        heads = _heads(cfg_of(path))
        assert heads.plan.loss_weights == (1.0, 1.0, 1.0) and heads.scale_pooled_gradient
        assert heads.head_gradient_multipliers() == {}
        assert heads.box_predictor[0].smooth_l1_beta == 0.0
        assert heads.later_stage_gt == "keep" and heads.test_ensemble == "mean_probs"


@pytest.mark.parametrize("name", [n for n in PAPER if n])
def test_an_ablation_is_one_delta_over_coco_and_shapes(name):
    coco, shapes = _files(name)  # the delta's header names the two configs it applies over
    rel = [[str(f.relative_to(ROOT / "configs")) for f in files] for files in (coco, shapes)]
    assert documented_compositions(coco[-1]) == rel


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
def test_mask_strategy_deltas_apply_over_the_cascade_mask_configs(strategy):
    delta = ABLATIONS / f"mask_{strategy}.yaml"
    for base in ("cascade_mask_rcnn_R_50_FPN_1x.yaml", "cascade_mask_rcnn_R_18_FPN_shapes.yaml"):
        assert [f"CascadeRCNN/{base}", f"CascadeRCNN/ablations/{delta.name}"] in (
            documented_compositions(delta)
        )
        cfg = setup_cfg([CONFIGS / base, delta])
        assert cfg.MODEL.MASK_ON and cfg.MODEL.BOX_CASCADE.MASK_STRATEGY == strategy
        assert setup_cfg(CONFIGS / base).MODEL.BOX_CASCADE.MASK_STRATEGY == "first"


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.stem)
@pytest.mark.parametrize("name", ["1_stage", "2_stages", "4_stages"])
def test_stage_count_benchmark_configs_are_the_ablations_under_the_protocol(name, protocol):
    """Table 4's rows under a benchmark protocol, against the protocol's three-stage Cascade
    R-CNN."""
    cfg = assert_under_the_protocol([SHAPES, ABLATIONS / f"{name}.yaml"], protocol, SHAPES)
    assert cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS == PAPER[name][0]
