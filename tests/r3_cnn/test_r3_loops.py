"""R3-CNN's loops against a literal re-statement (losses, gradients, detections), its
equivalences (one loop = Faster R-CNN with class-agnostic regression; one training loop and three
test loops = the Cascade paper's iterative BBox; the box branch = one stage of the core's
Cascade), the shared head's gradient and its learning-rate and weight-decay rule."""

import re

import pytest
import torch
from conftest import ROOT
from helpers.core import (
    CORE,
    D2_FASTER,
    assert_same_instances,
    cfg_of,
    detections_of,
    eval_inputs,
    losses_of,
    model_of,
    roi_train_pass,
    spread_predictor_weights,
    train_batch,
)
from helpers.r3 import detections, labels_at, loop_losses, refine, training_loops
from helpers.r3 import test_loops as literal_test_loops

R3 = ROOT / "configs" / "R3CNN" / "r3_cnn_instant_test.yaml"
CARRY_ALL = ["MODEL.BOX_CASCADE.STAGE_SAMPLERS", '["sample", "refined", "refined"]',
             "MODEL.BOX_CASCADE.LATER_STAGE_GT", "keep"]  # fmt: skip
REG = (10.0, 10.0, 5.0, 5.0)
ONE_LOOP = ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5,)",
            "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10.0, 10.0, 5.0, 5.0),)",
            "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS", "[1.0]",
            "MODEL.BOX_CASCADE.STAGE_SAMPLERS", '["sample"]']  # fmt: skip


def _r3(*opts, seed=0):
    cfg = cfg_of(R3, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01, *opts)
    model = model_of(cfg, seed)
    spread_predictor_weights(model)
    return cfg, model


def _test_features(model, inputs):
    model.eval()
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    heads = model.roi_heads
    return [features[f] for f in heads.box_in_features], features, proposals


# ---------------------------------------------------------------- literal loops


def test_training_loops_equal_a_literal_restatement_losses_and_gradients():
    cfg, model = _r3(*CARRY_ALL)
    heads = model.roi_heads
    batch = train_batch(cfg)
    losses, records, targets, _, features = roi_train_pass(model, batch)
    feats = [features[f] for f in heads.box_in_features]
    first = [p.proposal_boxes.tensor for p in records[0].proposals]
    literal = training_loops(heads, feats, first, targets, (0.5, 0.6, 0.7), (1.0, 0.75, 0.5),
                             REG, beta=1.0)  # fmt: skip
    assert len(literal) == 3
    for t, (cls, box) in enumerate(literal):
        assert torch.allclose(losses[f"loss_cls_stage{t}"], cls, rtol=1e-5), t
        assert torch.allclose(losses[f"loss_box_reg_stage{t}"], box, rtol=1e-4, atol=1e-7), t
    # not vacuous: loop 1 trains on the ground truth it adds, and a later loop has positives
    # too (which ones depends on the batch: SEED -1)
    assert literal[0][1] > 0 and sum(box > 0 for _, box in literal) >= 2
    shared = [
        p for n, p in heads.named_parameters() if n.startswith(("box_head.", "box_predictor."))
    ]
    got = torch.autograd.grad(sum(losses.values()), shared, retain_graph=True)
    want = torch.autograd.grad(sum(c + b for c, b in literal), shared)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)


def _rows_in(rows, table):
    """For each row of ``rows`` (N, 4), the index of an equal row of ``table`` (M, 4), or -1."""
    if len(table) == 0:
        return torch.full((len(rows),), -1, dtype=torch.long)
    close = (rows[:, None, :] - table[None, :, :]).abs().amax(dim=2) < 1e-3
    found = close.any(dim=1)
    return torch.where(found, close.float().argmax(dim=1), torch.full_like(found, -1).long())


