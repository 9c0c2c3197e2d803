"""Every YAML under configs/ loads with the project's config set-up and builds its model."""

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from cascade_zoo import setup_cfg

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) > 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p).split("configs/")[1])
def test_config_loads_and_builds(path):
    cfg = setup_cfg(str(path), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 0
    assert model.roi_heads.__class__.__name__ == cfg.MODEL.ROI_HEADS.NAME
    assert model.roi_heads.num_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    assert model.roi_heads.mask_on == cfg.MODEL.MASK_ON
    if "_instant_test" in path.name:
        # an instant-test config runs a forward pass at test time on a tiny image
        model.eval()
        with torch.no_grad():
            out = model([{"image": torch.zeros(3, 64, 80), "height": 64, "width": 80}])
        assert len(out) == 1 and "instances" in out[0]
