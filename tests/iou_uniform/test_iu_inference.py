"""Inference of IoU-Uniform R-CNN against a literal re-statement: class scores from the proposals'
features, boxes regressed by the branch, EFO (the branch again at the regressed boxes), the score
threshold before (or after) the product with the IoU, NMS ranking by the product; the Cascade
variant's logits averaged over the stages times the last stage's IoU at the final boxes. EFO
changes the scores and not the boxes."""

import pytest
import torch
from detectron2.structures import Boxes
from helpers.core import cfg_of, eval_inputs, model_of
from helpers.iu import CASCADE, FASTER, fc, spread
from torchvision.ops import nms

import box_cascade.roi_heads as core_module


def _decode(deltas, boxes, weights):
    wx, wy, ww, wh = weights
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    dw = (deltas[:, 2] / ww).clamp(max=torch.log(torch.tensor(1000.0 / 16)))
    dh = (deltas[:, 3] / wh).clamp(max=torch.log(torch.tensor(1000.0 / 16)))
    px, py = cx + deltas[:, 0] / wx * w, cy + deltas[:, 1] / wy * h
    pw, ph = torch.exp(dw) * w, torch.exp(dh) * h
    return torch.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], dim=1)


def _clip(boxes, image_size):
    h, w = image_size
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def literal(model, inputs, efo, before, thresh, nms_thresh=0.5, iou_scoring=True):
    """The whole test path written out: (scores, boxes, classes) sorted by score; without
    ``iou_scoring`` the IoU factor is 1."""
    heads = model.roi_heads
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        feats = [features[f] for f in heads.box_in_features]
        size = proposals[0].image_size
        boxes = proposals[0].proposal_boxes.tensor
        stages = len(heads.box_head)
        logits = []
        for t in range(stages):
            pooled = heads.box_pooler(feats, [Boxes(boxes)])
            cls = heads.box_predictor[t].cls_score
            logits.append(fc(heads.box_head[t], pooled) @ cls.weight.T + cls.bias)
            x = fc(heads.iou_head[t], pooled)
            pred = heads.iou_predictor[t]
            deltas = x @ pred.bbox_pred.weight.T + pred.bbox_pred.bias
            first_iou = x @ pred.iou_pred.weight.T + pred.iou_pred.bias
            weights = model.roi_heads.box_predictor[t].box2box_transform.weights
            regressed = _decode(deltas, boxes, weights)
            if t + 1 < stages:
                boxes = _clip(regressed, size)
        probs = torch.softmax(sum(logits) / stages, dim=1)  # one stage: its own
        final = _clip(regressed, size)
        if efo:
            x = fc(heads.iou_head[-1], heads.box_pooler(feats, [Boxes(final)]))
            iou = (
                x @ heads.iou_predictor[-1].iou_pred.weight.T
                + heads.iou_predictor[-1].iou_pred.bias
            )
        else:
            iou = first_iou
        iou = iou[:, 0].clamp(0, 1) if iou_scoring else torch.ones(len(final))
        out = []
        for c in range(probs.shape[1] - 1):
            rows = [r for r in range(len(final))
                    if (probs[r, c] if before else probs[r, c] * iou[r]) > thresh]  # fmt: skip
            if not rows:
                continue
            b = final[rows]
            s = torch.stack([probs[r, c] * iou[r] for r in rows])
            for i in nms(b, s, nms_thresh).tolist():
                out.append((float(s[i]), tuple(b[i].tolist()), c))
    return sorted(out, key=lambda x: (-x[0], x[2], x[1]))


def _got(model, inputs):
    model.eval()
    with torch.no_grad():
        det = model.inference(inputs, do_postprocess=False)[0]
    got = [(float(s), tuple(b.tolist()), int(c))
           for s, b, c in zip(det.scores, det.pred_boxes.tensor, det.pred_classes)]  # fmt: skip
    return sorted(got, key=lambda x: (-x[0], x[2], x[1]))


def _same(got, want):
    assert len(got) == len(want) > 0
    for (s, b, c), (s2, b2, c2) in zip(got, want):
        assert c == c2 and abs(s - s2) < 1e-5
        assert all(abs(x - y) < 1e-3 for x, y in zip(b, b2))


SETTINGS = [(True, True), (False, True), (True, False), (False, False)]


# Score thresholds: one below every box's best class probability with these weights, one above
# some (EFO then pools again only part of the boxes; test_efo_pools_again_only_... checks both).
THRESHOLDS = {FASTER: (0.07, 0.7), CASCADE: (0.07, 0.3)}


