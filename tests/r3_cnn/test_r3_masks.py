"""R3-CNN's masks: the one mask head trained on every loop's positives with the loop's weight
(checked against Detectron2's own mask head on each loop's boxes), the HTC-style information flow
against a literal chain (losses, gradients, test-time merge), and R3-CNN-L's box head."""

import pytest
import torch
from conftest import ROOT
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers.core import (
    cfg_of,
    detections_of,
    eval_inputs,
    jittered_ground_truth,
    model_of,
    spread_predictor_weights,
    train_batch,
)

MASK = ROOT / "configs" / "R3CNN" / "r3_cnn_mask_instant_test.yaml"
WEIGHTS = (1.0, 0.75, 0.5)


def _mask_pass(model, batch):
    """Training pass: (all losses, each loop's labelled boxes, backbone features)."""
    model.train()
    heads = model.roi_heads
    images = model.preprocess_image(batch)
    targets = [x["instances"] for x in batch]
    with EventStorage(0):
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        losses, records = heads._forward_box_train(features, proposals, targets)
        stage_proposals = heads.mask_training_proposals(records, targets)
        losses.update(heads.mask_losses(features, stage_proposals))
    return losses, stage_proposals, features


def _masks_pass_with_records(model, batch, jitter=False):
    """Training pass of the whole ROI heads, keeping each loop's record: (losses, records,
    features). ``jitter``: boxes jittered around the ground truth join the RPN's proposals (so
    that every loop has positives besides the ground-truth boxes themselves)."""
    model.train()
    heads = model.roi_heads
    images = model.preprocess_image(batch)
    targets = [x["instances"] for x in batch]
    kept = []
    run_stage = heads.run_stage

    def recording(*args, **kwargs):
        record = run_stage(*args, **kwargs)
        kept.append(record)
        return record

    heads.run_stage = recording
    with EventStorage(0):
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        if jitter:
            extra = jittered_ground_truth(targets, per_box=5, spread=0.15)
            proposals = [Instances.cat([p, e]) for p, e in zip(proposals, extra)]
        _, losses = heads(images, features, proposals, targets)
    return losses, kept, features


def _literal_loop_output_positives(record, targets, weights, threshold):
    """Loop t's output boxes written out, per image: the loop's input boxes moved by its deltas
    (Detectron2's Box2BoxTransform with the loop's weights), clipped, empty ones dropped, the
    regressed copies of ground truth dropped and the exact ground truth added ("readd"), each
    labelled by its best ground truth at IoU >= threshold. Returns per image (positive boxes
    (P, 4), index of their ground truth (P,))."""
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.structures import Boxes, pairwise_iou

    transform = Box2BoxTransform(weights)
    deltas = (
        record.predictions["proposal_deltas"].detach().split([len(p) for p in record.proposals])
    )
    out = []
    for props, d, gt in zip(record.proposals, deltas, targets):
        boxes = Boxes(transform.apply_deltas(d, props.proposal_boxes.tensor))
        boxes.clip(props.image_size)
        keep = boxes.nonempty() & ~props.from_gt
        boxes = Boxes(torch.cat([boxes.tensor[keep], gt.gt_boxes.tensor]))
        iou = pairwise_iou(gt.gt_boxes, boxes)  # (G, R)
        best, index = iou.max(dim=0)
        positive = best >= threshold
        out.append((boxes.tensor[positive], index[positive]))
    return out


