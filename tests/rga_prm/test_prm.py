"""PRM: with K = 1 it is Faster R-CNN; soft and hard sampling against literal statements; the
merge of the modules and single-module evaluation; bad configs."""

import re

import pytest
import torch
from conftest import ROOT
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from cascade_zoo import setup_cfg
from cascade_zoo.engine import ZooTrainer
from rga_prm import hard_ratio_sample

D2_FASTER = ROOT / "configs" / "Baselines" / "faster_rcnn_instant_test.yaml"
FASTER = ROOT / "configs" / "RGA_PRM" / "faster_rcnn_rga_prm_instant_test.yaml"
CASCADE = ROOT / "configs" / "RGA_PRM" / "cascade_rcnn_rga_prm_instant_test.yaml"
ON_CORE = [
    "MODEL.META_ARCHITECTURE", "BoxCascadeRCNN", "MODEL.ROI_HEADS.NAME", "PRMROIHeads",
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5,)",
    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10.0, 10.0, 5.0, 5.0),)",
]  # fmt: skip


def _cfg(path, *opts):
    return setup_cfg(
        str(path), [str(o) for o in ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01, *opts)]
    )


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def _spread(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "box_predictor" in name and name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _batch(cfg, seed=0):
    """The first batch of the training stream with data seed ``seed`` (images and
    augmentations fixed, whatever ran before)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = seed
    return next(iter(ZooTrainer.build_train_loader(cfg)))


def _test_inputs(cfg):
    from detectron2.data import build_detection_test_loader

    return [next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))[0]]


def _losses(model, batch):
    model.train()
    torch.manual_seed(123)
    with EventStorage(0) as storage:
        return model(batch), storage


def test_one_module_is_detectron2s_faster_rcnn():
    d2_cfg = _cfg(D2_FASTER)
    d2 = _model(d2_cfg)
    _spread(d2)
    prm = _model(_cfg(D2_FASTER, *ON_CORE), seed=4)
    renamed = {
        re.sub(r"^roi_heads\.(box_head|box_predictor)\.", r"roi_heads.\1.0.", k): v
        for k, v in d2.state_dict().items()
    }
    prm.load_state_dict(renamed, strict=True)
    batch = _batch(d2_cfg)
    a, _ = _losses(d2, batch)
    b, _ = _losses(prm, batch)
    assert {f"{k}_stage0" if k in ("loss_cls", "loss_box_reg") else k for k in a} == set(b)
    for k, v in a.items():
        assert torch.allclose(
            v, b[f"{k}_stage0" if k in ("loss_cls", "loss_box_reg") else k], atol=1e-5
        )
    inputs = _test_inputs(d2_cfg)
    d2.eval(), prm.eval()
    with torch.no_grad():
        x, y = d2(inputs)[0]["instances"], prm(inputs)[0]["instances"]
    assert len(x) > 0 and len(x) == len(y)
    assert torch.equal(x.pred_classes, y.pred_classes)
    assert torch.allclose(x.scores, y.scores, atol=1e-5)
    assert torch.allclose(x.pred_boxes.tensor, y.pred_boxes.tensor, atol=1e-4)


def _literal_losses(logits, deltas, proposals, weights, beta):
    """Fast R-CNN's losses of one module, written out: softmax cross-entropy over its boxes;
    smooth L1 (``beta``, 0: L1) of the positives' deltas (class-agnostic, or of the ground-truth
    class) against Eq. 1's targets, summed over positives and divided by the number of boxes."""
    labels = torch.cat([p.gt_classes for p in proposals])
    src = torch.cat([p.proposal_boxes.tensor for p in proposals])
    dst = torch.cat([p.gt_boxes.tensor for p in proposals])
    loss_cls = -logits.log_softmax(1)[torch.arange(len(labels)), labels].mean()
    fg = torch.nonzero(labels < 6).flatten()
    d = deltas[fg] if deltas.shape[1] == 4 else deltas.view(-1, 6, 4)[fg, labels[fg]]
    src, dst = src[fg], dst[fg]
    sw, sh, dw, dh = (src[:, 2] - src[:, 0], src[:, 3] - src[:, 1],
                      dst[:, 2] - dst[:, 0], dst[:, 3] - dst[:, 1])  # fmt: skip
    target = torch.stack([
        weights[0] * ((dst[:, 0] + dw / 2) - (src[:, 0] + sw / 2)) / sw,
        weights[1] * ((dst[:, 1] + dh / 2) - (src[:, 1] + sh / 2)) / sh,
        weights[2] * torch.log(dw / sw), weights[3] * torch.log(dh / sh),
    ], dim=1)  # fmt: skip
    x = (d - target).abs()
    per = x if beta == 0 else torch.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)
    return loss_cls, per.sum() / len(labels)


