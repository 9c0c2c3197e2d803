"""Bad input: clear errors naming what is wrong, or a correct result; nothing lost."""

import json
import logging
import math
import shutil

import pytest
import torch
from conftest import INSTANT
from detectron2.data import MetadataCatalog

from cascade_zoo import setup_cfg
from cascade_zoo.data import BadImageError, check_dataset_files, register_coco_dataset
from cascade_zoo.data.stream import check_total_batch_size
from cascade_zoo.engine import ZooTrainer

CONFIG = str(INSTANT / "faster_rcnn_instant_test.yaml")


def test_unknown_config_key_names_the_key(tmp_path):
    # yacs raises AssertionError for a command-line key and KeyError for a YAML key
    with pytest.raises(AssertionError, match="MODEL.ROI_HEADS.NO_SUCH_KEY"):
        setup_cfg(CONFIG, ["MODEL.ROI_HEADS.NO_SUCH_KEY", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  ROI_HEADS:\n    NO_SUCH_KEY: 1\n')
    with pytest.raises(KeyError, match="MODEL.ROI_HEADS.NO_SUCH_KEY"):
        setup_cfg(str(bad))


def test_wrong_config_type_names_the_key():
    with pytest.raises(ValueError, match="MAX_ITER"):
        setup_cfg(CONFIG, ["SOLVER.MAX_ITER", "'many'"])


def test_bad_image_policy_value_is_checked(tmp_path):
    cfg = setup_cfg(CONFIG, ["ZOO.ON_BAD_IMAGE", "ignore", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match="ZOO.ON_BAD_IMAGE"):
        ZooTrainer.build_train_loader(cfg)


@pytest.mark.parametrize("batch", ["0", "-2"])
def test_a_batch_size_below_one_is_refused_at_start(batch, tmp_path, monkeypatch):
    cfg = setup_cfg(CONFIG, ["SOLVER.IMS_PER_BATCH", batch, "OUTPUT_DIR", str(tmp_path)])

    def build_model(cfg):
        raise AssertionError("the model was built before SOLVER.IMS_PER_BATCH was checked")

    monkeypatch.setattr(ZooTrainer, "build_model", build_model)
    expected = rf"SOLVER.IMS_PER_BATCH is {batch}: .* positive multiple of the number of processes"
    with pytest.raises(ValueError, match=expected):
        ZooTrainer(cfg)
    with pytest.raises(ValueError, match=expected):
        ZooTrainer.build_train_loader(cfg)


def test_a_batch_size_not_divisible_by_the_processes_names_the_key():
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH is 3: .*processes \(2\)"):
        check_total_batch_size(3, 2)
    check_total_batch_size(4, 2)


@pytest.fixture()
def broken_dataset(tmp_path):
    """A copy of the tiny shapes split where one image is missing and one is not an image."""
    check_dataset_files("shapes_tiny_train")
    meta = MetadataCatalog.get("shapes_tiny_train")
    data = json.load(open(meta.json_file))
    data["images"] = data["images"][:4]
    keep = {i["id"] for i in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    (tmp_path / "images").mkdir()
    for img in data["images"]:
        shutil.copy(f"{meta.image_root}/{img['file_name']}", tmp_path / "images")
    missing = data["images"][1]["file_name"]
    (tmp_path / "images" / missing).unlink()
    garbage = data["images"][2]["file_name"]
    (tmp_path / "images" / garbage).write_bytes(b"this is not a jpeg")
    (tmp_path / "ann.json").write_text(json.dumps(data))
    name = f"broken_{tmp_path.name}"
    register_coco_dataset(name, tmp_path / "ann.json", tmp_path / "images")
    return name, missing, garbage


def test_unreadable_image_in_training_names_the_file(broken_dataset, tmp_path):
    name, missing, garbage = broken_dataset
    cfg = setup_cfg(CONFIG, ["DATASETS.TRAIN", f"('{name}',)", "OUTPUT_DIR", str(tmp_path)])
    loader = iter(ZooTrainer.build_train_loader(cfg))
    with pytest.raises(BadImageError) as info:
        for _ in range(20):
            next(loader)
    assert missing in str(info.value) or garbage in str(info.value)


def test_unreadable_image_in_evaluation_names_the_file(broken_dataset, tmp_path):
    name, missing, _ = broken_dataset
    cfg = setup_cfg(CONFIG, ["OUTPUT_DIR", str(tmp_path)])
    loader = ZooTrainer.build_test_loader(cfg, name)
    with pytest.raises(BadImageError, match=missing):
        list(loader)


def test_skip_policy_logs_and_continues(broken_dataset, tmp_path, caplog):
    name, missing, garbage = broken_dataset
    cfg = setup_cfg(
        CONFIG,
        ["DATASETS.TRAIN", f"('{name}',)", "ZOO.ON_BAD_IMAGE", "skip", "OUTPUT_DIR", str(tmp_path)],
    )
    loader = iter(ZooTrainer.build_train_loader(cfg))
    with caplog.at_level(logging.WARNING):
        batches = [next(loader) for _ in range(12)]
    files = {d["file_name"].split("/")[-1] for batch in batches for d in batch}
    assert files and not files & {missing, garbage}
    assert any("Skipping unreadable image" in r.getMessage() for r in caplog.records)


def test_training_image_without_objects_and_evaluation_without_detections(tmp_path):
    # one image whose annotations were all removed, kept because FILTER_EMPTY_ANNOTATIONS is off
    meta = MetadataCatalog.get("shapes_tiny_train")
    check_dataset_files("shapes_tiny_train")
    data = json.load(open(meta.json_file))
    data["images"] = data["images"][:1]
    data["annotations"] = []
    (tmp_path / "ann.json").write_text(json.dumps(data))
    register_coco_dataset(f"empty_{tmp_path.name}", tmp_path / "ann.json", meta.image_root)
    cfg = setup_cfg(
        str(INSTANT / "cascade_rcnn_instant_test.yaml"),
        [
            "DATASETS.TRAIN", f"('empty_{tmp_path.name}',)",
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False",
            "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "4",
            # no detection survives: the evaluator sees zero predictions
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.01",
            "OUTPUT_DIR", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    trainer = ZooTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # must not raise: every iteration sees an image with no objects
    assert trainer.storage.history("total_loss").latest() >= 0
    results = ZooTrainer.test(cfg, trainer.model)
    assert math.isnan(results["bbox"]["AP"])  # evaluated, with nothing detected


def test_divergence_raises_with_iteration_and_keeps_last_checkpoint(tmp_path):
    cfg = setup_cfg(
        str(INSTANT / "faster_rcnn_instant_test.yaml"),
        ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(tmp_path)],
    )
    trainer = ZooTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    real_forward = model.forward

    def forward(batched_inputs):
        losses = real_forward(batched_inputs)
        if trainer.iter >= 3:  # diverge after the checkpoint of iteration 1
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    model.forward = forward
    with pytest.raises(FloatingPointError, match="iteration=3"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    ckpt = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