def test_each_loops_mask_trains_on_the_boxes_that_loop_produces():
    # Sec. 3 / Fig. 1b: the proposals that loop t's box head produces feed M_t. With every box
    # sampled (a batch larger than the boxes, positives up to all of them), loop t's mask
    # positives are exactly the literal set, and its loss is Detectron2's mask loss on them.
    cfg = cfg_of(MASK, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 4096,
                 "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0)  # fmt: skip
    assert cfg.MODEL.R3_CNN.MASK_BOXES == "output"
    model = model_of(cfg)
    spread_predictor_weights(model)  # the loops move their boxes
    heads = model.roi_heads
    batch = train_batch(cfg)
    targets = [x["instances"] for x in batch]
    torch.manual_seed(3)
    losses, records, features = _masks_pass_with_records(model, batch, jitter=True)
    assert len(records) == 3
    weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
    ious = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS
    moved = False
    with EventStorage(0):
        for t, record in enumerate(records):
            positives = _literal_loop_output_positives(record, targets, weights[t], ious[t])
            boxes = [b for b, _ in positives]
            x = heads.mask_inputs(features, [Boxes(b) for b in boxes])
            logits = heads.mask_head.layers(x)
            fg = []
            for (b, index), gt, props in zip(positives, targets, record.proposals):
                inst = Instances(props.image_size, proposal_boxes=Boxes(b))
                inst.gt_classes = gt.gt_classes[index]
                inst.gt_masks = gt.gt_masks[index]
                fg.append(inst)
            want = WEIGHTS[t] * mask_rcnn_loss(logits, fg)
            assert torch.allclose(losses[f"loss_mask_stage{t}"], want, rtol=1e-4), t
            # the loop's input positives give another loss: the test tells the two apart
            inputs, _ = select_foreground_proposals(record.proposals, heads.num_classes)
            x_in = heads.mask_inputs(features, [p.proposal_boxes for p in inputs])
            other = WEIGHTS[t] * mask_rcnn_loss(heads.mask_head.layers(x_in), inputs)
            moved |= not torch.allclose(other, want, rtol=1e-4)
    assert moved


def test_mask_boxes_input_trains_each_loop_on_its_input_samples():
    cfg = cfg_of(MASK, "MODEL.R3_CNN.MASK_BOXES", "input")
    model = model_of(cfg)
    spread_predictor_weights(model)
    heads = model.roi_heads
    torch.manual_seed(3)
    losses, records, features = _masks_pass_with_records(model, train_batch(cfg))
    with EventStorage(0):
        for t, record in enumerate(records):
            want = StandardROIHeads._forward_mask(heads, features, record.proposals)["loss_mask"]
            assert torch.allclose(losses[f"loss_mask_stage{t}"], WEIGHTS[t] * want, rtol=1e-5)


def test_unknown_mask_boxes_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="MODEL.R3_CNN.MASK_BOXES must be one of"):
        model_of(cfg_of(MASK, "MODEL.R3_CNN.MASK_BOXES", "refined"))


def _literal_chain(heads, x, links):
    """Link 0: the mask head (mask_fcn*, deconv, ReLU, predictor); link j: the head on
    x + flow(link j-1's conv features). Explicit module calls."""
    head, out, previous = heads.mask_head, [], None
    convs = [getattr(head, f"mask_fcn{i + 1}") for i in range(len(head.conv_norm_relus))]
    for _ in range(links):
        h = x if previous is None else x + heads.mask_flow(previous)
        for conv in convs:
            h = conv(h)
        previous = h
        out.append(head.predictor(torch.relu(head.deconv(h))))
    return out


def test_every_loops_positives_train_the_one_mask_head_with_the_loops_weight():
    cfg = cfg_of(MASK)
    model = model_of(cfg)
    heads = model.roi_heads
    assert not isinstance(heads.mask_head, torch.nn.ModuleList)  # one head, not one per loop
    losses, stage_proposals, features = _mask_pass(model, train_batch(cfg))
    assert {f"loss_mask_stage{t}" for t in range(3)} <= set(losses)
    with EventStorage(0):
        for t, proposals in enumerate(stage_proposals):
            # Detectron2's own mask branch on loop t's boxes
            want = StandardROIHeads._forward_mask(heads, features, proposals)["loss_mask"]
            assert torch.allclose(losses[f"loss_mask_stage{t}"], WEIGHTS[t] * want, rtol=1e-5)


