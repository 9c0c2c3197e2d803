"""AP by object count (Fig. 2 of RGA + PRM) against pycocotools run directly on a ground-truth
file that holds only the subset's images."""

import contextlib
import io
import json

import pytest
from conftest import run_tool
from detectron2.data import MetadataCatalog
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cascade_zoo.analysis.subsets import ap_by_object_count
from cascade_zoo.data import check_dataset_files


def _direct_ap(gt_data, results, image_ids, tmp_path):
    sub = dict(gt_data)
    sub["images"] = [i for i in gt_data["images"] if i["id"] in image_ids]
    sub["annotations"] = [a for a in gt_data["annotations"] if a["image_id"] in image_ids]
    path = tmp_path / "sub.json"
    path.write_text(json.dumps(sub))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dt = gt.loadRes([r for r in results if r["image_id"] in image_ids])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats[0] * 100, ev.stats[1] * 100


def test_subset_ap_equals_pycocotools_on_the_subset_alone(trained_core, tmp_path):
    out, _ = trained_core
    results_json = out / "inference" / "shapes_tiny_val" / "coco_instances_results.json"
    check_dataset_files("shapes_tiny_val")
    gt_json = MetadataCatalog.get("shapes_tiny_val").json_file
    gt_data = json.load(open(gt_json))
    results = json.load(open(results_json))
    counts = {i["id"]: 0 for i in gt_data["images"]}
    for a in gt_data["annotations"]:
        counts[a["image_id"]] += 0 if a.get("iscrowd") else 1
    median = sorted(counts.values())[len(counts) // 2]
    bins = [(1, median), (median + 1, None)]
    got = ap_by_object_count(gt_json, str(results_json), bins)
    for low, high in bins:
        ids = {i for i, n in counts.items() if n >= low and (high is None or n <= high)}
        label = f"[{low},{high}]" if high else f"[{low},inf)"
        assert got[label]["images"] == len(ids) > 0
        ap, ap50 = _direct_ap(gt_data, results, ids, tmp_path)
        assert got[label]["AP"] == pytest.approx(ap, abs=1e-9)
        assert got[label]["AP50"] == pytest.approx(ap50, abs=1e-9)
    assert got["all"]["images"] == len(counts)
    proc = run_tool("eval_subsets.py", "--dataset", "shapes_tiny_val", "--results",
                    f"core={results_json}", "--bins", f"1-{median}", f"{median + 1}-",
                    "--output", tmp_path / "s.md")  # fmt: skip
    assert "| core | [1," in proc.stdout
    assert json.load(open(tmp_path / "s.json"))["core"]["all"]["images"] == len(counts)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    proc = run_tool("eval_subsets.py", "--dataset", "shapes_tiny_val", "--results", empty,
                    check=False)  # fmt: skip
    assert proc.returncode != 0 and "holds no detections" in proc.stdout
