"""The generator of Sec. 3.1 against a slow per-box re-statement: candidates within Eq. 1's
ranges, the kept boxes in their intervals, the highest-IoU-ground-truth filter, clipping, the
rounds of candidates for the (ground truth, interval) pairs still short, exactly M / N per
interval at every stage of the shipped cascade settings, images without ground truth,
determinism under a seed, and Table 5's even resampling."""

import pytest
import torch
from detectron2.structures import Boxes, Instances
from helpers.core import cfg_of, train_batch
from helpers.iu import CASCADE, slow_clip, slow_in_interval, slow_iou

import iou_uniform.sampler as sampler_module
from box_cascade import STAGE_SAMPLER_REGISTRY, build_stage_sampler
from iou_uniform import (
    GenerationSettings,
    UniformIoUSampler,
    jitter_candidates,
    resample_evenly,
    select_uniform,
    uniform_iou_samples,
)

PAPER = GenerationSettings(
    intervals=((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.0)),
    center_shifts=(0.75, 0.5, 0.3, 0.125),
    scale_ranges=((0.5, 2.0), (0.6, 1.6), (0.7, 1.4), (0.8, 1.25)),
    num_candidates=500,
    samples_per_gt=64,
)


def _targets(boxes, image_size=(200, 300), classes=None):
    t = Instances(image_size, gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float64).view(-1, 4)))
    t.gt_classes = torch.tensor(classes or list(range(len(boxes))), dtype=torch.long)
    return t


# three overlapping boxes (the filter matters), one cut by the image border (clipping matters)
CROWDED = [[40.0, 40.0, 120.0, 110.0], [60.0, 50.0, 140.0, 120.0], [50.0, 30.0, 110.0, 100.0],
           [250.0, 150.0, 320.0, 230.0]]  # fmt: skip


def slow_select(candidates, gts, image_size, intervals, per_interval):
    """Per ground truth, interval and candidate in draw order: clip, IoU with its ground truth in
    the interval, no ground truth overlapping more, the first ``per_interval``. Also counts the
    candidates the highest-IoU filter rejected."""
    kept, rejected = [], 0
    for k, per_gt in enumerate(candidates):
        for j, per_interval_candidates in enumerate(per_gt):
            low, high = intervals[j]
            n = 0
            for box in per_interval_candidates:
                box = slow_clip(box, image_size)
                if box[2] <= box[0] or box[3] <= box[1]:
                    continue
                own = slow_iou(box, gts[k])
                if not slow_in_interval(own, low, high):
                    continue
                if any(slow_iou(box, g) > own for g in gts):
                    rejected += 1
                    continue
                if n < per_interval:
                    kept.append((box, k, j, own))
                    n += 1
    return kept, rejected


@pytest.mark.parametrize("num_candidates, per_interval", [(60, 16), (300, 5)])
def test_selection_equals_the_slow_per_box_restatement(num_candidates, per_interval):
    targets = _targets(CROWDED)
    g = torch.Generator().manual_seed(3)
    cands = jitter_candidates(targets.gt_boxes.tensor, PAPER.center_shifts, PAPER.scale_ranges,
                              num_candidates, g)  # fmt: skip
    boxes, gt_index, interval, ious = select_uniform(
        cands, targets.gt_boxes.tensor, targets.image_size, PAPER.intervals, per_interval
    )
    want, rejected = slow_select(cands.tolist(), targets.gt_boxes.tensor.tolist(),
                                 targets.image_size, PAPER.intervals, per_interval)  # fmt: skip
    assert rejected > 0, "the highest-IoU filter was never exercised"
    assert len(boxes) == len(want) > 0
    assert gt_index.tolist() == [k for _, k, _, _ in want]
    assert interval.tolist() == [j for _, _, j, _ in want]
    assert torch.allclose(boxes, torch.tensor([b for b, _, _, _ in want], dtype=boxes.dtype))
    assert torch.allclose(ious, torch.tensor([u for _, _, _, u in want], dtype=ious.dtype))
    # the border box's samples are clipped to the image
    assert boxes[:, 2].max() <= 300 and boxes[:, 3].max() <= 200 and boxes.min() >= 0


