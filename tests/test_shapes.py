"""The embedded shapes dataset: deterministic, valid COCO, and as described in docs/datasets.md."""

import hashlib
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

from cascade_zoo.data import SHAPES_CLASSES, SHAPES_SPLITS
from cascade_zoo.data.shapes import ShapesSpec, ensure_shapes, generate_image


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generation_is_deterministic_by_seed():
    spec = ShapesSpec(num_images=3, seed=7)
    a_img, a_objs = generate_image(spec, 2)
    b_img, b_objs = generate_image(spec, 2)
    assert np.array_equal(a_img, b_img)
    assert [o["category"] for o in a_objs] == [o["category"] for o in b_objs]
    assert all(np.array_equal(x["mask"], y["mask"]) for x, y in zip(a_objs, b_objs))
    c_img, _ = generate_image(ShapesSpec(num_images=3, seed=8), 2)
    assert c_img.shape != a_img.shape or not np.array_equal(c_img, a_img)


def test_written_files_are_identical_across_roots(tmp_path):
    spec = ShapesSpec(num_images=4, seed=3)
    a = ensure_shapes(str(tmp_path / "a"), "s", spec)
    b = ensure_shapes(str(tmp_path / "b"), "s", spec)
    assert _digest(a / "annotations.json") == _digest(b / "annotations.json")
    for img in sorted((a / "images").iterdir()):
        assert _digest(img) == _digest(b / "images" / img.name)
    # a second call reuses the cache (no regeneration): same mtime
    mtime = (a / "annotations.json").stat().st_mtime_ns
    ensure_shapes(str(tmp_path / "a"), "s", spec)
    assert (a / "annotations.json").stat().st_mtime_ns == mtime


@pytest.fixture(scope="module")
def tiny_train():
    records = DatasetCatalog.get("shapes_tiny_train")
    meta = MetadataCatalog.get("shapes_tiny_train")
    return records, meta


def test_coco_json_is_valid_and_masks_match_boxes(tiny_train):
    _, meta = tiny_train
    coco = COCO(meta.json_file)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CLASSES)
    assert len(coco.getImgIds()) == SHAPES_SPLITS["shapes_tiny_train"].num_images
    raw = json.load(open(meta.json_file))
    ids = [a["id"] for a in raw["annotations"]]
    assert len(set(ids)) == len(ids)
    for ann in raw["annotations"]:
        img = coco.imgs[ann["image_id"]]
        mask = mask_util.decode(ann["segmentation"])
        assert mask.shape == (img["height"], img["width"])
        ys, xs = np.nonzero(mask)
        assert ann["area"] == int(mask.sum()) > 0
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(SHAPES_CLASSES)


def test_visible_masks_do_not_overlap_and_counts_in_range():
    spec = SHAPES_SPLITS["shapes_train"]
    counts = []
    for i in range(40):
        image, objects = generate_image(spec, i)
        counts.append(len(objects))
        if objects:
            stacked = np.stack([o["mask"] for o in objects]).astype(int)
            assert stacked.sum(0).max() <= 1, "visible masks of one image must be disjoint"
            assert all(o["mask"].any() for o in objects)
        assert image.dtype == np.uint8 and image.ndim == 3
    assert min(counts) >= 1 and max(counts) <= spec.max_objects
    assert max(counts) >= 15, "crowded scenes must occur"


def test_registered_records_load_through_detectron2(tiny_train):
    records, meta = tiny_train
    assert meta.thing_classes == list(SHAPES_CLASSES)
    assert meta.evaluator_type == "coco"
    rec = records[0]
    assert {"file_name", "height", "width", "image_id", "annotations"} <= set(rec)
    assert all(0 <= a["category_id"] < len(SHAPES_CLASSES) for a in rec["annotations"])


def test_generation_from_a_script_without_main_guard_does_not_deadlock(tmp_path):
    """Spawned generation workers re-run an unguarded script, which asks for the split the
    parent is generating under its lock: they stop at once and the parent writes the split
    itself (before: a deadlock)."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from cascade_zoo.data.shapes import ShapesSpec, ensure_shapes\n"
        f"ensure_shapes({str(tmp_path / 'root')!r}, 'unguarded', "
        "ShapesSpec(num_images=64, seed=5, min_side=64, max_side=80, max_objects=3), workers=2)\n"
        "print('GENERATED')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GENERATED" in proc.stdout
    assert "generating in this process instead" in proc.stderr
    (split,) = (tmp_path / "root" / "shapes").glob("unguarded-*")
    assert len(list((split / "images").glob("*.jpg"))) == 64 and (split / "DONE").exists()
