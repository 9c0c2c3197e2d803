"""Each policy of the core changes what it claims to, checked against literal re-statements of
the paper's mechanics (written out here without the core's code)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou
from helpers.core import (
    CORE,
    CORE_MASK,
    assert_same_instances,
    cfg_of,
    detections_of,
    eval_inputs,
    jittered_ground_truth,
    losses_of,
    model_of,
    roi_train_pass,
    spread_predictor_weights,
    train_batch,
)

from box_cascade import StageRecord, stage_loss_weights
from cascade_zoo.engine.optim import build_optimizer

WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


def _model(*opts, config=CORE, seed=0):
    cfg = cfg_of(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01, *opts)
    model = model_of(cfg, seed)
    spread_predictor_weights(model)
    return cfg, model


def test_stage_loss_weight_schemes():
    assert stage_loss_weights("decay", 3) == [1.0, 0.5, 0.25]
    assert stage_loss_weights("avg", 4) == [0.25] * 4
    assert stage_loss_weights("detectron2", 3) == [1.0] * 3
    assert stage_loss_weights("explicit", 2, [1.0, 0.3]) == [1.0, 0.3]
    with pytest.raises(ValueError, match="STAGE_LOSS_WEIGHTS"):
        stage_loss_weights("explicit", 3, [1.0, 0.3])
    with pytest.raises(ValueError, match="LOSS_WEIGHTING"):
        stage_loss_weights("halves", 3)


@pytest.mark.parametrize("scheme", ["decay", "avg"])
def test_weighting_scales_each_stage_loss_by_w_t(scheme):
    cfg, plain = _model("MODEL.BOX_CASCADE.LOSS_WEIGHTING", "explicit",
                        "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS", "[1.0, 1.0, 1.0]")  # fmt: skip
    _, weighted = _model("MODEL.BOX_CASCADE.LOSS_WEIGHTING", scheme)
    weighted.load_state_dict(plain.state_dict())
    batch = train_batch(cfg)
    a, _ = losses_of(plain, batch)
    b, _ = losses_of(weighted, batch)
    w = {"decay": [1, 0.5, 0.25], "avg": [1 / 3] * 3}[scheme]
    for k in range(3):
        for name in ("loss_cls", "loss_box_reg"):
            key = f"{name}_stage{k}"
            assert torch.allclose(b[key], a[key] * w[k], atol=1e-6), key
    assert torch.allclose(b["loss_rpn_cls"], a["loss_rpn_cls"])


def _sgd_steps(cfg, model, batch, steps=1):
    optimizer = build_optimizer(cfg, model)
    before = copy.deepcopy(model.state_dict())
    for _ in range(steps):
        losses, _ = losses_of(model, batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


UNWEIGHTED = ["MODEL.BOX_CASCADE.LOSS_WEIGHTING", "explicit",
              "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS", "[1.0, 1.0, 1.0]",
              "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", False]  # fmt: skip
SGD_MOMENTUM_DECAY = ["SOLVER.MOMENTUM", 0.9, "SOLVER.WEIGHT_DECAY", 0.05,
                      "SOLVER.CLIP_GRADIENTS.ENABLED", False, "SOLVER.BASE_LR", 0.01]  # fmt: skip


def test_head_rule_scales_the_head_gradients_by_one_over_w_t():
    cfg, decay = _model(*SGD_MOMENTUM_DECAY)
    factors = decay.roi_heads.head_gradient_multipliers()
    assert factors["box_head.0.fc1.weight"] == 1.0
    assert factors["box_predictor.1.cls_score.weight"] == 2.0
    assert factors["box_head.2.fc2.bias"] == 4.0
    # learning rates are not touched: every group at the base LR (biases: Detectron2's factor)
    groups = build_optimizer(cfg, decay).param_groups
    assert {g["lr"] for g in groups} == {cfg.SOLVER.BASE_LR}
    assert all(g["weight_decay"] in (cfg.SOLVER.WEIGHT_DECAY, 0.0) for g in groups)

    # The paper's point: a head learns as from its unweighted loss, while the backbone sees the
    # weighted ones. With the rule on the gradient, weight decay and momentum act on the heads
    # as they do without loss weights.
    _, unweighted = _model(*UNWEIGHTED, *SGD_MOMENTUM_DECAY)
    unweighted.load_state_dict(decay.state_dict())
    batch = train_batch(cfg)
    step_decay = _sgd_steps(cfg, decay, batch)
    step_plain = _sgd_steps(cfg, unweighted, batch)
    for name in ("roi_heads.box_predictor.2.bbox_pred.weight", "roi_heads.box_head.1.fc1.weight"):
        assert step_decay[name].abs().sum() > 0
        assert torch.allclose(step_decay[name], step_plain[name], atol=1e-7), name
    assert not torch.allclose(
        step_decay["backbone.fpn_output2.weight"], step_plain["backbone.fpn_output2.weight"]
    )


def test_head_rule_leaves_weight_decay_and_momentum_as_without_loss_weights():
    """Three SGD steps with momentum and a large weight decay on a frozen backbone (so that the
    heads see the same features): the heads of the decay-weighted cascade with the rule move
    exactly as those of an unweighted one; an LR multiplier 1/w_t would also have multiplied
    their weight decay by 1/w_t."""

    def frozen(model):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("roi_heads."))
        return model

    cfg, decay = _model(*SGD_MOMENTUM_DECAY)
    _, unweighted = _model(*UNWEIGHTED, *SGD_MOMENTUM_DECAY)
    unweighted.load_state_dict(decay.state_dict())
    batch = train_batch(cfg)
    a = _sgd_steps(cfg, frozen(decay), batch, steps=3)
    b = _sgd_steps(cfg, frozen(unweighted), batch, steps=3)
    for name in a:
        if name.startswith("roi_heads.box_head.2") or name.startswith("roi_heads.box_predictor.2"):
            assert torch.allclose(a[name], b[name], atol=1e-6), name
    # the same steps as an LR multiplier: stage 3's decay step would be 4x larger
    name = "roi_heads.box_head.2.fc1.weight"
    decay_step = -cfg.SOLVER.BASE_LR * cfg.SOLVER.WEIGHT_DECAY * decay.state_dict()[name]
    assert decay_step.abs().sum() > 0.01 * a[name].abs().sum()


def _literal_cascade(model, inputs, policy, num_stages):
    """The paper's test-time cascade written out: pool at the current boxes, head, predictor,
    boxes refined by the stage's deltas with its own weights; scores by the ensemble policy."""
    heads = model.roi_heads
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    feats = [features[f] for f in heads.box_in_features]
    sizes = [p.image_size for p in proposals]
    boxes = [p.proposal_boxes.tensor for p in proposals]
    logits_t, probs_t = [], []
    for t in range(num_stages):
        x = heads.box_head[t](heads.box_pooler(feats, [Boxes(b) for b in boxes]))
        logits, deltas = heads.box_predictor[t](x)
        logits_t.append(logits)
        probs_t.append(F.softmax(logits, dim=1))
        inputs_t = torch.cat(boxes)
        refined = Box2BoxTransform(WEIGHTS[t]).apply_deltas(deltas, inputs_t)
        out_boxes = refined
        new = []
        for b, size in zip(refined.split([len(b) for b in boxes]), sizes):
            b = b.clone()
            b[:, 0::2] = b[:, 0::2].clamp(0, size[1])
            b[:, 1::2] = b[:, 1::2].clamp(0, size[0])
            new.append(b)
        last_inputs = boxes
        boxes = new
    if policy == "none":
        scores = probs_t[-1]
    elif policy == "mean_probs":
        scores = sum(probs_t) / num_stages
    elif policy == "mean_logits":
        scores = F.softmax(sum(logits_t) / num_stages, dim=1)
    else:  # all_on_final: every classifier on the last stage's input boxes
        pooled = heads.box_pooler(feats, [Boxes(b) for b in last_inputs])
        scores = (
            sum(
                F.softmax(heads.box_predictor[t](heads.box_head[t](pooled))[0], dim=1)
                for t in range(num_stages)
            )
            / num_stages
        )
    counts = [len(b) for b in last_inputs]
    predictor = heads.box_predictor[num_stages - 1]
    instances, _ = fast_rcnn_inference(
        list(out_boxes.split(counts)), list(scores.split(counts)), sizes,
        predictor.test_score_thresh, predictor.test_nms_thresh, predictor.test_topk_per_image,
    )  # fmt: skip
    return instances


