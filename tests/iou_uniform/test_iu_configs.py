"""IoU-Uniform R-CNN's configs: the ablations resolve to the paper's settings (Tables 4-6 and the
official code's switches, written out here as a literal table), each one delta applied over the
COCO, the shapes and the VOC config (Table 4's rows: a COCO file and a shapes file that differ
only in _BASE_), every COCO / VOC config loads and the main ones build, the
cascade's per-stage generation settings and the benchmark configs are as documented, and bad
configs stop with an error naming the key."""

import pytest
from conftest import PROTOCOLS, ROOT, assert_under_the_protocol, config_id
from detectron2.modeling import build_model
from helpers.iu import CASCADE, FASTER, D

from cascade_zoo import setup_cfg
from cascade_zoo.config import documented_compositions
from iou_uniform import IoUUniformROIHeads

ABLATIONS = D / "ablations"
PAPER_W, EQUAL_W, CODE_W = (1.0, 1.5, 3.0, 3.0), (1.0, 1.0, 1.0, 1.0), (1.0, 1.5, 2.0, 3.0)
# name: (branch on, interval weights, IoU output, EFO, regression samples, IoU samples,
#        samples vs RPN positives, threshold before the IoU)
G, R = "generated", "rpn"
TABLE = {
    "off": (False, PAPER_W, False, False, G, G, 0.0, True),  # Table 4 baseline
    "uniform": (True, EQUAL_W, False, False, G, G, 0.0, True),  # Table 4 row 2
    "uniform_efo": (True, EQUAL_W, True, True, G, G, 0.0, True),  # Table 4 row 3
    "equal_samples": (True, PAPER_W, True, True, G, G, 1.0, True),  # Table 5
    "double_samples": (True, PAPER_W, True, True, G, G, 2.0, True),
    "reg_rpn_iou_rpn": (True, PAPER_W, True, False, R, R, 0.0, True),  # Table 6
    "reg_rpn_iou_rpn_efo": (True, PAPER_W, True, True, R, R, 0.0, True),
    "reg_rpn_iou_generated": (True, PAPER_W, True, False, R, G, 0.0, True),
    "reg_rpn_iou_generated_efo": (True, PAPER_W, True, True, R, G, 0.0, True),
    "no_efo": (True, PAPER_W, True, False, G, G, 0.0, True),
    "threshold_after_iou": (True, PAPER_W, True, True, G, G, 0.0, False),
    "official_code": (True, CODE_W, True, True, G, G, 0.0, True),
}


def _settings(cfg):
    iu = cfg.MODEL.IOU_UNIFORM
    return (iu.ENABLED, tuple(iu.REG_WEIGHTS[0]), iu.IOU_PREDICTION, iu.EFO, iu.REG_SAMPLES,
            iu.IOU_SAMPLES, iu.NUM_SAMPLES_VS_RPN, iu.THRESHOLD_BEFORE_IOU)  # fmt: skip


COCO = D / "iou_uniform_faster_rcnn_R_50_FPN_1x.yaml"
SHAPES = D / "iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml"
VOC = D / "iou_uniform_faster_rcnn_R_50_FPN_voc.yaml"


def _files(name):
    """The COCO, the shapes and the VOC config of an ablation, each as the files merged in
    order."""
    return [[base, ABLATIONS / f"{name}.yaml"] for base in (COCO, SHAPES, VOC)]


def test_every_ablation_config_is_in_the_table():
    on_disk = {p.name for p in ABLATIONS.glob("*.yaml")}
    assert on_disk == {files[-1].name for name in TABLE for files in _files(name)}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_ablation_resolves_to_the_papers_settings(name):
    for files in _files(name):
        cfg = setup_cfg(files)
        assert cfg.MODEL.ROI_HEADS.NAME == "IoUUniformROIHeads"
        assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5]
        assert _settings(cfg) == TABLE[name]
        iu = cfg.MODEL.IOU_UNIFORM  # the rest: the paper's (and the code's) generation
        assert [tuple(iv) for iv in iu.INTERVALS[0]] == [(0.5, 0.6), (0.6, 0.7), (0.7, 0.8),
                                                         (0.8, 1.0)]  # fmt: skip
        assert tuple(iu.SAMPLES_PER_GT) == (64,) and iu.NUM_CANDIDATES == 500
        assert iu.MAX_CANDIDATES == 5000  # rounds until each interval has M / N
        # the baseline regresses per class, as the paper's Faster R-CNN
        assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG == (name != "off")
    # one delta, whose header names the configs it applies over
    rel = [[str(f.relative_to(ROOT / "configs")) for f in files] for files in _files(name)]
    assert documented_compositions(_files(name)[0][-1]) == rel


