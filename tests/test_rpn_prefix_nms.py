"""The RPN's prefix NMS (cascade_zoo.rpn) against Detectron2's find_top_rpn_proposals: the same
proposals in the same order, in training and inference, with clusters of overlapping boxes,
small boxes, non-finite values and too few survivors; that it runs NMS on fewer boxes; and in a
model built by the trainer, the same losses as Detectron2's RPN."""

import pytest
import torch
from conftest import INSTANT, run_tool, trainer_model_losses
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals

import cascade_zoo.rpn as prefix_rpn
from cascade_zoo import setup_cfg
from cascade_zoo.engine import ZooTrainer
from cascade_zoo.rpn import PrefixNMSRPN, find_top_rpn_proposals_prefix, use_rpn_prefix_nms

IMAGE_SIZES = [(240, 320), (256, 200)]


def _candidates(level_sizes, generator, clusters=6, spread=6.0):
    """Per level (N, A, 4) proposals around a few object centres (so NMS suppresses many) and
    (N, A) logits."""
    proposals, logits = [], []
    for size in level_sizes:
        per_image = []
        for height, width in IMAGE_SIZES:
            centre = torch.rand(clusters, 2, generator=generator) * torch.tensor([width, height])
            extent = 8 + torch.rand(clusters, 2, generator=generator) * 60
            which = torch.randint(0, clusters, (size,), generator=generator)
            jitter = torch.randn(size, 4, generator=generator) * spread
            half = extent[which] / 2
            boxes = torch.cat([centre[which] - half, centre[which] + half], 1) + jitter
            per_image.append(boxes)
        proposals.append(torch.stack(per_image))
        logits.append(torch.randn(len(IMAGE_SIZES), size, generator=generator) * 3)
    return proposals, logits


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.image_size == b.image_size
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.equal(a.objectness_logits, b.objectness_logits)


def _both(proposals, logits, **kwargs):
    args = dict(
        image_sizes=IMAGE_SIZES, nms_thresh=0.7, pre_nms_topk=1000, post_nms_topk=150,
        min_box_size=0.0, training=True,
    )  # fmt: skip
    args.update(kwargs)
    expected = find_top_rpn_proposals(proposals, logits, **args)
    got = find_top_rpn_proposals_prefix(proposals, logits, **args)
    return got, expected


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "level_sizes, post, spread",
    [
        ([4000, 1200, 300, 80, 20], 150, 6.0),  # the shapes recipe's sizes
        ([4000, 1200, 300, 80, 20], 300, 6.0),  # inference's 300 proposals
        ([3000, 900], 150, 0.5),  # tight clusters: the first prefix is too short
        ([3000, 900], 2000, 6.0),  # fewer survivors than post_nms_topk: all of them
        ([500, 100, 20], 150, 6.0),  # few boxes: Detectron2's own path
    ],
)
def test_same_proposals_as_detectron2(training, level_sizes, post, spread):
    generator = torch.Generator().manual_seed(len(level_sizes) + post)
    proposals, logits = _candidates(level_sizes, generator, spread=spread)
    got, expected = _both(proposals, logits, post_nms_topk=post, training=training)
    _assert_same(got, expected)
    assert all(len(r) > 0 for r in expected)


def test_small_boxes_are_dropped_as_detectron2_drops_them():
    proposals, logits = _candidates([4000, 1200], torch.Generator().manual_seed(3))
    got, expected = _both(proposals, logits, min_box_size=30.0)
    _assert_same(got, expected)
    widths = expected[0].proposal_boxes.tensor[:, 2] - expected[0].proposal_boxes.tensor[:, 0]
    assert (widths > 30).all()


def test_non_finite_candidates_raise_in_training_and_are_dropped_in_inference():
    proposals, logits = _candidates([4000, 1200], torch.Generator().manual_seed(4))
    best = logits[0][1].argmax()
    proposals[0][1, best, 2] = float("inf")
    logits[1][0, 5] = float("nan")
    for fn in (find_top_rpn_proposals, find_top_rpn_proposals_prefix):
        with pytest.raises(FloatingPointError, match="Training has diverged"):
            fn(proposals, logits, IMAGE_SIZES, 0.7, 1000, 150, 0.0, True)
    got, expected = _both(proposals, logits, training=False)
    _assert_same(got, expected)


