"""train_net.py end to end on shapes: train -> checkpoint -> resume -> evaluate -> predict, for
Detectron2's Cascade R-CNN and for the box-cascade core's own config."""

import json

import pytest
import torch
from conftest import INSTANT, ROOT, load_checkpoint_warnings, run_train_net
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from PIL import Image

from cascade_zoo import setup_cfg
from cascade_zoo.engine import ZooTrainer
from cascade_zoo.visualize import draw_predictions

CONFIGS = {
    "detectron2": INSTANT / "cascade_rcnn_instant_test.yaml",
    "core": ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml",
}


@pytest.fixture(params=list(CONFIGS))
def trained(request):
    """(config, OUTPUT_DIR) of a 4-iteration train_net.py run (checkpoints at 2 and 4)."""
    if request.param == "detectron2":
        return CONFIGS["detectron2"], request.getfixturevalue("trained_cascade")
    return CONFIGS["core"], request.getfixturevalue("trained_core")[0]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


def test_training_writes_checkpoints_metrics_and_events(trained):
    _, out = trained
    assert (out / "model_0000001.pth").exists() and (out / "model_final.pth").exists()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard events"
    metrics = _metrics(out)
    assert any("loss_cls_stage2" in m for m in metrics)
    # the end-of-training evaluation is in metrics.json too
    assert any("bbox/AP" in m for m in metrics)
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 4
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"], "no momentum buffers saved"


def test_resume_restores_optimizer_state(trained, tmp_path):
    config, trained_dir = trained
    saved = torch.load(trained_dir / "model_0000001.pth", map_location="cpu", weights_only=False)
    out = tmp_path / "resume"
    out.mkdir()
    (out / "model_0000001.pth").write_bytes((trained_dir / "model_0000001.pth").read_bytes())
    (out / "last_checkpoint").write_text("model_0000001.pth")
    trainer = ZooTrainer(setup_cfg(str(config), ["OUTPUT_DIR", str(out)]))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    state = trainer.optimizer.state_dict()["state"]
    expected = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert state.keys() == expected.keys()
    # the parameter groups (learning rates, weight decay, their parameters) are the saved ones
    groups = trainer.optimizer.state_dict()["param_groups"]
    saved_groups = saved["trainer"]["_trainer"]["optimizer"]["param_groups"]
    keys = ("lr", "initial_lr", "weight_decay", "params")
    assert [{k: g.get(k) for k in keys} for g in groups] == [
        {k: g.get(k) for k in keys} for g in saved_groups
    ]
    for key in expected:
        assert torch.equal(state[key]["momentum_buffer"], expected[key]["momentum_buffer"])
    assert trainer.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"]


def test_resume_continues_from_last_checkpoint(trained, tmp_path):
    # resume from the 2-iteration checkpoint into a fresh dir and train to 6 iterations
    config, trained_dir = trained
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "model_0000001.pth").write_bytes((trained_dir / "model_0000001.pth").read_bytes())
    (out / "last_checkpoint").write_text("model_0000001.pth")
    proc = run_train_net(
        "--config-file", config, "--resume", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", 6,
        "TEST.EVAL_PERIOD", 0,
    )  # fmt: skip
    assert "Starting training from iteration 2" in proc.stdout
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6


def test_eval_only_reports_coco_ap(trained, tmp_path):
    config, trained_dir = trained
    proc = run_train_net(
        "--config-file", config, "--eval-only",
        "MODEL.WEIGHTS", trained_dir / "model_final.pth", "OUTPUT_DIR", tmp_path,
    )  # fmt: skip
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in proc.stdout
    assert (tmp_path / "inference" / "shapes_tiny_val" / "coco_instances_results.json").exists()


def test_default_predictor_and_picture(trained, tmp_path):
    config, trained_dir = trained
    cfg = setup_cfg(str(config), ["MODEL.WEIGHTS", str(trained_dir / "model_final.pth")])
    predictor = DefaultPredictor(cfg)
    record = DatasetCatalog.get("shapes_tiny_val")[0]
    outputs = predictor(read_image(record["file_name"], format="BGR"))
    instances = outputs["instances"]
    assert instances.image_size == (record["height"], record["width"])
    assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())
    # the weights are the trained ones, not a fresh init
    weights = torch.load(trained_dir / "model_final.pth", map_location="cpu", weights_only=False)
    name = "roi_heads.box_predictor.2.cls_score.weight"
    assert torch.equal(predictor.model.state_dict()[name], weights["model"][name])

    png = draw_predictions(cfg, "shapes_tiny_val", str(tmp_path / "p.png"), num_images=3,
                           score_threshold=0.0)  # fmt: skip
    width, height = Image.open(png).size
    assert width > 2 * record["width"] and height > record["height"]


def test_checkpoint_loads_into_fresh_model_without_missing_keys(trained):
    from detectron2.modeling import build_model

    config, trained_dir = trained
    model = build_model(setup_cfg(str(config)))
    # no missing or unexpected keys (public DetectionCheckpointer.load)
    assert load_checkpoint_warnings(model, trained_dir / "model_final.pth") == []
