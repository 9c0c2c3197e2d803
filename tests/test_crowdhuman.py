"""CrowdHuman: odgt registration and the log-average miss rate, against hand-computed values."""

import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from cascade_zoo.data import register_crowdhuman
from cascade_zoo.evaluation_mr import MissRateEvaluator, evaluate_miss_rate

SQUARE = [0, 0, 10, 10]


def _example(with_ignore=True):
    """10 images, 4 people; by score: TP, TP, (a detection inside an ignore region), FP, TP, FP,
    FP (a duplicate of a matched person)."""
    arr = lambda *b: np.asarray(b, dtype=np.float32).reshape(-1, 4)  # noqa: E731
    gts = {i: (arr(), arr()) for i in range(10)}
    gts[0] = (arr(SQUARE), arr())
    gts[1] = (arr(SQUARE), arr())
    gts[2] = (arr([20, 20, 30, 30]), arr())
    gts[3] = (arr(SQUARE), arr())
    if with_ignore:
        gts[6] = (arr(), arr([0, 0, 50, 50]))
    dets = [
        (0, arr(SQUARE, SQUARE), np.array([0.95, 0.70], dtype=np.float32)),
        (1, arr(SQUARE), np.array([0.90], dtype=np.float32)),
        (6, arr([5, 5, 15, 15]), np.array([0.88], dtype=np.float32)),
        (4, arr(SQUARE), np.array([0.85], dtype=np.float32)),
        (2, arr([20, 20, 30, 30]), np.array([0.80], dtype=np.float32)),
        (5, arr(SQUARE), np.array([0.75], dtype=np.float32)),
    ]
    return gts, dets


def test_miss_rate_and_ap_by_hand():
    # TP/FP by score: (1,0) (2,0) (2,1) (3,1) (3,2) (3,3): FPPI 0 0 .1 .1 .2 .3, MR .75 .5 .5 .25
    # .25 .25. At the references 10^-2 .. 10^-1 (5 of them) the first FPPI >= them is 0.1 (MR .5);
    # at 10^-0.75 it is 0.2 (MR .25); above 0.3 none is, so the last point (MR .25):
    # MR^-2 = (0.5^5 * 0.25^4)^(1/9) = 2^(-13/9).
    # AP: precision 1, 1, 2/3, 3/4, 3/5, 1/2 at recall .25 .5 .5 .75 .75 .75
    #     -> 0.25 * 1 + 0.25 * 1 + 0.25 * 0.75
    result = evaluate_miss_rate(*_example())
    assert result["MR"] == pytest.approx(100 * 2 ** (-13 / 9))
    assert result["AP50"] == pytest.approx(100 * 0.6875)
    assert result["num_gt"] == 4 and result["images"] == 10
    # without the ignore region the detection there is a false positive: FPPI 0 0 .1 .2 .2 .3 .4,
    # MR .75 .5 .5 .5 .25 .25 .25 -> six references at .5, three at .25: 2^(-12/9)
    result = evaluate_miss_rate(*_example(with_ignore=False))
    assert result["MR"] == pytest.approx(100 * 2 ** (-12 / 9))
    assert not math.isclose(result["MR"], 100 * 2 ** (-13 / 9))


def test_odgt_registration_and_the_evaluator(tmp_path):
    images = tmp_path / "Images"
    images.mkdir()
    lines = []
    for i in range(10):
        Image.new("RGB", (64, 48)).save(images / f"img{i}.jpg")
        gtboxes = []
        if i in (0, 1, 3):
            gtboxes.append({"tag": "person", "fbox": [0, 0, 10, 10], "vbox": [0, 0, 5, 5],
                            "extra": {"ignore": 0}})  # fmt: skip
        if i == 2:
            gtboxes.append({"tag": "person", "fbox": [20, 20, 10, 10], "extra": {}})
        if i == 6:
            gtboxes.append({"tag": "mask", "fbox": [0, 0, 50, 50], "extra": {"ignore": 1}})
        if i == 7:  # a person marked ignore is an ignore region too
            gtboxes.append({"tag": "person", "fbox": [1, 1, 5, 5], "extra": {"ignore": 1}})
        lines.append(json.dumps({"ID": f"img{i}", "gtboxes": gtboxes}))
    (tmp_path / "a.odgt").write_text("\n".join(lines) + "\n")
    name = f"crowd_{tmp_path.name}"
    register_crowdhuman(name, str(tmp_path / "a.odgt"), str(images))
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == [f"img{i}" for i in range(10)]
    assert dicts[0]["width"] == 64 and dicts[0]["height"] == 48
    assert dicts[6]["annotations"][0]["iscrowd"] == 1 and dicts[7]["annotations"][0]["iscrowd"] == 1
    assert dicts[2]["annotations"][0]["bbox"] == [20.0, 20.0, 10.0, 10.0]

    _, dets = _example()
    evaluator = MissRateEvaluator(name)
    evaluator.reset()
    by_image = {image: (boxes, scores) for image, boxes, scores in dets}
    for i in range(10):
        inst = Instances((48, 64))
        boxes, scores = by_image.get(i, (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
        inst.pred_boxes = Boxes(torch.as_tensor(boxes))
        inst.scores = torch.as_tensor(scores)
        inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
        evaluator.process([{"image_id": f"img{i}"}], [{"instances": inst}])
    result = evaluator.evaluate()["crowdhuman"]
    assert result["MR"] == pytest.approx(100 * 2 ** (-13 / 9))
    assert result["AP50"] == pytest.approx(68.75)


def test_bad_odgt_line_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    (tmp_path / "bad.odgt").write_text('{"ID": "x", "gtboxes": []}\n{"no": 1}\n')
    name = f"crowd_bad_{tmp_path.name}"
    register_crowdhuman(name, str(tmp_path / "bad.odgt"), str(tmp_path))
    with pytest.raises(ValueError, match="bad.odgt' line 2 is not an odgt record"):
        DatasetCatalog.get(name)
