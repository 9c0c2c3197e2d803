#!/usr/bin/env python
"""Run a benchmark matrix (configs x seeds), keep one small result file per run in the repository,
and regenerate docs/results.md, its plots and MODEL_ZOO.md from those files.

    python tools/run_benchmark.py --configs Benchmark/faster_rcnn_R_18_FPN_shapes.yaml \\
        Benchmark/cascade_rcnn_R_18_FPN_shapes.yaml --seeds 0 1 2
    python tools/run_benchmark.py --report-only      # tables, plots, MODEL_ZOO.md from the files

Configs are named relative to configs/. Each run trains with train_net.py (--resume) in
<runs-dir>/<name>/seed<k>, so a killed run continues from its last checkpoint; a run whose result
file benchmarks/results/<name>/seed<k>.json is there, valid and of the same config is skipped. The
config is identified by the hash of its non-default keys (the resolved config against the
project's defaults, without OUTPUT_DIR, SEED and MODEL.DEVICE): a result file of another config
is refused (renamed *.stale.json, then the run is re-done), a missing or unreadable one is re-done,
and so is one trained from another version of the project-made pretrained backbone than the one
now in use (the sha256 of its weights is in the result; renamed *.other-backbone.json): every row
of a report starts from the same backbone.
A config whose MODEL.WEIGHTS is a pretrained file the project makes (PRETRAINED) gets it made
first, by the same machinery. Finished runs publish model_final.pth and metrics.json under the
model zoo (cascade_zoo://<name>/seed<k>/, see cascade_zoo.model_zoo).
"""

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
RESULT_FORMAT = 1
# Keys that say where or how a run is done, not which model it trains (the two ROIAlign
# backwards compute the same gradient, the two RPN NMS settings the same proposals; a run
# records its commit and command).
IGNORED_KEYS = (
    "OUTPUT_DIR",
    "SEED",
    "MODEL.DEVICE",
    "ZOO.ROI_ALIGN_CPU_BACKWARD",
    "ZOO.RPN_PREFIX_NMS",
)
AP_COLUMNS = ["AP"] + [f"AP{50 + 5 * i}" for i in range(10)]
# Pretrained files the project makes itself: MODEL.WEIGHTS -> (config, seed, kept key prefix).
# The fair protocol's backbone (docs/benchmark_protocol.md): the ResNet of a long Faster R-CNN
# run, like the ImageNet-pretrained ResNet of the papers.
PRETRAINED = {
    "cascade_zoo://Benchmark/shapes_backbone_R_18_w32.pth": (
        "Benchmark/pretrain_faster_rcnn_R_18_FPN_shapes.yaml",
        0,
        "backbone.bottom_up.",
    ),
}

# AP by the number of objects per image (RGA + PRM's Fig. 2), stored with every run.
SUBSET_BINS = ((1, 3), (4, 7), (8, None))
# Extra evaluations of a run's final model under other test-time settings (no training), stored
# with the run: name -> [(variant, config overrides)].
EVAL_VARIANTS = {
    # R3-CNN Table 2: the 3-loop model evaluated with L_e = 1..5 loops
    "Benchmark/r3_cnn_R_18_FPN_shapes": [
        (f"L_e={n}", ["MODEL.BOX_CASCADE.NUM_TEST_STAGES", str(n)]) for n in range(1, 6)
    ],
    # IoU-Uniform Table 6 "EFO: No" / Fig. 8(a): the trained model ranked by the IoU predicted
    # at the input boxes, without re-pooling at the refined ones
    **{
        f"Benchmark/iou_uniform_{arch}_rcnn_R_18_FPN_shapes": [
            ("no EFO", ["MODEL.IOU_UNIFORM.EFO", "False"])
        ]
        for arch in ("faster", "cascade")
    },
}

# Figures the paper tools make from the runs' published models (not from the result files): shown
# in docs/results.md when their image is there. (image under docs/, caption, README with commands)
MODEL_FIGURES = (
    ("images/fs_cascade_score_vs_iou.png", "FSCascade's Fig. 5: scores of the last stage's "
     "detections with IoU in [0.5, 0.75]", "projects/fs_cascade/README.md"),
    ("images/iou_uniform_fig3_gain.png", "IoU-Uniform's Fig. 3: the regression's IoU gain by the "
     "proposal's IoU", "projects/iou_uniform/README.md"),
    ("images/iou_uniform_fig6_refined_iou.png", "IoU-Uniform's Fig. 6: IoU of the refined boxes",
     "projects/iou_uniform/README.md"),
    ("images/iou_uniform_fig8_predicted_iou.png", "IoU-Uniform's Fig. 8: predicted against true "
     "IoU, without and with EFO", "projects/iou_uniform/README.md"),
)  # fmt: skip

logger = logging.getLogger("run_benchmark")


# ---------------------------------------------------------------------------------------------
# Config identity


def _flatten(node, prefix="") -> Dict[str, object]:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_diff(config_file: str, opts=()) -> Dict[str, object]:
    """The resolved config's keys whose values differ from the project's defaults (new keys of
    the defaults leave this unchanged), without IGNORED_KEYS."""
    from cascade_zoo import get_zoo_cfg, setup_cfg

    cfg = _flatten(setup_cfg(config_file, opts, freeze=False))
    default = _flatten(get_zoo_cfg())
    return OrderedDict(
        (k, _plain(cfg[k]))
        for k in sorted(cfg)
        if k not in IGNORED_KEYS and (k not in default or _plain(default[k]) != _plain(cfg[k]))
    )


def _default_max_iter() -> int:
    from cascade_zoo import get_zoo_cfg

    return get_zoo_cfg().SOLVER.MAX_ITER