def test_generated_ious_lie_in_their_intervals_and_their_ground_truth_overlaps_most():
    targets = _targets(CROWDED)
    torch.manual_seed(0)
    out = uniform_iou_samples(targets, PAPER)
    gts = targets.gt_boxes.tensor.tolist()
    assert len(out) > 0
    for box, gt, cls, j, target in zip(out.proposal_boxes.tensor.tolist(), out.gt_boxes.tensor
                                       .tolist(), out.gt_classes.tolist(), out.iou_interval
                                       .tolist(), out.target_ious.tolist()):  # fmt: skip
        k = gts.index(gt)
        own = slow_iou(box, gt)
        assert slow_in_interval(own, *PAPER.intervals[j]), (own, j)
        assert all(slow_iou(box, other) <= own for other in gts)
        assert abs(target - own) < 1e-6 and cls == k  # the IoU target and the labels follow
    assert not out.from_gt.any()


def test_counts_per_interval_are_equal_when_candidates_suffice():
    # two separate boxes well inside a large image, 3000 candidates (with Eq. 1's ranges of the
    # official code about 3 % of the first interval's fall into it): M / N boxes per interval
    targets = _targets([[100.0, 100.0, 180.0, 160.0], [300.0, 200.0, 420.0, 330.0]], (480, 640))
    torch.manual_seed(1)
    plenty = GenerationSettings(PAPER.intervals, PAPER.center_shifts, PAPER.scale_ranges, 3000, 64,
                                3000)  # fmt: skip
    out = uniform_iou_samples(targets, plenty)
    counts = {}
    for k, j in zip(out.gt_classes.tolist(), out.iou_interval.tolist()):
        counts[(k, j)] = counts.get((k, j), 0) + 1
    assert counts == {(k, j): 16 for k in range(2) for j in range(4)}
    # with too few candidates (one round of 8), fewer (never more) per interval, not all equal
    few = GenerationSettings(PAPER.intervals, PAPER.center_shifts, PAPER.scale_ranges, 8, 64, 8)
    out = uniform_iou_samples(targets, few)
    per = [sum(1 for k, j in zip(out.gt_classes.tolist(), out.iou_interval.tolist())
               if (k, j) == key) for key in counts]  # fmt: skip
    assert max(per) <= 8 and len(set(per)) > 1


def _counts(samples, targets, num_intervals):
    """Samples per ground truth (told apart by its box) and interval."""
    gts = targets.gt_boxes.tensor.tolist()
    assert len({tuple(g) for g in gts}) == len(gts)
    counts = [[0] * num_intervals for _ in gts]
    for box, j in zip(samples.gt_boxes.tensor.tolist(), samples.iou_interval.tolist()):
        counts[gts.index(box)][j] += 1
    return counts


def test_every_stage_gets_exactly_m_over_n_per_interval_at_the_shipped_settings():
    """Sec. 3.1's uniform distribution at the shipped cascade settings (rounds of 500 candidates,
    at most 5000): every ground truth of a training batch and of three overlapping boxes gets
    exactly 16 / 16 / 20 boxes in each interval of stages 1 / 2 / 3. One round of 500 (the
    official code) leaves [0.9, 1.0] of stages 2 and 3 short."""
    cfg = cfg_of(CASCADE)
    iu = cfg.MODEL.IOU_UNIFORM
    assert (iu.NUM_CANDIDATES, iu.MAX_CANDIDATES) == (500, 5000)
    targets = [b["instances"] for b in train_batch(cfg)] + [_targets(CROWDED[:3])]
    assert sum(len(t) for t in targets) > 10
    stages = [(4, 16), (4, 16), (3, 20)]  # (N intervals, M / N)
    sampler = UniformIoUSampler(cfg)
    torch.manual_seed(0)
    for t, (n, m) in enumerate(stages):
        for target, samples in zip(targets, sampler(None, t, None, targets)):
            assert _counts(samples, target, n) == [[m] * n] * len(target), f"stage {t + 1}"
    one_round = UniformIoUSampler(cfg_of(CASCADE, "MODEL.IOU_UNIFORM.MAX_CANDIDATES", 500))
    torch.manual_seed(0)
    for t in (1, 2):
        n, m = stages[t]
        top = [c[-1] for target, samples in zip(targets, one_round(None, t, None, targets))
               for c in _counts(samples, target, n)]  # fmt: skip
        assert max(top) <= m and sum(top) < 0.75 * m * len(top), (t, top)


