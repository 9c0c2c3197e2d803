"""The analyses behind Fig. 3, 6 and 8 (iou_uniform.analysis) on known proposals, and the tools
that plot them."""

import importlib.util
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import ROOT
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from helpers.core import cfg_of, model_of
from helpers.iu import CASCADE, FASTER, slow_iou, spread
from torch import nn

from cascade_zoo.analysis import AnalysisInputError
from iou_uniform.analysis import (
    iou_prediction_table,
    iou_predictions,
    localization_gain_table,
    refinement_ious,
)

NO_RESIZE = ["INPUT.MIN_SIZE_TEST", 0]  # ground truth and proposals in the images' pixels
DATASET = "shapes_tiny_val"


class KnownProposals(nn.Module):
    """Proposals for the first images of the dataset, in order: each ground-truth box shifted
    by a tenth and a fifth of its size (clipped to the image, as RPN's are), and a box in the
    corner."""

    def __init__(self, records):
        super().__init__()
        self.queue = []
        for r in records:
            boxes = []
            for a in r["annotations"]:
                x1, y1, x2, y2 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                w, h = x2 - x1, y2 - y1
                right = min(x2 + 0.1 * w, r["width"])
                boxes += [[x1 + 0.1 * w, y1, right, y2], [x1, y1 + 0.2 * h, x2, y2]]
            boxes.append([0.0, 0.0, 8.0, 8.0])
            self.queue.append(boxes)

    def forward(self, images, features, gt=None):
        out = []
        for size in images.image_sizes:
            boxes = torch.tensor(self.queue.pop(0))
            out.append(Instances(size, proposal_boxes=Boxes(boxes),
                                 objectness_logits=torch.zeros(len(boxes))))  # fmt: skip
        return out, {}


def _model(n, zero_deltas, *opts):
    cfg = cfg_of(FASTER, *NO_RESIZE, *opts)
    model = model_of(cfg)
    spread(model)
    records = DatasetCatalog.get(DATASET)[:n]
    model.proposal_generator = KnownProposals(records)
    if zero_deltas:
        with torch.no_grad():
            model.roi_heads.iou_predictor[0].bbox_pred.weight.zero_()
            model.roi_heads.iou_predictor[0].bbox_pred.bias.zero_()
    return cfg, model, records


def _slow_inputs(records):
    out = []
    for r, boxes in zip(records, KnownProposals(records).queue):
        gts = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
               for a in r["annotations"]]  # fmt: skip
        out += [best for best in (max(slow_iou(b, g) for g in gts) for b in boxes) if best > 0]
    return out


def test_refinement_pairs_the_proposals_iou_before_and_after():
    cfg, model, records = _model(2, True)
    pairs = refinement_ious(model, cfg, DATASET, 2)
    want = _slow_inputs(records)
    assert np.allclose(pairs["input_iou"], want, atol=1e-5)
    assert len(want) > 4 and min(want) < 0.9  # the shifted boxes; the corner box overlaps none
    # no regression: the same boxes, the same IoU, no gain
    assert np.allclose(pairs["output_iou"], pairs["input_iou"], atol=1e-5)
    table = localization_gain_table(OrderedDict(a=pairs))
    assert "| a | [0.8, 0.9) |" in table and "0.000 |" in table
    # a regression moves them
    cfg, model, _ = _model(2, False)
    moved = refinement_ious(model, cfg, DATASET, 2)
    assert np.allclose(moved["input_iou"], pairs["input_iou"])
    assert not np.allclose(moved["output_iou"], moved["input_iou"], atol=1e-3)


def test_iou_predictions_without_and_with_efo():
    cfg, model, _ = _model(2, True, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    still = iou_predictions(model, cfg, DATASET, 2, min_iou=0.5)
    assert len(still["iou"]) > 0 and (still["iou"] > 0.5).all() and (still["iou"] <= 1).all()
    # EFO re-pools at the regressed boxes: with no regression, the first pass's IoU again
    assert np.allclose(still["efo"], still["first_pass"], atol=1e-5)
    cfg, model, _ = _model(2, False, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    moved = iou_predictions(model, cfg, DATASET, 2, min_iou=0.5)
    assert len(moved["iou"]) > 0 and not np.allclose(moved["efo"], moved["first_pass"], atol=1e-4)
    # each detection's score is its class probability x the EFO IoU: never above the IoU
    assert (moved["score"] <= np.clip(moved["efo"], 0, 1) + 1e-6).all()
    assert "correlation" in iou_prediction_table(OrderedDict(a=moved))
    off = model_of(
        cfg_of(FASTER, "MODEL.IOU_UNIFORM.ENABLED", False, "MODEL.IOU_UNIFORM.EFO", False)
    )
    with pytest.raises(AnalysisInputError, match="IoUUniformROIHeads"):
        iou_predictions(off, cfg, DATASET, 1)


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tools_write_their_figures_and_tables(tmp_path, capsys):
    common = ["--config-file", str(FASTER), "--dataset", DATASET, "--num-images", "2",
              "--output-dir", str(tmp_path)]  # fmt: skip
    refinement = _tool("iou_uniform_refinement")
    refinement.main([*common, "--label", "first"])
    refinement.main([*common, "--label", "second", "--compare", str(tmp_path / "first.json")])
    for name in ("second_gain.png", "second_histogram.png", "second.md", "first.json"):
        assert (tmp_path / name).stat().st_size > 0
    text = (tmp_path / "second.md").read_text()
    assert "| first |" in text and "| second |" in text and "Fig. 6" in text
    _tool("iou_uniform_iou_prediction").main([*common, "--label", "fig8", "--min-iou", "0"])
    data = json.loads((tmp_path / "fig8.json").read_text())
    assert len(data["iou"]) == len(data["efo"]) == len(data["first_pass"]) > 0
    assert (tmp_path / "fig8.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="error"):
        refinement.main([*common, "--compare", str(tmp_path / "missing.json")])
    capsys.readouterr()


def test_the_generation_benchmark_reports_every_stage_and_setting(capsys):
    tool = _tool("iou_uniform_generation_benchmark")
    tool.main(["--num-gt", "3", "--repeats", "1", "--warmup", "0", "--config-file", str(CASCADE),
               "--max-candidates", "500", "5000"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    for stage, pairs in ((1, 12), (2, 12), (3, 9)):
        assert any(f"stage {stage}, MAX_CANDIDATES 500:" in line for line in lines)
        assert any(f"stage {stage}, MAX_CANDIDATES 5000:" in line
                   and line.endswith(f" 0 of {pairs} pairs short") for line in lines)  # fmt: skip
    assert "MAX_CANDIDATES 5000" in lines[-1]