def config_hash(diff: Dict[str, object]) -> str:
    text = json.dumps(diff, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Runs


class Run:
    """One (config, seed) of the matrix and where its files live."""

    def __init__(self, config: str, seed: int, results_dir: Path, runs_dir: Path, opts=()):
        self.config = config
        self.seed = seed
        self.opts = list(opts)
        self.name = str(Path(config).with_suffix("")).replace(os.sep, "/")
        self.config_file = str(REPO / "configs" / config)
        self.result_path = Path(results_dir) / self.name / f"seed{seed}.json"
        self.output_dir = Path(runs_dir) / self.name / f"seed{seed}"
        self.diff = config_diff(self.config_file, self.opts)
        self.hash = config_hash(self.diff)
        self.max_iter = self.diff.get("SOLVER.MAX_ITER", _default_max_iter())

    def train_args(self, device: str) -> List[str]:
        return [
            "train_net.py",
            "--config-file",
            os.path.relpath(self.config_file, REPO),
            "--resume",
            *self.opts,
            "OUTPUT_DIR",
            str(self.output_dir),
            "SEED",
            str(self.seed),
            "MODEL.DEVICE",
            device,
        ]


def read_result(run: Run):
    """("ok", data) | ("missing", None) | ("corrupt", reason) | ("stale", other hash) |
    ("other-backbone", its backbone's sha256): made from another version of the project-made
    pretrained backbone than the one now in use."""
    if not run.result_path.is_file():
        return "missing", None
    try:
        data = json.loads(run.result_path.read_text())
        if data.get("format") != RESULT_FORMAT or not isinstance(data["metrics"]["bbox"], dict):
            return "corrupt", "unknown format"
        if any(not isinstance(data["metrics"]["bbox"].get(k), (int, float)) for k in AP_COLUMNS):
            return "corrupt", "AP table incomplete"
        if data["seed"] != run.seed:
            return "corrupt", f"seed {data['seed']} in a file of seed {run.seed}"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return "corrupt", f"{type(e).__name__}: {e}"
    if data.get("config_hash") != run.hash:
        return "stale", data.get("config_hash")
    backbone = _pretrained_sha256(run)
    if backbone and data.get("pretrained_sha256") != backbone:
        return "other-backbone", data.get("pretrained_sha256")
    return "ok", data


def _set_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` out of the way (nothing is deleted); returns the new path."""
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    target = path.with_name(f"{stem}.{tag}.json")
    n = 1
    while target.exists():
        target = path.with_name(f"{stem}.{tag}{n}.json")
        n += 1
    path.rename(target)
    return target


def _prepare_output_dir(run: Run) -> None:
    """The run's OUTPUT_DIR, marked with its config hash (and pretrained backbone); one of another
    config or backbone is moved aside (so --resume never continues a different model)."""
    marker = run.output_dir / "benchmark_config_hash.txt"
    # the config and, for a run from a project-made backbone, which version of it
    identity = " ".join(x for x in (run.hash, _pretrained_sha256(run)) if x)
    if run.output_dir.is_dir() and any(run.output_dir.iterdir()):
        if not marker.is_file() or marker.read_text().strip() != identity:
            aside = run.output_dir.with_name(f"{run.output_dir.name}.stale-{int(time.time())}")
            logger.warning(f"{run.output_dir}: files of another config, moved to {aside}")
            run.output_dir.rename(aside)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(identity + "\n")


def subprocess_trainer(run: Run, device: str) -> Dict[str, float]:
    """Train (or resume) the run with train_net.py in a child process; raises on failure.
    Returns the child's peak resident memory in MB."""
    args = [sys.executable, *run.train_args(device)]
    logger.info("Running: " + " ".join(args))
    with open(run.output_dir / "benchmark_stdout.txt", "a") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # killed (SIGTERM, Ctrl-C): stop the training too; --resume goes on
            proc.terminate()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{run.name} seed {run.seed}: train_net.py exited with {proc.returncode} (see "
            f"{run.output_dir}/benchmark_stdout.txt)"
        )
    return {"peak_rss_mb": usage.ru_maxrss / 1024.0}


def _metrics_records(output_dir: Path) -> List[dict]:
    path = output_dir / "metrics.json"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return records


def _inference_s_per_image(output_dir: Path) -> Optional[float]:
    log = output_dir / "log.txt"
    if not log.is_file():
        return None
    found = re.findall(
        r"Total inference pure compute time: .*?\(([0-9.]+) s / iter per device", log.read_text()
    )
    return float(found[-1]) if found else None


def _git_commit() -> str:
    """HEAD, with "+dirty" when tracked files differ from it; "unknown" outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def collect_result(
    run: Run, wall_time_s: float, extra: Dict, device: str, command: str, commits=()
) -> dict:
    """The result file's content from the run's metrics.json (its last evaluation is the final
    one; earlier ones make the AP-vs-iteration curve). ``commits``: the code's commit at each
    start of the training (a killed run resumed at another commit has several); the first is
    ``git_commit``, and the list is kept when there are several.

    Raises:
        RuntimeError: the run has no final evaluation.
    """
    from cascade_zoo.benchmark import machine_description

    records = _metrics_records(run.output_dir)
    evals = [r for r in records if "bbox/AP" in r]
    if not evals:
        raise RuntimeError(f"{run.output_dir}/metrics.json: no evaluation (bbox/AP) found")
    last = evals[-1]
    bbox = {k: last[f"bbox/{k}"] for k in AP_COLUMNS + ["APs", "APm", "APl"] if f"bbox/{k}" in last}
    stages = OrderedDict()
    for key in sorted(last):
        parts = key.split("/")
        if len(parts) == 3 and parts[1] == "bbox" and parts[0] != "proposals":
            stages.setdefault(parts[0], {})[parts[2]] = last[key]
    times = [r["time"] for r in records if "time" in r and "bbox/AP" not in r]
    curve = [
        # Detectron2 logs the final evaluation one iteration after the last
        {
            "iteration": min(r["iteration"] + 1, run.max_iter),
            **{k: r.get(f"bbox/{k}") for k in AP_COLUMNS},
        }
        for r in evals
    ]
    checkpoint = run.output_dir / "model_final.pth"
    return {
        "format": RESULT_FORMAT,
        "name": run.name,
        "config": f"configs/{run.config}",
        "seed": run.seed,
        "config_hash": run.hash,
        "config_diff": run.diff,
        "command": command,
        "git_commit": commits[0] if commits else _git_commit(),
        **({"git_commits": list(commits)} if len(commits) > 1 else {}),
        "device": device,
        "machine": machine_description(),
        "host": socket.gethostname(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_time_s": round(wall_time_s, 1) if wall_time_s else None,
        "max_iter": run.max_iter,
        "train_s_per_iter": round(statistics.median(times), 4) if times else None,
        "inference_s_per_image": _inference_s_per_image(run.output_dir),
        **{k: round(v, 1) for k, v in extra.items()},
        "checkpoint_sha256": _sha256(checkpoint) if checkpoint.is_file() else None,
        "pretrained_sha256": _pretrained_sha256(run),
        "metrics": {"bbox": bbox, "stages": stages},
        "curve": curve,
    }


def _pretrained_sha256(run: Run) -> Optional[str]:
    """The :func:`weights_sha256` of the project-made pretrained file the run starts from (None
    if none, or if the file is not there)."""
    weights = run.diff.get("MODEL.WEIGHTS", "")
    if weights not in PRETRAINED:
        return None
    from detectron2.utils.file_io import PathManager

    local = PathManager.get_local_path(weights)
    if not os.path.isfile(local):
        return None
    stat = os.stat(local)
    return _cached_weights_sha256(local, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _cached_weights_sha256(path: str, mtime_ns: int, size: int) -> str:
    """:func:`weights_sha256`, once per version of a file (a report reads many results of the
    same backbone)."""
    return weights_sha256(Path(path))


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file's tensors: each name, dtype, shape and the values, in name order.
    The same weights hash the same wherever and by whichever torch the file was written (its
    bytes also hold the pickle's layout and the path it was extracted from)."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=False)
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state:
        raise RuntimeError(f"{path}: not a weights file (expected a dict of tensors)")
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = torch.as_tensor(state[name]).detach().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    process, into OUTPUT_DIR/variants/...); its AP as :func:`_coco_ap` gives it."""
    dataset = _test_dataset(run)
    if dataset is None:
        return None
    out = run.output_dir / "variants" / "_".join(o.split(".")[-1] for o in opts)
    args = [sys.executable, "train_net.py", "--config-file",
            os.path.relpath(run.config_file, REPO), "--eval-only", *run.opts, *opts,
            "MODEL.WEIGHTS", str(run.output_dir / "model_final.pth"), "OUTPUT_DIR", str(out),
            "SEED", str(run.seed), "MODEL.DEVICE", device]  # fmt: skip
    logger.info("Evaluating: " + " ".join(args))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "benchmark_stdout.txt", "w") as log:
        code = subprocess.call(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{run.name} seed {run.seed}: --eval-only {opts} exited with {code}")
    return _coco_ap(out / "inference" / dataset / "coco_instances_results.json", dataset)


def variants_of(run: Run, device: str) -> Dict[str, dict]:
    """The run's EVAL_VARIANTS, evaluated: name -> {"opts": [...], "metrics": AP table}."""
    out = OrderedDict()
    for name, opts in EVAL_VARIANTS.get(run.name, []):
        out[name] = {"opts": list(opts), "metrics": eval_variant(run, device, list(opts))}
    return out


def _write_result(run: Run, result: dict) -> None:
    run.result_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.result_path.with_name(run.result_path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, run.result_path)


def _needs_backfill(run: Run, data: dict) -> bool:
    want = {name for name, _ in EVAL_VARIANTS.get(run.name, [])}
    return "subsets" not in data or not want <= set(data.get("variants") or {})


def backfill(run: Run, data: dict, *, device: str, trainer) -> dict:
    """Add the by-object-count AP and the eval variants to a finished result that lacks them. A
    run whose files are gone (another clone) is trained again; its model_final.pth must be the
    one the result records (same sha256: training is deterministic on a CPU), or nothing is
    added."""
    if not _training_finished(run):
        logger.info(f"{run.name} seed {run.seed}: re-training to add the subsets / variants")
        _prepare_output_dir(run)
        trainer(run, device)
    sha = _sha256(run.output_dir / "model_final.pth")
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
    _write_result(run, data)
    logger.info(f"{run.name} seed {run.seed}: subsets and variants added to {run.result_path}")
    return data


def publish(run: Run, result: dict) -> None:
    """model_final.pth and metrics.json into the model zoo (cascade_zoo://<name>/seed<k>/)."""
    from detectron2.utils.file_io import PathManager

    from cascade_zoo.model_zoo import PREFIX

    for fname in ("model_final.pth", "metrics.json"):
        src = run.output_dir / fname
        if src.is_file():
            dst = f"{PREFIX}{run.name}/seed{run.seed}/{fname}"
            PathManager.copy_from_local(str(src), dst, overwrite=True)


def _training_finished(run: Run) -> bool:
    evals = [r for r in _metrics_records(run.output_dir) if "bbox/AP" in r]
    return (
        (run.output_dir / "model_final.pth").is_file()
        and bool(evals)
        and evals[-1].get("iteration", -1) + 1 >= run.max_iter
    )


def _wall_time_file(run: Run) -> Path:
    return run.output_dir / "benchmark_wall_time.json"


def execute(
    run: Run,
    *,
    device: str,
    trainer: Callable[[Run, str], Dict[str, float]] = subprocess_trainer,
    publish_models: bool = True,
    fill_missing: bool = False,
) -> dict:
    """Make the run's result file unless a valid one of the same config is there; returns it.
    ``fill_missing``: add the subsets / variants to a valid one lacking them (:func:`backfill`)."""
    ensure_pretrained(run, device=device, trainer=trainer)
    status, data = read_result(run)
    if status == "other-backbone":
        aside = _set_aside(run.result_path, "other-backbone")
        logger.warning(
            f"{run.result_path}: trained from another pretrained backbone (sha256 "
            f"{str(data)[:12]}, now {str(_pretrained_sha256(run))[:12]}); "
            f"refused and moved to {aside}; running again"
        )
    if status == "ok":
        if fill_missing and _needs_backfill(run, data):
            return backfill(run, data, device=device, trainer=trainer)
        logger.info(f"{run.name} seed {run.seed}: done ({run.result_path}), skipped")
        return data
    if status == "stale":
        aside = _set_aside(run.result_path, "stale")
        logger.warning(
            f"{run.result_path}: a result of another config (hash {data}, now {run.hash}); refused "
            f"and moved to {aside}; running again"
        )
    elif status == "corrupt":
        aside = _set_aside(run.result_path, "corrupt")
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
    if _training_finished(run):
        # trained to the end and evaluated, but no result file (e.g. killed before writing it)
        logger.info(f"{run.output_dir}: training finished already; collecting its result")
    else:
        commit = _git_commit()
        if not commits or commits[-1] != commit:
            commits.append(commit)
        start = time.time()
        try:
            extra = trainer(run, device)
        finally:
            spent += time.time() - start
            wt.write_text(json.dumps({"wall_time_s": spent, "git_commits": commits}))
    command = "python " + " ".join(run.train_args(device))
    result = collect_result(run, spent, extra, device, command, commits)
    result["subsets"] = subsets_of(run)
    result["variants"] = variants_of(run, device)
    _write_result(run, result)
    if publish_models:
        publish(run, result)
    logger.info(f"{run.name} seed {run.seed}: AP {result['metrics']['bbox']['AP']:.2f}")
    return result


def ensure_pretrained(run: Run, *, device: str, trainer=subprocess_trainer) -> None:
    """Make the project's pretrained file that the run's MODEL.WEIGHTS names, if missing."""
    weights = run.diff.get("MODEL.WEIGHTS", "")
    if weights not in PRETRAINED:
        return
    from detectron2.utils.file_io import PathManager

    local = PathManager.get_local_path(weights)
    if os.path.isfile(local):
        return
    config, seed, prefix = PRETRAINED[weights]
    source = Run(config, seed, run.result_path.parents[len(Path(run.name).parts)],
                 run.output_dir.parents[len(Path(run.name).parts)])  # fmt: skip
    logger.info(f"{weights} is missing: making it from {config} seed {seed}")
    execute(source, device=device, trainer=trainer)
    checkpoint = source.output_dir / "model_final.pth"
    if not checkpoint.is_file():  # its result file is here, its checkpoint is not (another clone)
        aside = _set_aside(source.result_path, "lost-checkpoint")
        logger.warning(f"{checkpoint} is missing: {aside} set aside, training it again")
        execute(source, device=device, trainer=trainer)
    extract_weights(checkpoint, local, prefix)


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


# ---------------------------------------------------------------------------------------------
# Reports


def load_results(results_dir: Path) -> "OrderedDict[str, List[dict]]":
    """Every valid result file under ``results_dir``, grouped by name (stale, corrupt files and
    results of a config that changed since or of another version of its pretrained backbone are
    left out, with a warning)."""
    grouped = OrderedDict()
    for path in sorted(Path(results_dir).glob("**/seed*.json")):
        if not re.fullmatch(r"seed\d+\.json", path.name):
            continue
        name = str(path.parent.relative_to(results_dir)).replace(os.sep, "/")
        config = REPO / "configs" / f"{name}.yaml"
        if not config.is_file():
            logger.warning(f"{path}: its config {config} is gone; left out")
            continue
        run = Run(f"{name}.yaml", int(path.name[4:-5]), results_dir, Path("."))
        status, data = read_result(run)
        if status == "other-backbone":
            logger.warning(
                f"{path}: trained from another pretrained backbone (sha256 {str(data)[:12]}); "
                "left out of the report (the runner makes it again)"
            )
            continue
        if status != "ok":
            logger.warning(f"{path}: {status} ({data}); left out of the report")
            continue
        grouped.setdefault(name, []).append(data)
    return grouped


def _mean_std(values: List[float]):
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: List[float], digits: int = 1) -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def summary_rows(grouped) -> List[list]:
    """One row per model (final output) and, for cascades, one per stage: mean ± std. A model
    of one stage (Faster R-CNN on the core) gets no stage row: it would repeat the first."""
    rows = []
    for name, results in grouped.items():
        rows.append(
            [f"`{name}`", len(results)]
            + [_pm([r["metrics"]["bbox"][k] for r in results]) for k in AP_COLUMNS]
        )
        stages = [s for s in results[0]["metrics"].get("stages") or {} if s != "ensemble"]
        for stage in stages if len(stages) > 1 else ():
            rows.append(
                [f"`{name}` {stage}", len(results)]
                + [_pm([r["metrics"]["stages"].get(stage, {}).get(k) for r in results])
                   for k in AP_COLUMNS]
            )  # fmt: skip
    return rows


def subset_rows(grouped) -> Tuple[List[str], List[list]]:
    """AP and AP75 by objects per image (SUBSET_BINS), mean ± std over the seeds that have them."""
    from cascade_zoo.analysis.subsets import bin_label

    labels = [bin_label(lo, hi) for lo, hi in SUBSET_BINS]
    header = ["model", "seeds"] + [f"{m} {b}" for b in labels for m in ("AP", "AP75")]
    rows = []
    for name, results in grouped.items():
        have = [r["subsets"] for r in results if r.get("subsets")]
        if not have:
            continue
        cells = [_pm([s.get(b, {}).get(m) for s in have]) for b in labels for m in ("AP", "AP75")]
        images = " / ".join(str(have[0].get(b, {}).get("images", 0)) for b in labels)
        rows.append([f"`{name}`", len(have)] + cells)
    if rows:
        header[1] = f"seeds (images: {images})"
    return header, rows


def variant_rows(grouped) -> List[list]:
    """Each run's extra evaluations (EVAL_VARIANTS): one row per model and variant."""
    rows = []
    for name, results in grouped.items():
        names = []
        for r in results:
            names += [v for v in (r.get("variants") or {}) if v not in names]
        for v in names:
            tables = [r["variants"][v]["metrics"]["all"] for r in results
                      if (r.get("variants") or {}).get(v, {}).get("metrics")]  # fmt: skip
            rows.append([f"`{name}`", v, len(tables)]
                        + [_pm([t.get(k) for t in tables]) for k in AP_COLUMNS])  # fmt: skip
    return rows


def _last_stage(results) -> Optional[int]:
    """The highest N with a "stageN" AP table in every one of ``results``."""
    common = None
    for r in results:
        found = map(re.compile(r"stage(\d+)").fullmatch, r["metrics"].get("stages") or {})
        have = {int(m.group(1)) for m in found if m}
        common = have if common is None else common & have
    return max(common) if common else None


def stage_gaps(grouped, baseline: Optional[str]) -> "OrderedDict[str, List[List[float]]]":
    """FSCascade's Fig. 1 / 3 for every cascade of ``grouped``: at each IoU 0.50..0.95, the last
    stage's AP minus the stage before it, and minus ``baseline``'s final AP of the same seed;
    label -> per IoU, the list of per-seed differences."""
    base = {r["seed"]: r["metrics"]["bbox"] for r in grouped.get(baseline, [])}
    out = OrderedDict()
    for name, results in grouped.items():
        n = _last_stage(results)
        if n is None or n < 2:
            continue
        last, before = f"stage{n}", f"stage{n - 1}"
        table = lambda r, s: r["metrics"]["stages"][s]  # noqa: E731
        out[f"`{name}` {last} - {before}"] = [
            [table(r, last)[k] - table(r, before)[k] for r in results] for k in AP_COLUMNS[1:]
        ]
        paired = [r for r in results if r["seed"] in base]
        if paired and name != baseline:
            out[f"`{name}` {last} - `{baseline}`"] = [
                [table(r, last)[k] - base[r["seed"]][k] for r in paired] for k in AP_COLUMNS[1:]
            ]
    return out


def stage_gap_rows(gaps) -> List[list]:
    """The rows of :func:`stage_gaps`: label, seeds, mean ± std at each IoU (2 decimals)."""
    return [[label, len(d[0])] + [_pm(v, digits=2) for v in d] for label, d in gaps.items()]


def stage_gap_table(grouped, baseline) -> str:
    """:func:`stage_gap_rows` as a Markdown table; "" when no model has a stage before its last."""
    from cascade_zoo.utils.markdown import markdown_table

    rows = stage_gap_rows(stage_gaps(grouped, baseline))
    return markdown_table(["difference", "seeds"] + AP_COLUMNS[1:], rows) if rows else ""


def _paired_gains(grouped, baseline: str) -> "OrderedDict[str, List[List[float]]]":
    """Model name -> per AP_COLUMNS column, its final AP minus ``baseline``'s of the same seed,
    one value per seed the baseline also has; models with no such seed are left out."""
    base = {r["seed"]: r["metrics"]["bbox"] for r in grouped.get(baseline, [])}
    out = OrderedDict()
    for name, results in grouped.items():
        paired = [r for r in results if r["seed"] in base]
        if name == baseline or not paired:
            continue
        out[name] = [
            [r["metrics"]["bbox"][k] - base[r["seed"]][k] for r in paired] for k in AP_COLUMNS
        ]
    return out


def gains_over(grouped, baseline: str) -> "OrderedDict[str, List[List[float]]]":
    """An ablation table's gains (IoU-Uniform's Table 4): each model's final AP, AP50..AP95 minus
    ``baseline``'s of the same seed; label -> per column, the list of per-seed differences.
    Seeds the baseline lacks are left out."""
    gains = _paired_gains(grouped, baseline)
    return OrderedDict((f"`{name}` - `{baseline}`", d) for name, d in gains.items())


def curves(grouped, stage: Optional[str] = None):
    """name -> (mean AP at each IoU, std) over seeds."""
    out = OrderedDict()
    for name, results in grouped.items():
        if stage is None:
            tables = [r["metrics"]["bbox"] for r in results]
        else:
            tables = [r["metrics"]["stages"][s] for r in results for s in [stage]
                      if s in r["metrics"]["stages"]]  # fmt: skip
            if not tables:
                continue
        stats = [_mean_std([t[k] for t in tables]) for k in AP_COLUMNS[1:]]
        out[name] = ([s[0] for s in stats], [s[1] for s in stats])
    return out


def _many_lines(ax) -> None:
    """Up to 20 curves told apart: ten colours, solid then dashed (the default cycle repeats its
    ten colours)."""
    from cycler import cycler
    from matplotlib import colormaps

    ax.set_prop_cycle(cycler(linestyle=["-", "--"]) * cycler(color=colormaps["tab10"].colors))


def _line_figure(plt, ncols: int = 1, width: float = 11):
    """A report figure of ``ncols`` axes side by side, each styled by :func:`_many_lines`."""
    fig, axes = plt.subplots(1, ncols, figsize=(width, 4.6), squeeze=False)
    for ax in axes[0]:
        _many_lines(ax)
    return fig, (axes[0] if ncols > 1 else axes[0][0])


def _legend_right(ax, fontsize: int = 7) -> None:
    """The legend beside the axes, where it hides no curve."""
    ax.legend(fontsize=fontsize, loc="center left", bbox_to_anchor=(1.01, 0.5))


def plot_results(grouped, figures_dir: Path, baseline: Optional[str]) -> List[str]:
    """AP vs IoU (mean ± std over seeds), gains over the baseline at each IoU, AP vs iteration."""
    from cascade_zoo.analysis._plot import pyplot, save_figure
    from cascade_zoo.analysis.ap_iou import IOU_THRESHOLDS

    plt = pyplot()
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    mean_curves = curves(grouped)
    fig, ax = _line_figure(plt)
    for name, (mean, std) in mean_curves.items():
        ax.errorbar(IOU_THRESHOLDS, mean, yerr=std, marker="o", markersize=3, capsize=2, label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%) on shapes_val, mean ± std over seeds")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    written.append(save_figure(fig, str(figures_dir / "results_ap_vs_iou.png"), "AP vs IoU"))

    if baseline in grouped:
        fig, ax = _line_figure(plt)
        for name, diffs in _paired_gains(grouped, baseline).items():
            stats = [_mean_std(d) for d in diffs[1:]]  # AP50..AP95
            ax.errorbar(IOU_THRESHOLDS, [s[0] for s in stats], yerr=[s[1] for s in stats],
                        marker="o", markersize=3, capsize=2, label=name)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel(f"AP gain over {baseline} (points)")
        ax.grid(alpha=0.3)
        _legend_right(ax)
        written.append(
            save_figure(fig, str(figures_dir / "results_gain_vs_iou.png"), "Gain over the baseline")
        )

    fig, ax = _line_figure(plt)
    for name, results in grouped.items():
        by_iter = OrderedDict()
        for r in results:
            for point in r.get("curve", []):
                by_iter.setdefault(point["iteration"], []).append(point["AP"])
        if len(by_iter) < 2:
            continue
        its = sorted(by_iter)
        stats = [_mean_std(by_iter[i]) for i in its]
        ax.errorbar(its, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                    markersize=3, capsize=2, label=name)  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP (%) on shapes_val, mean ± std over seeds")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    written.append(save_figure(fig, str(figures_dir / "results_ap_vs_iter.png"), "AP vs iteration"))

    gaps = stage_gaps(grouped, baseline)
    if gaps:
        # left: the last stage against the one before it; right: against the baseline
        fig, axes = _line_figure(plt, ncols=2, width=12)
        for label, per_iou in gaps.items():
            ax = axes[1] if label.endswith(f"`{baseline}`") else axes[0]
            stats = [_mean_std(v) for v in per_iou]
            ax.errorbar(IOU_THRESHOLDS, [s[0] for s in stats], yerr=[s[1] for s in stats],
                        marker="o", markersize=3, capsize=2,
                        label=label.replace("`", "").replace(f" - {baseline}", ""))  # fmt: skip
        axes[0].set_title("last stage - the stage before it", fontsize=9)
        axes[1].set_title(f"last stage - {baseline} (same seed)", fontsize=9)
        for ax in axes:
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel("IoU threshold")
            ax.set_ylabel("AP difference (points), mean ± std over seeds")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        written.append(
            save_figure(fig, str(figures_dir / "results_stage_gaps.png"), "Last-stage gaps")
        )
    return written


def write_results_md(
    grouped, path: Path, figures: List[str], command: str, baseline: Optional[str] = None
) -> None:
    from cascade_zoo.utils.markdown import markdown_table

    runs = []
    for name, results in grouped.items():
        for r in sorted(results, key=lambda r: r["seed"]):
            runs.append([f"`{name}`", r["seed"], r["git_commit"][:7], r["device"],
                         r["max_iter"], r["train_s_per_iter"],
                         r["wall_time_s"] / 60.0 if r["wall_time_s"] else None,
                         r["finished"]])  # fmt: skip
    rel = [os.path.relpath(f, path.parent) for f in figures]
    subsets_header, subsets = subset_rows(grouped)
    variants = variant_rows(grouped)
    extra = []
    if subsets:
        extra += [
            "## AP by objects per image",
            "",
            "The final detections' box AP on the `shapes_val` images with 1-3, 4-7 and 8 or more "
            "objects (RGA + PRM's Fig. 2), by pycocotools restricted to those images; mean ± std "
            "over the seeds whose result holds it.",
            "",
            markdown_table(subsets_header, subsets),
            "",
        ]
    if variants:
        extra += [
            "## Evaluation variants",
            "",
            "The same final models evaluated under other test-time settings (no training): "
            "`tools/run_benchmark.py`'s `EVAL_VARIANTS`, e.g. R3-CNN's number of test loops L_e.",
            "",
            markdown_table(["model", "variant", "seeds"] + AP_COLUMNS, variants),
            "",
        ]
    gaps = stage_gap_table(grouped, baseline)
    if gaps:
        against = f", and minus `{baseline}` of the same seed" if baseline else ""
        extra += [
            "## The last stage against the stage before it",
            "",
            "FSCascade's Fig. 1 / 3 for each cascade: at each IoU, the last stage's AP minus the "
            f"stage before it{against}; mean ± std over the seeds of the per-seed differences "
            "(points).",
            "",
            gaps,
            "",
        ]
    shown = [(img, cap, readme) for img, cap, readme in MODEL_FIGURES
             if (path.parent / img).is_file()]  # fmt: skip
    if shown:
        extra += [
            "## Figures from the runs' models",
            "",
            "Made by the paper tools from the runs' `model_final.pth` (which runs, of which "
            "protocol, and the commands are in each paper's README), not from the result files "
            "above: a figure may come from the models of an archived protocol.",
            "",
        ]
        for img, cap, readme in shown:
            link = os.path.relpath(REPO / readme, path.parent)
            extra += [f"{cap} ([{Path(readme).parent.name}]({link})):", "", f"![{cap}]({img})", ""]
    text = [
        "# Results",
        "",
        "Generated by `tools/run_benchmark.py` from the result files in `benchmarks/results/` "
        "(one per run; never edited by hand). Box AP (%) on `shapes_val`, mean ± std over the "
        "seeds, at each IoU threshold; for cascades, one row per stage below the model's "
        "final output. The protocol (same pretrained backbone for every method, schedule, "
        "seeds) is in [benchmark_protocol.md](benchmark_protocol.md); results of earlier "
        "protocols are archived in [archive/](archive/), not mixed in.",
        "",
        f"Regenerate: `{command}`",
        "",
        markdown_table(["model", "seeds"] + AP_COLUMNS, summary_rows(grouped)),
        "",
        *[f"![{Path(f).stem}]({f})" for f in rel],
        "",
        *extra,
        "## Runs",
        "",
        "Wall time: training and the evaluations in it, on the device named (CPU runs shared a "
        "2-core machine with other work unless the protocol says otherwise; train s/iter is the "
        "median time of a training iteration).",
        "",
        markdown_table(
            [
                "model",
                "seed",
                "commit",
                "device",
                "iterations",
                "train s/iter",
                "wall (min)",
                "finished",
            ],
            runs,
        ),  # fmt: skip
        "",
    ]
    path.write_text("\n".join(text))


README_BLOCK = re.compile(r"(<!-- results: ([^>]*?) -->\n)(.*?)(<!-- /results -->)", re.S)


def results_block(grouped, names: List[str]) -> str:
    """The Markdown of a README's results block: the summary, by-object-count and variant rows
    of the named models (in that order; a model with no results yet is listed as such). The
    option ``+gaps`` among the names adds :func:`stage_gaps`' rows, against the first model;
    ``+gains`` adds :func:`gains_over` the first model."""
    from cascade_zoo.utils.markdown import markdown_table

    options = {n for n in names if n.startswith("+")}
    unknown = options - {"+gaps", "+gains"}
    if unknown:
        raise ValueError(
            f"results block: unknown option(s) {sorted(unknown)}; known: +gaps, +gains"
        )
    names = [n for n in names if n not in options]
    chosen = OrderedDict((n, grouped[n]) for n in names if n in grouped)
    missing = [n for n in names if n not in grouped]
    text = (
        [markdown_table(["model", "seeds"] + AP_COLUMNS, summary_rows(chosen)), ""]
        if chosen
        else []
    )
    header, subsets = subset_rows(chosen)
    if subsets:
        text += ["AP by objects per image:", "", markdown_table(header, subsets), ""]
    variants = variant_rows(chosen)
    if variants:
        table = markdown_table(["model", "variant", "seeds"] + AP_COLUMNS, variants)
        text += ["The same models under other test-time settings:", "", table, ""]
    gaps = stage_gap_table(chosen, names[0]) if "+gaps" in options else ""
    if gaps:
        text += ["The last stage against the stage before it and against the first model, "
                 "mean ± std of the per-seed differences (points):", "", gaps, ""]  # fmt: skip
    gains = gains_over(chosen, names[0]) if "+gains" in options else {}
    if gains:
        rows = [[label, len(d[0])] + [_pm(v) for v in d] for label, d in gains.items()]
        text += ["Gains over the first model, mean ± std of the per-seed differences (points):",
                 "", markdown_table(["difference", "seeds"] + AP_COLUMNS, rows), ""]  # fmt: skip
    if missing:
        text += ["No results yet: " + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    text.append("(Generated by `tools/run_benchmark.py --report-only` from benchmarks/results/.)")
    return "\n".join(text) + "\n"


def write_readme_blocks(grouped, paths: List[Path]) -> List[Path]:
    """Regenerate every ``<!-- results: NAME ... -->`` ... ``<!-- /results -->`` block of the given
    Markdown files from the results; returns the files changed."""
    changed = []
    for path in paths:
        text = path.read_text()
        new = README_BLOCK.sub(
            lambda m: m.group(1) + results_block(grouped, m.group(2).split()) + m.group(4), text
        )
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def write_model_zoo_md(grouped, path: Path) -> None:
    from cascade_zoo.model_zoo import DETECTRON2_CHECKPOINTS
    from cascade_zoo.utils.markdown import markdown_table

    rows = []
    for name, results in grouped.items():
        for r in sorted(results, key=lambda r: r["seed"]):
            url = f"cascade_zoo://{name}/seed{r['seed']}"
            model_id = (r.get("checkpoint_sha256") or "-")[:8]
            rows.append([
                f"`{name}`", r["seed"], f"{r['max_iter']} iter", r["train_s_per_iter"],
                r["inference_s_per_image"], r.get("peak_rss_mb"), r["metrics"]["bbox"]["AP"],
                model_id, f"`{url}/model_final.pth` \\| `{url}/metrics.json`",
            ])  # fmt: skip
    d2_rows = [[f"`configs/{k}`", f"`{v}`"] for k, v in DETECTRON2_CHECKPOINTS.items()]
    text = PREAMBLE_MODEL_ZOO.format(
        table=markdown_table(
            ["name", "seed", "lr sched", "train time (s/iter)", "inference time (s/im)",
             "train mem (MB, CPU peak RSS)", "box AP", "model id", "download"], rows),
        d2_table=markdown_table(["config of this project", "Detectron2 model zoo name"], d2_rows),
    )  # fmt: skip
    path.write_text(text)


PREAMBLE_MODEL_ZOO = """# cascade-zoo Model Zoo

Models trained by `tools/run_benchmark.py`, in the format of Detectron2's MODEL_ZOO.md. This file
is generated from the result files in `benchmarks/results/`; the figures are measured by the runs
(device and machine in each result file and in [docs/results.md](docs/results.md)). On a CPU the
train-memory column is the peak resident set size of the training process.

Checkpoints are named `cascade_zoo://<name>/seed<k>/model_final.pth`. The prefix resolves to
`$CASCADE_ZOO_MODEL_ZOO` (a directory or an `http(s)://` base URL), by default
`$CASCADE_ZOO_CACHE/model_zoo` (`.cache/model_zoo` in the repository), where the runner publishes
each finished run. Use them as in Detectron2:

```python
from cascade_zoo import model_zoo

cfg = model_zoo.get_config("Benchmark/cascade_rcnn_R_18_FPN_shapes.yaml", trained=True)
model = model_zoo.get("Benchmark/cascade_rcnn_R_18_FPN_shapes.yaml", trained=True)
```

or `python train_net.py --config-file configs/<name>.yaml --eval-only MODEL.WEIGHTS
cascade_zoo://<name>/seed0/model_final.pth`.

{table}

## Detectron2's model zoo

Detectron2's own Faster/Mask/Cascade Mask R-CNN checkpoints load by name into this project's
configs of the same models: `model_zoo.get_checkpoint_url(config)` (and
`model_zoo.get(config, trained=True)`) gives the `detectron2://` file of the model in the right
column (downloaded by Detectron2's PathManager on first use). The box-cascade core configured as
Detectron2's `CascadeROIHeads` is `configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x_detectron2.yaml`:
it keeps Detectron2's parameter names, so a checkpoint of a Detectron2 cascade loads into it
with no missing or unexpected keys, e.g. `train_net.py --config-file
configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x_detectron2.yaml --eval-only MODEL.WEIGHTS
<checkpoint of configs/Baselines/cascade_rcnn_R_50_FPN_1x.yaml>`. For a Cascade *Mask* R-CNN
checkpoint, use the Baselines mask config with the core's keys of that file
(`MODEL.META_ARCHITECTURE BoxCascadeRCNN MODEL.ROI_HEADS.NAME BoxCascadeROIHeads` and its
three `MODEL.BOX_CASCADE.*` lines).
`tests/box_cascade/test_core_equivalence.py` checks both (box and mask) with checkpoints made
from Detectron2's own heads; Detectron2's published files themselves were not downloaded here
(no network).

{d2_table}
"""


# ---------------------------------------------------------------------------------------------


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )  # fmt: skip
    parser.add_argument("--configs", nargs="*", default=[], help="relative to configs/")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--runs-dir", help="default: $CASCADE_ZOO_CACHE/benchmark_runs")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the reports")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--fill-missing", action="store_true",
                        help="add the by-object-count AP and the eval variants to finished results "
                        "that lack them (re-training runs whose files are gone)")  # fmt: skip
    parser.add_argument("--results-md", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--model-zoo-md", default=str(REPO / "MODEL_ZOO.md"))
    parser.add_argument("--figures-dir", default=str(REPO / "docs" / "images"))
    parser.add_argument("--baseline", default="Benchmark/faster_rcnn_R_18_FPN_shapes")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[run_benchmark] %(message)s")
    # SIGTERM (kill) as an exception: the running training is stopped and its time recorded
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from cascade_zoo.model_zoo import cache_dir, register_handler

    register_handler()
    runs_dir = Path(args.runs_dir or os.path.join(cache_dir(), "benchmark_runs"))
    results_dir = Path(args.results_dir)
    device = args.device or default_device()
    failed = []
    if not args.report_only:
        for config in args.configs:
            for seed in args.seeds:
                try:
                    run = Run(config, seed, results_dir, runs_dir, args.opts)
                    execute(run, device=device, fill_missing=args.fill_missing)
                except Exception as e:  # one failed run must not stop the matrix
                    logger.error(f"{config} seed {seed}: FAILED: {e}")
                    failed.append((config, seed))
    if not args.no_report:
        grouped = load_results(results_dir)
        figures = plot_results(grouped, Path(args.figures_dir), args.baseline)
        write_results_md(grouped, Path(args.results_md), figures,
                         "python tools/run_benchmark.py --report-only", args.baseline)  # fmt: skip
        write_model_zoo_md(grouped, Path(args.model_zoo_md))
        write_readme_blocks(grouped, sorted(REPO.glob("projects/*/README.md")))
        logger.info(f"Wrote {args.results_md}, {args.model_zoo_md} and {len(figures)} plots")
    for config, seed in failed:
        logger.error(f"not done: {config} seed {seed} (run the same command again to resume)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