@pytest.mark.parametrize("policy", ["none", "mean_probs", "mean_logits", "all_on_final"])
def test_test_time_ensembles_match_literal_cascade(policy):
    cfg, model = _model("MODEL.BOX_CASCADE.TEST_ENSEMBLE", policy)
    inputs = eval_inputs(cfg, 2)
    model.eval()
    with torch.no_grad():
        got = model.inference(inputs, do_postprocess=False)
        want = _literal_cascade(model, inputs, policy, 3)
    for a, b in zip(got, want):
        assert len(b) > 0
        assert_same_instances(a, b, atol=1e-4)


def _literal_regression(deltas, boxes, weights, size):
    """Boxes (R, 4) moved by class-agnostic deltas (R, 4) with regression weights ``weights``
    (Eq. 1 inverted; log-size deltas capped at log(1000/16) as Detectron2 does), then clipped
    to the image ``size`` (h, w)."""
    wx, wy, ww, wh = weights
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    cap = math.log(1000.0 / 16)
    pw = torch.exp((deltas[:, 2] / ww).clamp(max=cap)) * w
    ph = torch.exp((deltas[:, 3] / wh).clamp(max=cap)) * h
    px, py = cx + deltas[:, 0] / wx * w, cy + deltas[:, 1] / wy * h
    out = torch.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], dim=1)
    limits = torch.tensor([size[1], size[0], size[1], size[0]], dtype=out.dtype)
    return torch.minimum(out.clamp(min=0), limits)


