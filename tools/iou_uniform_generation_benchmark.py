"""Time IoU-Uniform R-CNN's sample generator (projects/iou_uniform/sampler.py) on one image with
a given number of ground-truth boxes: the paper's settings (4 intervals, 500 candidates each, 64
samples kept per ground truth). Prints the median and the spread over the repeats, with the
machine's description.

    OMP_NUM_THREADS=1 python tools/iou_uniform_generation_benchmark.py --num-gt 100
"""

import argparse
import statistics
import time

import torch
from detectron2.structures import Boxes, Instances

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-gt", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    targets = random_targets(args.num_gt, tuple(args.image_size), g, device)
    sampler = UniformIoUSampler()  # the paper's settings
    torch.manual_seed(0)
    times, counts = [], []
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = sampler(None, 0, None, [targets])[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append((time.perf_counter() - start) * 1000)
            counts.append(len(out))
    s = sampler.settings[0]
    print(f"machine: {machine_description()}")
    print(
        f"generator: {args.num_gt} ground truths, image {args.image_size[0]}x{args.image_size[1]}, "
        f"{len(s.intervals)} intervals x {s.num_candidates} candidates, {s.samples_per_gt} kept "
        f"per ground truth, device {args.device}"
    )
    print(
        f"median {statistics.median(times):.1f} ms over {args.repeats} repeats "
        f"(min {min(times):.1f}, max {max(times):.1f}); "
        f"{statistics.mean(counts):.0f} samples per call (at most {args.num_gt * s.samples_per_gt})"
    )


if __name__ == "__main__":
    main()
