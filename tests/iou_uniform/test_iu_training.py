"""Training of IoU-Uniform R-CNN against slow re-statements: the classification loss on the sampled
proposals only, Eq. 2's interval-weighted regression loss and the IoU loss on the generated boxes
(or, Table 6, on the proposals' positives), at every stage of the Cascade config with the stage's
own intervals, weights and box encoding times w_t, Table 5's sample counts, images without
ground truth, generated boxes that never reach the next stage or the classification samples, the
head rule on each stage's branch, and the branch off = the core's Faster / Cascade R-CNN."""

import math

import pytest
import torch
from detectron2.utils.events import EventStorage
from helpers.core import (
    CORE,
    cfg_of,
    detections_of,
    eval_inputs,
    losses_of,
    model_of,
    roi_train_pass,
    train_batch,
)
from helpers.iu import (
    CASCADE,
    FASTER,
    OFF,
    PASS_SEED,
    fc,
    slow_decode,
    slow_deltas,
    slow_interval_index,
    slow_iou,
    slow_smooth_l1,
    spread,
)

from box_cascade import BoxCascadeROIHeads
from iou_uniform import IoUUniformROIHeads


def _boxes(instances):
    return [b for p in instances for b in p.proposal_boxes.tensor.tolist()]


def _gts(instances):
    return [b for p in instances for b in p.gt_boxes.tensor.tolist()]


SOURCES = [("generated", "generated"), ("rpn", "rpn"), ("rpn", "generated")]


@pytest.mark.parametrize("reg_samples, iou_samples", SOURCES, ids=lambda s: s)
def test_losses_equal_the_slow_restatement(reg_samples, iou_samples):
    cfg = cfg_of(FASTER, "MODEL.IOU_UNIFORM.REG_SAMPLES", reg_samples,
                 "MODEL.IOU_UNIFORM.IOU_SAMPLES", iou_samples)  # fmt: skip
    model = model_of(cfg)
    spread(model)
    heads = model.roi_heads
    losses, records, _, _, features = roi_train_pass(model, train_batch(cfg), seed=PASS_SEED)
    feats = [features[f] for f in heads.box_in_features]
    main = records[0].proposals
    k = heads.num_classes

    # classification: cross entropy over the sampled proposals only
    x = fc(heads.box_head[0], heads.box_pooler(feats, [p.proposal_boxes for p in main]))
    logits = x @ heads.box_predictor[0].cls_score.weight.T + heads.box_predictor[0].cls_score.bias
    labels = [c for p in main for c in p.gt_classes.tolist()]
    ce = -sum(torch.log_softmax(logits[i], 0)[c] for i, c in enumerate(labels)) / len(labels)
    assert torch.allclose(losses["loss_cls_stage0"], ce, rtol=1e-4)
    assert len(labels) == sum(len(p) for p in main) <= 2 * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE

    def branch(instances):
        pooled = heads.box_pooler(feats, [p.proposal_boxes for p in instances])
        x = fc(heads.iou_head[0], pooled)
        pred = heads.iou_predictor[0]
        return x @ pred.bbox_pred.weight.T + pred.bbox_pred.bias, x @ pred.iou_pred.weight.T + (
            pred.iou_pred.bias
        )

    intervals = cfg.MODEL.IOU_UNIFORM.INTERVALS[0]
    weights = cfg.MODEL.IOU_UNIFORM.REG_WEIGHTS[0]
    reg_w = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS[0]
    if reg_samples == "generated" or iou_samples == "generated":
        generated = records[0].branches["generated"].proposals
        gen_boxes, gen_gts = _boxes(generated), _gts(generated)
        gen_deltas, gen_iou = branch(generated)
        assert len(gen_boxes) > 50
    else:
        assert "generated" not in records[0].branches  # nothing generated when unused
    pos = [i for i, c in enumerate(labels) if c < k]
    main_boxes, main_gts = _boxes(main), [b for p in main for b in (
        p.gt_boxes.tensor.tolist() if p.has("gt_boxes") else [None] * len(p))]  # fmt: skip
    main_deltas, main_iou = branch(main)

    if reg_samples == "generated":  # Eq. 2, averaged over 4 x S deltas (the default)
        total = 0.0
        for i, (box, gt) in enumerate(zip(gen_boxes, gen_gts)):
            w = weights[slow_interval_index(slow_iou(box, gt), intervals)]
            t = slow_deltas(box, gt, reg_w)
            total += w * sum(slow_smooth_l1(float(gen_deltas[i, c]) - t[c], 1.0) for c in range(4))
        reg = total / (4 * len(gen_boxes))
    else:  # Fast R-CNN's: the positives' smooth L1 summed, over all sampled proposals
        total = 0.0
        for i in pos:
            t = slow_deltas(main_boxes[i], main_gts[i], reg_w)
            total += sum(slow_smooth_l1(float(main_deltas[i, c]) - t[c], 1.0) for c in range(4))
        reg = total / len(labels)
    assert math.isclose(float(losses["loss_box_reg_stage0"]), reg, rel_tol=1e-4)

    if iou_samples == "generated":
        pairs = [(float(gen_iou[i, 0]), slow_iou(b, g)) for i, (b, g) in
                 enumerate(zip(gen_boxes, gen_gts))]  # fmt: skip
    else:
        pairs = [(float(main_iou[i, 0]), slow_iou(main_boxes[i], main_gts[i])) for i in pos]
    iou = sum(slow_smooth_l1(p - t, 0.5) for p, t in pairs) / len(pairs)
    assert math.isclose(float(losses["loss_iou_stage0"]), iou, rel_tol=1e-4)


