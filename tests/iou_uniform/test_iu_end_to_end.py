"""train_net.py trains IoU-Uniform Cascade R-CNN's instant-test config for a few iterations and
evaluates it (COCO AP and the stage-wise evaluation), from the command line."""

import json

from conftest import run_train_net
from helpers.iu import CASCADE


def test_train_net_trains_and_evaluates(tmp_path):
    proc = run_train_net("--config-file", CASCADE, "OUTPUT_DIR", tmp_path, "SEED", 0)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    trained = [m for m in metrics if "loss_iou_stage2" in m]
    assert len(trained) >= 1
    assert all(f"{k}_stage{t}" in trained[-1] for k in ("loss_cls", "loss_box_reg", "loss_iou")
               for t in range(3))  # fmt: skip
    assert any("stage0/iou_uniform/generated_per_image" in m for m in metrics)
    assert any("bbox/AP" in m for m in metrics) and any("stage3/bbox/AP" in m for m in metrics)
    assert (tmp_path / "model_final.pth").is_file()
    assert "IoUUniformROIHeads" in proc.stdout