def test_stagewise_proposals_are_each_stages_regressed_boxes():
    """The "stage_proposals" behind ``proposals/stageK`` (Table 8's recall): stage K's regression
    of its own input boxes (not the boxes it was given), scored by its foreground probability,
    in the input image's size; "rpn" the boxes entering stage 1. Written out from the RPN's
    proposals through the three stages."""
    cfg, model = _model()
    inputs = eval_inputs(cfg, 2)
    model.eval()
    with torch.no_grad():
        out = model(inputs)
        heads = model.roi_heads
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        rpn, _ = model.proposal_generator(images, features, None)
        feats = [features[f] for f in heads.box_in_features]
        boxes = [p.proposal_boxes.tensor for p in rpn]
        for t in range(4):
            name = "rpn" if t == 0 else f"stage{t}"
            if t > 0:
                x = heads.box_head[t - 1](heads.box_pooler(feats, [Boxes(b) for b in boxes]))
                logits, deltas = heads.box_predictor[t - 1](x)
                counts = [len(b) for b in boxes]
                fg = (1 - F.softmax(logits, dim=1)[:, -1]).split(counts)
                refined = [_literal_regression(d, b, WEIGHTS[t - 1], size) for d, b, size
                           in zip(deltas.split(counts), boxes, images.image_sizes)]  # fmt: skip
                moved = max((r - b).abs().max().item() for r, b in zip(refined, boxes))
                assert moved > 0.5, f"stage {t} hardly moves its boxes ({moved} px)"
                boxes = refined
            for i, (o, inp, size) in enumerate(zip(out, inputs, images.image_sizes)):
                got = o["stage_proposals"][name]
                h, w = inp["height"], inp["width"]
                scale = torch.tensor([w / size[1], h / size[0], w / size[1], h / size[0]])
                want = torch.minimum(boxes[i] * scale, torch.tensor([w, h, w, h]).float())
                keep = (want[:, 2] > want[:, 0]) & (want[:, 3] > want[:, 1])
                assert torch.allclose(got.proposal_boxes.tensor, want[keep], atol=1e-3), name
                score = rpn[i].objectness_logits if t == 0 else fg[i]
                assert torch.allclose(got.objectness_logits, score[keep], atol=1e-6), name


def test_policies_differ_from_each_other():
    cfg, model = _model()
    inputs = eval_inputs(cfg, 1)
    scores = {}
    for policy in ("none", "mean_probs", "mean_logits", "all_on_final"):
        model.roi_heads.test_ensemble = policy
        scores[policy] = detections_of(model, inputs)[0]["instances"].scores[:5]
    assert len({tuple(v.tolist()) for v in scores.values()}) == 4


def test_ensemble_none_equals_the_last_stage_alone():
    cfg, model = _model("MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none")
    out = detections_of(model, eval_inputs(cfg, 2))
    for o in out:
        assert_same_instances(o["instances"], o["stage_instances"]["stage3"])
        assert_same_instances(o["stage_instances"]["ensemble"], o["stage_instances"]["stage3"])


def test_stagewise_ensemble_row_is_the_literal_ensemble_not_a_stage():
    """``stage_instances["ensemble"]`` (the "ensemble/bbox" row of the stage-wise evaluation)
    holds the "1~3" ensemble's detections, written out, and not any single stage's."""
    cfg, model = _model()  # TEST_ENSEMBLE "all_on_final", the default
    inputs = eval_inputs(cfg, 2)
    for x in inputs:  # outputs in the network's input size (no rescaling)
        x["height"], x["width"] = x["image"].shape[1:]
    out = detections_of(model, inputs)
    with torch.no_grad():
        want = _literal_cascade(model, inputs, "all_on_final", 3)
    for o, w in zip(out, want):
        ensemble = o["stage_instances"]["ensemble"]
        assert len(w) > 0
        assert_same_instances(ensemble, w, atol=1e-4)
        for k in (1, 2, 3):
            own = o["stage_instances"][f"stage{k}"]
            same = len(own) == len(ensemble) and torch.allclose(own.scores, ensemble.scores)
            assert not same, f"the ensemble's detections are stage {k}'s"


