"""R3-CNN's configs: every ablation resolves to the paper's settings (Tables 1-3, written out here
as a literal table), each one delta applied over the COCO and the shapes mask config, the COCO
models' parameter counts against Mask R-CNN and Cascade Mask R-CNN (by arithmetic on the layer
sizes), bad configs stop with an error naming the key, and train_net trains and evaluates."""

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_train_net
from detectron2.modeling import build_model

from cascade_zoo import setup_cfg
from cascade_zoo.config import documented_compositions

D = ROOT / "configs" / "R3CNN"
ABLATIONS = D / "ablations"
W = "(10.0, 10.0, 5.0, 5.0)"
# name: (IoU per training loop, loss weight per loop, samplers, later-loop gt, test loops
# (0: L_t), test merge, mask information flow)
RESAMPLE = ["sample", "resample", "resample"]
TABLE = {
    "train_loops_1": ([0.5], [1.0], ["sample"], "readd", 0, "mean_logits", False),  # Table 3
    "train_loops_2": ([0.5, 0.6], [1.0, 0.75], RESAMPLE[:2], "readd", 0, "mean_logits", False),
    "train_loops_4": ([0.5, 0.6, 0.7, 0.8], [1.0, 0.75, 0.5, 0.25], RESAMPLE + ["resample"],
                      "readd", 0, "mean_logits", False),
    **{f"test_loops_{n}": ([0.5, 0.6, 0.7], [1.0, 0.75, 0.5], RESAMPLE, "readd", n,  # Table 2
                           "mean_logits", False) for n in (1, 2, 4, 5)},
    "carry_all": ([0.5, 0.6, 0.7], [1.0, 0.75, 0.5], ["sample", "refined", "refined"], "keep",
                  0, "mean_logits", False),
    "max_logits": ([0.5, 0.6, 0.7], [1.0, 0.75, 0.5], RESAMPLE, "readd", 0, "max_logits", False),
    "last_loop_scores": ([0.5, 0.6, 0.7], [1.0, 0.75, 0.5], RESAMPLE, "readd", 0, "none", False),
    "mask_info_flow": ([0.5, 0.6, 0.7], [1.0, 0.75, 0.5], RESAMPLE, "readd", 0, "mean_logits",
                       True),
}  # fmt: skip


COCO, SHAPES = D / "r3_cnn_mask_R_50_FPN_1x.yaml", D / "r3_cnn_mask_R_18_FPN_shapes.yaml"


def test_every_ablation_config_is_in_the_table():
    assert {p.stem for p in ABLATIONS.glob("*.yaml")} == set(TABLE)


def _check_r3(cfg):
    m, bc = cfg.MODEL, cfg.MODEL.BOX_CASCADE
    assert m.ROI_HEADS.NAME == "R3CNNROIHeads" and bc.SHARED_HEAD and not bc.HEAD_GRADIENT_RESCALE
    assert m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG and bc.LOSS_WEIGHTING == "explicit"
    assert len({tuple(w) for w in m.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS}) == 1
    assert m.ROI_HEADS.IOU_THRESHOLDS[0] == m.ROI_BOX_CASCADE_HEAD.IOUS[0]


@pytest.mark.parametrize("name", sorted(TABLE))
def test_ablation_resolves_to_the_papers_settings(name):
    ious, weights, samplers, gt, test_loops, merge, flow = TABLE[name]
    delta = ABLATIONS / f"{name}.yaml"
    for base in (COCO, SHAPES):
        cfg = setup_cfg([base, delta])
        bc = cfg.MODEL.BOX_CASCADE
        _check_r3(cfg)
        assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == ious
        assert len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS) == len(ious)
        assert list(bc.STAGE_LOSS_WEIGHTS) == weights and list(bc.STAGE_SAMPLERS) == samplers
        assert bc.LATER_STAGE_GT == gt and bc.NUM_TEST_STAGES == test_loops
        assert bc.TEST_ENSEMBLE == merge and cfg.MODEL.R3_CNN.MASK_INFO_FLOW == flow
        assert cfg.MODEL.MASK_ON and bc.MASK_STRATEGY == "every"
    # one delta, whose header names the two configs it applies over
    rel = [[str(f.relative_to(ROOT / "configs")) for f in (base, delta)] for base in (COCO, SHAPES)]
    assert documented_compositions(delta) == rel


def test_main_configs_follow_table_1():
    inc = setup_cfg(str(D / "r3_cnn_mask_R_50_FPN_1x.yaml"))
    _check_r3(inc)
    assert list(inc.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.6, 0.7]
    assert inc.MODEL.MASK_ON and inc.MODEL.RESNETS.DEPTH == 50
    # 12 epochs of COCO at 16 images, lr 0.02, decays at epochs 8 and 11
    assert inc.SOLVER.BASE_LR == 0.02 and inc.SOLVER.IMS_PER_BATCH == 16
    assert inc.SOLVER.MAX_ITER == 90000 and tuple(inc.SOLVER.STEPS) == (60000, 80000)
    assert inc.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512
    assert inc.MODEL.ROI_HEADS.POSITIVE_FRACTION == 0.25
    dec = setup_cfg(str(D / "r3_cnn_mask_R_50_FPN_1x_dec.yaml"))
    _check_r3(dec)
    assert list(dec.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.7, 0.6, 0.5]
    large = setup_cfg(str(D / "r3_cnn_L_mask_R_50_FPN_1x.yaml"))
    assert large.MODEL.ROI_BOX_HEAD.NAME == "NonLocalConvBoxHead"
    assert (
        list(large.MODEL.R3_CNN.CONV_DIMS) == [128, 64] and large.MODEL.R3_CNN.NL_KERNEL_SIZE == 7
    )
    for name in ("r3_cnn_R_50_FPN_1x", "r3_cnn_R_18_FPN_shapes", "r3_cnn_R_18_FPN_dec_shapes",
                 "r3_cnn_mask_R_18_FPN_shapes", "r3_cnn_L_mask_R_18_FPN_shapes"):  # fmt: skip
        _check_r3(setup_cfg(str(D / f"{name}.yaml")))


