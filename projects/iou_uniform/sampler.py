"""Training boxes generated around the ground truth with a uniform IoU distribution (Sec. 3.1,
Eq. 1), as a stage sampler registered in the box-cascade core's ``STAGE_SAMPLER_REGISTRY``.

For each ground-truth box b = (x, y, w, h) (centre, size) and each IoU interval j, C candidates

    x' = x + w * U(-s_j, s_j),   y' = y + h * U(-s_j, s_j),
    w' = w * U(a_j, c_j),        h' = h * U(a_j, c_j)

are drawn (all draws independent), clipped to the image, and kept if their IoU with b lies in
interval j and no other ground truth overlaps them more; the first M / N of them (in draw order,
so a uniformly random subset) are the samples of (b, j). The pairs (b, j) left with fewer than
M / N get further rounds of C candidates, until they have M / N or ``max_candidates`` were drawn
for them (Sec. 3.1: "M samples for each IoU interval ... a totally uniform IoU distribution").
All pairs of an image are drawn and filtered in one batch of tensor operations per round.

Shapes: K ground truths, N intervals, P (ground truth, interval) pairs, C candidates per pair and
round, S samples.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou

from box_cascade import STAGE_SAMPLER_REGISTRY, StageSampler

__all__ = [
    "GenerationSettings",
    "UniformIoUSampler",
    "generate_in_rounds",
    "generation_settings_from_cfg",
    "in_interval",
    "jitter_candidates",
    "jitter_pairs",
    "per_stage_values",
    "resample_evenly",
    "select_pairs",
    "select_uniform",
    "uniform_iou_samples",
]

_KEY = "MODEL.IOU_UNIFORM."


@dataclass(frozen=True)
class GenerationSettings:
    """One stage's generation settings (see config.py): ``intervals`` (N, 2) as (low, high),
    ``center_shifts`` (N,), ``scale_ranges`` (N, 2), ``num_candidates`` C (per round),
    ``samples_per_gt`` M (M / N kept per interval), ``max_candidates`` (drawn at most per
    ground truth and interval; C: one round). Checked when made; errors name the config key."""

    intervals: Tuple[Tuple[float, float], ...]
    center_shifts: Tuple[float, ...]
    scale_ranges: Tuple[Tuple[float, float], ...]
    num_candidates: int = 500
    samples_per_gt: int = 64
    max_candidates: int = 5000

    def __post_init__(self):
        n = len(self.intervals)
        if n == 0 or any(len(iv) != 2 for iv in self.intervals):
            raise ValueError(f"{_KEY}INTERVALS: a stage needs (low, high) pairs, got "
                             f"{self.intervals}")  # fmt: skip
        for j, (low, high) in enumerate(self.intervals):
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(
                    f"{_KEY}INTERVALS: interval {j + 1} {(low, high)} must satisfy "
                    f"0 <= low < high <= 1: {self.intervals}"
                )
            if j and low < self.intervals[j - 1][1]:
                raise ValueError(
                    f"{_KEY}INTERVALS must be increasing and must not overlap: interval {j + 1} "
                    f"starts at {low}, before interval {j} ends: {self.intervals}"
                )
        for key, values in (("CENTER_SHIFTS", self.center_shifts),
                            ("SCALE_RANGES", self.scale_ranges)):  # fmt: skip
            if len(values) != n:
                raise ValueError(
                    f"{_KEY}{key} has {len(values)} entries for a stage with {n} intervals "
                    f"({_KEY}INTERVALS): {values}"
                )
        if any(s < 0 for s in self.center_shifts):
            raise ValueError(f"{_KEY}CENTER_SHIFTS must be >= 0: {self.center_shifts}")
        if any(len(r) != 2 or not 0 < r[0] <= r[1] for r in self.scale_ranges):
            raise ValueError(
                f"{_KEY}SCALE_RANGES must be (low, high) pairs with 0 < low <= high: "
                f"{self.scale_ranges}"
            )
        if self.num_candidates < 1:
            raise ValueError(f"{_KEY}NUM_CANDIDATES must be >= 1, got {self.num_candidates}")
        if self.max_candidates < self.num_candidates:
            raise ValueError(
                f"{_KEY}MAX_CANDIDATES ({self.max_candidates}) must be >= {_KEY}NUM_CANDIDATES "
                f"({self.num_candidates}), the candidates of the first round"
            )
        if self.samples_per_gt < n or self.samples_per_gt % n:
            raise ValueError(
                f"{_KEY}SAMPLES_PER_GT ({self.samples_per_gt}) must be a positive multiple of the "
                f"number of intervals ({n}), M / N samples being kept per interval"
            )

    @property
    def per_interval(self) -> int:
        return self.samples_per_gt // len(self.intervals)


def per_stage_values(cfg, key: str, num_stages: int) -> list:
    """``MODEL.IOU_UNIFORM.<key>`` as a list with one entry per stage (else an error naming it)."""
    values = list(cfg.MODEL.IOU_UNIFORM.get(key))
    if len(values) != num_stages:
        raise ValueError(
            f"{_KEY}{key} has {len(values)} entries but there are {num_stages} stages "
            f"(MODEL.ROI_BOX_CASCADE_HEAD.IOUS): {values}"
        )
    return values


def generation_settings_from_cfg(cfg) -> List[GenerationSettings]:
    """One :class:`GenerationSettings` per stage of ``cfg`` (errors name the key)."""
    n = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    iu = cfg.MODEL.IOU_UNIFORM
    rows = zip(*(per_stage_values(cfg, k, n) for k in ("INTERVALS", "CENTER_SHIFTS", "SCALE_RANGES",
                                                  "SAMPLES_PER_GT")))  # fmt: skip
    return [
        GenerationSettings(
            intervals=tuple(tuple(float(v) for v in iv) for iv in intervals),
            center_shifts=tuple(float(s) for s in shifts),
            scale_ranges=tuple(tuple(float(v) for v in r) for r in scales),
            num_candidates=int(iu.NUM_CANDIDATES),
            samples_per_gt=int(m),
            max_candidates=int(iu.MAX_CANDIDATES),
        )
        for intervals, shifts, scales, m in rows
    ]


def jitter_pairs(
    gt_boxes: torch.Tensor,
    center_shifts: torch.Tensor,
    scale_ranges: torch.Tensor,
    num_candidates: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Eq. 1 for P (ground truth, interval) pairs: their ground truths (P, 4) XYXY, centre shifts
    (P,) and scale ranges (P, 2) -> (P, C, 4) XYXY candidates (not clipped). Random numbers come
    from ``generator`` (default: torch's RNG of the boxes' device)."""
    device, dtype = gt_boxes.device, gt_boxes.dtype
    u = torch.rand((len(gt_boxes), num_candidates, 4), generator=generator, device=device,
                   dtype=dtype)  # fmt: skip
    shift = center_shifts[:, None, None]
    low, high = scale_ranges[:, None, 0:1], scale_ranges[:, None, 1:2]
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2])[:, None, :]  # (P, 1, 2)
    centre = ((gt_boxes[:, 2:] + gt_boxes[:, :2]) / 2)[:, None, :]
    centre = centre + wh * (2 * u[..., :2] - 1) * shift
    size = wh * (low + u[..., 2:] * (high - low))
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def jitter_candidates(
    gt_boxes: torch.Tensor,
    center_shifts: Sequence[float],
    scale_ranges: Sequence[Sequence[float]],
    num_candidates: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Eq. 1 for every ground truth and interval at once: (K, 4) XYXY boxes -> (K, N, C, 4) XYXY
    candidates (not clipped). Random numbers come from ``generator`` (default: torch's RNG of
    the boxes' device)."""
    k, n = len(gt_boxes), len(center_shifts)
    device, dtype = gt_boxes.device, gt_boxes.dtype
    shifts = torch.as_tensor(center_shifts, device=device, dtype=dtype).repeat(k)
    scales = torch.as_tensor(scale_ranges, device=device, dtype=dtype).repeat(k, 1)
    out = jitter_pairs(gt_boxes.repeat_interleave(n, dim=0), shifts, scales, num_candidates,
                       generator)  # fmt: skip
    return out.view(k, n, num_candidates, 4)


def in_interval(ious: torch.Tensor, low, high) -> torch.Tensor:
    """IoU in [low, high); an interval ending at 1 also holds IoU 1."""
    return (ious >= low) & ((ious < high) | (high >= 1.0))


def select_pairs(
    candidates: torch.Tensor,
    pair_gt: torch.Tensor,
    pair_interval: torch.Tensor,
    quota: torch.Tensor,
    gt_boxes: torch.Tensor,
    image_size: Tuple[int, int],
    intervals: Sequence[Sequence[float]],
):
    """Clip the (P, C, 4) candidates of P pairs to the (height, width) image and keep, for pair p
    (ground truth ``pair_gt[p]``, interval ``pair_interval[p]``), the first ``quota[p]``
    candidates whose IoU with the ground truth lies in the interval and whose highest IoU with
    any of ``gt_boxes`` (K, 4) is the one with it (ties kept).

    Returns (boxes (S, 4), gt_index (S,), interval (S,), iou (S,), kept (P,) per pair), ordered
    by pair and draw."""
    p, c, _ = candidates.shape
    boxes = Boxes(candidates.reshape(-1, 4).clone())
    boxes.clip(image_size)
    flat = boxes.tensor
    gt_index = pair_gt.repeat_interleave(c)
    interval = pair_interval.repeat_interleave(c)
    gt = Boxes(gt_boxes)
    own = matched_pairwise_iou(boxes, gt[gt_index])
    bounds = torch.as_tensor(intervals, device=flat.device, dtype=own.dtype)
    valid = in_interval(own, bounds[interval, 0], bounds[interval, 1]) & boxes.nonempty()
    # the highest-IoU ground truth, only for the candidates in their interval
    rows = valid.nonzero().squeeze(1)
    if len(rows):
        best = pairwise_iou(Boxes(flat[rows]), gt).max(dim=1).values
        valid[rows] = own[rows] >= best
    valid = valid.view(p, c)
    keep = valid & (valid.cumsum(dim=-1) <= quota[:, None])
    kept = keep.sum(dim=1)
    keep = keep.view(-1)
    return flat[keep], gt_index[keep], interval[keep], own[keep], kept


def select_uniform(
    candidates: torch.Tensor,
    gt_boxes: torch.Tensor,
    image_size: Tuple[int, int],
    intervals: Sequence[Sequence[float]],
    per_interval: int,
):
    """:func:`select_pairs` for every ground truth k and interval j of (K, N, C, 4) candidates,
    ``per_interval`` kept at most per (k, j).

    Returns (boxes (S, 4), gt_index (S,), interval (S,), iou (S,)), ordered by ground truth,
    interval and draw."""
    k, n, c, _ = candidates.shape
    device = candidates.device
    pair_gt = torch.arange(k, device=device).repeat_interleave(n)
    pair_interval = torch.arange(n, device=device).repeat(k)
    quota = torch.full((k * n,), per_interval, device=device, dtype=torch.long)
    out = select_pairs(candidates.reshape(k * n, c, 4), pair_gt, pair_interval, quota, gt_boxes,
                       image_size, intervals)  # fmt: skip
    return out[:4]


def generate_in_rounds(
    gt_boxes: torch.Tensor,
    image_size: Tuple[int, int],
    settings: GenerationSettings,
    generator: Optional[torch.Generator] = None,
):
    """Candidates for every pair of the (K, 4) ground truths and the settings' intervals, in
    rounds of ``num_candidates`` for the pairs still short of M / N, until none is or
    ``max_candidates`` were drawn per pair (the first round alone when they are equal).

    Returns (boxes (S, 4), gt_index (S,), interval (S,), iou (S,)), ordered by ground truth,
    interval and draw."""
    k, n = len(gt_boxes), len(settings.intervals)
    device, dtype = gt_boxes.device, gt_boxes.dtype
    shifts = torch.as_tensor(settings.center_shifts, device=device, dtype=dtype)
    scales = torch.as_tensor(settings.scale_ranges, device=device, dtype=dtype)
    pair_gt = torch.arange(k, device=device).repeat_interleave(n)
    pair_interval = torch.arange(n, device=device).repeat(k)
    quota = torch.full((k * n,), settings.per_interval, device=device, dtype=torch.long)
    pieces, drawn = [], 0
    while len(pair_gt) and drawn < settings.max_candidates:
        c = min(settings.num_candidates, settings.max_candidates - drawn)
        candidates = jitter_pairs(gt_boxes[pair_gt], shifts[pair_interval], scales[pair_interval],
                                  c, generator)  # fmt: skip
        *piece, kept = select_pairs(candidates, pair_gt, pair_interval, quota, gt_boxes,
                                    image_size, settings.intervals)  # fmt: skip
        pieces.append(piece)
        drawn += c
        quota = quota - kept
        short = quota > 0
        pair_gt, pair_interval, quota = pair_gt[short], pair_interval[short], quota[short]
    boxes, gt_index, interval, ious = (torch.cat(x) for x in zip(*pieces))
    if len(pieces) == 1:
        return boxes, gt_index, interval, ious
    order = torch.sort(gt_index * n + interval, stable=True).indices  # rounds in draw order
    return boxes[order], gt_index[order], interval[order], ious[order]


def uniform_iou_samples(
    targets: Instances, settings: GenerationSettings, generator: Optional[torch.Generator] = None
) -> Instances:
    """The generated samples of one image: ``proposal_boxes``, the ``gt_classes`` / ``gt_boxes``
    (and every other ``gt_*`` field) of the ground truth each was drawn around, ``from_gt``
    (False), ``target_ious`` (its IoU with that ground truth, the IoU branch's target) and
    ``iou_interval`` (0-based). An image without ground truth gives none."""
    gt_boxes = targets.gt_boxes.tensor
    device = gt_boxes.device
    if len(targets) == 0:
        boxes = gt_boxes.new_zeros((0, 4))
        gt_index = interval = torch.zeros(0, dtype=torch.long, device=device)
        ious = gt_boxes.new_zeros(0)
    else:
        boxes, gt_index, interval, ious = generate_in_rounds(
            gt_boxes, targets.image_size, settings, generator
        )
    out = Instances(targets.image_size, proposal_boxes=Boxes(boxes))
    for name, value in targets.get_fields().items():
        if name.startswith("gt_"):
            out.set(name, value[gt_index])
    if not out.has("gt_classes"):
        out.gt_classes = torch.zeros(len(boxes), dtype=torch.long, device=device)
    out.from_gt = torch.zeros(len(boxes), dtype=torch.bool, device=device)
    out.target_ious = ious
    out.iou_interval = interval
    return out


def resample_evenly(
    samples: Instances, total: int, generator: Optional[torch.Generator] = None
) -> Instances:
    """``total`` of ``samples`` (all if fewer) drawn evenly over their intervals (Table 5): in
    rounds, one random sample of each interval that has one left, intervals in order."""
    if total >= len(samples):
        return samples
    interval = samples.iou_interval
    key = interval.to(torch.float64) + torch.rand(
        len(samples), generator=generator, device=interval.device, dtype=torch.float64
    )
    order = key.argsort()  # by interval, at random within one
    grouped = interval[order]
    starts = torch.searchsorted(grouped, grouped, right=False)
    rank = torch.arange(len(order), device=order.device) - starts
    num_intervals = int(interval.max()) + 1
    pick = order[(rank * num_intervals + grouped).argsort()[:total]]
    return samples[pick.sort().values]


@STAGE_SAMPLER_REGISTRY.register()
class UniformIoUSampler(StageSampler):
    """IoU-Uniform R-CNN's generated training boxes (see module doc), built as ``cls(cfg)`` from
    ``MODEL.IOU_UNIFORM`` (``cfg`` None: the paper's one-stage settings) or from explicit
    per-stage ``settings``; a stage beyond the given ones uses the last. Random numbers come
    from ``generator`` (default: torch's RNG, which the trainer seeds and checkpoints)."""

    def __init__(
        self,
        cfg=None,
        *,
        settings: Optional[Sequence[GenerationSettings]] = None,
        generator: Optional[torch.Generator] = None,
    ):
        if settings is None:
            if cfg is None:
                from detectron2.config import get_cfg

                from .config import add_iou_uniform_config

                cfg = get_cfg()
                add_iou_uniform_config(cfg)
                cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5,)  # one stage
            settings = generation_settings_from_cfg(cfg)
        self.settings = list(settings)
        self.generator = generator

    def stage_settings(self, stage: int) -> GenerationSettings:
        return self.settings[min(stage, len(self.settings) - 1)]

    def __call__(self, heads, stage, proposals, targets) -> List[Instances]:
        settings = self.stage_settings(stage)
        return [uniform_iou_samples(t, settings, self.generator) for t in targets]


def sample_count(num_positives: int, factor: float) -> int:
    """Table 5's number of generated samples for an image with ``num_positives`` sampled
    positives."""
    return int(math.floor(factor * num_positives + 0.5))