def test_main_configs_hold_the_papers_settings():
    for path in (D / "iou_uniform_faster_rcnn_R_50_FPN_1x.yaml",
                 D / "iou_uniform_faster_rcnn_R_101_FPN_1x.yaml",
                 D / "iou_uniform_faster_rcnn_R_50_FPN_voc.yaml",
                 D / "iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml", FASTER):  # fmt: skip
        cfg = setup_cfg(str(path))
        assert _settings(cfg) == (True, PAPER_W, True, True, G, G, 0.0, True), path.name
        iu = cfg.MODEL.IOU_UNIFORM
        assert tuple(iu.CENTER_SHIFTS[0]) == (0.75, 0.5, 0.3, 0.125)
        assert [tuple(r) for r in iu.SCALE_RANGES[0]] == [(0.5, 2.0), (0.6, 1.6), (0.7, 1.4),
                                                          (0.8, 1.25)]  # fmt: skip
        assert iu.IOU_SMOOTH_L1_BETA == 0.5 and not iu.IOU_SIGMOID
        assert cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA == 1.0
    voc = setup_cfg(str(D / "iou_uniform_cascade_rcnn_R_50_FPN_voc.yaml"))
    assert voc.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
    assert voc.DATASETS.TEST == ("voc_2007_test",) and voc.MODEL.ROI_HEADS.NUM_CLASSES == 20
    assert (
        setup_cfg(str(D / "iou_uniform_faster_rcnn_R_101_FPN_1x.yaml")).MODEL.RESNETS.DEPTH == 101
    )


def test_cascade_configs_hold_the_official_codes_stage_settings():
    for path in (D / "iou_uniform_cascade_rcnn_R_50_FPN_1x.yaml",
                 D / "iou_uniform_cascade_rcnn_R_101_FPN_1x.yaml",
                 D / "iou_uniform_cascade_rcnn_R_50_FPN_voc.yaml",
                 D / "iou_uniform_cascade_rcnn_R_18_FPN_shapes.yaml", CASCADE):  # fmt: skip
        cfg = setup_cfg(str(path))
        iu = cfg.MODEL.IOU_UNIFORM
        assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.6, 0.7]
        assert cfg.MODEL.BOX_CASCADE.TEST_ENSEMBLE == "mean_logits"
        lows = [[iv[0] for iv in stage] for stage in iu.INTERVALS]
        assert lows == [[0.5, 0.6, 0.7, 0.8], [0.6, 0.7, 0.8, 0.9], [0.7, 0.8, 0.9]]
        assert [stage[-1][1] for stage in iu.INTERVALS] == [1.0, 1.0, 1.0]
        assert [tuple(s) for s in iu.CENTER_SHIFTS] == [(0.75, 0.5, 0.3, 0.125),
                                                        (0.5, 0.3, 0.125, 0.125),
                                                        (0.3, 0.125, 0.125)]  # fmt: skip
        assert [tuple(r) for r in iu.SCALE_RANGES[2]] == [(0.7, 1.4), (0.8, 1.25), (0.9, 1.25)]
        assert tuple(iu.SAMPLES_PER_GT) == (64, 64, 60)
        assert [tuple(w) for w in iu.REG_WEIGHTS] == [PAPER_W, (1.5, 3.0, 3.0, 3.0),
                                                      (3.0, 3.0, 3.0)]  # fmt: skip


# the COCO and VOC configs: the files but the shapes ones and the deltas, each delta over them
OTHERS = [[p] for p in sorted(D.glob("**/*.yaml"))
          if not p.name.endswith("_shapes.yaml") and not documented_compositions(p)]  # fmt: skip
OTHERS += [files for name in sorted(TABLE)
           for files in _files(name) if files[0] != SHAPES]  # fmt: skip


@pytest.mark.parametrize("files", OTHERS, ids=config_id)
def test_every_coco_and_voc_config_loads(files):
    cfg = setup_cfg(files)
    assert cfg.MODEL.ROI_HEADS.NAME == "IoUUniformROIHeads"
    assert cfg.MODEL.META_ARCHITECTURE == "BoxCascadeRCNN"


@pytest.mark.parametrize("name", ["iou_uniform_faster_rcnn_R_50_FPN_1x",
                                  "iou_uniform_cascade_rcnn_R_50_FPN_voc"])  # fmt: skip
