"""Training boxes generated around the ground truth with a uniform IoU distribution (Sec. 3.1,
Eq. 1), as a stage sampler registered in the box-cascade core's ``STAGE_SAMPLER_REGISTRY``.

For each ground-truth box b = (x, y, w, h) (centre, size) and each IoU interval j, C candidates

    x' = x + w * U(-s_j, s_j),   y' = y + h * U(-s_j, s_j),
    w' = w * U(a_j, c_j),        h' = h * U(a_j, c_j)

are drawn (all draws independent), clipped to the image, and kept if their IoU with b lies in
interval j and no other ground truth overlaps them more; the first M / N of them (in draw order,
so a uniformly random subset) are the samples of (b, j). All ground truths and intervals of an
image are drawn and filtered in one batch of tensor operations.

Shapes: K ground truths, N intervals, C candidates per (ground truth, interval), S samples.
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
    "generation_settings_from_cfg",
    "in_interval",
    "jitter_candidates",
    "per_stage_values",
    "resample_evenly",
    "select_uniform",
    "uniform_iou_samples",
]

_KEY = "MODEL.IOU_UNIFORM."


@dataclass(frozen=True)
class GenerationSettings:
    """One stage's generation settings (see config.py): ``intervals`` (N, 2) as (low, high),
    ``center_shifts`` (N,), ``scale_ranges`` (N, 2), ``num_candidates`` C, ``samples_per_gt`` M
    (M / N kept per interval). Checked when made; errors name the config key."""

    intervals: Tuple[Tuple[float, float], ...]
    center_shifts: Tuple[float, ...]
    scale_ranges: Tuple[Tuple[float, float], ...]
    num_candidates: int = 500
    samples_per_gt: int = 64

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
        )
        for intervals, shifts, scales, m in rows
    ]


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
    u = torch.rand((k, n, num_candidates, 4), generator=generator, device=device, dtype=dtype)
    shift = torch.as_tensor(center_shifts, device=device, dtype=dtype)[None, :, None, None]
    scales = torch.as_tensor(scale_ranges, device=device, dtype=dtype)  # (N, 2)
    low, high = scales[None, :, None, 0:1], scales[None, :, None, 1:2]
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2])[:, None, None, :]  # (K, 1, 1, 2)
    centre = ((gt_boxes[:, 2:] + gt_boxes[:, :2]) / 2)[:, None, None, :]
    centre = centre + wh * (2 * u[..., :2] - 1) * shift
    size = wh * (low + u[..., 2:] * (high - low))
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def in_interval(ious: torch.Tensor, low, high) -> torch.Tensor:
    """IoU in [low, high); an interval ending at 1 also holds IoU 1."""
    return (ious >= low) & ((ious < high) | (high >= 1.0))


def select_uniform(
    candidates: torch.Tensor,
    gt_boxes: torch.Tensor,
    image_size: Tuple[int, int],
    intervals: Sequence[Sequence[float]],
    per_interval: int,
):
    """Clip (K, N, C, 4) candidates to the (height, width) image and keep, for each ground truth
    k and interval j, the first ``per_interval`` candidates whose IoU with ground truth k lies
    in interval j and whose highest IoU with any ground truth is the one with k (ties kept).

    Returns (boxes (S, 4), gt_index (S,), interval (S,), iou (S,)), ordered by ground truth,
    interval and draw."""
    k, n, c, _ = candidates.shape
    device = candidates.device
    boxes = Boxes(candidates.reshape(-1, 4).clone())
    boxes.clip(image_size)
    flat = boxes.tensor
    gt_index = torch.arange(k, device=device).repeat_interleave(n * c)
    interval = torch.arange(n, device=device).repeat_interleave(c).repeat(k)
    gt = Boxes(gt_boxes)
    own = matched_pairwise_iou(boxes, gt[gt_index])
    bounds = torch.as_tensor(intervals, device=device, dtype=own.dtype)
    valid = in_interval(own, bounds[interval, 0], bounds[interval, 1]) & boxes.nonempty()
    # the highest-IoU ground truth, only for the candidates in their interval
    rows = valid.nonzero().squeeze(1)
    if len(rows):
        best = pairwise_iou(Boxes(flat[rows]), gt).max(dim=1).values
        valid[rows] = own[rows] >= best
    valid = valid.view(k, n, c)
    keep = valid & (valid.cumsum(dim=-1) <= per_interval)
    keep = keep.view(-1)
    return flat[keep], gt_index[keep], interval[keep], own[keep]


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
        candidates = jitter_candidates(
            gt_boxes, settings.center_shifts, settings.scale_ranges, settings.num_candidates,
            generator,
        )  # fmt: skip
        boxes, gt_index, interval, ious = select_uniform(
            candidates, gt_boxes, targets.image_size, settings.intervals, settings.per_interval
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
