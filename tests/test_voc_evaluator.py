"""PerIoUVOCEvaluator: Detectron2's VOC evaluation with the mAP at every IoU threshold, on a
two-image VOC folder whose detections have a known IoU with the ground truth."""

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_pascal_voc
from detectron2.structures import Boxes, Instances

from cascade_zoo.evaluation import PerIoUVOCEvaluator

XML = """<annotation><filename>{id}.jpg</filename><size><width>300</width><height>200</height>
<depth>3</depth></size><object><name>a</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult><bndbox><xmin>11</xmin>
<ymin>11</ymin><xmax>110</xmax><ymax>110</ymax></bndbox></object></annotation>"""


def _detection(shift, score):
    # 0-based [10, 110) is the VOC box 11..110 (100 x 100 px); a shift of d px in x gives
    # IoU (100 - d) / (100 + d) under VOC's +1 pixel convention
    out = Instances((200, 300))
    out.pred_boxes = Boxes(torch.tensor([[10.0 + shift, 10.0, 110.0 + shift, 110.0]]))
    out.scores = torch.tensor([score])
    out.pred_classes = torch.tensor([0])
    return {"instances": out}


def test_map_at_every_iou_threshold(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    for image_id in ("img0", "img1"):
        (tmp_path / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id))
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("img0\nimg1\n")
    name = f"voc_per_iou_test_{id(tmp_path)}"
    register_pascal_voc(name, str(tmp_path), "test", 2007, class_names=["a"])
    try:
        evaluator = PerIoUVOCEvaluator(name)
        evaluator.reset()
        # img0 detected exactly (score 0.9); img1 shifted by 16 px: IoU 84 / 116 = 0.724
        evaluator.process([{"image_id": "img0"}, {"image_id": "img1"}],
                          [_detection(0, 0.9), _detection(16, 0.8)])  # fmt: skip
        bbox = evaluator.evaluate()["bbox"]
    finally:
        MetadataCatalog.remove(name)
    # VOC07 11-point AP: both found -> 100; only the exact one (recall 0.5 at precision 1) ->
    # 6 of the 11 recall points
    half = 100.0 * 6 / 11
    want = {f"AP{t}": (100.0 if t <= 70 else half) for t in range(50, 100, 5)}
    for key, value in want.items():
        assert bbox[key] == pytest.approx(value, abs=1e-6), key
    assert bbox["AP"] == pytest.approx(sum(want.values()) / 10)  # Detectron2's own AP agrees