@pytest.mark.parametrize("high", [False, True], ids=["low_thresh", "high_thresh"])
@pytest.mark.parametrize("config", [FASTER, CASCADE], ids=["faster", "cascade"])
@pytest.mark.parametrize("efo, before", SETTINGS, ids=lambda v: str(v))
def test_detections_equal_the_literal_scoring(config, efo, before, high):
    thresh = THRESHOLDS[config][high]
    cfg = cfg_of(config, "MODEL.IOU_UNIFORM.EFO", efo, "MODEL.IOU_UNIFORM.THRESHOLD_BEFORE_IOU",
                 before, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", thresh, "TEST.DETECTIONS_PER_IMAGE",
                 1000)  # fmt: skip
    model = model_of(cfg)
    spread(model)
    inputs = eval_inputs(cfg, 1)
    _same(_got(model, inputs), literal(model, inputs, efo, before, thresh))


def test_threshold_placement_and_efo_matter_here():
    """The literal results differ between the settings on this input (the comparisons above are
    not vacuous)."""
    cfg = cfg_of(FASTER, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.07)
    model = model_of(cfg)
    spread(model)
    inputs = eval_inputs(cfg, 1)
    results = {s: literal(model, inputs, *s, 0.07) for s in SETTINGS}
    assert len(results[(True, True)]) > len(results[(True, False)])
    assert [s for s, _, _ in results[(True, True)]] != [s for s, _, _ in results[(False, True)]]


def test_efo_changes_the_iou_scores_and_not_the_boxes(monkeypatch):
    seen = {}
    original = core_module.fast_rcnn_inference

    def recording(boxes, scores, *args):
        seen["boxes"], seen["scores"] = [b.clone() for b in boxes], [s.clone() for s in scores]
        return original(boxes, scores, *args)

    monkeypatch.setattr(core_module, "fast_rcnn_inference", recording)
    inputs, runs = None, {}
    for efo in (True, False):
        cfg = cfg_of(FASTER, "MODEL.IOU_UNIFORM.EFO", efo)
        model = model_of(cfg)
        spread(model)
        inputs = inputs or eval_inputs(cfg, 1)
        _got(model, inputs)
        runs[efo] = dict(seen)
    assert torch.equal(runs[True]["boxes"][0], runs[False]["boxes"][0])
    a, b = runs[True]["scores"][0], runs[False]["scores"][0]
    passed = a >= 0
    assert torch.equal(passed, b >= 0)  # the threshold is on the class probability
    assert not torch.allclose(a[passed], b[passed])


@pytest.mark.parametrize("config", [FASTER, CASCADE], ids=["faster", "cascade"])
@pytest.mark.parametrize("high", [False, True], ids=["low_thresh", "high_thresh"])
def test_efo_pools_again_only_the_boxes_a_score_can_keep(config, high, monkeypatch):
    """EFO skips the boxes whose every class probability fails the threshold (their scores are
    dropped whatever the IoU): at the low threshold none, at the high one some but not all, so
    the literal comparisons above cover both kinds of box."""
    thresh = THRESHOLDS[config][high]
    cfg = cfg_of(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", thresh)
    model = model_of(cfg)
    spread(model)
    heads = model.roi_heads
    seen = {}
    original = heads.efo_ious

    def recording(features, record, boxes, live=None):
        seen["live"], seen["probs"] = live, heads.stage_probs(record)
        return original(features, record, boxes, live)

    monkeypatch.setattr(heads, "efo_ious", recording)
    _got(model, eval_inputs(cfg, 1))
    live = seen["live"][0]
    if high:
        assert 0 < int(live.sum()) < len(live)
    else:
        assert bool(live.all())
    if config == FASTER:  # one stage: its own probabilities are the ones thresholded
        probs = seen["probs"][0]
        want = [any(float(p) > thresh for p in row[:-1]) for row in probs]
        assert live.tolist() == want


@pytest.mark.parametrize("config", [FASTER, CASCADE], ids=["faster", "cascade"])
def test_without_iou_scoring_the_iou_factor_is_one(config):
    """MODEL.IOU_UNIFORM.TEST_IOU_SCORING False: the same boxes, scored by the class probability
    alone (the literal path with the IoU set to 1), and the detections differ from the scored
    ones on this input."""
    thresh = THRESHOLDS[config][True]
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", thresh, "TEST.DETECTIONS_PER_IMAGE", 1000]
    cfg = cfg_of(config, "MODEL.IOU_UNIFORM.TEST_IOU_SCORING", False, *opts)
    model = model_of(cfg)
    spread(model)
    with torch.no_grad():  # predicted IoUs inside (0, 1), so that the factor would change scores
        model.roi_heads.iou_predictor[-1].iou_pred.bias.sub_(0.5)
    inputs = eval_inputs(cfg, 1)
    got = _got(model, inputs)
    _same(got, literal(model, inputs, True, True, thresh, iou_scoring=False))
    scored = literal(model, inputs, True, True, thresh)
    assert [s for s, _, _ in got] != [s for s, _, _ in scored]
