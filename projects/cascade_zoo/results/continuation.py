"""Start a longer run from a shorter run's checkpoint, where the two schedules are still the same.

A run and the same run with a longer schedule (its drops moved later) train identically up to
the shorter run's first learning-rate drop: same config, seed and learning rate at every
iteration (Detectron2's warm-up and step schedule depend on the iteration, not on the schedule's
length). So the longer run may start from the shorter run's checkpoint at an iteration up to that
drop, as a killed run resumes from its last checkpoint. :func:`continue_from` checks that, then
prepares the longer run's OUTPUT_DIR: the checkpoint, ``last_checkpoint``, the ``metrics.json``
lines before it (so the result file's curve is whole) and ``continued_from.json`` (recorded in
the result file). ``tools/run_results.py`` then resumes it like any other run.
"""

import json
import shutil
from pathlib import Path
from typing import Dict, List

from .identity import Run
from .runner import _holds, _prepare_output_dir, run_first_drop, run_lock

SCHEDULE_KEYS = ("SOLVER.MAX_ITER", "SOLVER.STEPS")
CONTINUED_FROM_FILE = "continued_from.json"


def check_same_until(source: Run, target: Run, iteration: int) -> None:
    """Raise ValueError unless ``target`` trains as ``source`` does for its first ``iteration``
    iterations: the configs differ only in the schedule's length and drops, and no drop of
    either comes before ``iteration``."""
    keys = set(source.diff) | set(target.diff)
    differ = sorted(k for k in keys if source.diff.get(k) != target.diff.get(k))
    other = [k for k in differ if k not in SCHEDULE_KEYS]
    if other or source.seed != target.seed:
        raise ValueError(
            f"{target.name} seed {target.seed} is not {source.name} seed {source.seed} with a "
            f"longer schedule: they differ in {other or ['SEED']}"
        )
    limit = min(run_first_drop(source), run_first_drop(target))
    if not 0 < iteration <= limit:
        raise ValueError(
            f"iteration {iteration}: the two schedules are the same only up to iteration {limit} "
            f"(the first learning-rate drop)"
        )


def _metrics_before(metrics: Path, iteration: int) -> List[str]:
    """The lines of a metrics.json for iterations before ``iteration`` (Detectron2 numbers them
    from 0, so the evaluation "at" ``iteration`` is logged as ``iteration - 1``)."""
    lines = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill (the run resumed after it): the reader skips it too
        if record.get("iteration", 0) < iteration:
            lines.append(line)
    return lines


def continue_from(source: Run, target: Run, iteration: int) -> Dict:
    """Prepare ``target``'s OUTPUT_DIR from ``source``'s checkpoint at ``iteration`` (see the
    module). Returns what ``continued_from.json`` records.

    Raises:
        ValueError: the runs are not the same up to ``iteration`` (:func:`check_same_until`),
            the source's OUTPUT_DIR holds another config, or the target's is not empty.
        FileNotFoundError: no checkpoint of the source at that iteration.
        RunBusy: a runner (a lane) is making the target run now.
    """
    check_same_until(source, target, iteration)
    with run_lock(target, wait=False):
        return _continue_from(source, target, iteration)


def _continue_from(source: Run, target: Run, iteration: int) -> Dict:
    if not _holds(source):
        raise ValueError(f"{source.output_dir} is not a run of {source.name} (config hash)")
    checkpoint = source.output_dir / f"model_{iteration - 1:07d}.pth"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint of iteration {iteration}")
    if target.output_dir.is_dir() and any(target.output_dir.iterdir()):
        raise ValueError(f"{target.output_dir} is not empty: the longer run has started already")
    lines = _metrics_before(source.output_dir / "metrics.json", iteration)
    _prepare_output_dir(target)  # its marker, as the runner writes it
    shutil.copyfile(checkpoint, target.output_dir / checkpoint.name)
    (target.output_dir / "last_checkpoint").write_text(checkpoint.name)
    (target.output_dir / "metrics.json").write_text("".join(line + "\n" for line in lines))
    record = {
        "run_dir": str(source.output_dir),
        "config_hash": source.hash,
        "iteration": iteration,
        "checkpoint": checkpoint.name,
    }
    (target.output_dir / CONTINUED_FROM_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record
