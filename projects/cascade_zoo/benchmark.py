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
from typing import Dict, List

import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.utils.events import EventStorage

from .analysis.cost import flop_breakdown, parameter_breakdown
from .data import prepare_shapes
from .engine import ZooTrainer
from .engine.checkpoint import build_checkpointer


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


def _sync(model):
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


#: "wall": elapsed seconds; "cpu": CPU seconds of this process, all its threads together (on a
#: machine shared with other work, the cost of the measured code itself).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _train_step(model, optimizer, batch, clock=time.perf_counter) -> float:
    """Seconds of one training step (forward, backward, SGD step) by ``clock``."""
    model.train()
    _sync(model)
    start = clock()
    losses = sum(model(batch).values())
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    _sync(model)
    return clock() - start


@torch.no_grad()
def _inference(model, batch, clock=time.perf_counter) -> float:
    """Seconds of one inference by ``clock``."""
    model.eval()
    _sync(model)
    start = clock()
    model(batch)
    _sync(model)
    return clock() - start


def measure_interleaved(
    cfgs,
    *,
    train_iters: int = 10,
    warmup: int = 3,
    infer_images: int = 20,
    clock: str = "wall",
    own_weights: bool = False,
) -> List[Dict]:
    """Time several configs in one process on the same inputs, taking turns at every step (the
    order rotating), so that the machine's drift and process-to-process noise hit all alike.
    Inputs come from the first config's datasets; models start from the first model's weights
    where parameter names and shapes agree, or with ``own_weights`` each from its config's
    MODEL.WEIGHTS (e.g. trained models: how many boxes pass the score threshold, and so the cost
    of what follows it, depends on the weights). Inference is timed before the training steps,
    on the models as loaded. Returns, per config, train_s_per_iter and infer_ms_per_image
    (medians, by ``clock``, a key of CLOCKS)."""
    tick = CLOCKS[clock]
    torch.manual_seed(0)
    first = cfgs[0]
    for name in (*first.DATASETS.TRAIN, *first.DATASETS.TEST):
        prepare_shapes(name)
    models = [ZooTrainer.build_model(cfg) for cfg in cfgs]
    if own_weights:
        for cfg, model in zip(cfgs, models):
            build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    else:
        reference = models[0].state_dict()
        for model in models[1:]:
            own = model.state_dict()
            same = {k: v for k, v in reference.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(same, strict=False)
    optimizers = [ZooTrainer.build_optimizer(cfg, m) for cfg, m in zip(cfgs, models)]
    batches = list(itertools.islice(ZooTrainer.build_train_loader(first), warmup + train_iters))
    count = min(infer_images + warmup, len(DatasetCatalog.get(first.DATASETS.TEST[0])))
    tests = list(
        itertools.islice(build_detection_test_loader(first, first.DATASETS.TEST[0]), count)
    )
    n = len(models)
    train = [[] for _ in models]
    infer = [[] for _ in models]
    for i, batch in enumerate(tests):
        for j in [(i + k) % n for k in range(n)]:
            infer[j].append(_inference(models[j], batch, tick))
    with EventStorage(0):
        for i, batch in enumerate(batches):
            for j in [(i + k) % n for k in range(n)]:
                train[j].append(_train_step(models[j], optimizers[j], batch, tick))
    return [
        {
            "train_s_per_iter": statistics.median(t[warmup:]) if train_iters else float("nan"),
            "infer_ms_per_image": 1000 * statistics.median(f[warmup:] or f),
        }
        for t, f in zip(train, infer)
    ]


def measure(
    cfg,
    *,
    train_iters: int = 10,
    warmup: int = 3,
    infer_images: int = 20,
    flops: bool = True,
    clock: str = "wall",
) -> Dict:
    """Time training steps and inference of ``cfg``'s model on its own datasets.

    Returns a dict: params (total, trainable), params_by_group, gflops and gflops_by_group
    (fvcore, on the first test image, if ``flops``), train_s_per_iter and infer_ms_per_image
    (medians over the timed steps, by ``clock``, a key of CLOCKS), peak_memory_mb and
    peak_memory_kind ("cuda" or "cpu_rss").
    """
    tick = CLOCKS[clock]
    torch.manual_seed(0)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        prepare_shapes(name)
    model = ZooTrainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
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

    if infer_images > 0:  # first: the model as loaded
        times = [_inference(model, batch, tick) for batch in test_inputs]
        result["infer_ms_per_image"] = 1000 * statistics.median(times[warmup:] or times)

    if train_iters > 0:
        batches = list(itertools.islice(ZooTrainer.build_train_loader(cfg), warmup + train_iters))
        optimizer = ZooTrainer.build_optimizer(cfg, model)
        with EventStorage(0):
            times = [_train_step(model, optimizer, batch, tick) for batch in batches]
        result["train_s_per_iter"] = statistics.median(times[warmup:])

    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_memory_kind"] = "cuda"
    else:
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_memory_kind"] = "cpu_rss"
    return result
