"""Dataset registration: the embedded shapes splits, COCO-format datasets named on the command
line, and checks that give a clear error when a registered dataset's files are missing or its
COCO file holds what Detectron2 would load wrongly.

Detectron2's builtin registrations (COCO, Pascal VOC, ... under ``$DETECTRON2_DATASETS``) are used
as they are; this module only adds to the catalogs.
"""

import json
import math
import numbers
import os
from pathlib import Path
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import CLASSES, ShapesSpec, ensure_shapes, shapes_dir

# The embedded splits. "tiny" ones are for tests and instant-test configs.
SHAPES_SPLITS = {
    "shapes_train": ShapesSpec(num_images=2000, seed=0),
    "shapes_val": ShapesSpec(num_images=300, seed=1),
    "shapes_tiny_train": ShapesSpec(num_images=24, seed=100),
    "shapes_tiny_val": ShapesSpec(num_images=8, seed=101),
}

_HOW_TO_GET = {
    "coco": (
        "COCO 2017: download train2017/val2017 images and annotations_trainval2017 from "
        "https://cocodataset.org/#download and unpack them as $DETECTRON2_DATASETS/coco/"
        "{{train2017,val2017,annotations/instances_*.json}} (DETECTRON2_DATASETS={root})"
    ),
    "voc": (
        "Pascal VOC: unpack VOCtrainval and VOCtest as $DETECTRON2_DATASETS/VOC2007 and "
        "VOC2012 (each with Annotations/, ImageSets/Main/, JPEGImages/), from "
        "http://host.robots.ox.ac.uk/pascal/VOC/ (DETECTRON2_DATASETS={root})"
    ),
    "crowdhuman": (
        "CrowdHuman: download the CrowdHuman_train0*.zip / CrowdHuman_val.zip images and "
        "annotation_{{train,val}}.odgt from https://www.crowdhuman.org/ and unpack them as "
        "$DETECTRON2_DATASETS/CrowdHuman/{{Images/,annotation_train.odgt,annotation_val.odgt}} "
        "(DETECTRON2_DATASETS={root})"
    ),
    "other": (
        "check the paths this dataset was registered with (for --register-coco: "
        "NAME JSON_FILE IMAGE_ROOT)"
    ),
}


def datasets_root() -> str:
    """Where datasets live: ``$DETECTRON2_DATASETS``, default ``./datasets`` (as in Detectron2)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def _load_shapes(name: str, root: str, spec: ShapesSpec):
    out = ensure_shapes(root, name, spec)
    return load_coco_json(str(out / "annotations.json"), str(out / "images"), name)


def register_shapes(root: str = None) -> None:
    """Register every shapes split (generated on first use) in DatasetCatalog/MetadataCatalog."""
    root = root or datasets_root()
    for name, spec in SHAPES_SPLITS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        directory = shapes_dir(root, name, spec)
        DatasetCatalog.register(name, lambda name=name, spec=spec: _load_shapes(name, root, spec))
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASSES),
            json_file=str(directory / "annotations.json"),
            image_root=str(directory / "images"),
            evaluator_type="coco",
            shapes_spec=spec,
            shapes_root=root,
        )


def prepare_shapes(name: str) -> None:
    """Generate a registered shapes split now, so its ``json_file`` exists (e.g. before an
    evaluator reads it). Other datasets: nothing."""
    meta = MetadataCatalog.get(name)
    spec = meta.get("shapes_spec")
    if spec is not None:
        ensure_shapes(meta.shapes_root, name, spec)


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance dataset by name, as ``--register-coco`` does.

    Raises:
        FileNotFoundError: naming the JSON file or image directory that does not exist.
        ValueError: if ``name`` is already registered with other files.
    """
    json_file, image_root = str(json_file), str(image_root)
    if not Path(json_file).is_file():
        raise FileNotFoundError(f"--register-coco {name}: annotation file '{json_file}' not found")
    if not Path(image_root).is_dir():
        raise FileNotFoundError(f"--register-coco {name}: image directory '{image_root}' not found")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
            return
        raise ValueError(
            f"--register-coco: dataset name '{name}' is already registered "
            f"(json_file={meta.get('json_file')}); choose another name"
        )
    DatasetCatalog.register(name, lambda: load_checked_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", checked_coco_json=True
    )


def _not_coco(name: str, json_file: str, why: str) -> ValueError:
    return ValueError(
        f"Dataset '{name}': '{json_file}' is not a COCO instances file ({why}). It must be a "
        'JSON object with "images", "annotations" and "categories" lists '
        "(https://cocodataset.org/#format-data)."
    )


def _unique_ids(entries, what: str, name: str, json_file: str, label: str) -> Dict:
    """``{id: entry}`` of a list of COCO entries; ValueError naming the first repeated id."""
    by_id = {}
    for entry in entries:
        if not isinstance(entry, dict) or "id" not in entry:
            raise _not_coco(name, json_file, f'an entry of "{what}" has no "id": {entry!r:.80}')
        try:
            first = by_id.setdefault(entry["id"], entry)
        except TypeError:  # an unhashable id (a list, a dict)
            raise _not_coco(name, json_file, f'an id in "{what}" is {entry["id"]!r:.80}') from None
        if first is not entry:
            raise ValueError(
                f"Dataset '{name}': '{json_file}' has two {what} with id {entry['id']!r} "
                f"({first.get(label)!r} and {entry.get(label)!r}): ids must be unique "
                "(Detectron2 would keep one and silently merge the other into it)"
            )
    return by_id


