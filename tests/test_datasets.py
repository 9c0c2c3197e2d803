"""Dataset registration from the command line and clear errors for missing dataset files."""

import json
import shutil

import pytest
from conftest import INSTANT, run_train_net
from detectron2.data import DatasetCatalog, MetadataCatalog

from cascade_zoo.data import check_dataset_files, register_coco_dataset


@pytest.fixture()
def coco_copy(tmp_path):
    """A COCO-format dataset on disk (a copy of the tiny shapes split, 3 images)."""
    check_dataset_files("shapes_tiny_val")
    meta = MetadataCatalog.get("shapes_tiny_val")
    data = json.load(open(meta.json_file))
    keep = {img["id"] for img in data["images"][:3]}
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    (tmp_path / "images").mkdir()
    for img in data["images"]:
        shutil.copy(f"{meta.image_root}/{img['file_name']}", tmp_path / "images")
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path, data


def test_register_coco_dataset(coco_copy):
    root, data = coco_copy
    register_coco_dataset("my_coco_copy", root / "ann.json", root / "images")
    records = DatasetCatalog.get("my_coco_copy")
    assert len(records) == 3
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"])
    assert MetadataCatalog.get("my_coco_copy").evaluator_type == "coco"
    # same files again: fine; other files under the same name: refused
    register_coco_dataset("my_coco_copy", root / "ann.json", root / "images")
    with pytest.raises(ValueError, match="already registered"):
        register_coco_dataset("my_coco_copy", root / "ann.json", root)


def test_register_coco_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_coco_dataset("x", tmp_path / "nope.json", tmp_path)
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no_images"):
        register_coco_dataset("x", tmp_path / "a.json", tmp_path / "no_images")


def test_builtin_coco_and_voc_missing_files_name_path_and_source():
    # conftest points DETECTRON2_DATASETS at a directory holding only the shapes cache
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json.*cocodataset\.org"):
        check_dataset_files("coco_2017_val")
    with pytest.raises(FileNotFoundError, match=r"VOC2007.*host\.robots\.ox\.ac\.uk"):
        check_dataset_files("voc_2007_test")
    with pytest.raises(KeyError, match="not registered.*shapes_val"):
        check_dataset_files("no_such_dataset")


def test_train_net_registers_coco_from_command_line(coco_copy, tmp_path):
    root, _ = coco_copy
    out = tmp_path / "out"
    proc = run_train_net(
        "--register-coco", "cli_coco", root / "ann.json", root / "images",
        "--config-file", INSTANT / "faster_rcnn_instant_test.yaml",
        "--eval-only",
        "DATASETS.TEST", '("cli_coco",)', "OUTPUT_DIR", out,
    )  # fmt: skip
    assert "Evaluation results for cli_coco" in proc.stdout or "cli_coco" in proc.stdout
    assert (out / "inference" / "cli_coco" / "coco_instances_results.json").exists()


def test_integer_boxes_keep_their_sub_pixel_position_through_a_resize(tmp_path):
    # Detectron2 v0.6's resize writes the scaled coordinates into the box array in place, so an
    # integer COCO box was floored: [10, 11, 20, 21] x 1.5 became [15, 16, 30, 31]
    import numpy as np
    from detectron2.data import transforms as T
    from detectron2.structures import BoxMode
    from PIL import Image

    from cascade_zoo import setup_cfg
    from cascade_zoo.data.mapper import CheckedDatasetMapper

    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    record = {"file_name": str(path), "height": 100, "width": 100, "image_id": 0,
              "annotations": [{"bbox": [10, 11, 10, 10], "bbox_mode": BoxMode.XYWH_ABS,
                               "category_id": 0, "iscrowd": 0}]}  # fmt: skip
    mapper = CheckedDatasetMapper(setup_cfg(str(INSTANT / "faster_rcnn_instant_test.yaml")))
    mapper.augmentations = T.AugmentationList([T.Resize((150, 150))])
    out = mapper(record)
    want = [10 * 1.5, 11 * 1.5, 20 * 1.5, 21 * 1.5]  # x0, y0, x1, y1 times the scale
    assert out["instances"].gt_boxes.tensor.tolist() == [want]
    assert record["annotations"][0]["bbox"] == [10, 11, 10, 10]  # the record is not changed
