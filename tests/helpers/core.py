"""Helpers shared by the box-cascade core's tests: configs, models with shared weights, batches."""

import itertools
from typing import Optional

import torch
from conftest import ROOT
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from cascade_zoo import setup_cfg
from cascade_zoo.engine import ZooTrainer

D2_CASCADE = ROOT / "configs" / "Baselines" / "cascade_rcnn_instant_test.yaml"
D2_CASCADE_MASK = ROOT / "configs" / "Baselines" / "cascade_mask_rcnn_instant_test.yaml"
D2_FASTER = ROOT / "configs" / "Baselines" / "faster_rcnn_instant_test.yaml"
CORE = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"
CORE_MASK = ROOT / "configs" / "CascadeRCNN" / "cascade_mask_rcnn_instant_test.yaml"

# What turns a Detectron2 Cascade R-CNN config into the core's Detectron2-equivalent one.
AS_CORE_D2 = [
    "MODEL.META_ARCHITECTURE", "BoxCascadeRCNN",
    "MODEL.ROI_HEADS.NAME", "BoxCascadeROIHeads",
    "MODEL.BOX_CASCADE.LOSS_WEIGHTING", "detectron2",
    "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "mean_probs",
    "MODEL.BOX_CASCADE.LATER_STAGE_GT", "keep",
]  # fmt: skip


# The instant-test sizes, to run any shapes config for a step in a test.
INSTANT_SIZES = ["DATASETS.TRAIN", "('shapes_tiny_train',)",
                 "DATASETS.TEST", "('shapes_tiny_val',)",
                 "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", 224,
                 "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 224,
                 "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
                 "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64, "DATALOADER.NUM_WORKERS", 0,
                 "SOLVER.IMS_PER_BATCH", 2]  # fmt: skip


def instant_step(path, batch, inputs, seed=0):
    """``path`` built at INSTANT_SIZES: one training pass on ``batch`` (losses summed, finite,
    backpropagated) and one inference pass on ``inputs``. Returns (cfg, model, losses, the first
    input's outputs)."""
    cfg = cfg_of(path, *INSTANT_SIZES)
    model = model_of(cfg, seed)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), f"{path}: losses {losses}"
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(inputs)[0]
    return cfg, model, losses, out


def cfg_of(path, *opts):
    """``path``: a config file, or a list of files merged in order (a base and a delta)."""
    return setup_cfg(path, [str(o) for o in opts])


def model_of(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def spread_predictor_weights(model, seed=1, names=("box_predictor",)):
    """Give the box predictors (the modules whose parameter names contain one of ``names``)
    non-trivial weights, so that an untrained model's scores and deltas differ from box to box
    (comparisons are then not vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names) and name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def train_batch(cfg, n=2, seed=0):
    """The first ``n`` images of the training stream's first batch, drawn with data seed
    ``seed`` (images and augmentations fixed whatever ran before, so a failure reproduces)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = seed
    loader = ZooTrainer.build_train_loader(cfg)
    return next(iter(loader))[:n]


def eval_inputs(cfg, n=3):
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    return [b[0] for b in itertools.islice(loader, n)]


def losses_of(model, batch, seed=123, iteration=0):
    model.train()
    torch.manual_seed(seed)
    with EventStorage(iteration) as storage:
        losses = model(batch)
    return losses, storage


def detections_of(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(inputs)


def assert_same_instances(a, b, atol=1e-5):
    assert len(a) == len(b), f"{len(a)} vs {len(b)} detections"
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.scores, b.scores, atol=atol)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=atol)


def jittered_ground_truth(targets, per_box=30, spread=0.25, seed=0):
    """Per image, ``per_box`` copies of each ground-truth box with each side moved by up to
    ``spread`` of the box's width / height (fixed seed): boxes at every IoU from about 0.3 to
    1, which an untrained RPN does not give."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in targets:
        b = t.gt_boxes.tensor.repeat_interleave(per_box, dim=0)
        wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)
        moved = b + (torch.rand(b.shape, generator=g) * 2 - 1) * spread * wh
        out.append(Instances(t.image_size, proposal_boxes=Boxes(moved),
                             objectness_logits=torch.zeros(len(moved))))  # fmt: skip
    return out


def roi_train_pass(model, batch, extra_proposals=None, seed: Optional[int] = None):
    """The ROI heads' training pass of ``model`` on ``batch``: (losses, stage records, targets,
    RPN proposals, backbone features). ``extra_proposals(targets)`` (per image, Instances) are
    added to the RPN's. ``seed``: torch's RNG (proposal sampling, generated boxes) is seeded
    with it first."""
    if seed is not None:
        torch.manual_seed(seed)
    model.train()
    images = model.preprocess_image(batch)
    targets = [x["instances"] for x in batch]
    with EventStorage(0):
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        if extra_proposals is not None:
            proposals = [Instances.cat([p, e]) for p, e in zip(proposals, extra_proposals(targets))]
        losses, records = model.roi_heads._forward_box_train(features, proposals, targets)
    return losses, records, targets, proposals, features


def roi_test_pass(model, inputs):
    """The ROI heads' test chain of ``model`` on ``inputs`` (no ensemble, no NMS): the stage
    records."""
    model.eval()
    heads = model.roi_heads
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        return heads.run_test_stages([features[f] for f in heads.box_in_features], proposals)


def literal_deltas(src, dst, weights):
    """Eq. 1's normalised regression targets (R, 4) of boxes ``dst`` from boxes ``src`` (both
    (R, 4) x0y0x1y1), written out."""
    wx, wy, ww, wh = weights
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    dw, dh = dst[:, 2] - dst[:, 0], dst[:, 3] - dst[:, 1]
    sx, sy = src[:, 0] + 0.5 * sw, src[:, 1] + 0.5 * sh
    dx, dy = dst[:, 0] + 0.5 * dw, dst[:, 1] + 0.5 * dh
    return torch.stack([wx * (dx - sx) / sw, wy * (dy - sy) / sh,
                        ww * torch.log(dw / sw), wh * torch.log(dh / sh)], dim=1)  # fmt: skip


def literal_fast_rcnn_losses(logits, deltas, proposals, weights, num_classes, beta=1.0):
    """Fast R-CNN's two losses of one module written out: softmax cross-entropy over all its
    boxes, and smooth L1 (``beta``; 0: L1) of the positives' deltas (class-agnostic, or those of
    the ground-truth class) against their targets, summed and divided by the number of boxes.
    ``logits`` (R, K+1) / ``deltas`` (R, 4 or 4K) at ``proposals`` (labelled, per image)."""
    labels = torch.cat([p.gt_classes for p in proposals])
    boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
    matched = torch.cat([p.gt_boxes.tensor for p in proposals])
    log_probs = logits.log_softmax(dim=1)
    loss_cls = -log_probs[torch.arange(len(labels)), labels].mean()
    fg = torch.nonzero(labels < num_classes).flatten()
    if deltas.shape[1] == 4:
        fg_deltas = deltas[fg]
    else:
        fg_deltas = deltas.view(len(deltas), num_classes, 4)[fg, labels[fg]]
    x = (fg_deltas - literal_deltas(boxes[fg], matched[fg], weights)).abs()
    per = x if beta == 0 else torch.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)
    return loss_cls, per.sum() / max(len(labels), 1)
