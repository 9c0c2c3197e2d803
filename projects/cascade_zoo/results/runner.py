"""The run loop: train (or resume) each run of a matrix with train_net.py in a child process,
printing its progress, then collect its result file, evaluate its variants and publish its
model; a project-made pretrained file a run starts from is made first, by the same machinery.
"""

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import identity, records, registry
from .convergence import first_drop
from .identity import PRETRAINED, Run, pretrained_sha256
from .records import SUBSET_BINS, metrics_records, read_result, set_aside, write_result

logger = logging.getLogger("run_results")

# train_net.py's stdout and stderr, in the run's OUTPUT_DIR; runs started before the rename
# keep appending to their benchmark_stdout.txt.
TRAIN_LOG = "train_stdout.txt"
OLD_TRAIN_LOG = "benchmark_stdout.txt"
# Seconds between two progress lines of a training.
PROGRESS_EVERY_S = 45.0

Trainer = Callable[[Run, str], Dict[str, float]]


def training_log(output_dir: Path) -> Path:
    old, new = output_dir / OLD_TRAIN_LOG, output_dir / TRAIN_LOG
    return old if old.is_file() and not new.is_file() else new


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def progress_line(run: Run, metrics: List[dict]) -> str:
    """One line on a training from its metrics.json records: the iteration reached, Detectron2's
    ETA of the training, and the last evaluation's AP."""
    head = f"{run.name} seed {run.seed}"
    steps = [r for r in metrics if "bbox/AP" not in r and "iteration" in r]
    if not steps:
        return f"{head}: starting (no iteration logged yet; {training_log(run.output_dir)})"
    done = min(steps[-1]["iteration"] + 1, run.max_iter)
    words = [f"{head}: iteration {done}/{run.max_iter} ({100.0 * done / run.max_iter:.0f}%)"]
    if isinstance(steps[-1].get("eta_seconds"), (int, float)):
        words.append(f"ETA {_duration(steps[-1]['eta_seconds'])}")
    evals = [r for r in metrics if "bbox/AP" in r]
    if evals:
        at = min(evals[-1].get("iteration", -1) + 1, run.max_iter)
        words.append(f"last AP {evals[-1]['bbox/AP']:.1f} (iteration {at})")
    return ", ".join(words)


