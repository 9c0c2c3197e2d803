"""Every IoU-Uniform shapes config (main ones and ablations) trains a step and detects, at
instant-test sizes."""

import pytest
from iu_helpers import FASTER, D, eval_inputs, instant_step, train_batch

from cascade_zoo import setup_cfg

SHAPES = sorted(p.relative_to(D) for p in D.glob("**/*_shapes.yaml"))


@pytest.fixture(scope="module")
def data():
    cfg = setup_cfg(str(FASTER))
    return train_batch(cfg), eval_inputs(cfg, 1)


def test_the_shapes_configs_are_all_here():
    names = {str(p) for p in SHAPES}
    assert {"iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml",
            "iou_uniform_cascade_rcnn_R_18_FPN_shapes.yaml"} <= names  # fmt: skip
    assert len(names) == 2 + len(list((D / "ablations").glob("*_shapes.yaml"))) >= 14


@pytest.mark.parametrize("path", SHAPES, ids=str)
def test_config_trains_a_step_and_detects(path, data):
    cfg, model, losses, out = instant_step(D / path, *data)
    iu = cfg.MODEL.IOU_UNIFORM
    stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    for t in range(stages):
        assert {f"loss_cls_stage{t}", f"loss_box_reg_stage{t}"} <= set(losses)
        assert (f"loss_iou_stage{t}" in losses) == (iu.ENABLED and iu.IOU_PREDICTION)
    if iu.ENABLED:
        assert model.roi_heads.iou_predictor[0].bbox_pred.weight.grad.abs().sum() > 0
    assert len(out["instances"]) > 0 or not iu.THRESHOLD_BEFORE_IOU
    assert f"stage{stages}" in out["stage_instances"]