def test_rounds_equal_the_slow_per_pair_restatement(monkeypatch):
    """Rounds: the first draws for every (ground truth, interval) pair, each later one only for
    the pairs still short of M / N, 500 candidates per round and what is left of the 1200 in
    the last; each pair keeps the first M / N of all its candidates, in draw order, that pass
    the slow filter (clipped, in the interval, no other ground truth overlapping more)."""
    calls = []
    select = sampler_module.select_pairs

    def recording(candidates, pair_gt, pair_interval, *args):
        calls.append((candidates.tolist(), list(zip(pair_gt.tolist(), pair_interval.tolist()))))
        return select(candidates, pair_gt, pair_interval, *args)

    monkeypatch.setattr(sampler_module, "select_pairs", recording)
    stage2 = GenerationSettings(  # cascade stage 2, where [0.9, 1.0] needs more than one round
        intervals=((0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0)),
        center_shifts=(0.5, 0.3, 0.125, 0.125),
        scale_ranges=((0.6, 1.6), (0.7, 1.4), (0.8, 1.25), (0.9, 1.25)),
        num_candidates=500,
        samples_per_gt=64,
        max_candidates=1200,
    )
    targets = _targets(CROWDED[:3])
    out = uniform_iou_samples(targets, stage2, torch.Generator().manual_seed(4))
    gts = targets.gt_boxes.tensor.tolist()
    kept = {(k, j): [] for k in range(len(gts)) for j in range(4)}
    filled_late = False
    for r, (candidates, pairs) in enumerate(calls):
        assert pairs == [key for key, boxes in kept.items() if len(boxes) < 16], f"round {r + 1}"
        for (k, j), per_pair in zip(pairs, candidates):
            assert len(per_pair) == (500, 500, 200)[r]
            for box in per_pair:
                box = slow_clip(box, targets.image_size)
                if box[2] <= box[0] or box[3] <= box[1] or len(kept[(k, j)]) == 16:
                    continue
                own = slow_iou(box, gts[k])
                if slow_in_interval(own, *stage2.intervals[j]) and all(
                    slow_iou(box, g) <= own for g in gts
                ):
                    kept[(k, j)].append(box)
            filled_late |= r > 0 and len(kept[(k, j)]) == 16
    assert len(calls) == 3 and filled_late
    assert any(len(boxes) < 16 for boxes in kept.values())  # 1200 candidates were not enough
    want = [(box, k, j) for (k, j), boxes in kept.items() for box in boxes]
    assert out.iou_interval.tolist() == [j for _, _, j in want]
    assert out.gt_boxes.tensor.tolist() == [gts[k] for _, k, _ in want]
    got = out.proposal_boxes.tensor
    assert torch.allclose(got, torch.tensor([b for b, _, _ in want], dtype=got.dtype))