# IoU-Uniform Cascade R-CNN's stages, written out (Base-IoUUniform-Cascade-*.yaml on the core's
# Cascade R-CNN): the IoU threshold of the stage's labels, its box-regression weights (Sigma,
# Sigma/2, Sigma/3), its IoU intervals and their weights w_j (Eq. 2), and the stage weight w_t
# ("decay": 1 / 2^(t-1)).
CASCADE_STAGES = [
    (0.5, (10.0, 10.0, 5.0, 5.0), ((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.0)),
     (1.0, 1.5, 3.0, 3.0), 1.0),
    (0.6, (20.0, 20.0, 10.0, 10.0), ((0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0)),
     (1.5, 3.0, 3.0, 3.0), 0.5),
    (0.7, (30.0, 30.0, 15.0, 15.0), ((0.7, 0.8), (0.8, 0.9), (0.9, 1.0)), (3.0, 3.0, 3.0), 0.25),
]  # fmt: skip


def _slow_labels(proposals, targets, thresh, background):
    """Each box's class: that of its highest-IoU ground truth (the first of ties) when the IoU
    is at least ``thresh``, else ``background``."""
    labels = []
    for p, t in zip(proposals, targets):
        gts, classes = t.gt_boxes.tensor.tolist(), t.gt_classes.tolist()
        for box in p.proposal_boxes.tensor.tolist():
            ious = [slow_iou(box, g) for g in gts]
            best = max(range(len(gts)), key=lambda i: (ious[i], -i))
            labels.append(classes[best] if ious[best] >= thresh else background)
    return labels


def test_cascade_losses_equal_the_slow_restatement():
    """Every stage t of IoU-Uniform Cascade R-CNN, against CASCADE_STAGES: loss_cls on the
    stage's boxes labelled at its IoU, Eq. 2 on its generated boxes with its own intervals,
    interval weights and box-regression weights, the IoU loss, each times w_t; the boxes handed
    to the next stage are the branch's deltas decoded with the same box-regression weights."""
    cfg = cfg_of(CASCADE)
    model = model_of(cfg)
    spread(model)
    heads = model.roi_heads
    losses, records, targets, _, features = roi_train_pass(model, train_batch(cfg), seed=PASS_SEED)
    feats = [features[f] for f in heads.box_in_features]
    k = heads.num_classes
    assert len(records) == len(CASCADE_STAGES)
    for t, (thresh, reg_w, intervals, interval_w, stage_w) in enumerate(CASCADE_STAGES):
        record = records[t]
        main = record.proposals
        # classification: cross entropy over the stage's boxes, labelled at the stage's IoU
        x = fc(heads.box_head[t], heads.box_pooler(feats, [p.proposal_boxes for p in main]))
        cls = heads.box_predictor[t].cls_score
        logits = (x @ cls.weight.T + cls.bias).detach()
        labels = _slow_labels(main, targets, thresh, k)
        assert labels == [c for p in main for c in p.gt_classes.tolist()], f"stage {t + 1}"
        assert any(c < k for c in labels) and any(c == k for c in labels)
        ce = -sum(float(torch.log_softmax(logits[i], 0)[c]) for i, c in enumerate(labels))
        ce /= len(labels)
        got = {name: float(losses[f"{name}_stage{t}"]) for name in ("loss_cls", "loss_box_reg",
                                                                      "loss_iou")}  # fmt: skip
        assert math.isclose(got["loss_cls"], stage_w * ce, rel_tol=1e-4), (t, got, ce)

        def branch(instances, t=t):
            pooled = heads.box_pooler(feats, [p.proposal_boxes for p in instances])
            x = fc(heads.iou_head[t], pooled)
            pred = heads.iou_predictor[t]
            deltas = x @ pred.bbox_pred.weight.T + pred.bbox_pred.bias
            return deltas.tolist(), (x @ pred.iou_pred.weight.T + pred.iou_pred.bias)[:, 0].tolist()

        # Eq. 2 on the stage's generated boxes, averaged over 4 x S deltas, and the IoU loss
        generated = record.branches["generated"].proposals
        boxes, gts = _boxes(generated), _gts(generated)
        deltas, ious = branch(generated)
        assert len(boxes) > 50
        reg = iou = 0.0
        for box, gt, d, predicted in zip(boxes, gts, deltas, ious):
            own = slow_iou(box, gt)
            target = slow_deltas(box, gt, reg_w)
            w = interval_w[slow_interval_index(own, intervals)]
            reg += w * sum(slow_smooth_l1(d[c] - target[c], 1.0) for c in range(4))
            iou += slow_smooth_l1(predicted - own, 0.5)
        reg, iou = stage_w * reg / (4 * len(boxes)), stage_w * iou / len(boxes)
        assert math.isclose(got["loss_box_reg"], reg, rel_tol=1e-4), (t, got, reg)
        assert math.isclose(got["loss_iou"], iou, rel_tol=1e-4), (t, got, iou)

        # the boxes the next stage refines: the branch's deltas on the stage's boxes, decoded
        # with the stage's box-regression weights
        deltas, _ = branch(main)
        want = [slow_decode(b, d, reg_w) for b, d in zip(_boxes(main), deltas)]
        got_boxes = torch.cat([b.detach() for b in record.boxes])
        assert torch.allclose(got_boxes, torch.tensor(want, dtype=got_boxes.dtype), atol=1e-3)


