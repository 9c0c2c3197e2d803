"""The analysis tools, built from instant-test runs and checked against independent computations;
bad input gives a message and a non-zero exit code."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, run_tool
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cascade_zoo import setup_cfg
from cascade_zoo.analysis import (
    AnalysisInputError,
    flop_breakdown,
    load_ap_curves,
    match_detections,
    parameter_breakdown,
)
from cascade_zoo.data import check_dataset_files

TOOLS = ROOT / "tools"
CORE_INSTANT = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"
FASTER_INSTANT = ROOT / "configs" / "Baselines" / "faster_rcnn_instant_test.yaml"


tool = run_tool


def _md_rows(path):
    rows = {}
    for line in open(path).read().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_ap_vs_iou_curves_tables_and_differences(trained_core, tmp_path):
    out, _ = trained_core
    stagewise = out / "inference" / "shapes_tiny_val" / "stagewise_results.json"
    tool("plot_ap_iou.py", "--inputs", f"{stagewise}:core", f"{out / 'metrics.json'}:final",
         "--diff", "core/stage3", "core/stage2", "--output-dir", tmp_path)  # fmt: skip
    assert Image.open(tmp_path / "ap_vs_iou.png").size[0] > 600
    rows = _md_rows(tmp_path / "ap_vs_iou.md")
    data = json.loads(stagewise.read_text())
    for stage in ("stage1", "stage2", "stage3", "ensemble"):
        want = [data[f"{stage}/bbox"][f"AP{t}"] for t in range(50, 100, 5)]
        assert [float(c) for c in rows[f"core/{stage}"]] == pytest.approx(want, abs=0.006)
    diff = [float(c) for c in rows["core/stage3 - core/stage2"]]
    s3 = [float(c) for c in rows["core/stage3"]]
    s2 = [float(c) for c in rows["core/stage2"]]
    assert diff == pytest.approx([a - b for a, b in zip(s3, s2)], abs=0.011)
    assert (tmp_path / "ap_vs_iou.csv").read_text().startswith("curve,AP50,AP55")
    # AP at IoU 0.5 of the final output equals pycocotools' stats[1] on the saved detections
    check_dataset_files("shapes_tiny_val")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(MetadataCatalog.get("shapes_tiny_val").json_file)
        results = out / "inference" / "shapes_tiny_val" / "coco_instances_results.json"
        dets = json.loads(results.read_text())
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert float(rows["final"][0]) == pytest.approx(ev.stats[1] * 100, abs=0.006)
    assert load_ap_curves(str(out / "metrics.json"))  # stage curves found in metrics.json too
    assert "stage3" in " ".join(load_ap_curves(str(out / "metrics.json"), "m"))


def test_ap_vs_iou_bad_input(tmp_path):
    missing = tool("plot_ap_iou.py", "--inputs", tmp_path / "nope.json", check=False)
    assert missing.returncode != 0 and "nope.json: no such file" in missing.stdout
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"foo": 1}))
    wrong = tool("plot_ap_iou.py", "--inputs", other, check=False)
    assert wrong.returncode != 0 and "no per-IoU bbox AP found" in wrong.stdout
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"iteration": 3, "total_loss": 1.0}) + "\n")
    with pytest.raises(AnalysisInputError, match="no per-IoU bbox AP"):
        load_ap_curves(str(metrics))
    partial = tmp_path / "stagewise_results.json"
    partial.write_text(json.dumps({"stage1/bbox": {"AP50": 3.0}}))
    with pytest.raises(AnalysisInputError, match="AP55"):
        load_ap_curves(str(partial))


def test_ap_vs_iou_from_benchmark_result_files_and_their_mean_over_seeds(tmp_path):
    import json

    folder = tmp_path / "Benchmark" / "model"
    folder.mkdir(parents=True)
    keys = [f"AP{50 + 5 * i}" for i in range(10)]
    for seed, base in ((0, 10.0), (1, 20.0)):
        final = {k: base - i for i, k in enumerate(keys)}
        stage1 = {k: base / 2 for k in keys}
        result = {"format": 1, "seed": seed, "metrics": {"bbox": {"AP": base, **final},
                                                         "stages": {"stage1": stage1}}}  # fmt: skip
        (folder / f"seed{seed}.json").write_text(json.dumps(result))
    (folder / "seed0.other-backbone.json").write_text("{}")  # not a seed result: ignored
    one = load_ap_curves(str(folder / "seed1.json"), "m")
    assert one["m"] == [20.0 - i for i in range(10)] and one["m/stage1"] == [10.0] * 10
    mean = load_ap_curves(str(folder))
    assert list(mean) == ["model", "model/stage1"]
    assert mean["model"] == [15.0 - i for i in range(10)] and mean["model/stage1"] == [7.5] * 10
    with pytest.raises(AnalysisInputError, match="no seed<k>.json"):
        load_ap_curves(str(tmp_path))


def test_iou_histograms_from_statistics_and_from_samplers(trained_core, tmp_path):
    out, _ = trained_core
    tool("plot_iou_histograms.py", "--stats", out / "training_iou_stats.json",
         "--output-dir", tmp_path)  # fmt: skip
    assert (tmp_path / "training_iou_histograms.png").exists()
    stats = json.loads((out / "training_iou_stats.json").read_text())
    rows = _md_rows(tmp_path / "training_iou_histograms.md")
    for name, row in stats["rows"].items():
        assert int(rows[name][0]) == row["total"]
        assert rows[name][1] == f"{row['positive_share']['0.5']:.1%}"
    # by running the samplers of a config over 2 batches with the run's checkpoint
    tool("plot_iou_histograms.py", "--config-file", CORE_INSTANT, "--batches", 2,
         "--output-dir", tmp_path / "run", "MODEL.WEIGHTS", out / "model_final.pth")  # fmt: skip
    collected = json.loads((tmp_path / "run" / "training_iou_histograms.json").read_text())
    assert collected["rows"]["stage1"]["total"] == 2 * 2 * 64  # batches x images x samples
    assert sum(collected["rows"]["stage2"]["counts"]) == collected["rows"]["stage2"]["total"]
    # a model whose heads record no statistics
    bad = tool("plot_iou_histograms.py", "--config-file", FASTER_INSTANT, "--batches", 1,
               "--output-dir", tmp_path / "bad", check=False)  # fmt: skip
    assert bad.returncode != 0 and "record no training IoU statistics" in bad.stdout
    not_stats = tmp_path / "x.json"
    not_stats.write_text("[]")
    bad = tool("plot_iou_histograms.py", "--stats", not_stats, check=False)
    assert bad.returncode != 0 and "not a training_iou_stats.json" in bad.stdout


def _xyxy(xywh_boxes):
    array = np.array(xywh_boxes, dtype=float)
    return Boxes(torch.tensor(BoxMode.convert(array, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)))


def test_score_vs_iou_matches_an_independent_iou(trained_core, tmp_path):
    out, _ = trained_core
    results = out / "inference" / "shapes_tiny_val" / "coco_instances_results.json"
    gt_json = MetadataCatalog.get("shapes_tiny_val").json_file
    matches = match_detections(gt_json, str(results))
    dets = json.loads(results.read_text())
    gt = json.load(open(gt_json))
    assert len(matches["iou"]) == len(dets) > 0
    for i in range(0, len(dets), max(1, len(dets) // 25)):
        d = dets[i]
        key = (d["image_id"], d["category_id"])
        same = [a["bbox"] for a in gt["annotations"] if (a["image_id"], a["category_id"]) == key]
        if not same:
            assert matches["iou"][i] == 0
            continue
        iou = pairwise_iou(_xyxy([d["bbox"]]), _xyxy(same))
        assert matches["iou"][i] == pytest.approx(iou.max().item(), abs=1e-6)
    tool("plot_score_iou.py", "--results", results, "--dataset", "shapes_tiny_val",
         "--min-score", 0.0, "--output-dir", tmp_path)  # fmt: skip
    assert (tmp_path / "score_vs_iou.png").exists()
    assert "Pearson correlation" in (tmp_path / "score_vs_iou.md").read_text()


def test_score_vs_iou_bad_input(trained_core, tmp_path):
    out, _ = trained_core
    results = out / "inference" / "shapes_tiny_val" / "coco_instances_results.json"
    gt = json.load(open(MetadataCatalog.get("shapes_tiny_val").json_file))
    for record in gt["images"]:
        record["id"] += 1000  # another dataset: no image ids in common
    other_gt = tmp_path / "other_gt.json"
    other_gt.write_text(json.dumps(gt))
    other = tool("plot_score_iou.py", "--results", results, "--gt-json", other_gt, check=False)
    assert other.returncode != 0 and "different datasets" in other.stdout
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    proc = tool("plot_score_iou.py", "--results", empty, "--dataset", "shapes_tiny_val",
                check=False)  # fmt: skip
    assert proc.returncode != 0 and "no detections" in proc.stdout


def test_parameter_and_flop_breakdown():
    # ensemble "none": each stage's head runs once per box (all_on_final runs earlier heads twice)
    model = build_model(setup_cfg(str(CORE_INSTANT), ["MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none"]))
    groups = parameter_breakdown(model)
    assert sum(groups.values()) == sum(p.numel() for p in model.parameters())
    assert groups["roi_heads.box_head.1"] == sum(
        p.numel() for p in model.roi_heads.box_head[1].parameters()
    )
    assert groups["backbone.bottom_up"] == sum(
        p.numel() for p in model.backbone.bottom_up.parameters()
    )
    assert {"proposal_generator", "roi_heads.box_predictor.2", "backbone.fpn"} <= set(groups)
    total, flops = flop_breakdown(model, torch.rand(3, 128, 160) * 255)
    assert total > 0 and set(flops) == set(groups)
    assert flops["roi_heads.box_head.0"] == flops["roi_heads.box_head.2"] > 0
    assert sum(flops.values()) <= total
    # the box head's FLOPs are its two fc layers on every box: R x (C*7*7*D + D*D)
    fc1 = model.roi_heads.box_head[0].fc1
    fc2 = model.roi_heads.box_head[0].fc2
    per_box = fc1.in_features * fc1.out_features + fc2.in_features * fc2.out_features
    assert flops["roi_heads.box_head.0"] % per_box == 0


def test_cost_report_side_by_side_with_ratios(tmp_path):
    md = tmp_path / "cost.md"
    proc = tool("benchmark.py", "--configs", FASTER_INSTANT, CORE_INSTANT, "--baseline",
                FASTER_INSTANT, "--train-iters", 1, "--warmup", 1, "--infer-images", 1,
                "--output", md, "--title", "instant", "--interleave")  # fmt: skip
    text = md.read_text()
    assert "taking turns at every step" in text
    assert "## instant" in text and "Measured" in text
    assert "Command: `python tools/benchmark.py" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert len(lines) == 2
    base = [c.strip() for c in lines[0].split("|")]
    assert base[-4:-1] == ["1.000", "1.000", "1.000"]  # the baseline's own ratios
    assert "roi_heads.box_head.2" in text and "GFLOPs" in text
    assert proc.returncode == 0


def test_interleaved_timing_of_own_checkpoints_times_them_as_loaded(tmp_path, monkeypatch):
    """With own_weights each model loads its config's MODEL.WEIGHTS (not the first model's
    weights), and inference is timed before the training steps change them."""
    from detectron2.checkpoint import DetectionCheckpointer

    import cascade_zoo.benchmark as bench

    paths, want = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_model(setup_cfg(str(CORE_INSTANT), []))
        DetectionCheckpointer(model, save_dir=str(tmp_path)).save(f"m{seed}")
        paths.append(tmp_path / f"m{seed}.pth")
        want.append(model.roi_heads.box_predictor[2].cls_score.weight.detach().clone())
    assert not torch.equal(*want)
    seen = []

    def fingerprint(model, batch, clock=None):
        seen.append(model.roi_heads.box_predictor[2].cls_score.weight.detach().clone())
        return 0.0

    monkeypatch.setattr(bench, "_inference", fingerprint)
    cfgs = [setup_cfg(str(CORE_INSTANT), ["MODEL.WEIGHTS", str(p)]) for p in paths]
    bench.measure_interleaved(cfgs, train_iters=1, warmup=1, infer_images=1, own_weights=True)
    # two test images (1 warm-up + 1), the models taking turns: 0, 1, then 1, 0
    assert [torch.equal(w, want[0]) for w in seen] == [True, False, False, True]
    assert [torch.equal(w, want[1]) for w in seen] == [False, True, True, False]
    # without own_weights the second model starts from the first one's weights
    seen.clear()
    bench.measure_interleaved(cfgs, train_iters=0, warmup=1, infer_images=1)
    assert not any(torch.equal(w, want[1]) for w in seen)


def test_cost_report_refuses_weights_that_do_not_match_the_configs(tmp_path):
    proc = tool("benchmark.py", "--configs", FASTER_INSTANT, CORE_INSTANT, "--weights",
                tmp_path / "a.pth", check=False)  # fmt: skip
    assert proc.returncode != 0 and "--weights: 1 checkpoint(s) for 2 config(s)" in proc.stdout
    proc = tool("benchmark.py", "--configs", FASTER_INSTANT, "--weights", tmp_path / "a.pth",
                check=False)  # fmt: skip
    assert proc.returncode != 0 and "a.pth' not found" in proc.stdout


def test_visualize_per_stage_and_without_stage_outputs(trained_core, tmp_path):
    out, _ = trained_core
    png = tmp_path / "stages.png"
    tool("visualize.py", "--config-file", CORE_INSTANT, "--dataset", "shapes_tiny_val",
         "--output", png, "--num-images", 2, "--stages", "--score-threshold", 0.0,
         "MODEL.WEIGHTS", out / "model_final.pth")  # fmt: skip
    width, height = Image.open(png).size
    images = json.load(open(MetadataCatalog.get("shapes_tiny_val").json_file))["images"][:2]
    # one row per image: stage1, stage2, stage3, ensemble, ground truth (+ captions)
    assert width >= 5 * min(r["width"] for r in images)
    assert height >= sum(r["height"] for r in images)
    bad = tool("visualize.py", "--config-file", FASTER_INSTANT, "--dataset", "shapes_tiny_val",
               "--output", tmp_path / "x.png", "--stages", check=False)  # fmt: skip
    assert bad.returncode != 0 and "stage-wise outputs" in bad.stdout


def test_predicted_iou_panel_when_detections_carry_it(tmp_path):
    check_dataset_files("shapes_tiny_val")
    gt_json = MetadataCatalog.get("shapes_tiny_val").json_file
    gt = json.load(open(gt_json))
    rng = np.random.default_rng(0)
    dets = []
    for ann in gt["annotations"][:40]:
        x, y, w, h = ann["bbox"]
        shift = rng.uniform(0, 0.5) * w
        dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                     "bbox": [x + shift, y, w, h], "score": float(rng.uniform()),
                     "predicted_iou": float(rng.uniform())})  # fmt: skip
    results = tmp_path / "dets.json"
    results.write_text(json.dumps(dets))
    matches = match_detections(gt_json, str(results))
    assert "predicted_iou" in matches and len(matches["predicted_iou"]) == 40
    # a box shifted right by s*w keeps IoU (w - s*w) / (w + s*w) with its own ground truth
    for det, ann, iou in zip(dets, gt["annotations"][:40], matches["iou"]):
        s = (det["bbox"][0] - ann["bbox"][0]) / ann["bbox"][2]
        assert iou >= (1 - s) / (1 + s) - 1e-6
    tool("plot_score_iou.py", "--results", results, "--gt-json", gt_json, "--min-score", 0,
         "--output-dir", tmp_path)  # fmt: skip
    assert "mean predicted IoU" in (tmp_path / "score_vs_iou.md").read_text()
    assert Image.open(tmp_path / "score_vs_iou.png").size[0] > 800  # two panels


def test_empty_dataset_gives_a_clear_error(tmp_path):
    from cascade_zoo.data import register_coco_dataset
    from cascade_zoo.visualize import draw_predictions

    (tmp_path / "images").mkdir()
    empty = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "circle"}]}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    register_coco_dataset("empty_for_analysis", tmp_path / "empty.json", tmp_path / "images")
    with pytest.raises(ValueError, match="'empty_for_analysis' is empty"):
        draw_predictions(
            setup_cfg(str(CORE_INSTANT)), "empty_for_analysis", str(tmp_path / "x.png")
        )