def check_coco_json(json_file: str, name: str) -> None:
    """Check a COCO instances file for what Detectron2's ``load_coco_json`` would load wrongly
    without a word (pycocotools keeps the last of two images with one id, and the boxes of both
    then train on it; two categories with one id shift the class names) or reject later without
    naming the image (a box that is not 4 numbers, an annotation without a box).

    Raises:
        ValueError: naming the file and, as the case may be, the repeated image or category id,
            or the image id, image file and annotation id of a bad box.
    """
    try:
        with open(json_file) as f:
            data = json.load(f)
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise _not_coco(name, json_file, f"{type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise _not_coco(name, json_file, f"a JSON {type(data).__name__}, not an object")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise _not_coco(name, json_file, f'no "{key}" list')
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise _not_coco(name, json_file, '"annotations" is not a list')
    images = _unique_ids(data["images"], "images", name, json_file, "file_name")
    _unique_ids(data["categories"], "categories", name, json_file, "name")
    for ann in annotations:
        if not isinstance(ann, dict):
            raise _not_coco(name, json_file, f'an entry of "annotations" is {ann!r:.80}')
        box = ann.get("bbox")
        if isinstance(box, (list, tuple)) and len(box) == 4:
            if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box):
                continue
        image_id = ann.get("image_id")
        file_name = images.get(image_id, {}).get("file_name", "not in the file's images")
        problem = "has no 'bbox'" if "bbox" not in ann else f"has bbox {box!r}"
        raise ValueError(
            f"Dataset '{name}': '{json_file}', image id {image_id!r} ('{file_name}'), "
            f"annotation id {ann.get('id')!r} {problem}: a COCO box is 4 numbers "
            "[x, y, width, height]"
        )


def load_checked_coco_json(json_file: str, image_root: str, name: str) -> List[Dict]:
    """Detectron2's ``load_coco_json`` after :func:`check_coco_json` (which parses the file
    once more: 3.3 s against the load's 4.8 s for 20k images and 150k annotations), with a clear
    error when the file is not a COCO instances file (not JSON, or without "images" /
    "categories")."""
    check_coco_json(json_file, name)
    try:
        return load_coco_json(json_file, image_root, name)
    except (KeyError, TypeError, AssertionError, IndexError, AttributeError, ValueError) as e:
        if isinstance(e, KeyError) and "category_id" in str(e):
            raise  # Detectron2's own message names the unknown category id
        raise _not_coco(name, json_file, f"{type(e).__name__}: {e}") from e


def check_test_dataset(name: str) -> None:
    """The checks of a dataset that is only evaluated, run when training starts rather than at
    the first evaluation: its files exist (:func:`check_dataset_files`) and, for one registered
    by :func:`register_coco_dataset`, its COCO file passes :func:`check_coco_json`."""
    check_dataset_files(name)
    meta = MetadataCatalog.get(name)
    if meta.get("checked_coco_json"):
        check_coco_json(meta.json_file, name)


def validate_dataset_dicts(dicts: Sequence[Dict], names: Sequence[str], num_classes: int) -> None:
    """Check training records before a loader is built.

    Raises:
        ValueError: naming the image and annotation, for a box with a NaN or infinite
            coordinate, or a category id the model has no class for (>= num_classes).
    Degenerate boxes (zero or negative width/height, or outside the image) are correct input:
    Detectron2 clips boxes to the image and drops empty ones.
    """
    label = ", ".join(names)
    for record in dicts:
        for i, ann in enumerate(record.get("annotations", [])):
            where = f"dataset {label}, image '{record.get('file_name')}', annotation {i}"
            box = ann.get("bbox")
            if box is not None and not all(math.isfinite(float(v)) for v in box):
                raise ValueError(f"{where}: bbox {list(box)} has a NaN or infinite coordinate")
            cls = ann.get("category_id")
            if cls is not None and not 0 <= cls < num_classes:
                raise ValueError(
                    f"{where}: category {cls} (contiguous id) but the model has "
                    f"MODEL.ROI_HEADS.NUM_CLASSES {num_classes}: set NUM_CLASSES to the "
                    "dataset's number of classes"
                )


def check_dataset_files(name: str) -> None:
    """Raise a clear error if a registered dataset's annotation file or image directory is
    missing. Shapes splits are generated instead.

    Raises:
        KeyError: the name is not registered (lists what is).
        FileNotFoundError: naming the missing path and how to obtain the dataset.
    """
    if name not in DatasetCatalog.list():
        known = ", ".join(sorted(n for n in DatasetCatalog.list() if not n.startswith("keypoints")))
        raise KeyError(
            f"Dataset '{name}' is not registered. Register a COCO-format dataset with "
            f"--register-coco NAME JSON_FILE IMAGE_ROOT, or use one of: {known}"
        )
    meta = MetadataCatalog.get(name)
    if meta.get("shapes_spec") is not None:
        prepare_shapes(name)
        return
    paths = [meta.get(k) for k in ("json_file", "image_root", "dirname") if meta.get(k)]
    prefixes = {"coco_": "coco", "voc_": "voc", "crowdhuman_": "crowdhuman"}
    kind = next((k for p, k in prefixes.items() if name.startswith(p)), "other")
    for path in paths:
        if "://" in str(path):
            continue
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Dataset '{name}': '{path}' does not exist. "
                + _HOW_TO_GET[kind].format(root=os.path.abspath(datasets_root()))
            )