def test_stage_t_output_equals_a_t_stage_cascade_with_the_same_weights():
    cfg, three = _model()
    inputs = eval_inputs(cfg, 2)
    staged = detections_of(three, inputs)
    _, two = _model("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 0.6)",
                    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", str(WEIGHTS[:2]),
                    "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none")  # fmt: skip
    state = {k: v for k, v in three.state_dict().items() if ".2." not in k or "roi_heads" not in k}
    two.load_state_dict(state, strict=True)
    _, three_at_two = _model("MODEL.BOX_CASCADE.TEST_STAGE", 2,
                             "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none")  # fmt: skip
    three_at_two.load_state_dict(three.state_dict())
    for a, b, c in zip(staged, detections_of(two, inputs), detections_of(three_at_two, inputs)):
        assert_same_instances(a["stage_instances"]["stage2"], b["instances"])
        assert_same_instances(a["stage_instances"]["stage2"], c["instances"])
        assert set(c["stage_instances"]) == {"stage1", "stage2", "ensemble"}


def _stage_proposals(model, cfg, batch):
    """Each stage's training boxes, from the core's training path."""
    _, records, targets, proposals, _ = roi_train_pass(model, batch)
    return [r.proposals for r in records], targets, proposals


def _literal_next_boxes(prev, weights, targets, readd: bool):
    """Stage t's input boxes written out from stage t-1's training boxes: each regressed by its
    class-agnostic deltas with stage t-1's weights, clipped to the image, empty ones dropped;
    with "readd", the boxes that come from ground truth dropped and the exact ground truth
    appended. Returns per image (boxes, from-ground-truth flags)."""
    deltas = prev.predictions["proposal_deltas"].detach().split(prev.num_boxes)
    out = []
    for d, props, gt in zip(deltas, prev.proposals, targets):
        b = Box2BoxTransform(weights).apply_deltas(d, props.proposal_boxes.tensor)
        h, w = props.image_size
        b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h),
                         b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], dim=1)  # fmt: skip
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, flags = b[keep], props.from_gt[keep]
        if readd:
            b = torch.cat([b[~flags], gt.gt_boxes.tensor])
            flags = torch.arange(len(b)) >= len(b) - len(gt)
        out.append((b, flags))
    return out


def _literal_labels(boxes, gt, u):
    best, idx = pairwise_iou(gt.gt_boxes, Boxes(boxes)).max(dim=0)
    return torch.where(best >= u, gt.gt_classes[idx], torch.full_like(idx, 6)), idx


@pytest.mark.parametrize("mode", ["readd", "keep"])
def test_refined_sampler_trains_on_the_literal_refined_boxes_labelled_at_the_stage_iou(mode):
    cfg, model = _model("MODEL.BOX_CASCADE.LATER_STAGE_GT", mode)
    # boxes around the ground truth besides the RPN's, so that later stages get boxes at every
    # IoU and a stage labelled at another stage's threshold shows
    _, records, targets, _, _ = roi_train_pass(model, train_batch(cfg), jittered_ground_truth)
    for props, gt in zip(records[0].proposals, targets):
        # stage 1's ground-truth flags mark exactly the boxes that are ground-truth boxes
        exact = (props.proposal_boxes.tensor[:, None] == gt.gt_boxes.tensor[None]).all(-1).any(1)
        assert torch.equal(props.from_gt, exact)
    for k, u in ((1, 0.6), (2, 0.7)):
        want = _literal_next_boxes(records[k - 1], WEIGHTS[k - 1], targets, mode == "readd")
        discriminating = 0  # boxes whose label at u differs from that at the other thresholds
        for props, gt, (boxes, flags) in zip(records[k].proposals, targets, want):
            assert torch.allclose(props.proposal_boxes.tensor, boxes, atol=1e-4)
            assert torch.equal(props.from_gt, flags)
            labels, idx = _literal_labels(boxes, gt, u)
            assert torch.equal(props.gt_classes, labels), f"stage {k + 1} not labelled at {u}"
            for other in {0.5, 0.6, 0.7} - {u}:
                discriminating += int((_literal_labels(boxes, gt, other)[0] != labels).sum())
            fg = labels < 6
            assert torch.equal(props.gt_boxes.tensor[fg], gt.gt_boxes.tensor[idx[fg]])
            if mode == "readd":  # every ground-truth box, exactly, at the end
                assert torch.equal(props.proposal_boxes.tensor[flags], gt.gt_boxes.tensor)
        # the batch tells the stage's threshold from the others (e.g. stage 2 labelled at 0.5)
        assert discriminating > 0, f"no box of stage {k + 1} lies between the thresholds"


