"""Speed and memory of a config: train s/iter, inference ms/image, peak memory, parameters.

Measured on real batches of the config's datasets, loaded once before timing so that data
loading is not measured. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU and the
process's peak resident set size on a CPU (run one config per process to attribute it).
"""

import itertools
import platform
import resource
import statistics
import time
from typing import Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from .analysis.cost import flop_breakdown, parameter_breakdown
from .data import prepare_shapes
from .engine import ZooTrainer


def machine_description() -> str:
    """One line naming the CPU (or GPU), core count and software versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import detectron2

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, {device}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, detectron2 "
        f"{detectron2.__version__}"
    )


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    cfg, *, train_iters: int = 10, warmup: int = 3, infer_images: int = 20, flops: bool = True
) -> Dict:
    """Time training steps and inference of ``cfg``'s model on its own datasets.

    Returns a dict: params (total, trainable), params_by_group, gflops and gflops_by_group
    (fvcore, on the first test image, if ``flops``), train_s_per_iter and infer_ms_per_image
    (medians over the timed steps), peak_memory_mb and peak_memory_kind ("cuda" or "cpu_rss").
    """
    torch.manual_seed(0)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        prepare_shapes(name)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    device = next(model.parameters()).device
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {"params": params, "trainable_params": trainable}
    result["params_by_group"] = parameter_breakdown(model)
    test_inputs = list(
        itertools.islice(
            build_detection_test_loader(cfg, cfg.DATASETS.TEST[0]),
            min(infer_images + warmup, len(DatasetCatalog.get(cfg.DATASETS.TEST[0]))),
        )
    )
    if flops:
        total, groups = flop_breakdown(model, test_inputs[0][0]["image"].to(device))
        result["gflops"] = total / 1e9
        result["gflops_by_group"] = {k: v / 1e9 for k, v in groups.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    if train_iters > 0:
        loader = ZooTrainer.build_train_loader(cfg)
        batches = list(itertools.islice(loader, warmup + train_iters))
        optimizer = build_optimizer(cfg, model)
        model.train()
        times = []
        with EventStorage(0):
            for batch in batches:
                _sync(device)
                start = time.perf_counter()
                losses = sum(model(batch).values())
                optimizer.zero_grad()
                losses.backward()
                optimizer.step()
                _sync(device)
                times.append(time.perf_counter() - start)
        result["train_s_per_iter"] = statistics.median(times[warmup:])

    if infer_images > 0:
        model.eval()
        times = []
        with torch.no_grad():
            for batch in test_inputs:
                _sync(device)
                start = time.perf_counter()
                model(batch)
                _sync(device)
                times.append(time.perf_counter() - start)
        result["infer_ms_per_image"] = 1000 * statistics.median(times[warmup:] or times)

    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_memory_kind"] = "cuda"
    else:
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_memory_kind"] = "cpu_rss"
    return result