def test_interval_weights_and_normalisation_switches():
    """Doubling every weight doubles the regression loss; the sum-over-deltas normalisation is 4
    times the mean; the code's weights change it."""
    batch = None
    values = {}
    for name, opts in {
        "paper": [],
        "double": ["MODEL.IOU_UNIFORM.REG_WEIGHTS", "((2.0, 3.0, 6.0, 6.0),)"],
        "sum": ["MODEL.IOU_UNIFORM.REG_LOSS_MEAN_OVER_COORDINATES", False],
        "code": ["MODEL.IOU_UNIFORM.REG_WEIGHTS", "((1.0, 1.5, 2.0, 3.0),)"],
    }.items():
        cfg = cfg_of(FASTER, *opts)
        batch = batch or train_batch(cfg)
        model = model_of(cfg)
        spread(model)
        values[name] = float(losses_of(model, batch)[0]["loss_box_reg_stage0"])
    assert math.isclose(values["double"], 2 * values["paper"], rel_tol=1e-4)
    assert math.isclose(values["sum"], 4 * values["paper"], rel_tol=1e-4)
    assert not math.isclose(values["code"], values["paper"], rel_tol=1e-3)


def test_generated_boxes_never_reach_the_next_stage_or_the_classification_samples():
    cfg = cfg_of(CASCADE)
    model = model_of(cfg)
    spread(model)
    _, records, targets, _, _ = roi_train_pass(model, train_batch(cfg), seed=PASS_SEED)
    assert len(records) == 3
    gt = {tuple(b) for t in targets for b in t.gt_boxes.tensor.tolist()}
    for k, record in enumerate(records):
        generated = {tuple(b) for b in _boxes(record.branches["generated"].proposals)}
        main = {tuple(b) for b in _boxes(record.proposals)}
        assert len(generated) > 50
        assert not generated & main, f"generated boxes among stage {k + 1}'s proposals"
        if k + 1 < len(records):  # next stage: this stage's refined proposals and the ground truth
            refined = set()
            for b, p in zip(record.boxes, record.proposals):
                b = b.detach().clone()
                h, w = p.image_size
                b[:, 0::2] = b[:, 0::2].clamp(0, w)
                b[:, 1::2] = b[:, 1::2].clamp(0, h)
                refined |= {tuple(x) for x in b.tolist()}
            nxt = {tuple(b) for b in _boxes(records[k + 1].proposals)}
            assert nxt <= refined | gt
            assert not nxt & generated
            # refined by the branch's deltas on the proposals (not by the unused classifier's)
            deltas = record.predictions["proposal_deltas"]
            assert deltas.abs().sum() > 0
            assert len(nxt - gt) > 0