def _literal_iou(boxes, gt):
    """IoU (R,) of each box (R, 4) with one ground-truth box (4,), written out."""
    w = (torch.minimum(boxes[:, 2], gt[2]) - torch.maximum(boxes[:, 0], gt[0])).clamp(min=0)
    h = (torch.minimum(boxes[:, 3], gt[3]) - torch.maximum(boxes[:, 1], gt[1])).clamp(min=0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inter = w * h
    return inter / (area + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter)


@pytest.mark.parametrize("sampler", ["refined", "resample", "sample"])
def test_every_stage_labels_its_boxes_at_its_own_iou_threshold(sampler):
    """Boxes at IoU 0.45, 0.55, ..., 0.85 with one ground-truth box, given to each stage's
    sampler: stage t's positives are exactly those at IoU >= u_t = 0.5, 0.6, 0.7 (Sec. 4.3),
    whatever the sampler (all boxes kept: batch 1000, positive fraction 1)."""
    from detectron2.utils.events import EventStorage

    from box_cascade.samplers import build_stage_sampler

    cfg, model = _model("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 1000,
                        "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0)  # fmt: skip
    heads = model.roi_heads
    model.train()
    gt_box = torch.tensor([20.0, 10.0, 120.0, 110.0])
    gt = Instances((200, 200), gt_boxes=Boxes(gt_box[None]), gt_classes=torch.tensor([3]))
    heights = torch.tensor([45.0, 55.0, 65.0, 75.0, 85.0])  # inside the box: IoU = h / 100
    boxes = torch.stack([torch.full_like(heights, 20), torch.full_like(heights, 10),
                         torch.full_like(heights, 120), 10 + heights], dim=1)  # fmt: skip
    for stage, u in enumerate((0.5, 0.6, 0.7)):
        proposals = Instances((200, 200), proposal_boxes=Boxes(boxes.clone()))
        with EventStorage(0):
            (out,) = build_stage_sampler(sampler)(heads, stage, [proposals], [gt])
        got = out.proposal_boxes.tensor
        ious = _literal_iou(got, gt_box)
        assert len(got) == 5 + (sampler == "sample")  # "sample" adds the ground truth
        assert torch.allclose(ious.sort().values[:5], heights / 100)
        want = torch.where(ious >= u, torch.tensor(3), torch.tensor(6))
        assert torch.equal(out.gt_classes, want), (sampler, stage + 1, out.gt_classes, ious)
        assert int((want == 3).sum()) == {0: 4, 1: 3, 2: 2}[stage] + (sampler == "sample")


@pytest.mark.parametrize("mode", ["keep", "readd"])
def test_empty_boxes_are_dropped_between_stages_in_training_as_detectron2_does(mode):
    """A stage's regressed boxes become the next stage's proposals clipped to the image and, in
    training only, without the empty ones (Detectron2's CascadeROIHeads: boxes of zero width or
    height after clipping are removed); the memory rows and ground-truth flags follow them."""
    from detectron2.modeling.roi_heads import CascadeROIHeads

    _, model = _model("MODEL.BOX_CASCADE.LATER_STAGE_GT", mode)
    heads = model.roi_heads
    size = (100, 120)  # (h, w)
    regressed = torch.tensor([
        [10.0, 12.0, 50.0, 60.0],  # inside: kept
        [130.0, 10.0, 150.0, 50.0],  # right of the image: width 0 once clipped
        [20.0, 20.0, 20.0, 60.0],  # zero width
        [-30.0, -20.0, -5.0, 40.0],  # left of the image: width 0 once clipped
        [5.0, 90.0, 40.0, 140.0],  # partly below: clipped to (5, 90, 40, 100), kept
        [60.0, 30.0, 80.0, 30.0],  # zero height
    ])  # fmt: skip
    kept = torch.tensor([[10.0, 12.0, 50.0, 60.0], [5.0, 90.0, 40.0, 100.0]])
    props = Instances(size, proposal_boxes=Boxes(torch.tensor([[10.0, 10.0, 50.0, 50.0]] * 6)))
    props.from_gt = torch.tensor([False, False, False, False, True, False])
    gt = Instances(size, gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 30.0, 30.0]])),
                   gt_classes=torch.tensor([2]))  # fmt: skip
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    record = StageRecord(0, [props], None, {}, {"m": torch.arange(6.0)[:, None]},
                         boxes=[regressed], fg_scores=[scores])  # fmt: skip
    heads.train()
    (nxt,), memory = heads.next_stage_inputs(record, [gt])
    (d2,) = CascadeROIHeads._create_proposals_from_boxes(heads, [regressed], [size])
    assert torch.equal(d2.proposal_boxes.tensor, kept)  # the reference agrees with the literal
    if mode == "keep":
        assert torch.equal(nxt.proposal_boxes.tensor, kept)
        assert torch.equal(nxt.from_gt, torch.tensor([False, True]))
        assert torch.equal(nxt.objectness_logits, torch.tensor([0.1, 0.5]))
        assert torch.equal(memory["m"], torch.tensor([[0.0], [4.0]]))
    else:  # the regressed copy of a ground-truth box (row 4) is dropped, the ground truth added
        assert torch.equal(nxt.proposal_boxes.tensor, torch.cat([kept[:1], gt.gt_boxes.tensor]))
        assert torch.equal(nxt.from_gt, torch.tensor([False, True]))
    heads.eval()  # at test nothing is dropped: every stage scores the same boxes
    (nxt,), _ = heads.next_stage_inputs(record)
    assert len(nxt) == 6
    assert torch.equal(nxt.proposal_boxes.tensor[[0, 4]], kept)