def test_candidates_follow_equation_1_ranges():
    gt = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 30.0, 10.0]], dtype=torch.float64)
    cands = jitter_candidates(gt, PAPER.center_shifts, PAPER.scale_ranges, 200,
                              torch.Generator().manual_seed(5))  # fmt: skip
    assert cands.shape == (2, 4, 200, 4)
    spread = [[0.0, 0.0] for _ in range(4)]
    for k, (x1, y1, x2, y2) in enumerate(gt.tolist()):
        w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
        for j in range(4):
            s, (a, b) = PAPER.center_shifts[j], PAPER.scale_ranges[j]
            for c1, c2, c3, c4 in cands[k, j].tolist():
                dx, dy = ((c1 + c3) / 2 - cx) / w, ((c2 + c4) / 2 - cy) / h
                rw, rh = (c3 - c1) / w, (c4 - c2) / h
                assert abs(dx) <= s + 1e-9 and abs(dy) <= s + 1e-9
                assert a - 1e-9 <= rw <= b + 1e-9 and a - 1e-9 <= rh <= b + 1e-9
                spread[j][0] = max(spread[j][0], abs(dx))
                spread[j][1] = max(spread[j][1], abs(rw - rh))
    # the draws fill the ranges, and width and height are scaled independently
    assert all(m[0] > 0.8 * s for m, s in zip(spread, PAPER.center_shifts))
    assert all(m[1] > 0 for m in spread)


def test_images_without_ground_truth_generate_nothing():
    sampler = UniformIoUSampler()
    empty = _targets([], (100, 120))
    full = _targets([[10.0, 10.0, 60.0, 70.0]], (100, 120))
    out = sampler(None, 0, None, [empty, full, empty])
    assert [len(o) for o in out][0] == 0 and len(out[2]) == 0 and len(out[1]) > 0
    for o in (out[0], out[2]):
        assert o.proposal_boxes.tensor.shape == (0, 4) and o.gt_boxes.tensor.shape == (0, 4)
        assert o.target_ious.shape == (0,) and o.iou_interval.shape == (0,)


def test_deterministic_under_a_seed():
    targets = _targets(CROWDED)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(uniform_iou_samples(targets, PAPER).proposal_boxes.tensor)
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape != runs[2].shape or not torch.equal(runs[0], runs[2])
    a = uniform_iou_samples(targets, PAPER, torch.Generator().manual_seed(2))
    b = uniform_iou_samples(targets, PAPER, torch.Generator().manual_seed(2))
    assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)


@pytest.mark.parametrize("total", [0, 5, 23, 40, 10_000])
def test_resampling_is_even_over_the_intervals(total):
    # intervals holding 3, 20, 1 and 30 samples
    sizes = [3, 20, 1, 30]
    samples = Instances((10, 10), proposal_boxes=Boxes(torch.rand(sum(sizes), 4)))
    samples.iou_interval = torch.tensor([j for j, n in enumerate(sizes) for _ in range(n)])
    out = resample_evenly(samples, total, torch.Generator().manual_seed(0))
    assert len(out) == min(total, sum(sizes))
    got = [int((out.iou_interval == j).sum()) for j in range(4)]
    # slow: deal one per interval and round, while any is left
    want, left = [0] * 4, total
    while left > 0 and any(w < n for w, n in zip(want, sizes)):
        for j in range(4):
            if left > 0 and want[j] < sizes[j]:
                want[j] += 1
                left -= 1
    assert got == want
    rows = {tuple(r) for r in samples.proposal_boxes.tensor.tolist()}
    assert {tuple(r) for r in out.proposal_boxes.tensor.tolist()} <= rows


def test_the_sampler_is_registered_and_reads_the_config():
    from helpers.core import cfg_of
    from helpers.iu import CASCADE

    assert STAGE_SAMPLER_REGISTRY.get("UniformIoUSampler") is UniformIoUSampler
    sampler = build_stage_sampler("UniformIoUSampler", cfg_of(CASCADE))
    assert [len(s.intervals) for s in sampler.settings] == [4, 4, 3]
    assert sampler.stage_settings(2).intervals[0] == (0.7, 0.8)
    assert [s.per_interval for s in sampler.settings] == [16, 16, 20]
