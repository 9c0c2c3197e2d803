"""Every IoU-Uniform shapes config (main ones and ablations) trains a step and detects, at
instant-test sizes."""

import pytest
from conftest import config_id, shapes_configs
from helpers.core import eval_inputs, instant_step, train_batch
from helpers.iu import FASTER, D

from cascade_zoo import setup_cfg

SHAPES = shapes_configs(D)  # the main ones and the ablations (a delta: over the Faster R-CNN)


@pytest.fixture(scope="module")
def data():
    cfg = setup_cfg(str(FASTER))
    return train_batch(cfg), eval_inputs(cfg, 1)


def test_the_shapes_configs_are_all_here():
    names = {files[0].name for files in SHAPES}
    assert {"iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml",
            "iou_uniform_cascade_rcnn_R_18_FPN_shapes.yaml"} <= names  # fmt: skip
    # each ablation once: a delta, or a shapes file (its COCO twin aside)
    ablations = [p for p in (D / "ablations").glob("*.yaml") if "_R_50_" not in p.name]
    assert len(SHAPES) == 2 + len(ablations) >= 14


@pytest.mark.parametrize("files", SHAPES, ids=config_id)
def test_config_trains_a_step_and_detects(files, data):
    cfg, model, losses, out = instant_step(files, *data)
    iu = cfg.MODEL.IOU_UNIFORM
    stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    for t in range(stages):
        assert {f"loss_cls_stage{t}", f"loss_box_reg_stage{t}"} <= set(losses)
        assert (f"loss_iou_stage{t}" in losses) == (iu.ENABLED and iu.IOU_PREDICTION)
    if iu.ENABLED:
        assert model.roi_heads.iou_predictor[0].bbox_pred.weight.grad.abs().sum() > 0
    assert len(out["instances"]) > 0 or not iu.THRESHOLD_BEFORE_IOU
    assert f"stage{stages}" in out["stage_instances"]