def test_boxes_regressed_out_of_the_image_do_not_reach_the_next_stage():
    """Stage 1 moves every box 1000 widths to the right: all are empty once clipped, so stage 2
    trains on the re-added ground truth alone."""
    cfg, model = _model()
    with torch.no_grad():
        bbox_pred = model.roi_heads.box_predictor[0].bbox_pred
        bbox_pred.weight.zero_()
        bbox_pred.bias.copy_(torch.tensor([10000.0, 0.0, 0.0, 0.0]))  # dx: 10000 / 10 widths
    _, records, targets, _, _ = roi_train_pass(model, train_batch(cfg))
    for props, gt in zip(records[1].proposals, targets):
        assert torch.equal(props.proposal_boxes.tensor, gt.gt_boxes.tensor)
        assert props.from_gt.all()


def test_one_training_step_of_the_paper_mode_written_out():
    """Losses of the paper's cascade, written out from stage 1's sampled boxes: each later
    stage on the clipped, non-empty regressions of the last (ground truth re-added), labelled at
    u_t; softmax cross-entropy and smooth L1 (beta 1, Eq. 2) on the stage's normalised deltas,
    times w_t = 1, 1/2, 1/4."""
    cfg, model = _model()
    losses, records, targets, _, features = roi_train_pass(model, train_batch(cfg))
    heads = model.roi_heads
    feats = [features[f] for f in heads.box_in_features]
    boxes = [p.proposal_boxes.tensor for p in records[0].proposals]
    labels = [p.gt_classes for p in records[0].proposals]
    matched = [p.gt_boxes.tensor for p in records[0].proposals]
    for t, (u, w) in enumerate(zip((0.5, 0.6, 0.7), (1.0, 0.5, 0.25))):
        if t > 0:
            prev = records[t - 1]
            nxt = _literal_next_boxes(prev, WEIGHTS[t - 1], targets, readd=True)
            boxes = [b for b, _ in nxt]
            lab = [_literal_labels(b, gt, u) for b, gt in zip(boxes, targets)]
            labels = [lb for lb, _ in lab]
            matched = [gt.gt_boxes.tensor[idx] for (_, idx), gt in zip(lab, targets)]
        x = heads.box_head[t](heads.box_pooler(feats, [Boxes(b) for b in boxes]))
        logits, deltas = heads.box_predictor[t](x)
        gt_classes, all_boxes, gt_boxes = torch.cat(labels), torch.cat(boxes), torch.cat(matched)
        loss_cls = F.cross_entropy(logits, gt_classes)
        fg = gt_classes < 6
        target = Box2BoxTransform(WEIGHTS[t]).get_deltas(all_boxes[fg], gt_boxes[fg])
        loss_box = F.smooth_l1_loss(deltas[fg], target, beta=1.0, reduction="sum") / len(gt_classes)
        assert torch.allclose(losses[f"loss_cls_stage{t}"], w * loss_cls, atol=1e-5), t
        assert torch.allclose(losses[f"loss_box_reg_stage{t}"], w * loss_box, atol=1e-5), t
        assert loss_box > 0


def _flat_rows(boxes):
    return sorted(map(tuple, boxes.tolist()))