def test_mask_information_flow_equals_a_literal_chain():
    cfg = cfg_of(MASK, "MODEL.R3_CNN.MASK_INFO_FLOW", True)
    model = model_of(cfg)
    heads = model.roi_heads
    with torch.no_grad():  # a non-zero flow, so that the links differ
        heads.mask_flow.weight.normal_(std=0.1)
    losses, stage_proposals, features = _mask_pass(model, train_batch(cfg))
    with EventStorage(0):
        for t, proposals in enumerate(stage_proposals):
            fg, _ = select_foreground_proposals(proposals, heads.num_classes)
            x = heads.mask_inputs(features, [p.proposal_boxes for p in fg])
            chain = _literal_chain(heads, x, t + 1)
            want = WEIGHTS[t] * mask_rcnn_loss(chain[-1], fg)
            assert torch.allclose(losses[f"loss_mask_stage{t}"], want, rtol=1e-5), t
    # the flow's weights learn from the later loops only
    flow = list(heads.mask_flow.parameters())
    first = torch.autograd.grad(losses["loss_mask_stage0"], flow, retain_graph=True,
                                allow_unused=True)  # fmt: skip
    assert all(g is None or g.abs().sum() == 0 for g in first)
    last = torch.autograd.grad(losses["loss_mask_stage2"], flow)
    assert last[0].abs().sum() > 0
    # test: the links' mask probabilities averaged on the final boxes
    inputs = eval_inputs(cfg, 1)
    got = detections_of(model, inputs)[0]["instances"]
    assert len(got) > 0
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, feats, None)
        instances, _ = heads._forward_box_test(feats, proposals)
        x = heads.mask_inputs(feats, [i.pred_boxes for i in instances])
        probs = sum(torch.sigmoid(y) for y in _literal_chain(heads, x, 3)) / 3
        heads._forward_mask(feats, instances)
    classes = instances[0].pred_classes
    want = probs[torch.arange(len(classes)), classes][:, None]
    assert torch.allclose(instances[0].pred_masks, want, atol=1e-5)


def test_non_local_conv_box_head_is_the_literal_block_then_convs():
    from r3_cnn import NonLocalConvBoxHead

    cfg = cfg_of(ROOT / "configs" / "R3CNN" / "r3_cnn_L_mask_instant_test.yaml")
    model = model_of(cfg)
    head = model.roi_heads.box_head[0]
    assert isinstance(head, NonLocalConvBoxHead)
    nl = head.non_local
    with torch.no_grad():
        nl.out.weight.normal_(std=0.1)  # zero at init: make the block do something
    x = torch.randn(5, 64, 7, 7)
    # literal embedded Gaussian: for every position i, sum_j softmax_j(theta_i . phi_j) g_j
    theta, phi, g = nl.theta(x), nl.phi(x), nl.g(x)
    y = torch.zeros_like(theta)
    for n in range(5):
        t, p, v = theta[n].flatten(1), phi[n].flatten(1), g[n].flatten(1)  # (C', 49)
        for i in range(49):
            w = torch.softmax(t[:, i] @ p, dim=0)  # (49,)
            y[n].view(y.shape[1], -1)[:, i] = (v * w).sum(dim=1)
    z = x + nl.out(y)
    for conv in head.convs:
        z = torch.relu(conv(z))
    assert head.convs[0].weight.shape[-1] == 7 and nl.theta.weight.shape[-1] == 7
    assert torch.allclose(head(x), z.flatten(1), atol=1e-5)
    assert head.output_shape.channels == 16 * 7 * 7
    assert model.roi_heads.box_predictor[0].cls_score.in_features == 16 * 7 * 7


def test_non_local_block_starts_as_the_identity():
    from r3_cnn import NonLocalBlock

    block = NonLocalBlock(8, kernel_size=3)
    x = torch.randn(2, 8, 7, 7)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize(
    "path", ["r3_cnn_mask_instant_test.yaml", "r3_cnn_L_mask_instant_test.yaml"]
)
def test_every_loop_with_no_positives_gives_zero_mask_loss_and_no_crash(path):
    cfg = cfg_of(ROOT / "configs" / "R3CNN" / path)
    model = model_of(cfg)
    batch = train_batch(cfg)
    for b in batch:  # images without objects
        b["instances"] = b["instances"][:0]
    losses, _, _ = _mask_pass(model, batch)
    for t in range(3):
        assert losses[f"loss_mask_stage{t}"] == 0
        assert losses[f"loss_box_reg_stage{t}"] == 0


# ---------------------------------------------------------------- mask-IoU scoring head


