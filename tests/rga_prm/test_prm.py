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


def _batch(cfg):
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
