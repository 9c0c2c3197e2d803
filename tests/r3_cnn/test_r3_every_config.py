"""Every R3-CNN shapes config (main ones and ablations) trains a step and detects, at instant-test
sizes; the train_net end-to-end run is in test_r3_configs.py."""

import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "box_cascade"))
from core_helpers import eval_inputs, instant_step, train_batch  # noqa: E402

from cascade_zoo import setup_cfg  # noqa: E402

D = ROOT / "configs" / "R3CNN"
SHAPES = sorted(p.relative_to(D) for p in D.glob("**/*_shapes.yaml"))


@pytest.fixture(scope="module")
def data():
    cfg = setup_cfg(str(D / "r3_cnn_mask_instant_test.yaml"))
    return train_batch(cfg), eval_inputs(cfg, 1)


def test_the_shapes_configs_are_all_here():
    names = {str(p) for p in SHAPES}
    assert "r3_cnn_R_18_FPN_shapes.yaml" in names and len(names) >= 15


@pytest.mark.parametrize("path", SHAPES, ids=str)
def test_config_trains_a_step_and_detects(path, data):
    cfg, _, losses, out = instant_step(D / path, *data)
    loops = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    assert {f"loss_cls_stage{t}" for t in range(loops)} <= set(losses)
    if cfg.MODEL.MASK_ON:
        assert {f"loss_mask_stage{t}" for t in range(loops)} <= set(losses)
    assert out["instances"].has("pred_masks") == cfg.MODEL.MASK_ON
    test_loops = cfg.MODEL.BOX_CASCADE.NUM_TEST_STAGES or loops
    assert f"stage{test_loops}" in out["stage_instances"]
