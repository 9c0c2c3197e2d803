"""Every R3-CNN shapes config (main ones and ablations) trains a step and detects, at instant-test
sizes; the train_net end-to-end run is in test_r3_configs.py."""

import pytest
from conftest import ROOT, config_id, shapes_configs
from helpers.core import eval_inputs, instant_step, train_batch

from cascade_zoo import setup_cfg

D = ROOT / "configs" / "R3CNN"
SHAPES = shapes_configs(D)  # the main ones, and each ablation delta over the mask one


@pytest.fixture(scope="module")
def data():
    cfg = setup_cfg(str(D / "r3_cnn_mask_instant_test.yaml"))
    return train_batch(cfg), eval_inputs(cfg, 1)


def test_the_shapes_configs_are_all_here():
    names = {files[0].name for files in SHAPES}
    assert "r3_cnn_R_18_FPN_shapes.yaml" in names and len(SHAPES) >= 15


@pytest.mark.parametrize("files", SHAPES, ids=config_id)
def test_config_trains_a_step_and_detects(files, data):
    cfg, _, losses, out = instant_step(files, *data)
    loops = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    assert {f"loss_cls_stage{t}" for t in range(loops)} <= set(losses)
    if cfg.MODEL.MASK_ON:
        assert {f"loss_mask_stage{t}" for t in range(loops)} <= set(losses)
    assert out["instances"].has("pred_masks") == cfg.MODEL.MASK_ON
    test_loops = cfg.MODEL.BOX_CASCADE.NUM_TEST_STAGES or loops
    assert f"stage{test_loops}" in out["stage_instances"]
