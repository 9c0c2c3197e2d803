"""Which model a run trains, and where its files live.

A run is a method config (relative to ``configs/``; ``BASE.yaml+DELTA.yaml`` composes a config
and deltas merged over it in order), optionally followed by a protocol file merged over it, and
a seed. Its identity is the hash of the resolved config's keys that differ from the project's
defaults (without :data:`IGNORED_KEYS`) and, when it starts from a pretrained file the project
makes itself (:data:`PRETRAINED`), the sha256 of that file's tensors.
"""

import functools
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

from ..model_zoo import config_parts, run_name  # a run's name is its model's name in the zoo

# The repository: configs/ is under it, and train_net.py runs in it.
REPO = Path(__file__).resolve().parents[3]
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


class Pretraining(NamedTuple):
    """How the project makes a pretrained file: the run of ``config`` (relative to configs/)
    merged with ``protocol`` (None: the config alone) at ``seed``; the weights of its
    model_final.pth whose names start with ``prefix`` are kept. ``about`` and ``used_by`` say
    what the file is and which configs start from it (MODEL_ZOO.md)."""

    config: str
    protocol: Optional[str]
    seed: int
    prefix: str
    about: str = ""
    used_by: str = ""


# The protocol whose runs docs/results.md, MODEL_ZOO.md and the paper READMEs report (the claims
# are measured on its runs): protocol v3 until protocol v4's main rows replace it.
CURRENT_PROTOCOL = "Protocols/shapes_v3.yaml"
# The baseline of the report's plots and gains: Faster R-CNN under that protocol.
BASELINE_CONFIG = "Baselines/faster_rcnn_R_18_FPN_shapes.yaml"

# Pretrained files the project makes itself: MODEL.WEIGHTS -> how. The fair protocol's backbone
# (docs/benchmark_protocol.md): the ResNet of a long Faster R-CNN run, like the
# ImageNet-pretrained ResNet of the papers.
PRETRAINED = {
    "cascade_zoo://Benchmark/shapes_backbone_R_18_w32.pth": Pretraining(
        "Pretrain/shapes_backbone_R_18_w32_1x.yaml",
        None,
        0,
        "backbone.bottom_up.",
        about="the benchmark protocol's shapes-pretrained ResNet-18 (half width)",
        used_by="`MODEL.WEIGHTS` of `make demo` and of every benchmark config",
    ),
    "cascade_zoo://Benchmark/shapes_backbone_R_18_w32_v4.pth": Pretraining(
        "Pretrain/shapes_backbone_R_18_w32_6x.yaml",
        None,
        0,
        "backbone.bottom_up.",
        about="protocol v4's shapes-pretrained ResNet-18 (half width), pretrained 6x as long",
        used_by="`MODEL.WEIGHTS` of `configs/Protocols/shapes_v4.yaml`",
    ),
}


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


def config_diff(config_files: Union[str, Sequence[str]], opts=()) -> Dict[str, object]:
    """The resolved config's keys whose values differ from the project's defaults (new keys of
    the defaults leave this unchanged), without IGNORED_KEYS. ``config_files``: one file, or
    several merged in order."""
    from cascade_zoo import get_zoo_cfg, setup_cfg

    cfg = _flatten(setup_cfg(config_files, opts, freeze=False))
    default = _flatten(get_zoo_cfg())
    return OrderedDict(
        (k, _plain(cfg[k]))
        for k in sorted(cfg)
        if k not in IGNORED_KEYS and (k not in default or _plain(default[k]) != _plain(cfg[k]))
    )


def _first_names() -> Dict[str, str]:
    """Current name -> the name a renamed key had first (cascade_zoo.config.RENAMED_KEYS)."""
    from cascade_zoo.config import RENAMED_KEYS

    first = {}
    for old, new in RENAMED_KEYS.items():  # in the order of the renames
        first.setdefault(new, old)
    return first


def config_hash(diff: Dict[str, object]) -> str:
    """The hash of a config difference (:func:`config_diff`). A renamed key counts under the
    first name it had, so a rename alone leaves the hash of every recorded result unchanged
    (the result's ``config_diff`` keeps the names of its day)."""
    first = _first_names()
    canonical = {first.get(key, key): value for key, value in diff.items()}
    text = json.dumps(canonical, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _default_max_iter() -> int:
    from cascade_zoo import get_zoo_cfg

    return get_zoo_cfg().SOLVER.MAX_ITER


class Run:
    """One (config, seed) of the matrix and where its files live: the result file
    ``<results_dir>/<name>/seed<k>.json`` and the training's OUTPUT_DIR
    ``<runs_dir>/<name>/seed<k>`` (:func:`run_name`). ``config``: a file relative to configs/, or
    ``BASE.yaml+DELTA.yaml[+...]`` merged in order; ``protocol``: a file (relative to configs/)
    merged over it. The hash is of the merged config, whichever way its files are spelled."""

    def __init__(
        self,
        config: str,
        seed: int,
        results_dir: Path,
        runs_dir: Path,
        opts=(),
        protocol: Optional[str] = None,
    ):
        self.config = "+".join(config_parts(config))
        self.protocol = protocol
        self.seed = seed
        self.opts = list(opts)
        self.name = run_name(config, protocol)
        # relative to configs/, merged in order
        self.configs = config_parts(config) + ([protocol] if protocol else [])
        self.config_files = [str(REPO / "configs" / c) for c in self.configs]
        self.result_path = Path(results_dir) / self.name / f"seed{seed}.json"
        self.output_dir = Path(runs_dir) / self.name / f"seed{seed}"
        self.diff = config_diff(self.config_files, self.opts)
        self.hash = config_hash(self.diff)
        self.max_iter = self.diff.get("SOLVER.MAX_ITER", _default_max_iter())

    def config_file_args(self) -> List[str]:
        """``--config-file`` for each config file, relative to the repository."""
        return [a for f in self.config_files for a in ("--config-file", os.path.relpath(f, REPO))]

    def train_args(self, device: str) -> List[str]:
        return [
            "train_net.py",
            *self.config_file_args(),
            "--resume",
            *self.opts,
            "OUTPUT_DIR",
            str(self.output_dir),
            "SEED",
            str(self.seed),
            "MODEL.DEVICE",
            device,
        ]


def pretrained_sha256(run: Run) -> Optional[str]:
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
