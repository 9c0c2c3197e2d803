#!/usr/bin/env python
"""Where a training iteration's time goes: the phases of ZooTrainer's step (loading the batch,
the backbone's, the RPN's and the ROI heads' forward, the backward, the optimizer step) and the
operators that take the most time (torch.profiler, self time), for one or more configs.

    python tools/profile_iteration.py --configs configs/Baselines/faster_rcnn_R_18_FPN_shapes.yaml \
        --protocol configs/Protocols/shapes_v4.yaml --iters 20 --output docs/benchmarks.md

Each --configs entry may be several files joined by "+" (merged in order); --protocol is merged
over each. The weights are the config's random initialization unless MODEL.WEIGHTS is given in
the overrides (the cost of an iteration depends on the weights only through how many boxes the
RPN keeps, which the config fixes). The phase times are medians over --iters iterations after
--warmup; the operator table sums the profiled iterations.
"""

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import date

import torch

from cascade_zoo import setup_cfg
from cascade_zoo.data import prepare_shapes
from cascade_zoo.engine import ZooTrainer
from cascade_zoo.utils.markdown import markdown_table, write_markdown_section

SECTION = "Where a CPU training iteration goes"
PHASES = ["data", "backbone", "rpn", "roi_heads", "backward", "optimizer"]


class _Timer:
    """Forward times of the named submodules (pre/post forward hooks)."""

    def __init__(self, model, names):
        self.times = {n: 0.0 for n in names}
        self._start = {}
        for name in names:
            module = getattr(model, {"rpn": "proposal_generator"}.get(name, name))
            module.register_forward_pre_hook(self._pre(name))
            module.register_forward_hook(self._post(name))

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(module, args, out):
            self.times[name] += time.perf_counter() - self._start[name]

        return hook

    def reset(self):
        self.times = dict.fromkeys(self.times, 0.0)


def profile(files, opts, iters, warmup, top):
    cfg = setup_cfg(files, opts)
    for name in cfg.DATASETS.TRAIN:
        prepare_shapes(name)
    trainer = ZooTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model, optimizer = trainer.model, trainer.optimizer
    model.train()
    timer = _Timer(model, ["backbone", "rpn", "roi_heads"])
    loader = iter(trainer.data_loader)
    steps = []
    from detectron2.utils.events import EventStorage

    def step():
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        timer.reset()
        losses = model(batch)
        t2 = time.perf_counter()
        optimizer.zero_grad()
        sum(losses.values()).backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        return dict(data=t1 - t0, **timer.times, backward=t3 - t2, optimizer=t4 - t3, total=t4 - t0)

    with EventStorage(0):
        for _ in range(warmup):
            step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                steps.append(step())
    phases = {k: statistics.median(s[k] for s in steps) for k in [*PHASES, "total"]}
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in ops)
    top_ops = [
        (e.key, e.count // iters, e.self_cpu_time_total / 1e6 / iters,
         100.0 * e.self_cpu_time_total / total_self)
        for e in ops[:top]
    ]  # fmt: skip
    return phases, top_ops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--output", default=None, help="a Markdown file to put the section into")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    text = [f"## {SECTION}\n"]
    command = ["python", "tools/profile_iteration.py", *sys.argv[1:]]
    text.append(
        f"`{' '.join(shlex.quote(a) for a in command)}`"
        f" on {date.today()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
        "thread(s). Median seconds per iteration by phase, then the operators with the most "
        "self time (per iteration):\n"
    )
    rows = []
    op_tables = []
    for entry in args.configs:
        files = entry.split("+") + ([args.protocol] if args.protocol else [])
        phases, top_ops = profile(files, args.opts, args.iters, args.warmup, args.top)
        name = " + ".join(os.path.relpath(f, "configs") for f in entry.split("+"))
        rows.append([f"`{name}`", *(phases[k] for k in [*PHASES, "total"])])
        table = markdown_table(["operator", "calls", "s", "% of self time"], top_ops, cell=_cell)
        op_tables.append(f"`{name}`:\n\n{table}\n")
        print(rows[-1])
        print(table)
    text.append(markdown_table(["config", *PHASES, "total"], rows, cell=_cell) + "\n")
    text.extend(op_tables)
    if args.output:
        write_markdown_section(args.output, SECTION, "\n".join(text))
        print(f"wrote the section '{SECTION}' of {args.output}")
    return 0


def _cell(value):
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