def _count(path, *opts):
    cfg = setup_cfg(str(path), ["MODEL.DEVICE", "cpu", *map(str, opts)])
    model = build_model(cfg)
    return sum(p.numel() for p in model.parameters()), model


def test_coco_parameter_counts_against_mask_rcnn_and_cascade_mask_rcnn():
    r3, model = _count(D / "r3_cnn_mask_R_50_FPN_1x.yaml")
    mask, _ = _count(ROOT / "configs" / "Baselines" / "mask_rcnn_R_50_FPN_1x.yaml")
    cascade, _ = _count(ROOT / "configs" / "CascadeRCNN" / "cascade_mask_rcnn_R_50_FPN_1x.yaml")
    fc, k = 1024, 80
    # Mask R-CNN regresses 4 deltas per class, R3-CNN 4 in all: the only difference
    assert mask - r3 == (4 * k - 4) * (fc + 1)
    # Cascade Mask R-CNN has two more stages of the box branch (fc1, fc2, classifier, regressor)
    stage = (256 * 7 * 7 + 1) * fc + (fc + 1) * fc + (fc + 1) * (k + 1) + (fc + 1) * 4
    assert cascade - r3 == 2 * stage
    assert not isinstance(model.roi_heads.mask_head, torch.nn.ModuleList)
    # the paper's R3-CNN / Mask R-CNN ratio (43,912K / 44,170K, mmdetection's models: 258K
    # apart, against the 324K of the regressors here) holds to 0.2 %
    assert r3 / mask == pytest.approx(43912 / 44170, abs=2e-3)


INSTANT = D / "r3_cnn_instant_test.yaml"


@pytest.mark.parametrize(
    "path, opts, key",
    [
        (INSTANT, ["MODEL.BOX_CASCADE.NUM_TEST_STAGES", -1], "MODEL.BOX_CASCADE.NUM_TEST_STAGES"),
        (INSTANT, ["MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS", "[1.0, 0.75, 0.5, 0.25]"],
         "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS"),
        (INSTANT, ["MODEL.R3_CNN.MASK_INFO_FLOW", True], "MODEL.R3_CNN.MASK_INFO_FLOW"),
        (D / "r3_cnn_mask_instant_test.yaml", ["MODEL.R3_CNN.MASK_INFO_FLOW", True,
         "MODEL.BOX_CASCADE.MASK_STRATEGY", "first"], "MODEL.BOX_CASCADE.MASK_STRATEGY"),
        (INSTANT, ["MODEL.BOX_CASCADE.SHARED_HEAD", False], "MODEL.BOX_CASCADE.SHARED_HEAD"),
        (INSTANT, ["MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", True],
         "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE"),
        (INSTANT, ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False],
         "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"),
        (INSTANT, ["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS",
                   f"({W}, (20.0, 20.0, 10.0, 10.0), {W})"],
         "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS"),
        (INSTANT, ["MODEL.BOX_CASCADE.TEST_ENSEMBLE", "median"], "MODEL.BOX_CASCADE.TEST_ENSEMBLE"),
        (INSTANT, ["MODEL.ROI_BOX_HEAD.NAME", "NonLocalConvBoxHead", "MODEL.R3_CNN.NL_KERNEL_SIZE",
                   4], "MODEL.R3_CNN.NL_KERNEL_SIZE"),
        (INSTANT, ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.7, 0.6, 0.5)"],
         "MODEL.ROI_HEADS.IOU_THRESHOLDS"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_key(path, opts, key):
    cfg = setup_cfg(str(path), [str(o) for o in opts])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(cfg)


def test_train_net_trains_and_evaluates_with_masks_flow_and_the_large_head(tmp_path):
    config = D / "r3_cnn_L_mask_instant_test.yaml"
    run_train_net("--config-file", config, "OUTPUT_DIR", tmp_path)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    trained = [m for m in metrics if "loss_mask_stage2" in m and "loss_mask_iou_stage2" in m]
    assert trained and all(f"loss_cls_stage{t}" in trained[-1] for t in range(3))
    assert any("segm/AP" in m for m in metrics) and any("stage3/bbox/AP" in m for m in metrics)
    # the same weights evaluated with 5 test loops: stage-wise outputs for each loop
    out = tmp_path / "eval5"
    run_train_net("--config-file", config, "--eval-only", "MODEL.WEIGHTS",
                  tmp_path / "model_final.pth", "MODEL.BOX_CASCADE.NUM_TEST_STAGES", 5,
                  "OUTPUT_DIR", out)  # fmt: skip
    stagewise = json.loads(next(Path(out).glob("inference/*/stagewise_results.json")).read_text())
    assert "stage5" in json.dumps(stagewise)
