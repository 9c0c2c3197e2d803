"""Result files: one small JSON per run, ``<results_dir>/<name>/seed<k>.json``, made from the
run's metrics.json; read, checked against the run's config and pretrained backbone, and set
aside (renamed, never deleted) when they no longer hold.
"""

import hashlib
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

from . import identity
from .identity import Run, pretrained_sha256

RESULT_FORMAT = 1
AP_COLUMNS = ["AP"] + [f"AP{50 + 5 * i}" for i in range(10)]
# AP by the number of objects per image (RGA + PRM's Fig. 2), stored with every run.
SUBSET_BINS = ((1, 3), (4, 7), (8, None))

# The runner's console (not under "cascade_zoo", which Detectron2's setup_logger stops from
# propagating in processes that train).
logger = logging.getLogger("run_results")


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
    backbone = pretrained_sha256(run)
    if backbone and data.get("pretrained_sha256") != backbone:
        return "other-backbone", data.get("pretrained_sha256")
    return "ok", data


def set_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` out of the way (nothing is deleted); returns the new path."""
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    target = path.with_name(f"{stem}.{tag}.json")
    n = 1
    while target.exists():
        target = path.with_name(f"{stem}.{tag}{n}.json")
        n += 1
    path.rename(target)
    return target


def write_result(run: Run, result: dict) -> None:
    run.result_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.result_path.with_name(run.result_path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, run.result_path)


def metrics_records(output_dir: Path) -> List[dict]:
    """The lines of a training's metrics.json (Detectron2's JSONWriter), in order."""
    path = output_dir / "metrics.json"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill, or being written
    return records


def _inference_s_per_image(output_dir: Path) -> Optional[float]:
    log = output_dir / "log.txt"
    if not log.is_file():
        return None
    found = re.findall(
        r"Total inference pure compute time: .*?\(([0-9.]+) s / iter per device", log.read_text()
    )
    return float(found[-1]) if found else None


def git_commit() -> str:
    """HEAD, with "+dirty" when tracked files differ from it; "unknown" outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=identity.REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=identity.REPO).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty != 0 else "")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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

    records = metrics_records(run.output_dir)
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
        "config": "+".join(f"configs/{c}" for c in identity.config_parts(run.config)),
        "config_files": [f"configs/{c}" for c in run.configs],
        "seed": run.seed,
        "config_hash": run.hash,
        "config_diff": run.diff,
        "command": command,
        "git_commit": commits[0] if commits else git_commit(),
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
        "checkpoint_sha256": sha256(checkpoint) if checkpoint.is_file() else None,
        "pretrained_sha256": pretrained_sha256(run),
        "metrics": {"bbox": bbox, "stages": stages},
        "curve": curve,
        **_continued_from(run.output_dir),
    }


def _continued_from(output_dir: Path) -> Dict:
    """A run started from a shorter run's checkpoint (:mod:`.continuation`) says so: which run,
    from which iteration (its wall time counts from there)."""
    path = Path(output_dir) / "continued_from.json"
    return {"continued_from": json.loads(path.read_text())} if path.is_file() else {}


def _run_of(path: Path, name: str, results_dir: Path) -> Optional[Run]:
    """The run a result file belongs to: from the config files it records (the name of a
    protocol run or of a composed config is not a file), else from its name; None (with a
    warning) if a config is gone."""
    seed = int(path.name[4:-5])
    try:
        files = json.loads(path.read_text()).get("config_files")
    except (OSError, ValueError, AttributeError):
        files = None
    config, protocol = f"{name}.yaml", None
    if isinstance(files, list) and files and all(isinstance(f, str) for f in files):
        recorded = [f[len("configs/") :] if f.startswith("configs/") else f for f in files]
        # the files are the config's (composed with +), the last one perhaps a protocol
        readings = [("+".join(recorded), None)]
        if len(recorded) > 1:
            readings.append(("+".join(recorded[:-1]), recorded[-1]))
        for files_config, files_protocol in readings:
            if identity.run_name(files_config, files_protocol) == name:
                config, protocol = files_config, files_protocol
                break
    for part in identity.config_parts(config) + ([protocol] if protocol else []):
        file = identity.REPO / "configs" / part
        if not file.is_file():
            logger.warning(f"{path}: its config {file} is gone; left out")
            return None
    return Run(config, seed, results_dir, Path("."), protocol=protocol)


def load_results(results_dir: Path) -> "OrderedDict[str, List[dict]]":
    """Every valid result file under ``results_dir``, grouped by name (stale, corrupt files and
    results of a config that changed since or of another version of its pretrained backbone are
    left out, with a warning)."""
    grouped = OrderedDict()
    for path in sorted(Path(results_dir).glob("**/seed*.json")):
        if not re.fullmatch(r"seed\d+\.json", path.name):
            continue
        name = str(path.parent.relative_to(results_dir)).replace(os.sep, "/")
        run = _run_of(path, name, Path(results_dir))
        if run is None:
            continue
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
