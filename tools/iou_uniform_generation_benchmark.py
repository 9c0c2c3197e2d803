"""Time IoU-Uniform R-CNN's sample generator (projects/iou_uniform/sampler.py) on one image with
a given number of ground-truth boxes, per stage of a config (default: the paper's one-stage
settings: 4 intervals, rounds of 500 candidates, 64 samples kept per ground truth). Prints, per
stage, the median time and the spread over the repeats, the samples per call, the mean count per
interval and how many (ground truth, interval) pairs got fewer than M / N, with the machine's
description. ``--max-candidates`` times several MODEL.IOU_UNIFORM.MAX_CANDIDATES in one process,
their calls interleaved, so that the machine's load weighs on all of them alike.

    OMP_NUM_THREADS=1 python tools/iou_uniform_generation_benchmark.py --num-gt 100
    OMP_NUM_THREADS=1 python tools/iou_uniform_generation_benchmark.py --num-gt 100 \\
        --config-file configs/IoUUniform/iou_uniform_cascade_rcnn_R_50_FPN_1x.yaml \\
        --max-candidates 500 5000
"""

import argparse
import statistics
import time

import torch
from detectron2.structures import Boxes, Instances

from cascade_zoo import setup_cfg
from cascade_zoo.benchmark import machine_description
from iou_uniform import UniformIoUSampler


def random_targets(num_gt: int, image_size, generator: torch.Generator, device) -> Instances:
    """``num_gt`` boxes with sides of 16..400 px at random places of an image (h, w)."""
    h, w = image_size
    size = 16 + torch.rand(num_gt, 2, generator=generator) * 384
    corner = torch.rand(num_gt, 2, generator=generator) * (torch.tensor([w, h]) - size).clamp(min=1)
    boxes = torch.cat([corner, corner + size], dim=1)
    t = Instances(image_size, gt_boxes=Boxes(boxes.to(device)))
    t.gt_classes = torch.randint(0, 80, (num_gt,), generator=generator).to(device)
    return t


def build_sampler(config_file: str, opts) -> UniformIoUSampler:
    if config_file:
        return UniformIoUSampler(setup_cfg(config_file, opts))
    # the paper's one stage (UniformIoUSampler()'s settings), with the overrides
    cfg = setup_cfg("", ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5,)", *opts])
    return UniformIoUSampler(cfg)


def timed_call(sampler, stage, targets):
    """(ms, samples) of one call."""
    cuda = targets.gt_boxes.tensor.is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = sampler(None, stage, None, [targets])[0]
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000, out


def interval_counts(samples, targets, num_intervals) -> torch.Tensor:
    """(K, N) samples per ground truth (told apart by its box) and interval."""
    index = {tuple(b): k for k, b in enumerate(targets.gt_boxes.tensor.tolist())}
    counts = torch.zeros(len(targets), num_intervals, dtype=torch.long)
    for b, j in zip(samples.gt_boxes.tensor.tolist(), samples.iou_interval.tolist()):
        counts[index[tuple(b)], j] += 1
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-gt", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config-file", default="", help="default: the paper's one stage")
    parser.add_argument("--stage", type=int, default=0, help="1-based; 0: every stage")
    parser.add_argument("--max-candidates", type=int, nargs="*", default=[],
                        help="MODEL.IOU_UNIFORM.MAX_CANDIDATES values, timed interleaved "
                        "(default: the config's)")  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    targets = random_targets(args.num_gt, tuple(args.image_size), g, device)
    variants = {
        f"MAX_CANDIDATES {m}": build_sampler(
            args.config_file, [*args.opts, "MODEL.IOU_UNIFORM.MAX_CANDIDATES", str(m)]
        )
        for m in args.max_candidates
    } or {"as configured": build_sampler(args.config_file, args.opts)}
    first = next(iter(variants.values()))
    stages = [args.stage - 1] if args.stage else list(range(len(first.settings)))
    print(f"machine: {machine_description()}")
    print(
        f"generator: {args.num_gt} ground truths, image {args.image_size[0]}x{args.image_size[1]}, "
        f"device {args.device}, config {args.config_file or 'the paper (one stage)'} "
        f"{' '.join(args.opts)}; {args.repeats} repeats after {args.warmup}, interleaved"
    )
    totals = {name: 0.0 for name in variants}
    for stage in stages:
        times = {name: [] for name in variants}
        last = {}
        torch.manual_seed(0)
        for i in range(args.warmup + args.repeats):
            for name, sampler in variants.items():
                ms, last[name] = timed_call(sampler, stage, targets)
                if i >= args.warmup:
                    times[name].append(ms)
        for name, sampler in variants.items():
            s = sampler.stage_settings(stage)
            counts = interval_counts(last[name], targets, len(s.intervals))
            median = statistics.median(times[name])
            totals[name] += median
            per = ", ".join(f"{float(c):.1f}" for c in counts.float().mean(dim=0))
            print(
                f"stage {stage + 1}, {name}: {len(s.intervals)} intervals, rounds of "
                f"{s.num_candidates} up to {s.max_candidates} candidates, {s.samples_per_gt} kept "
                f"per ground truth: median {median:.1f} ms (min {min(times[name]):.1f}, max "
                f"{max(times[name]):.1f}); {len(last[name])} samples (of "
                f"{args.num_gt * s.samples_per_gt}), per interval {per} (of {s.per_interval}); "
                f"{int((counts < s.per_interval).sum())} of {counts.numel()} pairs short"
            )
    if len(stages) > 1 or len(variants) > 1:
        base = next(iter(totals.values()))
        print("sum of the stages' medians: " + "; ".join(
            f"{name} {t:.1f} ms ({t / base:.2f} x)" for name, t in totals.items()))  # fmt: skip


if __name__ == "__main__":
    main()
