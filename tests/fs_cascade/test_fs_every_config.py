"""Every FSCascade shapes config (the main one and the ablations) trains a step and detects, at
instant-test sizes, with the switches of its name; the train_net end-to-end run is in
test_fs_end_to_end.py."""

import pytest
from conftest import ROOT, config_id, shapes_configs
from helpers.core import cfg_of, eval_inputs, instant_step, train_batch

D = ROOT / "configs" / "FSCascade"
SHAPES = shapes_configs(D)  # the main one, and each ablation delta over it


@pytest.fixture(scope="module")
def data():
    cfg = cfg_of(D / "fs_cascade_instant_test.yaml")
    return train_batch(cfg), eval_inputs(cfg, 1)


def test_the_shapes_configs_are_all_here():
    assert len(SHAPES) == 1 + len(list((D / "ablations").glob("*.yaml"))) >= 7


@pytest.mark.parametrize("files", SHAPES, ids=config_id)
def test_config_trains_a_step_and_detects(files, data):
    cfg, model, losses, out = instant_step(files, *data)
    fs, heads = cfg.MODEL.FS_CASCADE, model.roi_heads
    stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    assert {f"loss_box_reg_stage{t}" for t in range(stages)} <= set(losses)
    assert (heads.loc_head is not None) == (fs.LOC_HEAD == "conv")
    if heads.loc_head is not None:  # the conv localization head learned
        assert heads.loc_head[0].f1.weight.grad.abs().sum() > 0
    assert f"stage{stages}" in out["stage_instances"]
