"""Every stage's detector on every stage's proposals (Fig. 8), with ground truth added (Fig. 7b):
checked against a literal re-statement, and the tool run on a trained instant model."""

import json
import math

import torch
import torch.nn.functional as F
from conftest import run_tool
from detectron2.data import DatasetCatalog
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, BoxMode
from helpers.core import CORE, cfg_of, model_of, spread_predictor_weights

from box_cascade.cross_stage import _test_loader_with_annotations, cross_stage_detections


def _literal(model, inputs, proposal_boxes, j):
    """Detector j (0-based) on the given boxes: pool, head, predictor, regression, softmax, NMS."""
    heads = model.roi_heads
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    feats = [features[f] for f in heads.box_in_features]
    logits, deltas = heads.box_predictor[j](
        heads.box_head[j](heads.box_pooler(feats, [proposal_boxes]))
    )
    boxes = heads.box_predictor[j].box2box_transform.apply_deltas(deltas, proposal_boxes.tensor)
    size = images.image_sizes[0]
    out, _ = fast_rcnn_inference([boxes], [F.softmax(logits, 1)], [size], 0.01, 0.5, 100)
    return out[0]


def test_cells_match_a_literal_detector_on_the_stage_proposals_and_the_stagewise_outputs():
    cfg = cfg_of(CORE, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    model = model_of(cfg)
    spread_predictor_weights(model)
    model.eval()
    loader = _test_loader_with_annotations(cfg, cfg.DATASETS.TEST[0])
    inputs = [next(iter(loader))[0]]
    size = (inputs[0]["height"], inputs[0]["width"])
    inputs[0]["height"], inputs[0]["width"] = inputs[0]["image"].shape[1:]  # no rescaling
    with torch.no_grad():
        cells = cross_stage_detections(model, inputs)[0]
        cells_gt = cross_stage_detections(model, inputs, add_gt=True)[0]
        staged = model(inputs)[0]["stage_instances"]
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        rpn, _ = model.proposal_generator(images, features, None)
        gt = inputs[0]["instances"].gt_boxes
        for j in range(3):
            want = _literal(model, inputs, rpn[0].proposal_boxes, j)
            got = cells[(1, j + 1)]
            assert len(got) > 0
            assert torch.allclose(got.scores, want.scores, atol=1e-5), j
            assert torch.allclose(got.pred_boxes.tensor, want.pred_boxes.tensor, atol=1e-3), j
            with_gt = Boxes.cat([rpn[0].proposal_boxes, gt])
            want = _literal(model, inputs, with_gt, j)
            assert torch.allclose(cells_gt[(1, j + 1)].scores, want.scores, atol=1e-5), j
    for i in range(1, 4):  # detector i on its own proposals is stage i's own output
        assert torch.allclose(cells[(i, i)].scores, staged[f"stage{i}"].scores, atol=1e-6)
    # the loader kept the original size and the annotations, moved into the resized image
    record = next(r for r in DatasetCatalog.get(cfg.DATASETS.TEST[0])
                  if r["image_id"] == inputs[0]["image_id"])  # fmt: skip
    assert size == (record["height"], record["width"])
    h, w = inputs[0]["height"], inputs[0]["width"]
    assert (h, w) != size  # resized (the test scale): the boxes below are scaled
    annotations = record["annotations"]
    xyxy = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    want = torch.tensor(xyxy) * torch.tensor([w / size[1], h / size[0], w / size[1], h / size[0]])
    # within a pixel: Detectron2 v0.6's resize floors the shapes' integer boxes (in place in an
    # integer array)
    assert torch.allclose(gt.tensor, want, atol=1.0)


def test_cross_stage_tool_writes_tables_json_and_plots(trained_core, tmp_path):
    out, _ = trained_core
    run_tool("cross_stage_eval.py", "--config-file", CORE, "--dataset", "shapes_tiny_val",
             "--output-dir", tmp_path, "--add-gt", "--max-images", 3,
             "MODEL.WEIGHTS", out / "model_final.pth")  # fmt: skip
    report = json.loads((tmp_path / "cross_stage.json").read_text())
    assert set(report) == {"proposals", "with_gt"}
    assert len(report["proposals"]) == 9 and "AP80" in report["with_gt"]["proposals3/detector2"]
    table = (tmp_path / "cross_stage_proposals.md").read_text()
    assert "| proposals \\ detector | stage 1 | stage 2 | stage 3 |" in table
    for i in (1, 2, 3):
        assert (tmp_path / f"cross_stage_with_gt_proposals{i}.png").stat().st_size > 0
    # every cell of both tables, each an AP (percent) at every IoU
    cells = {f"proposals{i}/detector{j}" for i in (1, 2, 3) for j in (1, 2, 3)}
    for name in ("proposals", "with_gt"):
        assert set(report[name]) == cells, name
        for cell, metrics in report[name].items():
            assert {"AP", "AP50", "AP95"} <= set(metrics), (name, cell)
            assert all(math.isnan(v) or 0 <= v <= 100 for v in metrics.values()), (name, cell)
    # the table's AP cell (i, j) is the report's proposals{i}/detector{j}
    lines = table.splitlines()
    start = lines.index("| proposals \\ detector | stage 1 | stage 2 | stage 3 |")
    for i, row in enumerate(lines[start + 2 : start + 5], start=1):
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[0] == f"stage {i}", row
        for j, cell in enumerate(cells[1:], start=1):
            ap = report["proposals"][f"proposals{i}/detector{j}"]["AP"]
            assert cell == ("-" if math.isnan(ap) else f"{ap:.2f}"), (i, j, cell, ap)
