"""CrowdHuman (Shao et al.): its ``.odgt`` annotations as Detectron2 dataset dicts, and the
registration of its splits.

An ``.odgt`` file holds one JSON object per line: ``{"ID": ..., "gtboxes": [{"tag": "person" |
"mask", "fbox": [x, y, w, h], "vbox": ..., "hbox": ..., "extra": {"ignore": 0 | 1, ...}}]}``;
the image is ``<image_root>/<ID>.jpg``. One class, "person", from the chosen box kind (full body
``fbox`` by default, as RGA + PRM's Table 7). Boxes tagged "mask" (crowds, reflections, ...) and
boxes with ``extra.ignore`` 1 become ``iscrowd`` regions: not trained on, and ignored by the
miss-rate evaluation (``cascade_zoo.evaluation_mr``).
"""

import json
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

__all__ = ["load_odgt", "register_crowdhuman", "CROWDHUMAN_SPLITS"]

BOX_KINDS = ("fbox", "vbox", "hbox")

#: name -> (odgt file, image directory), under $DETECTRON2_DATASETS/CrowdHuman/
CROWDHUMAN_SPLITS = {
    "crowdhuman_train": ("annotation_train.odgt", "Images"),
    "crowdhuman_val": ("annotation_val.odgt", "Images"),
}


def load_odgt(odgt_file: str, image_root: str, box: str = "fbox") -> List[Dict]:
    """Dataset dicts of an odgt file (see module doc). Raises ValueError naming the file and line
    for a line that is not an odgt record."""
    if box not in BOX_KINDS:
        raise ValueError(f"CrowdHuman box kind must be one of {BOX_KINDS}, got {box!r}")
    out = []
    with open(odgt_file) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image_id, boxes = record["ID"], record["gtboxes"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"'{odgt_file}' line {number} is not an odgt record with \"ID\" and "
                    f'"gtboxes": {e}'
                ) from None
            file_name = os.path.join(image_root, f"{image_id}.jpg")
            with Image.open(file_name) as img:  # reads the header only
                width, height = img.size
            annotations = []
            for b in boxes:
                if box not in b:
                    continue
                ignore = b.get("tag") != "person" or int(b.get("extra", {}).get("ignore", 0)) == 1
                annotations.append(
                    {
                        "bbox": [float(v) for v in b[box]],
                        "bbox_mode": BoxMode.XYWH_ABS,
                        "category_id": 0,
                        "iscrowd": int(ignore),
                    }
                )
            out.append(
                {
                    "file_name": file_name,
                    "image_id": image_id,
                    "height": height,
                    "width": width,
                    "annotations": annotations,
                }
            )
    return out


def register_crowdhuman(name: str, odgt_file: str, image_root: str, box: str = "fbox") -> None:
    """Register a CrowdHuman split; it is evaluated by log-average miss rate and AP50."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_odgt(odgt_file, image_root, box))
    MetadataCatalog.get(name).set(
        thing_classes=["person"],
        json_file=odgt_file,
        image_root=image_root,
        evaluator_type="crowdhuman",
        box_kind=box,
    )


def register_crowdhuman_splits(root: str) -> None:
    """The standard splits under ``<root>/CrowdHuman/`` (registered whether or not present;
    a missing file is reported by name when used)."""
    for name, (odgt, images) in CROWDHUMAN_SPLITS.items():
        base = os.path.join(root, "CrowdHuman")
        register_crowdhuman(name, os.path.join(base, odgt), os.path.join(base, images))
