"""Every YAML under configs/ loads with the project's config set-up and builds its model; an
ablation delta (no _BASE_) does so over each config its header names."""

from pathlib import Path

import pytest
import torch
from conftest import ROOT, config_id
from detectron2.modeling import build_model

from cascade_zoo import setup_cfg
from cascade_zoo.config import documented_compositions

CONFIG_DIR = ROOT / "configs"
FILES = sorted(CONFIG_DIR.rglob("*.yaml"))
DELTAS = [p for p in FILES if documented_compositions(p)]
# each config as the files merged in order: one file, or a base and a delta
CONFIGS = [[p] for p in FILES if p not in DELTAS] + [
    [CONFIG_DIR / f for f in files] for p in DELTAS for files in documented_compositions(p)
]


def test_there_are_configs():
    assert len(CONFIGS) > 20 and len(DELTAS) > 20


@pytest.mark.parametrize("files", CONFIGS, ids=config_id)
def test_config_loads_and_builds(files):
    path = files[-1]
    cfg = setup_cfg(files, ["MODEL.DEVICE", "cpu"])
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


def test_config_files_merge_in_order(tmp_path):
    # train_net.py --config-file A --config-file B KEY VALUE: A, then B, then the overrides
    import importlib.util

    from cascade_zoo import argument_parser

    root = Path(__file__).resolve().parents[1]
    base = root / "configs" / "Baselines" / "faster_rcnn_R_18_FPN_shapes.yaml"
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f'_BASE_: "{base}"\nSOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 7\n')
    b.write_text("SOLVER:\n  BASE_LR: 0.25\n")
    args = argument_parser().parse_args(
        ["--config-file", str(a), "--config-file", str(b), "SOLVER.MAX_ITER", "9",
         "OUTPUT_DIR", str(tmp_path / "out")]
    )  # fmt: skip
    assert args.config_file == [str(a), str(b)]
    cfg = setup_cfg(args.config_file, args.opts)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (0.25, 9)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == setup_cfg(str(base)).MODEL.ROI_HEADS.NUM_CLASSES
    assert setup_cfg([str(b), str(a)]).SOLVER.BASE_LR == 0.5  # the other order
    assert setup_cfg(str(a)).SOLVER.BASE_LR == 0.5  # one file, as a string
    # train_net.py's set-up merges them the same way (the merged config is in config.yaml)
    spec = importlib.util.spec_from_file_location("train_net", root / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    merged = train_net.setup(train_net.build_parser().parse_args(
        ["--config-file", str(a), "--config-file", str(b), "OUTPUT_DIR", str(tmp_path / "out")]
    ))  # fmt: skip
    assert (merged.SOLVER.BASE_LR, merged.SOLVER.MAX_ITER) == (0.25, 7)
    assert "BASE_LR: 0.25" in (tmp_path / "out" / "config.yaml").read_text()