def test_resample_drops_regressed_ground_truth_adds_it_back_and_samples():
    """mmdetection's re-sampling: the previous stage's regressions minus those of ground-truth
    boxes, plus the exact ground truth, sampled like stage 1. With a batch larger than the
    candidates and positive fraction 1 every candidate is kept: the sets must be equal."""
    resample = ["MODEL.BOX_CASCADE.STAGE_SAMPLERS", '["sample", "resample", "resample"]']
    cfg, model = _model(*resample, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 100000,
                        "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0)  # fmt: skip
    batch = train_batch(cfg)
    _, records, targets, _, _ = roi_train_pass(model, batch)
    for k in (1, 2):
        want = _literal_next_boxes(records[k - 1], WEIGHTS[k - 1], targets, readd=True)
        for props, (boxes, _) in zip(records[k].proposals, want):
            got = props.proposal_boxes.tensor
            assert len(got) == len(boxes)
            assert torch.allclose(torch.tensor(_flat_rows(got)), torch.tensor(_flat_rows(boxes)))

    cfg, model = _model(*resample, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32)
    _, records, targets, _, _ = roi_train_pass(model, batch)
    for k in (1, 2):
        want = _literal_next_boxes(records[k - 1], WEIGHTS[k - 1], targets, readd=True)
        for props, gt, (boxes, _) in zip(records[k].proposals, targets, want):
            assert len(props) <= 32 and (props.gt_classes < 6).sum() <= 0.25 * 32
            candidates = set(_flat_rows(boxes))
            assert set(_flat_rows(props.proposal_boxes.tensor)) <= candidates
            # boxes from ground truth are exact ground-truth boxes, never regressed copies
            exact = set(_flat_rows(gt.gt_boxes.tensor))
            assert set(_flat_rows(props.proposal_boxes.tensor[props.from_gt])) <= exact
            labels, _ = _literal_labels(props.proposal_boxes.tensor, gt, (0.5, 0.6, 0.7)[k])
            assert torch.equal(props.gt_classes, labels)


def test_class_specific_refinement_takes_the_ground_truth_or_predicted_class_box():
    cfg, model = _model("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False)
    heads = model.roi_heads
    assert heads.box_predictor[0].bbox_pred.out_features == 4 * 6
    props = Instances((100, 100))
    props.proposal_boxes = Boxes(torch.tensor([[10.0, 10, 50, 50], [20, 20, 60, 70], [5, 5, 9, 9]]))
    props.gt_classes = torch.tensor([2, 6, 4])
    logits = torch.tensor([[0.0, 0, 0, 0, 0, 5, 0], [0, 0, 0, 3, 0, 0, 0], [9, 0, 0, 0, 0, 0, 0]])
    deltas = torch.randn(3, 24) * 0.1
    transform = Box2BoxTransform(WEIGHTS[0])
    all_boxes = transform.apply_deltas(deltas, props.proposal_boxes.tensor).view(3, 6, 4)
    record = StageRecord(0, [props], None, {"scores": logits, "proposal_deltas": deltas})
    heads.train()
    boxes, fg = heads.refine_boxes(record)
    # positives: their ground-truth class; the negative: its most probable foreground class
    assert torch.allclose(boxes[0], all_boxes[torch.arange(3), torch.tensor([2, 3, 4])])
    heads.eval()
    boxes, _ = heads.refine_boxes(record)
    assert torch.allclose(boxes[0], all_boxes[torch.arange(3), torch.tensor([5, 3, 0])])
    assert torch.allclose(fg[0], 1 - F.softmax(logits, dim=1)[:, -1])


def test_class_specific_cascade_trains_and_predicts():
    cfg, model = _model("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False)
    losses, _ = losses_of(model, train_batch(cfg))
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(detections_of(model, eval_inputs(cfg, 1))[0]["instances"]) > 0


def _record_mask_inputs(model):
    seen = []
    heads = model.roi_heads.mask_head
    for head in heads if isinstance(heads, torch.nn.ModuleList) else [heads]:
        original = head.forward

        def forward(x, instances, original=original):
            seen.append([copy.copy(i) for i in instances])
            return original(x, instances)

        head.forward = forward
    return seen


@pytest.mark.parametrize("strategy,u", [("first", 0.5), ("last", 0.7)])
def test_single_mask_head_trains_on_the_chosen_stage_positives(strategy, u):
    cfg, model = _model("MODEL.BOX_CASCADE.MASK_STRATEGY", strategy, config=CORE_MASK)
    seen = _record_mask_inputs(model)
    losses, _ = losses_of(model, train_batch(cfg))
    assert "loss_mask" in losses and torch.isfinite(losses["loss_mask"])
    (instances,) = seen
    ious = torch.cat([
        pairwise_iou(i.proposal_boxes, i.gt_boxes).diagonal() for i in instances if len(i)
    ])  # fmt: skip
    assert len(ious) > 0 and (ious >= u - 1e-6).all()
    if strategy == "last":
        assert (ious >= 0.7 - 1e-6).all()


def test_mask_head_per_stage_trains_each_and_averages_at_test():
    cfg, model = _model("MODEL.BOX_CASCADE.MASK_STRATEGY", "every", config=CORE_MASK)
    heads = model.roi_heads
    assert isinstance(heads.mask_head, torch.nn.ModuleList) and len(heads.mask_head) == 3
    seen = _record_mask_inputs(model)
    losses, _ = losses_of(model, train_batch(cfg))
    assert {"loss_mask_stage0", "loss_mask_stage1", "loss_mask_stage2"} <= set(losses)
    assert len(seen) == 3
    # the head rule covers the mask heads, with their stages' weights
    mult = heads.head_gradient_multipliers()
    assert (
        mult["mask_head.2.predictor.weight"] == 4.0 and mult["mask_head.0.predictor.weight"] == 1.0
    )
    # test: the mask is the mean of the three heads' probabilities on the final boxes
    model.eval()
    inputs = eval_inputs(cfg, 1)
    with torch.no_grad():
        out = model.inference(inputs, do_postprocess=False)[0]
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        pooled = heads.mask_pooler([features[f] for f in heads.mask_in_features], [out.pred_boxes])
        probs = sum(torch.sigmoid(h.layers(pooled)) for h in heads.mask_head) / 3
        want = probs[torch.arange(len(out)), out.pred_classes][:, None]
    assert len(out) > 0
    assert torch.allclose(out.pred_masks, want, atol=1e-5)


def test_mask_head_per_stage_losses_are_each_stages_mask_loss_times_w_t():
    """The "every" strategy (Fig. 6d): stage t's mask head on stage t's positives, its per-pixel
    binary cross-entropy against the ground-truth masks cropped to those boxes, written out
    here, times w_t = 1, 1/2, 1/4."""
    from detectron2.utils.events import EventStorage

    cfg, model = _model("MODEL.BOX_CASCADE.MASK_STRATEGY", "every", config=CORE_MASK)
    heads = model.roi_heads
    _, records, _, _, features = roi_train_pass(model, train_batch(cfg))
    with EventStorage(0):
        losses = heads.mask_losses(features, [r.proposals for r in records])
    assert set(losses) == {"loss_mask_stage0", "loss_mask_stage1", "loss_mask_stage2"}
    mask_features = [features[f] for f in heads.mask_in_features]
    for t, (u, w) in enumerate(zip((0.5, 0.6, 0.7), (1.0, 0.5, 0.25))):
        positives = [p[p.gt_classes < 6] for p in records[t].proposals]
        boxes = [p.proposal_boxes for p in positives]
        ious = torch.cat([pairwise_iou(b, p.gt_boxes).diagonal() for b, p in zip(boxes, positives)])
        assert len(ious) > 0 and (ious >= u - 1e-6).all()
        logits = heads.mask_head[t].layers(heads.mask_pooler(mask_features, boxes))
        labels = torch.cat([p.gt_classes for p in positives])
        logits = logits[torch.arange(len(labels)), labels]  # (R, M, M), the box's class
        side = logits.shape[-1]
        target = torch.cat([
            p.gt_masks.crop_and_resize(p.proposal_boxes.tensor, side) for p in positives
        ]).float()  # fmt: skip
        bce = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()
        got = losses[f"loss_mask_stage{t}"]
        assert torch.allclose(got, w * bce, rtol=1e-4), (t, float(got), w * float(bce))


def test_training_iou_statistics_match_a_literal_histogram():
    cfg, model = _model()
    batch = train_batch(cfg)
    stage_props, targets, proposals = _stage_proposals(model, cfg, batch)
    stats = model.roi_heads.iou_stats
    for k, props in enumerate(stage_props):
        ious = torch.cat([pairwise_iou(p.proposal_boxes, p.gt_boxes).diagonal() for p in props])
        want = torch.histc(ious, bins=stats.bins, min=0, max=1)
        assert torch.equal(stats.counts[k + 1].float(), want), f"stage{k + 1}"
        for j, u in enumerate(stats.thresholds):
            assert stats.positives[k + 1, j] == (ious >= u).sum()
    rpn = torch.cat([pairwise_iou(t.gt_boxes, p.proposal_boxes).max(0).values
                     for p, t in zip(proposals, targets)])  # fmt: skip
    assert torch.equal(stats.counts[0].float(), torch.histc(rpn, bins=stats.bins, min=0, max=1))
    # later stages see higher-IoU boxes than the RPN (the point of Fig. 4)
    share = stats.as_dict()["rows"]
    assert share["stage1"]["positive_share"]["0.7"] > share["rpn"]["positive_share"]["0.7"]


def test_integral_loss_detector_shares_head_and_regressor_and_relabels_the_same_boxes():
    from conftest import ROOT

    d = ROOT / "configs" / "CascadeRCNN"  # the integral-loss delta over the shapes config
    config = [d / "cascade_rcnn_R_18_FPN_shapes.yaml", d / "ablations" / "integral_loss.yaml"]
    cfg = cfg_of(config, "DATASETS.TRAIN", '("shapes_tiny_train",)',
                 "DATASETS.TEST", '("shapes_tiny_val",)', "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
                 "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64, "INPUT.MIN_SIZE_TRAIN", "(160,)",
                 "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2)  # fmt: skip
    model = model_of(cfg)
    heads = model.roi_heads
    assert len(heads.box_head) == 1 and len(heads.box_predictor) == 3
    assert heads.box_predictor[2].bbox_pred is heads.box_predictor[0].bbox_pred
    batch = train_batch(cfg)
    losses, _ = losses_of(model, batch)
    assert {k for k in losses if "box_reg_stage" in k} == {"loss_box_reg_stage0"}
    assert {"loss_cls_stage0", "loss_cls_stage1", "loss_cls_stage2"} <= set(losses)
    stage_props, targets, _ = _stage_proposals(model, cfg, batch)
    for k, u in ((1, 0.6), (2, 0.7)):
        for first, props, gt in zip(stage_props[0], stage_props[k], targets):
            assert torch.equal(first.proposal_boxes.tensor, props.proposal_boxes.tensor)
            best, idx = pairwise_iou(gt.gt_boxes, props.proposal_boxes).max(dim=0)
            want = torch.where(best >= u, gt.gt_classes[idx], torch.full_like(idx, 6))
            assert torch.equal(props.gt_classes, want)