def test_training_loops_in_the_default_resample_mode_equal_a_literal_restatement():
    # The official behaviour: every later loop re-samples the previous loop's boxes (regressed
    # copies of ground truth dropped, the exact ground truth added) with the first loop's batch
    # size and positive fraction, labelled at its own IoU threshold. A small batch (2 positives
    # per image at most) makes the re-sampling drop boxes.
    cfg, model = _r3("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 8)
    assert list(cfg.MODEL.BOX_CASCADE.STAGE_SAMPLERS) == ["sample", "resample", "resample"]
    assert cfg.MODEL.BOX_CASCADE.LATER_STAGE_GT == "readd"
    batch_size = cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    max_positives = int(batch_size * cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION)
    heads = model.roi_heads
    torch.manual_seed(4)
    losses, records, targets, _, features = roi_train_pass(model, train_batch(cfg))
    feats = [features[f] for f in heads.box_in_features]
    background = heads.num_classes
    ious, weights = (0.5, 0.6, 0.7), (1.0, 0.75, 0.5)
    fewer = False
    for t in range(3):
        sampled = [p.proposal_boxes.tensor for p in records[t].proposals]
        cls, box, deltas, labels = loop_losses(heads, feats, sampled, targets, ious[t],
                                               weights[t], REG, beta=1.0)  # fmt: skip
        assert torch.allclose(losses[f"loss_cls_stage{t}"], cls, rtol=1e-5), t
        assert torch.allclose(losses[f"loss_box_reg_stage{t}"], box, rtol=1e-4, atol=1e-7), t
        assert torch.equal(torch.cat([p.gt_classes for p in records[t].proposals]), labels)
        if t == 0:
            continue
        # the boxes loop t may sample from, written out from loop t-1's samples and deltas
        prev = records[t - 1]
        prev_boxes = [p.proposal_boxes.tensor for p in prev.proposals]
        _, _, prev_deltas, _ = loop_losses(heads, feats, prev_boxes, targets, ious[t - 1], 1.0,
                                           REG, beta=1.0)  # fmt: skip
        for refined_keep, props, tgt, got in zip(
            refine(prev_boxes, prev_deltas, targets, REG), prev.proposals, targets, sampled
        ):
            refined, keep = refined_keep
            pool = torch.cat([refined[~props.from_gt[keep]], tgt.gt_boxes.tensor])
            pool_labels, _ = labels_at(pool, tgt.gt_boxes.tensor, tgt.gt_classes, ious[t],
                                       background)  # fmt: skip
            where = _rows_in(got, pool)
            assert (where >= 0).all(), "a sampled box is not one of the previous loop's"
            assert len(set(where.tolist())) == len(got)  # no box twice
            n_pos_pool = int((pool_labels < background).sum())
            n_pos = min(n_pos_pool, max_positives)
            n_neg = min(batch_size - n_pos, len(pool) - n_pos_pool)
            got_pos = int((pool_labels[where] < background).sum())
            assert (got_pos, len(got) - got_pos) == (n_pos, n_neg), t
            fewer |= len(got) < len(pool)
    assert fewer  # the batch size really sub-samples (carry-all would keep every box)


@pytest.mark.parametrize("loops, merge", [(1, "mean"), (3, "mean"), (5, "mean"), (3, "max")])
def test_detections_equal_a_literal_restatement(loops, merge):
    cfg, model = _r3("MODEL.BOX_CASCADE.NUM_TEST_STAGES", loops,
                     "MODEL.BOX_CASCADE.TEST_ENSEMBLE", f"{merge}_logits")  # fmt: skip
    heads = model.roi_heads
    inputs = eval_inputs(cfg, 2)
    with torch.no_grad():
        feats, features, proposals = _test_features(model, inputs)
        got, _ = heads._forward_box_test(features, proposals)
        literal = literal_test_loops(heads, feats, proposals, loops, REG, merge)
    predictor = heads.box_predictor[0]
    total = 0
    for instances, (probs, boxes), p in zip(got, literal, proposals):
        b, s, c = detections(probs, boxes, p.image_size, predictor.test_score_thresh,
                             predictor.test_nms_thresh, predictor.test_topk_per_image)  # fmt: skip
        order = torch.argsort(instances.scores, descending=True)
        assert len(instances) == len(s)
        assert torch.equal(instances.pred_classes[order], c)
        assert torch.allclose(instances.scores[order], s, atol=1e-6)
        assert torch.allclose(instances.pred_boxes.tensor[order], b, atol=1e-3)
        total += len(s)
    assert total > 0


def test_test_loops_change_the_detections():
    # L_e matters: the merge and the boxes differ between 1 and 3 loops (not vacuous)
    cfg, model = _r3()
    inputs = eval_inputs(cfg, 1)
    plan = model.roi_heads.plan
    assert plan.num_test_stages == 3  # 0 in the config: L_e = L_t
    three = detections_of(model, inputs)[0]["instances"]
    model.roi_heads.plan = type(plan)(**{**plan.__dict__, "num_test_stages": 1})
    one = detections_of(model, inputs)[0]["instances"]
    assert len(one) != len(three) or not torch.allclose(one.scores, three.scores)


# ---------------------------------------------------------------- equivalences


def test_one_loop_is_faster_rcnn_with_class_agnostic_regression():
    agnostic = ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True,
                "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01]  # fmt: skip
    d2_cfg = cfg_of(D2_FASTER, *agnostic)
    d2 = model_of(d2_cfg)
    spread_predictor_weights(d2)
    r3_cfg = cfg_of(
        D2_FASTER, *agnostic, "MODEL.META_ARCHITECTURE", "BoxCascadeRCNN",
        "MODEL.ROI_HEADS.NAME", "R3CNNROIHeads", "MODEL.BOX_CASCADE.SHARED_HEAD", True,
        "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", False,
        "MODEL.BOX_CASCADE.LOSS_WEIGHTING", "explicit",
        *ONE_LOOP, "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "mean_logits",
    )  # fmt: skip
    r3 = model_of(r3_cfg, seed=4)
    renamed = {re.sub(r"^roi_heads\.(box_head|box_predictor)\.", r"roi_heads.\1.0.", k): v
               for k, v in d2.state_dict().items()}  # fmt: skip
    r3.load_state_dict(renamed, strict=True)
    batch = train_batch(d2_cfg)
    a, _ = losses_of(d2, batch)
    b, _ = losses_of(r3, batch)
    for k, v in a.items():
        name = f"{k}_stage0" if k in ("loss_cls", "loss_box_reg") else k
        assert torch.allclose(v, b[name], atol=1e-5), k
    inputs = eval_inputs(d2_cfg, 2)
    for x, y in zip(detections_of(d2, inputs), detections_of(r3, inputs)):
        assert len(x["instances"]) > 0
        assert_same_instances(x["instances"], y["instances"], atol=1e-4)


def test_one_training_loop_and_three_test_loops_is_iterative_bbox():
    iterative = [*ONE_LOOP[:4], "MODEL.BOX_CASCADE.NUM_TEST_STAGES", 3,
                 "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none"]  # fmt: skip
    core_cfg = cfg_of(CORE, *iterative, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    core = model_of(core_cfg)
    spread_predictor_weights(core)
    _, r3 = _r3(*ONE_LOOP, *iterative[4:], seed=5)
    r3.load_state_dict(core.state_dict(), strict=True)
    batch = train_batch(core_cfg)
    a, _ = losses_of(core, batch)
    b, _ = losses_of(r3, batch)
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    inputs = eval_inputs(core_cfg, 2)
    for x, y in zip(detections_of(core, inputs), detections_of(r3, inputs)):
        assert len(x["instances"]) > 0
        assert_same_instances(x["instances"], y["instances"])


def _box_branch(model):
    return {re.sub(r"\.0\.", ".", n): tuple(p.shape) for n, p in model.roi_heads.named_parameters()
            if n.startswith(("box_head.0.", "box_predictor.0."))}  # fmt: skip


def test_box_branch_is_one_stage_of_the_cores_cascade():
    _, r3 = _r3()
    core = model_of(cfg_of(CORE))
    r3_names = [n for n, _ in r3.roi_heads.named_parameters() if n.startswith("box_")]
    assert all(n.startswith(("box_head.0.", "box_predictor.0.")) for n in r3_names)
    assert _box_branch(r3) == _box_branch(core)
    count = sum(p.numel() for n, p in r3.roi_heads.named_parameters() if n.startswith("box_"))
    core_stage = sum(p.numel() for n, p in core.roi_heads.named_parameters()
                     if n.startswith(("box_head.0.", "box_predictor.0.")))  # fmt: skip
    core_all = sum(p.numel() for n, p in core.roi_heads.named_parameters() if n.startswith("box_"))
    assert count == core_stage and 3 * count == core_all


# ---------------------------------------------------------------- the shared head's learning


def test_shared_head_gets_the_sum_of_the_loops_weighted_gradients():
    cfg, model = _r3(*CARRY_ALL)
    batch = train_batch(cfg)
    unweighted = model_of(cfg_of(R3, *CARRY_ALL, "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS",
                                 "[1.0, 1.0, 1.0]"))  # fmt: skip
    unweighted.load_state_dict(model.state_dict())
    names = [n for n, _ in model.named_parameters() if n.startswith("roi_heads.box_")]
    per_loop_params = [p for n, p in unweighted.named_parameters() if n in names]
    losses, _ = losses_of(unweighted, batch)
    per_loop = [
        torch.autograd.grad(losses[f"loss_cls_stage{t}"] + losses[f"loss_box_reg_stage{t}"],
                            per_loop_params, retain_graph=True)
        for t in range(3)
    ]  # fmt: skip
    weighted, _ = losses_of(model, batch)
    params = [p for n, p in model.named_parameters() if n in names]
    got = torch.autograd.grad(sum(v for k, v in weighted.items() if "stage" in k), params)
    for i, name in enumerate(names):
        want = sum(w * g[i] for w, g in zip((1.0, 0.75, 0.5), per_loop))
        assert torch.allclose(got[i], want, rtol=1e-4, atol=1e-7), name
    assert not torch.allclose(per_loop[0][0], per_loop[2][0])  # the loops differ


def test_shared_head_learns_at_the_base_rate_with_weight_decay_once_per_step():
    from cascade_zoo.engine import ZooTrainer

    lr, wd = 0.01, 0.1
    cfg, model = _r3(*CARRY_ALL, "SOLVER.BASE_LR", lr, "SOLVER.WEIGHT_DECAY", wd,
                     "SOLVER.MOMENTUM", 0.0, "SOLVER.CLIP_GRADIENTS.ENABLED", False,
                     "SOLVER.WEIGHT_DECAY_NORM", wd)  # fmt: skip
    optimizer = ZooTrainer.build_optimizer(cfg, model)
    name = "roi_heads.box_predictor.0.bbox_pred.weight"
    param = dict(model.named_parameters())[name]
    groups = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    assert len(groups) == 1 and sum(p is param for p in groups[0]["params"]) == 1
    assert groups[0]["lr"] == lr and groups[0]["weight_decay"] == wd
    batch = train_batch(cfg)
    losses, _ = losses_of(model, batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    before, grad = param.detach().clone(), param.grad.detach().clone()
    assert grad.abs().sum() > 0
    optimizer.step()
    assert torch.allclose(param.detach(), before - lr * (grad + wd * before), atol=1e-7)