@pytest.mark.parametrize(
    "config,sampling,stage_weights,beta",
    [(FASTER, "soft", (1.0,), 0.0), (CASCADE, "hard", (1.0, 0.5, 0.25), 1.0)],
    ids=["faster_soft", "cascade_hard"],
)
def test_each_modules_losses_are_its_fast_rcnn_losses_times_the_stage_weight(
    config, sampling, stage_weights, beta
):
    """Every module's losses at every stage against Fast R-CNN's losses written out on the
    module's own training boxes (its own soft or hard sample at stage 1), times w_t: on Cascade
    R-CNN (1, 1/2, 1/4) for the 1:9 module as for the box module."""
    cfg = _cfg(config, "MODEL.PRM.SAMPLING", sampling)
    model = _model(cfg)
    _spread(model)
    model.train()
    heads = model.roi_heads
    batch = _batch(cfg)
    images = model.preprocess_image(batch)
    targets = [x["instances"] for x in batch]
    torch.manual_seed(123)
    with EventStorage(0):
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        losses, records = heads._forward_box_train(features, proposals, targets)
    feats = [features[f] for f in heads.box_in_features]
    all_weights = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
    assert len(records) == len(stage_weights)
    for t, w in enumerate(stage_weights):
        modules = {
            "": (heads.box_head[t], heads.box_predictor[t], records[t].proposals),
            "_module1": (heads.parallel_box_head[0][t], heads.parallel_box_predictor[0][t],
                         records[t].branches["module1"].proposals),
        }  # fmt: skip
        for suffix, (head, predictor, boxes) in modules.items():
            logits, deltas = predictor(
                head(heads.box_pooler(feats, [b.proposal_boxes for b in boxes]))
            )
            want = _literal_losses(logits, deltas, boxes, all_weights[t], beta)
            for name, value in zip(("loss_cls", "loss_box_reg"), want):
                key = f"{name}{suffix}_stage{t}"
                assert value > 0, key
                assert torch.allclose(losses[key], w * value, rtol=1e-4, atol=1e-6), (
                    key, float(losses[key]), w * float(value))  # fmt: skip
    if sampling == "hard":  # the 1:9 module's stage-1 sample is its hard ratio, 10% of 64
        for inst in records[0].branches["module1"].proposals:
            assert len(inst) == 64 and int((inst.gt_classes < 6).sum()) == 6


def _sampled(model, batch):
    from detectron2.utils.events import EventStorage

    model.train()
    heads = model.roi_heads
    images = model.preprocess_image(batch)
    targets = [x["instances"] for x in batch]
    with EventStorage(0) as storage:
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        samples = heads.stage_samples(0, proposals, targets)
    return samples, proposals, targets, storage