def _positives(cfg, model):
    _, stage_proposals, features = _mask_pass(model, train_batch(cfg))
    fg, _ = select_foreground_proposals(stage_proposals[0], model.roi_heads.num_classes)
    return fg, features


def test_mask_iou_targets_of_exact_and_padded_masks():
    from r3_cnn.mask_iou import mask_iou_targets

    cfg = cfg_of(MASK)
    model = model_of(cfg)
    fg, _ = _positives(cfg, model)
    m, k = 28, model.roi_heads.num_classes
    gt = torch.cat([x.gt_masks.crop_and_resize(x.proposal_boxes.tensor, m) for x in fg]) >= 0.5
    classes = torch.cat([x.gt_classes for x in fg])
    keep = gt.flatten(1).sum(1) > 0
    logits = torch.full((len(gt), k, m, m), -10.0)
    logits[torch.arange(len(gt)), classes] = torch.where(gt, 10.0, -10.0)
    _, exact = mask_iou_targets(logits, fg)
    assert torch.allclose(exact[keep], torch.ones(int(keep.sum())))  # the mask itself: IoU 1
    # the ground truth plus the first row of the grid outside it: IoU = |gt| / (|gt| + extra)
    padded = gt.clone()
    padded[:, 0, :] = True
    extra = (padded & ~gt).flatten(1).sum(1).float()
    logits[torch.arange(len(gt)), classes] = torch.where(padded, 10.0, -10.0)
    _, target = mask_iou_targets(logits, fg)
    want = gt.flatten(1).sum(1).float() / (gt.flatten(1).sum(1).float() + extra)
    assert torch.allclose(target[keep], want[keep]) and (extra[keep] > 0).any()


def test_mask_iou_head_trains_apart_from_the_mask_head_and_scores_the_masks():
    cfg = cfg_of(MASK, "MODEL.R3_CNN.MASK_IOU_HEAD", True, "MODEL.R3_CNN.MASK_IOU_CONV_DIM", 16,
                 "MODEL.R3_CNN.MASK_IOU_FC_DIM", 32)  # fmt: skip
    model = model_of(cfg)
    heads = model.roi_heads
    losses, _, _ = _mask_pass(model, train_batch(cfg))
    assert {f"loss_mask_iou_stage{t}" for t in range(3)} <= set(losses)
    iou_loss = sum(losses[f"loss_mask_iou_stage{t}"] for t in range(3))
    mask_params = list(heads.mask_head.parameters())
    grads = torch.autograd.grad(iou_loss, mask_params, retain_graph=True, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)  # its input mask is detached
    grads = torch.autograd.grad(iou_loss, list(heads.mask_iou_head.parameters()))
    assert grads[-2].abs().sum() > 0  # the predictor's weight
    # test: mask_scores = score x the predicted IoU of the detection's class, scores unchanged
    inputs = eval_inputs(cfg, 1)
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, feats, None)
        instances, _ = heads._forward_box_test(feats, proposals)
        scores = instances[0].scores.clone()
        heads._forward_mask(feats, instances)
        x = heads.mask_inputs(feats, [i.pred_boxes for i in instances])
        predicted = heads.mask_iou_head(x, instances[0].pred_masks)
    cls = instances[0].pred_classes
    want = scores * predicted[torch.arange(len(cls)), cls].clamp(0, 1)
    assert len(cls) > 0 and torch.allclose(instances[0].mask_scores, want, atol=1e-6)
    assert torch.equal(instances[0].scores, scores)
    heads.mask_iou_rescore = True
    with torch.no_grad():
        instances, _ = heads._forward_box_test(feats, proposals)
        heads._forward_mask(feats, instances)
    assert torch.allclose(instances[0].scores, want, atol=1e-6)


def test_mask_iou_head_without_masks_names_the_key():
    from detectron2.modeling import build_model

    cfg = cfg_of(ROOT / "configs" / "R3CNN" / "r3_cnn_instant_test.yaml",
                 "MODEL.R3_CNN.MASK_IOU_HEAD", True)  # fmt: skip
    with pytest.raises(ValueError, match=r"MODEL\.R3_CNN\.MASK_IOU_HEAD"):
        build_model(cfg)
