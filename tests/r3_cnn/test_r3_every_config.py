"""Every R3-CNN shapes config (main ones and ablations) trains a step and detects, at instant-test
sizes; the train_net end-to-end run is in test_r3_configs.py."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "box_cascade"))
from core_helpers import eval_inputs, train_batch  # noqa: E402

from cascade_zoo import setup_cfg  # noqa: E402

D = ROOT / "configs" / "R3CNN"
SHAPES = sorted(p.relative_to(D) for p in D.glob("**/*_shapes.yaml"))
INSTANT = ["DATASETS.TRAIN", "('shapes_tiny_train',)", "DATASETS.TEST", "('shapes_tiny_val',)",
           "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", 224,
           "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 224,
           "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
           "MODEL.RPN.POST_NMS_TOPK_TEST", 100, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
           "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2]  # fmt: skip


@pytest.fixture(scope="module")
def data():
    cfg = setup_cfg(str(D / "r3_cnn_mask_instant_test.yaml"))
    return train_batch(cfg), eval_inputs(cfg, 1)


def test_the_shapes_configs_are_all_here():
    names = {str(p) for p in SHAPES}
    assert "r3_cnn_R_18_FPN_shapes.yaml" in names and len(names) >= 15


@pytest.mark.parametrize("path", SHAPES, ids=str)
def test_config_trains_a_step_and_detects(path, data):
    batch, inputs = data
    cfg = setup_cfg(str(D / path), [str(o) for o in INSTANT])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    loops = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    assert {f"loss_cls_stage{t}" for t in range(loops)} <= set(losses)
    if cfg.MODEL.MASK_ON:
        assert {f"loss_mask_stage{t}" for t in range(loops)} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(inputs)[0]
    assert out["instances"].has("pred_masks") == cfg.MODEL.MASK_ON
    test_loops = cfg.MODEL.BOX_CASCADE.NUM_TEST_STAGES or loops
    assert f"stage{test_loops}" in out["stage_instances"]
