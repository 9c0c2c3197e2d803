"""train_net.py trains and evaluates the FSCascade instant-test config through the project's
trainer; at test the output is the last stage alone; the gap tool (Fig. 1/3) and the
score-vs-IoU tool (Fig. 5) on its outputs, checked against independent computations."""

import importlib.util
import json

import numpy as np
import pytest
from conftest import ROOT, run_train_net
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.fs import INSTANT

from cascade_zoo.analysis import match_detections

AP_KEYS = [f"AP{t}" for t in range(50, 100, 5)]
# many detections of the barely trained model, so that some lie at IoU 0.5..0.75
LOW_THRESHOLD = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.01"]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _md_rows(path):
    rows = {}
    for line in path.read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("fs_cascade_instant")
    proc = run_train_net("--config-file", INSTANT, *LOW_THRESHOLD, "SEED", 0, "OUTPUT_DIR", out)
    return out, proc.stdout


def test_training_and_evaluation_through_train_net(trained):
    out, stdout = trained
    assert (out / "model_final.pth").exists()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = {"loss_cls_stage2", "loss_box_reg_stage2", "loss_box_reg_stage0"}
    assert any(losses <= set(m) for m in metrics)
    stagewise = json.loads((out / "inference/shapes_tiny_val/stagewise_results.json").read_text())
    assert {"stage1/bbox", "stage2/bbox", "stage3/bbox", "ensemble/bbox"} <= set(stagewise)
    final = next(m for m in reversed(metrics) if "bbox/AP50" in m)
    # TEST_ENSEMBLE none: the final output is the last stage's own detections
    for key in ["AP", *AP_KEYS]:
        assert final[f"bbox/{key}"] == pytest.approx(stagewise["stage3/bbox"][key], abs=1e-6)
        assert final[f"bbox/{key}"] == pytest.approx(stagewise["ensemble/bbox"][key], abs=1e-6)
    assert "Stage-wise detection AP" in stdout


def _stagewise(path, stages):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {f"{name}/bbox": dict(zip(AP_KEYS, ap)) for name, ap in stages.items()}
    path.write_text(json.dumps(data))
    return path


def test_gap_plot_on_known_numbers(tmp_path):
    # two runs and a Faster R-CNN, with numbers chosen here
    s2 = [60.0 - 5 * i for i in range(10)]
    s3 = [59.0 - 4 * i for i in range(10)]
    t2 = [61.0 - 5 * i for i in range(10)]
    t3 = [61.0 - 4.5 * i for i in range(10)]
    faster = [60.5 - 6 * i for i in range(10)]
    a = _stagewise(tmp_path / "a" / "stagewise_results.json",
                   {"stage1": s2, "stage2": s2, "stage3": s3, "ensemble": s3})  # fmt: skip
    b = _stagewise(tmp_path / "b" / "stagewise_results.json",
                   {"stage1": t2, "stage2": t2, "stage3": t3, "ensemble": t3})  # fmt: skip
    metrics = tmp_path / "frcnn" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"iteration": 9, **{f"bbox/{k}": v for k, v in
                                                      zip(AP_KEYS, faster)}}) + "\n")  # fmt: skip
    _tool("fs_gap_plot")(["--runs", f"{a}:cascade", f"{b}:fs", "--faster", f"{metrics}:fpn",
                          "--output-dir", str(tmp_path / "out")])  # fmt: skip
    rows = _md_rows(tmp_path / "out" / "fs_gaps.md")
    want = {
        "cascade/stage3 - cascade/stage2": [x - y for x, y in zip(s3, s2)],
        "cascade/stage3 - fpn": [x - y for x, y in zip(s3, faster)],
        "fs/stage3 - fs/stage2": [x - y for x, y in zip(t3, t2)],
        "fs/stage3 - fpn": [x - y for x, y in zip(t3, faster)],
    }
    for name, values in want.items():
        assert [float(c) for c in rows[name]] == pytest.approx(values, abs=0.006), name
    assert (tmp_path / "out" / "fs_gaps.png").stat().st_size > 10000
    assert (tmp_path / "out" / "fs_gaps.csv").read_text().startswith("curve,AP50")
    one = _stagewise(tmp_path / "one" / "stagewise_results.json", {"stage1": s2})
    with pytest.raises(SystemExit, match="stage 1 has no stage before it"):
        _tool("fs_gap_plot")(["--runs", str(one)])


def test_gap_plot_on_the_trained_run(trained, tmp_path):
    out, _ = trained
    path = out / "inference/shapes_tiny_val/stagewise_results.json"
    _tool("fs_gap_plot")(["--runs", f"{path}:fs", "--output-dir", str(tmp_path)])
    data = json.loads(path.read_text())
    gap = [data["stage3/bbox"][k] - data["stage2/bbox"][k] for k in AP_KEYS]
    rows = _md_rows(tmp_path / "fs_gaps.md")
    assert [float(c) for c in rows["fs/stage3 - fs/stage2"]] == pytest.approx(gap, abs=0.011)


def test_score_vs_iou_of_the_last_stage(trained, tmp_path):
    out, _ = trained
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth"), *LOW_THRESHOLD]
    tool = _tool("fs_score_vs_iou")
    common = ["--config-file", str(INSTANT), "--dataset", "shapes_tiny_val", "--num-images", "3"]
    tool([*common, "--iou-range", "0", "1", "--label", "all", "--output-dir", str(tmp_path),
          *weights])  # fmt: skip
    tool([*common, "--label", "fig5", "--output-dir", str(tmp_path), *weights])
    # independently: pycocotools' IoU of the detections that the run's evaluation saved for the
    # same images (the final output, i.e. the last stage, of the same weights)
    first = {d["image_id"] for d in DatasetCatalog.get("shapes_tiny_val")[:3]}
    results = json.loads(
        (out / "inference/shapes_tiny_val/coco_instances_results.json").read_text()
    )
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps([r for r in results if r["image_id"] in first]))
    matches = match_detections(MetadataCatalog.get("shapes_tiny_val").json_file, str(subset))
    fig5 = (matches["iou"] >= 0.5) & (matches["iou"] <= 0.75)
    for label, keep in (("all", np.ones(len(fig5), bool)), ("fig5", fig5)):
        got = json.loads((tmp_path / f"{label}.json").read_text())
        want = sorted(zip(matches["score"][keep], matches["iou"][keep]))
        have = sorted(zip(got["score"], got["iou"]))
        assert len(have) == len(want), label
        assert np.allclose(np.array(have).reshape(-1, 2), np.array(want).reshape(-1, 2), atol=1e-4)
    assert len(matches["iou"]) > 0 and matches["iou"].max() > 0  # detections, some on objects
    table = (tmp_path / "fig5.md").read_text()
    assert "0.50-0.55" in table and "0.70-0.75" in table and "0.45" not in table
    # a second run shown beside the first (Fig. 5 a / b)
    tool([*common[:-1], "1", "--label", "other", "--compare", f"{tmp_path / 'fig5.json'}:first",
          "--output-dir", str(tmp_path), *weights])  # fmt: skip
    both = (tmp_path / "other.md").read_text()
    assert "| first |" in both and "| other |" in both
    assert (tmp_path / "other.png").stat().st_size > 10000