@pytest.mark.parametrize("sampling", ["soft", "hard"])
def test_each_module_samples_its_ratio_soft_or_hard(sampling):
    b = 40
    cfg = _cfg(FASTER, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", b, "MODEL.PRM.SAMPLING", sampling)
    model = _model(cfg)
    samples, proposals, targets, storage = _sampled(model, _batch(cfg))
    heads = model.roi_heads
    # box module (1:1, 0.5) is "main", the 1:9 module (0.1) is "module1"
    assert heads.module_names() == {0: "main", 1: "module1"}
    for name, fraction in (("main", 0.5), ("module1", 0.1)):
        fg_total, n_total = 0, 0
        for inst, p, t in zip(samples[name], proposals, targets):
            from detectron2.structures import pairwise_iou

            # positives available: proposals + ground truth at IoU >= 0.5 with some object
            iou = pairwise_iou(t.gt_boxes, p.proposal_boxes)
            available = int((iou.max(dim=0).values >= 0.5).sum()) + len(t)
            fg = int((inst.gt_classes < 6).sum())
            want_fg = min(available, int(b * fraction))
            if sampling == "hard" and available > 0:
                want_fg = int(b * fraction)
            assert fg == want_fg, (name, fg, available)
            assert len(inst) == b
            if sampling == "hard":  # duplicates are copies of sampled positives
                boxes = {tuple(x.tolist()) for x in inst.proposal_boxes.tensor[inst.gt_classes < 6]}
                assert len(boxes) <= min(available, want_fg)
            fg_total, n_total = fg_total + fg, n_total + len(inst)
        logged = storage.latest()[f"stage0/module{0 if name == 'main' else 1}/positive_fraction"][0]
        assert logged == pytest.approx(fg_total / n_total)


def test_hard_ratio_sample_is_literal():
    from detectron2.structures import Boxes, Instances

    inst = Instances((10, 10))
    inst.proposal_boxes = Boxes(torch.arange(40, dtype=torch.float32).view(10, 4))
    inst.gt_classes = torch.tensor([0, 1, 3, 3, 3, 3, 3, 3, 3, 3])  # 2 positives, 8 negatives
    torch.manual_seed(0)
    (out,) = hard_ratio_sample([inst], positive_fraction=0.5, batch_size=8, num_classes=3)
    fg = out.gt_classes < 3
    assert len(out) == 8 and int(fg.sum()) == 4 and int((~fg).sum()) == 4
    assert {tuple(b) for b in out.proposal_boxes.tensor[fg].tolist()} == {
        tuple(b) for b in inst.proposal_boxes.tensor[:2].tolist()
    }
    (same,) = hard_ratio_sample([inst], positive_fraction=0.1, batch_size=8, num_classes=3)
    assert same is inst  # already at least the ratio's share
    empty = inst[inst.gt_classes == 3]
    (kept,) = hard_ratio_sample([empty], positive_fraction=0.5, batch_size=8, num_classes=3)
    assert kept is empty  # no positive to duplicate


@pytest.mark.parametrize("eval_module", [-1, 0, 1])
def test_merge_and_single_module_evaluation_against_a_literal_statement(eval_module):
    cfg = _cfg(FASTER, "MODEL.PRM.EVAL_MODULE", eval_module)
    model = _model(cfg)
    _spread(model)
    model.eval()
    heads = model.roi_heads
    x = torch.randn(5, 64, 7, 7)
    with torch.no_grad():
        got, _ = heads.predict(0, x, {})
        a_logits, a_deltas = heads.box_predictor[0](heads.box_head[0](x))  # module 0 (1:1)
        b_logits, b_deltas = heads.parallel_box_predictor[0][0](heads.parallel_box_head[0][0](x))
    want_logits = {-1: (a_logits + b_logits) / 2, 0: a_logits, 1: b_logits}[eval_module]
    want_deltas = {-1: a_deltas, 0: a_deltas, 1: b_deltas}[eval_module]
    assert torch.allclose(got["scores"], want_logits, atol=1e-6)
    assert torch.equal(got["proposal_deltas"], want_deltas)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.BOX_CASCADE.PARALLEL.NUM_MODULES", 3], "POSITIVE_FRACTIONS has 2 entries but"),
        (["MODEL.PRM.SAMPLING", "medium"], "MODEL.PRM.SAMPLING must be one of"),
        (["MODEL.PRM.EVAL_MODULE", 2], "MODEL.PRM.EVAL_MODULE must be -1 or in 0..1"),
    ],
)
def test_bad_prm_configs_name_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        _model(_cfg(FASTER, *opts))


def test_module_scores_are_each_modules_own_probabilities(tmp_path):
    from rga_prm.analysis import module_scores, score_difference_summary

    cfg = _cfg(FASTER)
    model = _model(cfg)
    _spread(model)
    scores = module_scores(model, cfg, "shapes_tiny_val", 2)
    assert list(scores) == ["module0 (fraction 0.5)", "module1 (fraction 0.1)"]
    a, b = scores.values()
    assert len(a) == len(b) > 0 and ((0 <= a) & (a <= 1)).all()
    assert not (a == b).all()  # two modules, two sets of weights
    summary = score_difference_summary(scores)
    assert summary["share_differing"] == pytest.approx(float((abs(a - b) > 0.1).mean()))
    with pytest.raises(ValueError, match="at least 2 parallel modules"):
        module_scores(_model(_cfg(D2_FASTER)), _cfg(D2_FASTER), "shapes_tiny_val", 1)