@pytest.fixture
def nms_sizes(monkeypatch):
    """The number of boxes of every NMS call of cascade_zoo.rpn."""
    seen, nms = [], prefix_rpn.nms

    def counting_nms(boxes, scores, threshold):
        seen.append(len(boxes))
        return nms(boxes, scores, threshold)

    monkeypatch.setattr(prefix_rpn, "nms", counting_nms)
    return seen


def test_nms_sees_a_prefix_of_the_candidates(nms_sizes):
    proposals, logits = _candidates([4000, 1200, 300], torch.Generator().manual_seed(5))
    find_top_rpn_proposals_prefix(proposals, logits, IMAGE_SIZES, 0.7, 1000, 150, 0.0, True)
    candidates = len(IMAGE_SIZES) * (1000 + 1000 + 300)
    assert 0 < sum(nms_sizes) < candidates / 2, nms_sizes


def _losses(cfg, batch):
    model, losses = trainer_model_losses(cfg, batch)
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        proposals = model.proposal_generator(images, model.backbone(images.tensor))[0]
    return model, losses, proposals


def test_trainer_model_uses_the_option_and_both_give_the_same_losses_and_proposals(nms_sizes):
    from detectron2.data import build_detection_train_loader
    from detectron2.utils.env import seed_all_rng

    results = {}
    for enabled in (False, True):
        # proposals enough for the prefix path (Detectron2's own path below 1000 candidates)
        cfg = setup_cfg(
            str(INSTANT / "cascade_rcnn_instant_test.yaml"),
            ["ZOO.RPN_PREFIX_NMS", enabled, "DATALOADER.NUM_WORKERS", 0,
             "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 2000, "MODEL.RPN.PRE_NMS_TOPK_TEST", 2000],
        )  # fmt: skip
        if not results:
            # Detectron2's sampler draws its seed, and the augmentations draw, from NumPy
            seed_all_rng(0)
            batch = next(iter(build_detection_train_loader(cfg)))
        results[enabled] = _losses(cfg, batch)
    assert nms_sizes  # the prefix path ran (Detectron2's own path does not call it)
    kinds = {e: type(results[e][0].proposal_generator) for e in results}
    assert kinds == {False: RPN, True: PrefixNMSRPN}
    (_, losses_a, proposals_a), (_, losses_b, proposals_b) = results[False], results[True]
    assert losses_a.keys() == losses_b.keys()
    for name in losses_a:
        assert torch.equal(losses_a[name], losses_b[name]), name
    _assert_same(proposals_b, proposals_a)


def test_switching_back_restores_detectron2s_rpn():
    cfg = setup_cfg(str(INSTANT / "faster_rcnn_instant_test.yaml"), [])
    model = ZooTrainer.build_model(cfg)
    assert type(model.proposal_generator) is PrefixNMSRPN
    assert use_rpn_prefix_nms(model, False) == 1
    assert type(model.proposal_generator) is RPN


def test_benchmark_tool_times_both_settings_in_training_and_inference(tmp_path):
    out = tmp_path / "bench.md"
    config = INSTANT / "faster_rcnn_instant_test.yaml"
    run_tool("benchmark_cpu_option.py", "--configs", config, "--key", "ZOO.RPN_PREFIX_NMS",
             "--values", "False", "True", "--train-iters", 1, "--warmup", 0, "--infer-images", 2,
             "--output", out)  # fmt: skip
    text = out.read_text()
    assert "## The RPN's NMS on CPU: all candidates against a prefix" in text
    assert (
        "| train s/iter, False | train s/iter, True | speed-up | inference ms/image, False |"
        in text
    )
    row = next(line for line in text.splitlines() if line.startswith("| `"))
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    for a, b, ratio in (cells[0:3], cells[3:6]):
        assert float(ratio.rstrip("x")) == pytest.approx(float(a) / float(b), abs=0.01)