def test_table5_sample_counts_follow_the_rpn_positives():
    for factor in (1.0, 2.0):
        cfg = cfg_of(FASTER, "MODEL.IOU_UNIFORM.NUM_SAMPLES_VS_RPN", factor)
        model = model_of(cfg)
        heads = model.roi_heads
        pools = []
        generate = heads.generator

        def recording(*args, _g=generate, _pools=pools):
            out = _g(*args)
            _pools.append(out)
            return out

        heads.generator = recording
        _, records, _, _, _ = roi_train_pass(model, train_batch(cfg), seed=PASS_SEED)
        main = records[0].proposals
        generated = records[0].branches["generated"].proposals
        for m, g, pool in zip(main, generated, pools[0]):
            positives = int((m.gt_classes < heads.num_classes).sum())
            assert len(g) == min(int(factor * positives + 0.5), len(pool)) > 0
            counts = [int((g.iou_interval == j).sum()) for j in range(4)]
            available = [int((pool.iou_interval == j).sum()) for j in range(4)]
            # even: an interval has fewer than the fullest only where it ran out
            assert all(c == a or c >= max(counts) - 1 for c, a in zip(counts, available))
            assert {tuple(b) for b in g.proposal_boxes.tensor.tolist()} <= {
                tuple(b) for b in pool.proposal_boxes.tensor.tolist()}  # fmt: skip


def test_images_without_ground_truth_train():
    cfg = cfg_of(CASCADE)
    batch = train_batch(cfg)
    model = model_of(cfg)
    one_empty = [dict(batch[0], instances=batch[0]["instances"][:0]), batch[1]]
    losses, records, _, _, _ = roi_train_pass(model, one_empty, seed=PASS_SEED)
    assert len(records[0].branches["generated"].proposals[0]) == 0
    assert len(records[0].branches["generated"].proposals[1]) > 0
    all_empty = [dict(b, instances=b["instances"][:0]) for b in batch]
    for case in (one_empty, all_empty):
        losses, _ = losses_of(model, case)
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
    assert float(losses["loss_box_reg_stage0"]) == 0 and float(losses["loss_iou_stage2"]) == 0


def test_head_rule_covers_each_stages_branch():
    cfg = cfg_of(CASCADE)
    batch = train_batch(cfg)
    grads = {}
    for rule in (True, False):
        model = model_of(cfg_of(CASCADE, "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", rule))
        spread(model)
        model.zero_grad()
        losses, _ = losses_of(model, batch)
        sum(losses.values()).backward()
        grads[rule] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    multipliers = model_of(cfg).roi_heads.head_gradient_multipliers()
    for name, factor in (("iou_head.0.fc1.weight", 1.0), ("iou_head.1.fc2.weight", 2.0),
                         ("iou_predictor.2.iou_pred.weight", 4.0),
                         ("iou_predictor.1.bbox_pred.weight", 2.0)):  # fmt: skip
        assert multipliers[name] == factor
        full = "roi_heads." + name
        assert grads[False][full].abs().sum() > 0
        assert torch.allclose(grads[True][full], grads[False][full] * factor, rtol=1e-4,
                              atol=1e-9)  # fmt: skip
    names = model_of(cfg).roi_heads.rcnn_parameter_names()
    assert "iou_head.2.fc1.weight" in names and "iou_predictor.0.bbox_pred.weight" in names
    # the stages' predictors only classify: no regressor parameters (the code's with_reg=False)
    assert not any(".bbox_pred." in n for n in names if n.startswith("box_predictor."))


def _core_faster_opts():
    return ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5,)", "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.5]",
            "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10.0, 10.0, 5.0, 5.0),)"]  # fmt: skip


@pytest.mark.parametrize(
    "ours, core_opts",
    [(FASTER, _core_faster_opts()), (CASCADE, ["MODEL.BOX_CASCADE.TEST_ENSEMBLE", "mean_logits"])],
    ids=["faster", "cascade"],
)
def test_branch_off_equals_the_cores_faster_and_cascade_rcnn(ours, core_opts):
    cfg = cfg_of(ours, *OFF, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    core_cfg = cfg_of(CORE, *core_opts, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    model, core = model_of(cfg, seed=0), model_of(core_cfg, seed=5)
    assert type(model.roi_heads) is IoUUniformROIHeads and not model.roi_heads.branch_on
    assert type(core.roi_heads) is BoxCascadeROIHeads
    spread(core)
    assert model.state_dict().keys() == core.state_dict().keys()
    model.load_state_dict(core.state_dict())
    batch = train_batch(cfg)
    a, b = losses_of(model, batch)[0], losses_of(core, batch)[0]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    inputs = eval_inputs(cfg, 2)
    for x, y in zip(detections_of(model, inputs), detections_of(core, inputs)):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y) > 0
        assert torch.allclose(x.scores, y.scores, atol=1e-6)
        assert torch.allclose(x.pred_boxes.tensor, y.pred_boxes.tensor, atol=1e-4)
    # and the branch on differs: other parameters, other losses
    on = model_of(cfg_of(ours))
    assert any(k.startswith("roi_heads.iou_head.") for k in on.state_dict())
    with EventStorage(0):
        on.train()
        assert "loss_iou_stage0" in on(batch)
