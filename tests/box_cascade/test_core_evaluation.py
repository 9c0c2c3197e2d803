"""Stage-wise evaluation and training statistics out of an ordinary train_net.py run, and the
per-IoU AP checked against pycocotools' own summary."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
from conftest import ROOT, run_train_net
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from box_cascade import StageWiseCOCOEvaluator, format_stagewise_tables
from cascade_zoo.data import check_dataset_files
from cascade_zoo.evaluation import ap_per_iou

CORE_INSTANT = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"


def _noisy_detections(coco, seed=0):
    """Ground-truth boxes jittered at random, as fake detections with random scores."""
    rng = np.random.default_rng(seed)
    dets = []
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                     "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1),
                              max(h + jitter[3], 1)], "score": float(rng.uniform())})  # fmt: skip
    return dets


def test_ap_per_iou_matches_pycocotools_summary():
    check_dataset_files("shapes_tiny_val")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(MetadataCatalog.get("shapes_tiny_val").json_file)
        ev = COCOeval(coco, coco.loadRes(_noisy_detections(coco)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_iou = ap_per_iou(ev)
    assert list(per_iou) == [f"AP{t}" for t in range(50, 100, 5)]
    assert per_iou["AP50"] == pytest.approx(ev.stats[1] * 100)
    assert per_iou["AP75"] == pytest.approx(ev.stats[2] * 100)
    assert np.mean(list(per_iou.values())) == pytest.approx(ev.stats[0] * 100)
    assert per_iou["AP50"] > per_iou["AP90"]  # the jitter makes high IoU harder


def test_train_net_writes_stagewise_tables_and_json(trained_core):
    out, stdout = trained_core
    assert "Stage-wise detection AP on shapes_tiny_val" in stdout
    assert " detections |" in stdout and " proposals |" in stdout
    results = json.loads(
        (out / "inference" / "shapes_tiny_val" / "stagewise_results.json").read_text()
    )
    assert set(results) == {"stage1/bbox", "stage2/bbox", "stage3/bbox", "ensemble/bbox",
                            "proposals/rpn", "proposals/stage1", "proposals/stage2",
                            "proposals/stage3"}  # fmt: skip
    assert set(results["stage2/bbox"]) >= {"AP", "APs", "APm", "APl"} | {
        f"AP{t}" for t in range(50, 100, 5)
    }
    assert set(results["proposals/rpn"]) >= {"AR@100", "AR@1000", "ARl@1000"}
    # the trainer's metrics hold every row of the file under its own name
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    final = next(m for m in metrics if "bbox/AP" in m)
    for row, values in results.items():
        for name, value in values.items():
            assert final[f"{row}/{name}"] == pytest.approx(value, nan_ok=True), (row, name)


def test_training_iou_statistics_json_and_resume(trained_core, tmp_path):
    out, _ = trained_core
    stats = json.loads((out / "training_iou_stats.json").read_text())
    assert stats["iteration"] == 4
    assert set(stats["rows"]) == {"rpn", "stage1", "stage2", "stage3"}
    assert len(stats["bin_edges"]) == len(stats["rows"]["stage1"]["counts"]) + 1
    # 4 iterations x 2 images x 64 sampled boxes in stage 1
    assert stats["rows"]["stage1"]["total"] == 4 * 2 * 64
    # resuming from the iteration-2 checkpoint continues the totals (not restarting at zero)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "model_0000001.pth").write_bytes((out / "model_0000001.pth").read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    run_train_net("--config-file", CORE_INSTANT, "--resume", "OUTPUT_DIR", resumed,
                  "TEST.EVAL_PERIOD", 0, "MODEL.BOX_CASCADE.STAGEWISE_TEST", False)  # fmt: skip
    again = json.loads((resumed / "training_iou_stats.json").read_text())
    assert again["rows"]["stage1"]["total"] == 4 * 2 * 64


def test_proposal_recall_rows_are_each_stages_own_boxes():
    """Each ``proposals/<name>`` row is the recall of ``stage_proposals[name]``: given the
    ground truth exactly as "stage2" (recall 1 at every IoU), shifted by 16% of its width as
    "stage1" (IoU 0.84 / 1.16 = 0.72: recalled at IoU 0.50..0.70, 5 of the 10 thresholds) and
    far away as "rpn", AR@100 is 100, 50 and 0."""
    import torch
    from detectron2.structures import Boxes, Instances

    check_dataset_files("shapes_tiny_val")
    DatasetCatalog.get("shapes_tiny_val")
    meta = MetadataCatalog.get("shapes_tiny_val")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(meta.json_file)
    ev = StageWiseCOCOEvaluator("shapes_tiny_val", 2, distributed=False)
    ev.reset()
    for img in coco.dataset["images"]:
        anns = [a for a in coco.dataset["annotations"] if a["image_id"] == img["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        exact = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        shift = torch.zeros_like(exact)
        shift[:, 0::2] = 0.16 * xywh[:, 2:3]
        far = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).expand(max(len(anns), 1), 4)
        size = (img["height"], img["width"])
        boxes = {"rpn": far, "stage1": exact + shift, "stage2": exact}
        proposals = {
            name: Instances(
                size, proposal_boxes=Boxes(b.clone()), objectness_logits=torch.ones(len(b))
            )
            for name, b in boxes.items()
        }
        ev.process(
            [{"image_id": img["id"]}], [{"stage_instances": {}, "stage_proposals": proposals}]
        )
    with contextlib.redirect_stdout(io.StringIO()):
        results = ev.evaluate()
    assert set(results) == {"proposals/rpn", "proposals/stage1", "proposals/stage2"}
    assert results["proposals/stage2"]["AR@100"] == pytest.approx(100.0, abs=1e-3)
    assert results["proposals/stage1"]["AR@100"] == pytest.approx(50.0, abs=1e-3)
    assert results["proposals/rpn"]["AR@100"] == pytest.approx(0.0, abs=1e-3)


def test_stagewise_evaluator_without_stage_outputs_says_what_to_do():
    check_dataset_files("shapes_tiny_val")
    ev = StageWiseCOCOEvaluator("shapes_tiny_val", 3, distributed=False)
    ev.reset()
    ev.process([{"image_id": 0}], [{"instances": None}])
    with pytest.raises(RuntimeError, match="BoxCascadeRCNN.*STAGEWISE_TEST"):
        ev.evaluate()


def test_format_stagewise_tables_handles_missing_and_nan():
    text = format_stagewise_tables(
        {"stage1/bbox": {"AP": 12.5, "AP50": math.nan}, "proposals/rpn": {"AR@100": 40.0}}
    )
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("|")}
    stage1 = [c.strip() for c in rows["stage1"].split("|")[1:-1]]
    assert stage1[:3] == ["stage1", "12.50", "-"]  # AP, then AP50 (NaN)
    assert [c.strip() for c in rows["rpn"].split("|")[1:-1]][:2] == ["rpn", "40.00"]


def test_copies_of_the_evaluator_keep_their_own_predictions():
    check_dataset_files("shapes_tiny_val")
    ev = StageWiseCOCOEvaluator("shapes_tiny_val", 2, distributed=False)
    ev.reset()
    a, b = ev._detections["stage1"], ev._detections["stage2"]
    assert a._coco_api is b._coco_api and a._predictions is not b._predictions


def test_each_stages_ap_equals_an_independent_pycocotools_run():
    """Per-stage detections (ground truth jittered with a different noise per stage) through the
    stage-wise evaluator, against pycocotools run directly on the same detections."""
    import torch
    from detectron2.structures import Boxes, Instances

    check_dataset_files("shapes_tiny_val")
    DatasetCatalog.get("shapes_tiny_val")  # sets the category id mapping
    meta = MetadataCatalog.get("shapes_tiny_val")
    to_contiguous = meta.thing_dataset_id_to_contiguous_id
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(meta.json_file)
    dets = {"stage1": _noisy_detections(coco, 1), "stage2": _noisy_detections(coco, 2)}
    dets["ensemble"] = _noisy_detections(coco, 3)
    ev = StageWiseCOCOEvaluator("shapes_tiny_val", 2, distributed=False)
    ev.reset()
    for img in coco.dataset["images"]:
        stage_instances = {}
        for name, stage_dets in dets.items():
            mine = [d for d in stage_dets if d["image_id"] == img["id"]]
            inst = Instances((img["height"], img["width"]))
            xywh = torch.tensor([d["bbox"] for d in mine], dtype=torch.float32).reshape(-1, 4)
            inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
            inst.scores = torch.tensor([d["score"] for d in mine])
            inst.pred_classes = torch.tensor([to_contiguous[d["category_id"]] for d in mine])
            stage_instances[name] = inst
        ev.process([{"image_id": img["id"]}], [{"stage_instances": stage_instances}])
    with contextlib.redirect_stdout(io.StringIO()):
        results = ev.evaluate()
    for name, stage_dets in dets.items():
        with contextlib.redirect_stdout(io.StringIO()):
            direct = COCOeval(coco, coco.loadRes(stage_dets), "bbox")
            direct.evaluate()
            direct.accumulate()
            direct.summarize()
        got = results[f"{name}/bbox"]
        assert got["AP"] == pytest.approx(direct.stats[0] * 100, abs=1e-3), name
        assert got["AP75"] == pytest.approx(direct.stats[2] * 100, abs=1e-3), name
        assert got["APl"] == pytest.approx(direct.stats[5] * 100, abs=1e-3, nan_ok=True), name
        for key, value in ap_per_iou(direct).items():
            assert got[key] == pytest.approx(value, abs=1e-3), (name, key)
    assert results["stage1/bbox"]["AP"] != results["stage2/bbox"]["AP"]