def test_main_configs_build(name):
    cfg = setup_cfg(str(D / f"{name}.yaml"), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    heads = model.roi_heads
    assert isinstance(heads, IoUUniformROIHeads) and heads.branch_on
    stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    assert len(heads.iou_head) == len(heads.iou_predictor) == stages
    fc = cfg.MODEL.ROI_BOX_HEAD.FC_DIM  # the branch: two fc layers on 256 x 7 x 7, 4 + 1 outputs
    per_stage = (256 * 7 * 7 + 1) * fc + (fc + 1) * fc + (fc + 1) * 5
    assert sum(p.numel() for p in heads.iou_head.parameters()) + sum(
        p.numel() for p in heads.iou_predictor.parameters()) == stages * per_stage  # fmt: skip
    assert heads.num_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.stem)
@pytest.mark.parametrize("method", ["faster", "cascade"])
def test_benchmark_configs_follow_the_protocol(method, protocol):
    """IoU-Uniform under a benchmark protocol: its own model, the protocol's run of the method it
    extends in all else (the same start, schedule, data and evaluation)."""
    baseline = {"faster": "Baselines/faster", "cascade": "CascadeRCNN/cascade"}[method]
    ours = assert_under_the_protocol(
        [D / f"iou_uniform_{method}_rcnn_R_18_FPN_shapes.yaml"],
        protocol,
        ROOT / "configs" / f"{baseline}_rcnn_R_18_FPN_shapes.yaml",
    )
    assert ours.MODEL.ROI_HEADS.NAME == "IoUUniformROIHeads"


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.stem)
@pytest.mark.parametrize("ablation", ["off", "uniform", "uniform_efo"])
def test_table4_benchmark_configs_are_the_ablations_under_the_protocol(ablation, protocol):
    """Table 4's rows on shapes, against the protocol's Faster R-CNN."""
    assert_under_the_protocol(
        [SHAPES, ABLATIONS / f"{ablation}.yaml"],
        protocol,
        ROOT / "configs" / "Baselines" / "faster_rcnn_R_18_FPN_shapes.yaml",
    )


_IU = "MODEL.IOU_UNIFORM."
BAD = [
    (FASTER, [_IU + "REG_WEIGHTS", "((1.0, 1.5, 3.0),)"], _IU + "REG_WEIGHTS"),
    (FASTER, [_IU + "CENTER_SHIFTS", "((0.75, 0.5, 0.3),)"], _IU + "CENTER_SHIFTS"),
    (FASTER, [_IU + "SCALE_RANGES", "(((0.5, 2.0),),)"], _IU + "SCALE_RANGES"),
    (FASTER, [_IU + "INTERVALS", "(((0.6, 0.7), (0.5, 0.6), (0.7, 0.8), (0.8, 1.0)),)"],
     _IU + "INTERVALS"),
    (FASTER, [_IU + "INTERVALS", "(((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.2)),)"],
     _IU + "INTERVALS"),
    (FASTER, [_IU + "INTERVALS", "(((-0.1, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.0)),)"],
     _IU + "INTERVALS"),
    (FASTER, [_IU + "INTERVALS", "(((0.5, 0.5), (0.6, 0.7), (0.7, 0.8), (0.8, 1.0)),)"],
     _IU + "INTERVALS"),
    (FASTER, [_IU + "SAMPLES_PER_GT", "(62,)"], _IU + "SAMPLES_PER_GT"),
    (FASTER, [_IU + "NUM_CANDIDATES", 0], _IU + "NUM_CANDIDATES"),
    (FASTER, [_IU + "MAX_CANDIDATES", 499], _IU + "MAX_CANDIDATES"),
    (FASTER, [_IU + "IOU_PREDICTION", False], _IU + "EFO"),
    (FASTER, [_IU + "ENABLED", False], _IU + "EFO"),
    (FASTER, [_IU + "REG_SAMPLES", "proposals"], _IU + "REG_SAMPLES"),
    (FASTER, [_IU + "IOU_SAMPLES", "gt"], _IU + "IOU_SAMPLES"),
    (FASTER, [_IU + "NUM_SAMPLES_VS_RPN", -1.0], _IU + "NUM_SAMPLES_VS_RPN"),
    (CASCADE, [_IU + "SAMPLES_PER_GT", "(64,)"], _IU + "SAMPLES_PER_GT"),
    (CASCADE, [_IU + "REG_WEIGHTS", "((1.0, 1.5, 3.0, 3.0),)"], _IU + "REG_WEIGHTS"),
    (CASCADE, [_IU + "INTERVALS", "(((0.5, 0.6), (0.6, 1.0)),)"], _IU + "INTERVALS"),
]  # fmt: skip


@pytest.mark.parametrize(
    "path, opts, key", BAD, ids=[f"{k.split('.')[-1]}-{i}" for i, (_, _, k) in enumerate(BAD)]
)
def test_bad_configs_name_the_key(path, opts, key):  # fmt: skip
    cfg = setup_cfg(str(path), [str(o) for o in opts])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(cfg)