def subprocess_trainer(
    run: Run, device: str, *, progress_every: float = PROGRESS_EVERY_S
) -> Dict[str, float]:
    """Train (or resume) the run with train_net.py in a child process, logging
    :func:`progress_line` every ``progress_every`` seconds; raises on failure. Returns the
    child's peak resident memory in MB."""
    args = [sys.executable, *run.train_args(device)]
    log_path = training_log(run.output_dir)
    logger.info("Running: " + " ".join(args) + f"  (output: {log_path})")
    with open(log_path, "a") as log:
        proc = subprocess.Popen(args, cwd=identity.REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            status, usage = _wait_reporting(proc, run, progress_every)
        except BaseException:  # killed (SIGTERM, Ctrl-C): stop the training too; --resume goes on
            proc.terminate()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{run.name} seed {run.seed}: train_net.py exited with {proc.returncode} (see "
            f"{log_path})"
        )
    return {"peak_rss_mb": usage.ru_maxrss / 1024.0}


def _wait_reporting(proc: subprocess.Popen, run: Run, every: float):
    """os.wait4 of the child, with a progress line every ``every`` seconds meanwhile."""
    due = time.monotonic() + every
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage
        if time.monotonic() >= due:
            logger.info(progress_line(run, metrics_records(run.output_dir)))
            due = time.monotonic() + every
        time.sleep(min(0.5, every / 4))


# Seconds between two rewrites of a training run's wall time file.
WALL_TIME_EVERY_S = 30.0


class _WallClock:
    """The wall time of a run's segments so far (``spent``) plus the current one's, rewritten to
    ``path`` every ``every`` seconds while the segment runs and once at its end: a segment killed
    outright (SIGKILL, the end of a machine's session) loses at most ``every`` seconds."""

    def __init__(self, path: Path, spent: float, commits: List[str], every: Optional[float] = None):
        self.path, self.spent, self.commits = path, spent, commits
        self.every = WALL_TIME_EVERY_S if every is None else every
        self._stop = threading.Event()
        self._start: Optional[float] = None

    def total(self) -> float:
        running = self._start is not None
        return self.spent + (time.time() - self._start if running else 0.0)

    def _write(self) -> None:
        # through a temporary file, so that a kill mid-write leaves the previous total
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"wall_time_s": self.total(), "git_commits": self.commits}))
        os.replace(tmp, self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> "_WallClock":
        self._start = time.time()
        self._write()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._write()
        self.spent, self._start = self.total(), None


def _prepare_output_dir(run: Run) -> None:
    """The run's OUTPUT_DIR, marked with its config hash (and pretrained backbone); one of another
    config or backbone is moved aside (so --resume never continues a different model)."""
    marker = run.output_dir / "benchmark_config_hash.txt"
    # the config and, for a run from a project-made backbone, which version of it
    identity_line = " ".join(x for x in (run.hash, pretrained_sha256(run)) if x)
    if run.output_dir.is_dir() and any(run.output_dir.iterdir()):
        if not marker.is_file() or marker.read_text().strip() != identity_line:
            aside = run.output_dir.with_name(f"{run.output_dir.name}.stale-{int(time.time())}")
            logger.warning(f"{run.output_dir}: files of another config, moved to {aside}")
            run.output_dir.rename(aside)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(identity_line + "\n")


def _test_dataset(run: Run) -> Optional[str]:
    datasets = run.diff.get("DATASETS.TEST") or []
    return datasets[0] if datasets else None


def _coco_ap(results_json: Path, dataset: str) -> Optional[dict]:
    """AP (all images and by objects per image, SUBSET_BINS) of a COCO results file on
    ``dataset`` (None when the file is missing)."""
    if not results_json.is_file():
        return None
    from detectron2.data import MetadataCatalog

    import cascade_zoo  # noqa: F401  (registers the datasets)
    from cascade_zoo.analysis.subsets import ap_by_object_count

    gt_json = MetadataCatalog.get(dataset).json_file
    return ap_by_object_count(gt_json, str(results_json), SUBSET_BINS)


def subsets_of(run: Run) -> Optional[dict]:
    """The run's final detections' AP on its test set by objects per image, from the COCO
    results its last evaluation wrote (None if it wrote none)."""
    dataset = _test_dataset(run)
    if dataset is None:
        return None
    return _coco_ap(run.output_dir / "inference" / dataset / "coco_instances_results.json", dataset)


def eval_variant(run: Run, device: str, opts: List[str]) -> Optional[dict]:
    """Evaluate the run's model_final.pth with ``opts`` (train_net.py --eval-only, in a child
    process, into OUTPUT_DIR/variants/..., its output in eval_stdout.txt there); its AP as
    :func:`_coco_ap` gives it."""
    dataset = _test_dataset(run)
    if dataset is None:
        return None
    out = run.output_dir / "variants" / "_".join(o.split(".")[-1] for o in opts)
    args = [sys.executable, "train_net.py", *run.config_file_args(), "--eval-only", *run.opts,
            *opts, "MODEL.WEIGHTS", str(run.output_dir / "model_final.pth"), "OUTPUT_DIR",
            str(out), "SEED", str(run.seed), "MODEL.DEVICE", device]  # fmt: skip
    logger.info("Evaluating: " + " ".join(args))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "eval_stdout.txt", "w") as log:
        code = subprocess.call(args, cwd=identity.REPO, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{run.name} seed {run.seed}: --eval-only {opts} exited with {code}")
    return _coco_ap(out / "inference" / dataset / "coco_instances_results.json", dataset)


def variants_of(run: Run, device: str) -> Dict[str, dict]:
    """The run's evaluation variants (registered by the paper packages), evaluated:
    name -> {"opts": [...], "metrics": AP table}."""
    out = OrderedDict()
    for name, opts in registry.variants_of_run(run.name):
        out[name] = {"opts": list(opts), "metrics": eval_variant(run, device, list(opts))}
    return out


def _needs_backfill(run: Run, data: dict) -> bool:
    want = {name for name, _ in registry.variants_of_run(run.name)}
    return "subsets" not in data or not want <= set(data.get("variants") or {})


def backfill(run: Run, data: dict, *, device: str, trainer: Trainer) -> dict:
    """Add the by-object-count AP and the eval variants to a finished result that lacks them. A
    run whose files are gone (another clone) is trained again; its model_final.pth must be the
    one the result records (same sha256: training is deterministic on a CPU), or nothing is
    added."""
    if not training_finished(run):
        logger.info(f"{run.name} seed {run.seed}: re-training to add the subsets / variants")
        _prepare_output_dir(run)
        trainer(run, device)
    sha = records.sha256(run.output_dir / "model_final.pth")
    if sha != data.get("checkpoint_sha256"):
        logger.error(
            f"{run.name} seed {run.seed}: the re-trained model_final.pth (sha256 {sha[:12]}) is "
            f"not the recorded one ({str(data.get('checkpoint_sha256'))[:12]}); nothing added"
        )
        return data
    data = dict(data)
    data["subsets"] = subsets_of(run)
    data["variants"] = variants_of(run, device)
    data["backfilled"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write_result(run, data)
    logger.info(f"{run.name} seed {run.seed}: subsets and variants added to {run.result_path}")
    return data


def publish(run: Run) -> Optional[Path]:
    """The run's model into the model zoo (cascade_zoo://<name>/seed<k>/) as
    :func:`cascade_zoo.model_zoo.publish_model` writes one: the weights only, its metrics.json
    and SHA256SUMS. Returns the directory written; None (logged) when it cannot be published."""
    import pickle

    from cascade_zoo.model_zoo import PREFIX, publish_model

    if run.opts:
        # the zoo names a model by its config files alone: these weights are not that model's
        logger.warning(
            f"{run.name} seed {run.seed}: not published (trained with the overrides "
            f"{' '.join(run.opts)}, which its name in the model zoo does not say)"
        )
        return None
    metrics = run.output_dir / "metrics.json"
    try:
        target = publish_model(
            str(run.output_dir / "model_final.pth"),
            "+".join(run.configs),  # the zoo names it as run.name, the protocol last
            run.seed,
            metrics=str(metrics) if metrics.is_file() else None,
            overwrite=True,
        )
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:  # the result stands
        logger.error(f"{run.name} seed {run.seed}: not published: {e}")
        return None
    logger.info(f"{run.name} seed {run.seed}: published {PREFIX}{run.name}/seed{run.seed}/")
    return target


def training_finished(run: Run) -> bool:
    evals = [r for r in metrics_records(run.output_dir) if "bbox/AP" in r]
    return (
        (run.output_dir / "model_final.pth").is_file()
        and bool(evals)
        and evals[-1].get("iteration", -1) + 1 >= run.max_iter
    )


PERIODIC_CHECKPOINT = re.compile(r"model_(\d{7})\.pth")


def run_first_drop(run: Run) -> int:
    """The iteration of the run's first learning-rate drop (its schedule's end if none)."""
    return first_drop({"config_diff": run.diff, "max_iter": run.max_iter})


def _holds(run: Run) -> bool:
    """Whether the run's OUTPUT_DIR is marked with its config hash (:func:`_prepare_output_dir`)."""
    marker = run.output_dir / "benchmark_config_hash.txt"
    return marker.is_file() and marker.read_text().split()[:1] == [run.hash]


def prune_checkpoints(run: Run) -> List[Path]:
    """Delete a finished run's periodic checkpoints (``model_NNNNNNN.pth``) but one: the last
    one at or before its first learning-rate drop, from which a longer schedule of the same run
    may start (:mod:`.continuation`). model_final.pth stays. Returns the deleted files.

    Raises:
        RuntimeError: the OUTPUT_DIR holds another config's files, or the run has not finished
            (its checkpoints are how it resumes).
    """
    if not _holds(run):
        raise RuntimeError(f"{run.output_dir}: not a run of {run.name} (config hash)")
    if not training_finished(run):
        raise RuntimeError(f"{run.output_dir}: not finished, its checkpoints are kept")
    drop = run_first_drop(run)
    periodic = {}
    for path in run.output_dir.iterdir():
        match = PERIODIC_CHECKPOINT.fullmatch(path.name)
        if match:  # Detectron2 names the checkpoint after iteration k "model_{k - 1}"
            periodic[int(match.group(1)) + 1] = path
    kept = max((i for i in periodic if i <= drop), default=None)
    deleted = [path for i, path in sorted(periodic.items()) if i != kept]
    for path in deleted:
        path.unlink()
    if deleted:
        logger.info(
            f"{run.output_dir}: deleted {len(deleted)} checkpoints, kept model_final.pth"
            + (f" and {periodic[kept].name} (before the first drop, {drop})" if kept else "")
        )
    return deleted


def _wall_time_file(run: Run) -> Path:
    return run.output_dir / "benchmark_wall_time.json"


def execute(
    run: Run,
    *,
    device: str,
    trainer: Trainer = subprocess_trainer,
    publish_models: bool = True,
    fill_missing: bool = False,
    prune: bool = False,
    wait: bool = True,
) -> dict:
    """Make the run's result file unless a valid one of the same config is there; returns it.
    ``fill_missing``: add the subsets / variants to a valid one lacking them (:func:`backfill`).
    ``prune``: then :func:`prune_checkpoints` (of a run done before too, if its files are here).
    ``wait``: when another process holds the run (:func:`run_lock`), wait for it to end; else
    raise :class:`RunBusy`."""
    with run_lock(run, wait=wait):
        result = _execute(run, device=device, trainer=trainer, publish_models=publish_models,
                          fill_missing=fill_missing)  # fmt: skip
        if prune and _holds(run) and training_finished(run):
            prune_checkpoints(run)
    return result


class RunBusy(RuntimeError):
    """Another process (a lane of the same matrix) is making the run."""


def lock_path(run: Run) -> Path:
    """``<runs dir>/<name>/seed<k>.lock``, beside the run's OUTPUT_DIR (not in it: that folder is
    moved aside whole when it holds another config's files)."""
    return run.output_dir.with_name(run.output_dir.name + ".lock")


@contextmanager
def run_lock(run: Run, *, wait: bool) -> Iterator[None]:
    """Hold an exclusive flock on :func:`lock_path` while the run is made, so that processes
    sharing a runs dir (``tools/run_results.py --lanes``) never train one run twice. The kernel
    drops the lock when its process ends, killed or not, so none is ever left stale. Raises
    :class:`RunBusy` if another process holds it and ``wait`` is false."""
    path = lock_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunBusy(
                f"{run.name} seed {run.seed}: another process is making it ({path})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _execute(
    run: Run, *, device: str, trainer: Trainer, publish_models: bool, fill_missing: bool
) -> dict:
    ensure_pretrained(run, device=device, trainer=trainer, publish_models=publish_models)
    status, data = read_result(run)
    if status == "other-backbone":
        aside = set_aside(run.result_path, "other-backbone")
        logger.warning(
            f"{run.result_path}: trained from another pretrained backbone (sha256 "
            f"{str(data)[:12]}, now {str(pretrained_sha256(run))[:12]}); "
            f"refused and moved to {aside}; running again"
        )
    if status == "ok":
        if fill_missing and _needs_backfill(run, data):
            return backfill(run, data, device=device, trainer=trainer)
        logger.info(f"{run.name} seed {run.seed}: done ({run.result_path}), skipped")
        return data
    if status == "stale":
        aside = set_aside(run.result_path, "stale")
        logger.warning(
            f"{run.result_path}: a result of another config (hash {data}, now {run.hash}); refused "
            f"and moved to {aside}; running again"
        )
    elif status == "corrupt":
        aside = set_aside(run.result_path, "corrupt")
        logger.warning(f"{run.result_path}: unreadable ({data}); moved to {aside}; running again")
    _prepare_output_dir(run)
    # wall time accumulates over a killed run's segments; the commit of each segment is kept,
    # since the code may change while a run trains
    spent, commits = 0.0, []
    wt = _wall_time_file(run)
    if wt.is_file():
        try:
            saved = json.loads(wt.read_text())
            spent = float(saved["wall_time_s"])
            commits = [str(c) for c in saved.get("git_commits", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            spent, commits = 0.0, []
    extra = {}
    if training_finished(run):
        # trained to the end and evaluated, but no result file (e.g. killed before writing it)
        logger.info(f"{run.output_dir}: training finished already; collecting its result")
    else:
        commit = records.git_commit()
        if not commits or commits[-1] != commit:
            commits.append(commit)
        with _WallClock(wt, spent, commits) as clock:
            extra = trainer(run, device)
        spent = clock.total()
    command = "python " + " ".join(run.train_args(device))
    result = records.collect_result(run, spent, extra, device, command, commits)
    result["subsets"] = subsets_of(run)
    result["variants"] = variants_of(run, device)
    write_result(run, result)
    if publish_models:
        publish(run)
    logger.info(f"{run.name} seed {run.seed}: AP {result['metrics']['bbox']['AP']:.2f}")
    return result


def ensure_pretrained(
    run: Run, *, device: str, trainer: Trainer = subprocess_trainer, publish_models: bool = True
) -> None:
    """Make the project's pretrained file that the run's MODEL.WEIGHTS names, if missing (its
    run is an :func:`execute` like the others)."""
    weights = run.diff.get("MODEL.WEIGHTS", "")
    if weights not in PRETRAINED:
        return
    from detectron2.utils.file_io import PathManager

    local = PathManager.get_local_path(weights)
    if os.path.isfile(local):
        return
    how = PRETRAINED[weights]
    depth = len(Path(run.name).parts)
    source = Run(how.config, how.seed, run.result_path.parents[depth],
                 run.output_dir.parents[depth], protocol=how.protocol)  # fmt: skip
    logger.info(f"{weights} is missing: making it from {source.name} seed {how.seed}")
    execute(source, device=device, trainer=trainer, publish_models=publish_models)
    checkpoint = source.output_dir / "model_final.pth"
    if not checkpoint.is_file():  # its result file is here, its checkpoint is not (another clone)
        aside = set_aside(source.result_path, "lost-checkpoint")
        logger.warning(f"{checkpoint} is missing: {aside} set aside, training it again")
        execute(source, device=device, trainer=trainer, publish_models=publish_models)
    extract_weights(checkpoint, local, how.prefix)


def extract_weights(checkpoint: Path, output: str, prefix: str) -> None:
    """Save the checkpoint's weights whose names start with ``prefix`` (as a .pth that
    DetectionCheckpointer loads; the other modules of a model keep their initialization)."""
    import torch

    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)["model"]
    kept = OrderedDict((k, v) for k, v in state.items() if k.startswith(prefix))
    if not kept:
        raise RuntimeError(f"{checkpoint}: no weights named {prefix}*")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    torch.save({"model": kept, "source": str(checkpoint), "prefix": prefix}, output + ".tmp")
    os.replace(output + ".tmp", output)
    logger.info(f"Wrote {len(kept)} tensors of {checkpoint} ({prefix}*) to {output}")


def run_matrix(
    configs: Sequence[str],
    seeds: Sequence[int],
    *,
    results_dir: Path,
    runs_dir: Path,
    device: str,
    opts: Sequence[str] = (),
    protocol: Optional[str] = None,
    fill_missing: bool = False,
    prune: bool = False,
    seed_major: bool = False,
) -> List[Tuple[str, int]]:
    """:func:`execute` every (config, seed), each config's seeds in turn (``seed_major``: every
    config's seed 0 first, then seed 1, ...); one failed run does not stop the others, and a run
    that another process is making (:func:`run_lock`) is left to it. Returns the (config, seed)
    of the runs that failed."""
    order = [(c, s) for c in configs for s in seeds]
    if seed_major:
        order = [(c, s) for s in seeds for c in configs]
    failed = []
    for config, seed in order:
        try:
            run = Run(config, seed, results_dir, runs_dir, opts, protocol=protocol)
            execute(run, device=device, fill_missing=fill_missing, prune=prune, wait=False)
        except RunBusy as e:
            logger.info(f"{e}; skipped")
        except Exception as e:  # one failed run must not stop the matrix
            logger.error(f"{config} seed {seed}: FAILED: {e}")
            failed.append((config, seed))
    return failed
