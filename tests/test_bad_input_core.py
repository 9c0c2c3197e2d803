"""Bad input on the box-cascade core's configs: each kind gets a clear error naming what is
wrong, or a correct result (docs/reliability.md lists them all with what each gets)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, load_checkpoint_warnings, run_train_net
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.modeling import build_model
from PIL import Image

from cascade_zoo import setup_cfg
from cascade_zoo.data import BadImageError, check_dataset_files, register_coco_dataset
from cascade_zoo.engine import ZooTrainer

CORE = str(ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml")
CORE_MASK = str(ROOT / "configs" / "CascadeRCNN" / "cascade_mask_rcnn_instant_test.yaml")


def _tiny():
    check_dataset_files("shapes_tiny_train")
    meta = MetadataCatalog.get("shapes_tiny_train")
    return meta, json.load(open(meta.json_file))


def make_dataset(tmp_path, edit, num_images=2, name=None):
    """A COCO dataset of the first tiny shapes images, changed by ``edit(data, image_dir)``;
    registered under a fresh name, which is returned."""
    meta, data = _tiny()
    data["images"] = data["images"][:num_images]
    keep = {i["id"] for i in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for img in data["images"]:
        shutil.copy(f"{meta.image_root}/{img['file_name']}", images)
    edit(data, images)
    (tmp_path / "ann.json").write_text(json.dumps(data))
    name = name or f"bad_{tmp_path.name}"
    register_coco_dataset(name, tmp_path / "ann.json", images)
    return name


def train_two_steps(tmp_path, name, config=CORE, extra=()):
    cfg = setup_cfg(
        config,
        ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2",
         "SOLVER.IMS_PER_BATCH", "1", "OUTPUT_DIR", str(tmp_path / "out"), *extra],
    )  # fmt: skip
    trainer = ZooTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _first_anns(data):
    image = data["images"][0]
    return image, [a for a in data["annotations"] if a["image_id"] == image["id"]]


def test_degenerate_and_outside_boxes_are_dropped_and_training_runs(tmp_path):
    def edit(data, _):
        image, anns = _first_anns(data)
        w, h = image["width"], image["height"]
        anns[0]["bbox"] = [10, 10, 0, 15]  # zero width
        anns[1]["bbox"] = [40, 40, -12, 10]  # negative width
        extra = dict(anns[2], id=10**6, bbox=[w + 5, h + 5, 20, 20])  # entirely outside
        data["annotations"].append(extra)
        anns[2]["bbox"] = [w - 10, h - 10, 40, 40]  # partly outside: clipped

    name = make_dataset(tmp_path, edit)
    trainer = train_two_steps(tmp_path, name)
    assert np.isfinite(trainer.storage.history("total_loss").latest())
    # what the mapper hands the model: no empty box, every box inside its image
    cfg = trainer.cfg
    from cascade_zoo.data import CheckedDatasetMapper

    mapper = CheckedDatasetMapper(cfg, is_train=True)
    for record in DatasetCatalog.get(name):
        inst = mapper(record)["instances"]
        boxes = inst.gt_boxes.tensor
        h, w = inst.image_size
        assert bool(inst.gt_boxes.nonempty().all())
        assert float(boxes[:, 2].max()) <= w and float(boxes[:, 3].max()) <= h


def test_nan_coordinates_are_an_error_naming_the_image(tmp_path):
    def edit(data, _):
        _, anns = _first_anns(data)
        anns[0]["bbox"] = [float("nan"), 3, 10, 10]

    name = make_dataset(tmp_path, edit)
    with pytest.raises(ValueError, match=r"image '.*\.jpg', annotation 0: bbox .*NaN or infinite"):
        train_two_steps(tmp_path, name)


def test_unknown_category_id_names_it(tmp_path):
    def edit(data, _):
        _, anns = _first_anns(data)
        anns[0]["category_id"] = 99

    name = make_dataset(tmp_path, edit)
    with pytest.raises(KeyError, match="category_id=99"):
        train_two_steps(tmp_path, name)


def test_more_classes_than_the_model_names_num_classes(tmp_path):
    name = make_dataset(tmp_path, lambda data, _: None)
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES 2"):
        train_two_steps(tmp_path, name, extra=["MODEL.ROI_HEADS.NUM_CLASSES", "2"])


def test_non_contiguous_category_ids_map_to_contiguous_classes(tmp_path):
    def edit(data, _):
        remap = {c["id"]: 10 * c["id"] + 3 for c in data["categories"]}
        for c in data["categories"]:
            c["id"] = remap[c["id"]]
        for a in data["annotations"]:
            a["category_id"] = remap[a["category_id"]]

    name = make_dataset(tmp_path, edit)
    train_two_steps(tmp_path, name)
    classes = {a["category_id"] for r in DatasetCatalog.get(name) for a in r["annotations"]}
    assert classes <= set(range(6))
    mapping = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    assert sorted(mapping) == [13, 23, 33, 43, 53, 63] and sorted(mapping.values()) == list(
        range(6)
    )


def test_crowd_regions_are_not_trained_on(tmp_path):
    def edit(data, _):
        _, anns = _first_anns(data)
        for a in anns[:2]:
            a["iscrowd"] = 1

    name = make_dataset(tmp_path, edit, num_images=1)
    trainer = train_two_steps(tmp_path, name)
    from cascade_zoo.data import CheckedDatasetMapper

    record = DatasetCatalog.get(name)[0]
    crowd = sum(a.get("iscrowd", 0) for a in record["annotations"])
    assert crowd == 2
    inst = CheckedDatasetMapper(trainer.cfg, is_train=True)(record)["instances"]
    assert len(inst) == len(record["annotations"]) - 2


def test_an_image_with_600_objects_trains(tmp_path):
    def edit(data, _):
        image, anns = _first_anns(data)
        template = anns[0]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != image["id"]]
        for k in range(600):
            x, y = (k % 30) * 7 + 2, (k // 30) * 7 + 2
            data["annotations"].append(
                dict(template, id=10**6 + k, bbox=[x, y, 6, 6], area=36, segmentation=None)
            )
        for a in data["annotations"]:
            a.pop("segmentation", None)

    name = make_dataset(tmp_path, edit, num_images=1)
    trainer = train_two_steps(tmp_path, name)
    assert np.isfinite(trainer.storage.history("total_loss").latest())


@pytest.mark.parametrize("mode", ["L", "RGBA", "1x1"])
def test_grayscale_four_channel_and_one_pixel_images(tmp_path, mode):
    def edit(data, images):
        image, _ = _first_anns(data)
        path = images / image["file_name"]
        img = Image.open(path)
        if mode == "1x1":
            img = img.resize((1, 1))
            image["width"] = image["height"] = 1
            data["annotations"] = [a for a in data["annotations"] if a["image_id"] != image["id"]]
        else:
            img = img.convert(mode)
        new_name = path.stem + ".png"
        img.save(images / new_name)
        image["file_name"] = new_name

    name = make_dataset(tmp_path, edit, num_images=1)
    trainer = train_two_steps(
        tmp_path, name, extra=["DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"]
    )
    assert np.isfinite(trainer.storage.history("total_loss").latest())
    # the model reads it as 3 channels, at test time too
    cfg = trainer.cfg
    model = build_model(cfg).eval()
    record = DatasetCatalog.get(name)[0]
    from detectron2.data.detection_utils import read_image

    img = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    assert img.ndim == 3 and img.shape[2] == 3
    with torch.no_grad():
        out = model(
            [{"image": torch.as_tensor(img.transpose(2, 0, 1).copy()), "height": 4, "width": 4}]
        )
    assert "instances" in out[0]


def test_image_size_disagreeing_with_its_annotation_names_the_file(tmp_path):
    def edit(data, _):
        data["images"][0]["width"] += 17

    name = make_dataset(tmp_path, edit, num_images=1)
    with pytest.raises(SizeMismatchError, match=r"\.jpg.*width"):
        train_two_steps(tmp_path, name)


def test_empty_dataset_names_it(tmp_path):
    def edit(data, _):
        data["images"], data["annotations"] = [], []

    name = make_dataset(tmp_path, edit)
    with pytest.raises(AssertionError, match=name):
        train_two_steps(tmp_path, name)


@pytest.mark.parametrize("content", ['{"foo": 1}', "[1, 2, 3]", "not json at all"])
def test_a_json_file_that_is_not_coco(tmp_path, content):
    (tmp_path / "images").mkdir()
    (tmp_path / "x.json").write_text(content)
    name = f"notcoco_{tmp_path.name}"
    register_coco_dataset(name, tmp_path / "x.json", tmp_path / "images")
    with pytest.raises(ValueError, match=r"x\.json' is not a COCO instances file"):
        DatasetCatalog.get(name)


def test_duplicate_image_ids_name_the_file_and_the_id(tmp_path):
    def edit(data, _):
        data["images"][1]["id"] = data["images"][0]["id"]

    name = make_dataset(tmp_path, edit)
    _, data = _tiny()
    first, second = (data["images"][i]["file_name"] for i in (0, 1))
    expected = (
        rf"ann\.json' has two images with id {data['images'][0]['id']} "
        rf"\('{re.escape(first)}' and '{re.escape(second)}'\): ids must be unique"
    )
    with pytest.raises(ValueError, match=expected):
        DatasetCatalog.get(name)


def test_duplicate_category_ids_name_the_file_and_the_id(tmp_path):
    def edit(data, _):
        data["categories"][1]["id"] = data["categories"][0]["id"]

    name = make_dataset(tmp_path, edit)
    _, data = _tiny()
    names = [c["name"] for c in data["categories"][:2]]
    expected = (
        rf"ann\.json' has two categories with id {data['categories'][0]['id']} "
        rf"\('{names[0]}' and '{names[1]}'\)"
    )
    with pytest.raises(ValueError, match=expected):
        DatasetCatalog.get(name)


def test_a_bad_test_dataset_stops_training_at_start(tmp_path, monkeypatch):
    def edit(data, _):
        data["categories"][1]["id"] = data["categories"][0]["id"]

    name = make_dataset(tmp_path, edit)
    cfg = setup_cfg(CORE, ["DATASETS.TEST", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "out")])

    def build_model(cfg):
        raise AssertionError("the model was built before the test dataset was checked")

    monkeypatch.setattr(ZooTrainer, "build_model", build_model)
    with pytest.raises(ValueError, match=r"ann\.json' has two categories with id"):
        ZooTrainer(cfg)


@pytest.mark.parametrize("problem", ["three_numbers", "no_bbox"])
def test_a_bad_bbox_names_the_file_image_and_annotation(tmp_path, problem):
    bad = {}

    def edit(data, _):
        image, anns = _first_anns(data)
        if problem == "three_numbers":
            anns[0]["bbox"] = anns[0]["bbox"][:3]
        else:
            del anns[0]["bbox"]
        bad.update(image_id=image["id"], file_name=image["file_name"], ann_id=anns[0]["id"])

    name = make_dataset(tmp_path, edit)
    what = r"has bbox \[[^,]+, [^,]+, [^,]+\]" if problem == "three_numbers" else "has no 'bbox'"
    expected = (
        rf"ann\.json', image id {bad['image_id']} \('{re.escape(bad['file_name'])}'\), "
        rf"annotation id {bad['ann_id']} {what}: a COCO box is 4 numbers"
    )
    with pytest.raises(ValueError, match=expected):
        DatasetCatalog.get(name)


def test_a_16_bit_image_names_the_file_and_its_mode(tmp_path):
    def edit(data, images):
        image, _ = _first_anns(data)
        gray = np.asarray(Image.open(images / image["file_name"]).convert("L"))
        Image.fromarray(gray.astype(np.uint16) * 257).save(images / "deep.png")  # 16-bit PNG
        image["file_name"] = "deep.png"

    name = make_dataset(tmp_path, edit, num_images=1)
    record = DatasetCatalog.get(name)[0]
    assert Image.open(record["file_name"]).mode in ("I", "I;16")
    from cascade_zoo.data import CheckedDatasetMapper

    mapper = CheckedDatasetMapper(setup_cfg(CORE), is_train=False)
    with pytest.raises(
        BadImageError, match=r"deep\.png' has more than 8 bits per pixel \(PIL mode"
    ):
        mapper(record)


# ----------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "opts, key",
    [
        (["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10, 10, 5, 5), (20, 20, 10, 10))"],
         "BBOX_REG_WEIGHTS"),
        (["MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS", "[1.0, 0.5]", "MODEL.BOX_CASCADE.LOSS_WEIGHTING",
          "explicit"], "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS"),
        (["MODEL.BOX_CASCADE.STAGE_SAMPLERS", "['sample', 'refined']"],
         "MODEL.BOX_CASCADE.STAGE_SAMPLERS"),
        (["MODEL.BOX_CASCADE.TEST_ENSEMBLE", "vote"], "MODEL.BOX_CASCADE.TEST_ENSEMBLE"),
        (["MODEL.BOX_CASCADE.MASK_STRATEGY", "sometimes"], "MODEL.BOX_CASCADE.MASK_STRATEGY"),
        (["MODEL.BOX_CASCADE.TEST_STAGE", "4"], "MODEL.BOX_CASCADE.TEST_STAGE"),
        (["ZOO.DATA_STREAM", "random"], "ZOO.DATA_STREAM"),
    ],
)  # fmt: skip
def test_bad_core_config_names_the_key(opts, key, tmp_path):
    cfg = setup_cfg(CORE_MASK, [*opts, "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises((ValueError, KeyError), match=key.replace(".", r"\.")):
        if key.startswith("ZOO."):
            ZooTrainer.build_train_loader(cfg)
        else:
            build_model(cfg)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "model_final.pth"
    proc = run_train_net(
        "--config-file", CORE, "MODEL.WEIGHTS", missing, "OUTPUT_DIR", tmp_path, check=False
    )
    assert proc.returncode != 0
    assert f"Checkpoint file '{missing}' does not exist" in proc.stdout


def test_weights_of_another_class_count(tmp_path, trained_core):
    out, _ = trained_core
    weights = str(out / "model_final.pth")
    from cascade_zoo.engine.checkpoint import build_checkpointer

    # default: what matches loads (fine-tuning on another dataset); the rest is named in the log
    cfg = setup_cfg(CORE, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    model = build_model(cfg)
    warnings = load_checkpoint_warnings(model, weights)
    assert any("roi_heads.box_predictor.0.cls_score.weight" in w for w in warnings)
    reference = torch.load(weights, weights_only=True)["model"]
    assert torch.equal(
        model.backbone.bottom_up.stem.conv1.weight,
        reference["backbone.bottom_up.stem.conv1.weight"],
    )
    cfg = setup_cfg(CORE, ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "ZOO.CHECKPOINT.STRICT", "True"])
    with pytest.raises(
        ValueError, match=r"cls_score.weight: checkpoint \(7, 256\) vs model \(4, 256\)"
    ):
        build_checkpointer(cfg, build_model(cfg)).load(weights)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def test_a_killed_loader_worker_stops_training_clearly_and_resume_completes(tmp_path):
    args = [
        "--config-file", CORE, "SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2,
        "DATALOADER.NUM_WORKERS", 1, "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path,
    ]  # fmt: skip
    log = open(tmp_path / "stdout.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train_net.py"), *map(str, args)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    start = time.monotonic()
    while not (tmp_path / "model_0000001.pth").exists():
        assert proc.poll() is None and time.monotonic() - start < 300, "training did not start"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "no data-loader worker found"
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=300) != 0
    log.close()
    text = (tmp_path / "stdout.txt").read_text()
    assert "DataLoader worker" in text and "killed by signal" in text
    assert (tmp_path / "last_checkpoint").read_text().startswith("model_")
    proc = run_train_net("--resume", *args)
    assert "Starting training from iteration" in proc.stdout
    assert (tmp_path / "model_final.pth").exists()
