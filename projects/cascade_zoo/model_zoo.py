"""The project's model zoo, mirroring ``detectron2.model_zoo``.

- :func:`get_config_file`, :func:`get_config`, :func:`get` and :func:`get_checkpoint_url` take a
  config path relative to the repository's ``configs/`` (e.g.
  ``"CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"``), as Detectron2's take one relative to its
  own ``configs/``.
- Checkpoints are named ``cascade_zoo://<config name>/seed<k>/model_final.pth``. The
  :class:`CascadeZooHandler` (registered with Detectron2's ``PathManager`` when ``cascade_zoo`` is
  imported) maps that prefix to the model-zoo base: ``$CASCADE_ZOO_MODEL_ZOO`` (a directory, or
  an ``http(s)://`` URL whose files are downloaded and cached by iopath), by default
  ``$CASCADE_ZOO_CACHE/model_zoo`` (``$CASCADE_ZOO_CACHE`` defaults to ``<repo>/.cache``).
  ``tools/run_results.py`` publishes its runs there (their training checkpoints as they are;
  :func:`publish_model` writes model-only ones). A file the base lacks is read from
  the repository's own copy under ``benchmarks/model_zoo/`` if it ships one (the benchmark's
  pretrained backbone: every clone starts from the same weights without re-making them).
- ``get_checkpoint_url`` / ``get(trained=True)`` check that the checkpoint file is there (in the
  model-zoo directory or the repository's copy; a URL base is not checked); when it is not, the
  error names where the zoo looked, the environment variable that moves it, and the command
  that trains the model (with the time it took, from its result file).
- Configs equivalent to a model of Detectron2's own model zoo (:data:`DETECTRON2_CHECKPOINTS`)
  resolve ``get_checkpoint_url``/``get(trained=True)`` to that model's ``detectron2://`` file,
  and Detectron2's config names of them (:data:`DETECTRON2_EQUIVALENTS`, e.g.
  ``"Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"``) name the equivalent config of this project.
- A model may also be a composition, spelled as ``tools/run_results.py`` spells its runs:
  ``"BASE.yaml+DELTA.yaml[+...]"`` (files merged in order, e.g. an ablation's delta over its
  base) and a benchmark protocol last, ``"...+Protocols/shapes_v4.yaml"``. Its name in the zoo is
  the runner's run name (:func:`config_name`):
  ``"shapes_v4/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes"`` for
  ``"CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+Protocols/shapes_v4.yaml"``, and that
  name (with ``.yaml``) is accepted too. :func:`get_config_file` writes such a model's flat
  config to the cache, so that ``train_net.py --config-file`` runs it as one file.
- :func:`publish_model` writes a trained model into a model-zoo directory as Detectron2's zoo
  holds one: ``<name>/seed<k>/model_final.pth`` (the model's weights only, no optimizer or
  scheduler state), ``metrics.json`` and ``SHA256SUMS`` (``sha256sum -c`` checks it);
  ``tools/publish_model.py`` is its command line.
"""

import hashlib
import json
import os
import posixpath
import shlex
import shutil
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from detectron2.utils.file_io import PathHandler, PathManager

# The repository root (this file is projects/cascade_zoo/model_zoo.py).
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"
# The directory of the result files that tools/run_results.py writes (one per trained model).
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
PREFIX = "cascade_zoo://"
# Model-zoo files the repository ships, served when the model-zoo base lacks them (unless
# $CASCADE_ZOO_IGNORE_SHIPPED is set to a non-empty value).
SHIPPED_DIR = REPO_ROOT / "benchmarks" / "model_zoo"

# Configs of this project that are the same model as one of Detectron2's model zoo, mapped to
# that model's name in ``detectron2.model_zoo``: its checkpoint loads into the config unchanged.
DETECTRON2_CHECKPOINTS = {
    "Baselines/faster_rcnn_R_50_FPN_1x.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "Baselines/faster_rcnn_R_50_FPN_3x.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "Baselines/faster_rcnn_R_101_FPN_3x.yaml": "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "Baselines/mask_rcnn_R_50_FPN_1x.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "Baselines/mask_rcnn_R_50_FPN_3x.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "Baselines/mask_rcnn_R_101_FPN_3x.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"
    ),
    "Baselines/cascade_mask_rcnn_R_50_FPN_1x.yaml": "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "Baselines/cascade_mask_rcnn_R_50_FPN_3x.yaml": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
}
# Configs of this project that are the same config as one of Detectron2's model zoo (every key
# equal, tests/test_model_zoo.py checks it): those above, and those Detectron2 publishes no
# checkpoint of. Detectron2's name resolves to this project's config.
DETECTRON2_EQUIVALENTS = {
    **DETECTRON2_CHECKPOINTS,
    "Baselines/faster_rcnn_R_50_FPN_voc.yaml": "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
}
# Benchmark protocols (configs/Protocols/<stem>.yaml): merged last over a method config; a model
# trained under one is named "<stem>/<the method config's name>".
PROTOCOLS = "Protocols"
# Config names that were files once and are compositions now, -> their composition (they still
# resolve, with a FutureWarning): protocol v3's overlays configs/Benchmark/<x>.yaml became the
# method config + Protocols/shapes_v3.yaml, and the COCO / shapes stage-count and IoU-Uniform
# Table 4 ablation pairs became one delta each.
_V3 = "Protocols/shapes_v3.yaml"
_CASCADE = "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"
_IU = "IoUUniform/iou_uniform_faster_rcnn_R_18_FPN_shapes.yaml"
RENAMED_CONFIGS = {
    "Benchmark/pretrain_faster_rcnn_R_18_FPN_shapes": "Pretrain/shapes_backbone_R_18_w32_1x.yaml",
    **{
        f"Benchmark/{Path(method).stem}": f"{method}+{_V3}"
        for method in (
            "Baselines/faster_rcnn_R_18_FPN_shapes.yaml",
            _CASCADE,
            "CascadeRCNN/cascade_rcnn_R_18_FPN_detectron2_shapes.yaml",
            "FSCascade/fs_cascade_R_18_FPN_shapes.yaml",
            "R3CNN/r3_cnn_R_18_FPN_shapes.yaml",
            "RGA_PRM/faster_rcnn_R_18_FPN_rga_shapes.yaml",
            "RGA_PRM/faster_rcnn_R_18_FPN_prm_shapes.yaml",
            "RGA_PRM/faster_rcnn_R_18_FPN_rga_prm_shapes.yaml",
            "RGA_PRM/cascade_rcnn_R_18_FPN_rga_prm_shapes.yaml",
            _IU,
            "IoUUniform/iou_uniform_cascade_rcnn_R_18_FPN_shapes.yaml",
        )
    },
    **{
        f"Benchmark/cascade_rcnn_R_18_FPN_{n}_shapes": (
            f"{_CASCADE}+CascadeRCNN/ablations/{n}.yaml+{_V3}"
        )
        for n in ("1_stage", "2_stages", "4_stages")
    },
    **{
        f"Benchmark/iou_uniform_faster_rcnn_R_18_FPN_{n}_shapes": (
            f"{_IU}+IoUUniform/ablations/{n}.yaml+{_V3}"
        )
        for n in ("off", "uniform", "uniform_efo")
    },
    **{
        f"{paper}/ablations/{old}": f"{paper}/{base}+{paper}/ablations/{n}.yaml"
        for paper, stems, deltas in (
            ("CascadeRCNN", "cascade_rcnn_R_{}", ("1_stage", "2_stages", "4_stages")),
            ("IoUUniform", "iou_uniform_faster_rcnn_R_{}", ("off", "uniform", "uniform_efo")),
        )
        for n in deltas
        for old, base in (
            (stems.format(f"50_FPN_1x_{n}"), stems.format("50_FPN_1x.yaml")),
            (stems.format(f"18_FPN_{n}_shapes"), stems.format("18_FPN_shapes.yaml")),
        )
    },
}
# The files of a published model, in <model-zoo base>/<name>/seed<k>/.
CHECKPOINT_FILE = "model_final.pth"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "SHA256SUMS"


def cache_dir() -> str:
    """``$CASCADE_ZOO_CACHE``, default ``<repo>/.cache``: large files made by the project."""
    return os.environ.get("CASCADE_ZOO_CACHE") or str(REPO_ROOT / ".cache")


def model_zoo_base() -> str:
    """Where ``cascade_zoo://`` points: ``$CASCADE_ZOO_MODEL_ZOO`` (directory or URL), default
    ``<cache_dir()>/model_zoo``."""
    return os.environ.get("CASCADE_ZOO_MODEL_ZOO") or os.path.join(cache_dir(), "model_zoo")


def _base_origin() -> str:
    """How :func:`model_zoo_base` was chosen, for messages."""
    if os.environ.get("CASCADE_ZOO_MODEL_ZOO"):
        return "$CASCADE_ZOO_MODEL_ZOO"
    if os.environ.get("CASCADE_ZOO_CACHE"):
        return "$CASCADE_ZOO_MODEL_ZOO unset: $CASCADE_ZOO_CACHE/model_zoo"
    return "$CASCADE_ZOO_MODEL_ZOO and $CASCADE_ZOO_CACHE unset: <repository>/.cache/model_zoo"


def where_looked(path: str) -> str:
    """Where a ``cascade_zoo://`` name is looked for, in words (several lines): the model-zoo base
    (and how it was chosen), the repository's shipped copy, and how to point the zoo elsewhere."""
    handler = CascadeZooHandler()
    return (
        f"The model zoo looked for {path} at:\n"
        f"    {handler.resolve(path)} (the model-zoo base, {_base_origin()})\n"
        f"    {handler.shipped(path)} (the files the repository ships"
        + (
            ", ignored: $CASCADE_ZOO_IGNORE_SHIPPED is set"
            if os.environ.get("CASCADE_ZOO_IGNORE_SHIPPED")
            else ""
        )
        + ")\n"
        "To use a model zoo elsewhere, set CASCADE_ZOO_MODEL_ZOO to its directory or http(s):// "
        "base URL (or CASCADE_ZOO_CACHE; the zoo is then $CASCADE_ZOO_CACHE/model_zoo)."
    )


def _is_url(base: str) -> bool:
    return base.startswith(("http://", "https://"))


class CascadeZooHandler(PathHandler):
    """iopath handler of ``cascade_zoo://NAME``: ``<model_zoo_base()>/NAME``, read from a
    directory or downloaded (and cached) from a URL. The base is read at each call, so changing
    ``$CASCADE_ZOO_MODEL_ZOO`` takes effect at once."""

    def _get_supported_prefixes(self):
        return [PREFIX]

    def resolve(self, path: str) -> str:
        """The directory path or URL that ``path`` stands for."""
        name = path[len(PREFIX) :].lstrip("/")
        if not name or ".." in Path(name).parts:
            raise ValueError(f"'{path}': expected {PREFIX}<relative path> without '..'")
        base = model_zoo_base()
        if _is_url(base):
            return base.rstrip("/") + "/" + name
        return os.path.join(base, name)

    def shipped(self, path: str) -> str:
        """The repository's copy of ``path`` (which may not exist)."""
        self.resolve(path)  # validates the name
        return str(SHIPPED_DIR / path[len(PREFIX) :].lstrip("/"))

    def _source(self, path: str) -> str:
        """Where ``path`` is read from: the model-zoo directory's file if it is there, else the
        repository's shipped copy if there is one, else :meth:`resolve` (a URL, or a missing
        file)."""
        target = self.resolve(path)
        if not _is_url(target) and os.path.exists(target):
            return target
        if os.environ.get("CASCADE_ZOO_IGNORE_SHIPPED"):
            return target  # the user wants the model zoo's own files only
        shipped = self.shipped(path)
        return shipped if os.path.exists(shipped) else target

    def _get_local_path(self, path, **kwargs):
        target = self._source(path)
        if _is_url(target):
            return PathManager.get_local_path(target, **kwargs)
        return target

    def _open(self, path, mode="r", **kwargs):
        if any(m in mode for m in "wax+"):  # writes go to the model-zoo base, never the repository
            return PathManager.open(self.resolve(path), mode, **kwargs)
        return PathManager.open(self._get_local_path(path), mode, **kwargs)

    def _exists(self, path, **kwargs):
        target = self._source(path)
        return PathManager.exists(target) if not _is_url(target) else True

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._source(path))

    def _isdir(self, path, **kwargs):
        return os.path.isdir(self.resolve(path))

    def _ls(self, path, **kwargs):
        return os.listdir(self.resolve(path))

    def _mkdirs(self, path, **kwargs):
        os.makedirs(self.resolve(path), exist_ok=True)

    def _copy_from_local(self, local_path, dst_path, overwrite=False, **kwargs):
        import shutil

        target = self.resolve(dst_path)
        if _is_url(target):
            raise OSError(f"cannot publish to a URL model zoo ({target}); use a directory")
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"{target} exists (overwrite=False)")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(local_path, target)


def register_handler() -> None:
    """Register :class:`CascadeZooHandler` with Detectron2's PathManager (once)."""
    if PREFIX not in PathManager._path_handlers:
        PathManager.register_handler(CascadeZooHandler())


def config_parts(config: str) -> List[str]:
    """A config as its files, relative to configs/ and normalized: ``"A.yaml"`` ->
    ``["A.yaml"]``; a composition ``"A.yaml+ablations/d.yaml"`` (the deltas merged over A in
    order) -> ``["A.yaml", "ablations/d.yaml"]``."""
    parts = [posixpath.normpath(p.strip().replace(os.sep, "/")) for p in config.split("+")]
    if not all(p.endswith(".yaml") for p in parts):
        raise ValueError(f"{config!r}: expected FILE.yaml or FILE.yaml+DELTA.yaml[+...]")
    return parts


def run_name(config: str, protocol: Optional[str] = None) -> str:
    """``"Baselines/x.yaml"`` -> ``"Baselines/x"``. A composition is named by its files' stems
    joined by ``+``, in the last file's directory: ``"P/x.yaml+P/ablations/d.yaml"`` ->
    ``"P/ablations/x+d"``. With protocol ``"Protocols/shapes_v4.yaml"``: ``"shapes_v4/"`` before
    the name."""
    parts = config_parts(config)
    stems = "+".join(posixpath.splitext(posixpath.basename(p))[0] for p in parts)
    name = posixpath.join(posixpath.dirname(parts[-1]), stems)
    return f"{Path(protocol).stem}/{name}" if protocol else name


def split_protocol(config_path: str) -> Tuple[str, Optional[str]]:
    """``"M.yaml[+D.yaml...]+Protocols/p.yaml"`` -> ``("M.yaml[+D.yaml...]", "Protocols/p.yaml")``;
    a config without a protocol -> ``(config_path, None)``; a protocol's model name
    ``"p/M.yaml"`` (configs/Protocols/p.yaml exists) -> ``("M.yaml", "Protocols/p.yaml")``.

    Raises:
        ValueError: a protocol that is not the last file, or two of them.
    """
    parts = config_parts(config_path)
    protocols = [i for i, p in enumerate(parts) if p.split("/")[0] == PROTOCOLS]
    if protocols and len(parts) > 1:  # (a protocol file alone is a file like any other)
        if protocols != [len(parts) - 1]:
            raise ValueError(
                f"{config_path!r}: a protocol ({PROTOCOLS}/...) is merged last, over a method "
                f"config, once"
            )
        return "+".join(parts[:-1]), parts[-1]
    first, _, rest = parts[0].partition("/")
    if len(parts) == 1 and rest and (CONFIGS_DIR / PROTOCOLS / f"{first}.yaml").is_file():
        return rest, f"{PROTOCOLS}/{first}.yaml"
    return "+".join(parts), None


def composition_files(config_path: str) -> List[str]:
    """The files (relative to configs/) a config or composition merges, in order, the protocol
    last; each one resolved by :func:`resolve_config_path`."""
    config, protocol = split_protocol(config_path)
    files = [_resolve_file(p) for p in config_parts(config)]
    return files + ([_resolve_file(protocol)] if protocol else [])


def config_name(config_path: str) -> str:
    """``"Baselines/x.yaml"`` -> ``"Baselines/x"``: the model's name in the zoo; a composition
    is named as ``tools/run_results.py`` names its run (:func:`run_name`)."""
    if "+" in config_path or split_protocol(config_path)[1]:
        config, protocol = split_protocol(config_path)
        return run_name(config, protocol)
    path = Path(config_path)
    try:
        path = path.resolve().relative_to(CONFIGS_DIR)
    except ValueError:
        pass
    return str(path.with_suffix("")).replace(os.sep, "/")


def _detectron2_has_config(config_path: str) -> bool:
    from detectron2 import model_zoo as d2_model_zoo

    try:
        d2_model_zoo.get_config_file(config_path)
    except RuntimeError:
        return False
    return True


def resolve_config_path(config_path: str) -> str:
    """A config name of this project, relative to ``configs/``: ``config_path`` itself, or, for
    a name of Detectron2's model zoo, this project's equivalent config
    (:data:`DETECTRON2_EQUIVALENTS`).

    Raises:
        RuntimeError: neither a config of this project nor a Detectron2 config with an
            equivalent here; the message lists the Detectron2 names that have one.
    """
    renamed = RENAMED_CONFIGS.get(
        config_path[: -len(".yaml")] if config_path.endswith(".yaml") else config_path
    )
    if renamed:
        warnings.warn(
            f"{config_path} is now {renamed} (the same settings); the old name will go",
            FutureWarning,
            stacklevel=2,
        )
        config_path = renamed
    if "+" in config_path or split_protocol(config_path)[1]:
        return "+".join(composition_files(config_path))  # each file checked
    return _resolve_file(config_path)


def _resolve_file(config_path: str) -> str:
    if (CONFIGS_DIR / config_path).is_file():
        return config_path
    ours = {d2: own for own, d2 in DETECTRON2_EQUIVALENTS.items()}
    if config_path in ours:
        return ours[config_path]
    known = "\n".join(f"  {d2} -> configs/{own}" for d2, own in sorted(ours.items()))
    if _detectron2_has_config(config_path):
        raise RuntimeError(
            f"{config_path} is a config of Detectron2's model zoo that this project has no "
            f"equivalent of (use detectron2.model_zoo for it). Detectron2 names with an "
            f"equivalent here:\n{known}"
        )
    raise RuntimeError(
        f"{config_path} not available in the cascade-zoo configs ({CONFIGS_DIR / config_path}); "
        f"names are relative to {CONFIGS_DIR}, or one of these Detectron2 names:\n{known}"
    )


def get_config_file(config_path: str) -> str:
    """The absolute path of a config of this project, given relative to ``configs/``, or of the
    equivalent of a Detectron2 model-zoo config (e.g. ``"Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"``
    -> ``configs/Baselines/cascade_mask_rcnn_R_50_FPN_1x.yaml``). For a composition, a flat
    config of its files merged in order, written to
    ``$CASCADE_ZOO_CACHE/composed_configs/<name>.yaml`` (rewritten at each call).

    Raises:
        RuntimeError: no such config (as ``detectron2.model_zoo.get_config_file``).
    """
    config_path = resolve_config_path(config_path)
    if "+" not in config_path:
        return str(CONFIGS_DIR / config_path)
    from .config import compose_config_text

    files = [str(CONFIGS_DIR / f) for f in config_parts(config_path)]
    target = Path(cache_dir()) / "composed_configs" / f"{config_name(config_path)}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.partial")
    partial.write_text(compose_config_text(files))
    os.replace(partial, target)
    return str(target)


def result_file(config_path: str, seed: int = 0) -> Path:
    """The result file of the benchmark run of a config and seed (which may not exist)."""
    return RESULTS_DIR / config_name(resolve_config_path(config_path)) / f"seed{seed}.json"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def training_commands(config_path: str, seed: int = 0) -> List[str]:
    """The commands, from the repository root, that train the model of a config and seed and
    publish it into the model zoo: the training command its result file records (with
    ``OUTPUT_DIR`` under ``output/``), else a plain ``train_net.py`` command; then
    ``tools/publish_model.py``."""
    name = config_name(resolve_config_path(config_path))
    output_dir = f"output/{name}/seed{seed}"
    recorded = _read_result(config_path, seed).get("command")
    if recorded and "OUTPUT_DIR" in recorded.split():
        words = shlex.split(recorded)
        words[words.index("OUTPUT_DIR") + 1] = output_dir
        train = shlex.join(words)
    else:
        files = " ".join(
            f"--config-file configs/{f}" for f in config_parts(resolve_config_path(config_path))
        )
        train = f"python train_net.py {files} --resume OUTPUT_DIR {output_dir} SEED {seed}"
    spelled = resolve_config_path(config_path)
    published_as = f'"{spelled}"' if "+" in spelled else name
    publish = f"python tools/publish_model.py {output_dir} --name {published_as} --seed {seed}"
    return [train, publish]


def _read_result(config_path: str, seed: int) -> Dict:
    try:
        return json.loads(result_file(config_path, seed).read_text())
    except (OSError, ValueError):
        return {}


def missing_checkpoint_message(config_path: str, seed: int = 0) -> str:
    """Why there is no checkpoint of a config and seed, where the zoo looked, how to point it
    elsewhere and how to make the model (the measured time from its result file, if any)."""
    name = config_name(resolve_config_path(config_path))
    url = f"{PREFIX}{name}/seed{seed}/{CHECKPOINT_FILE}"
    result = _read_result(config_path, seed)
    if result.get("wall_time_s"):
        measured = (
            f"measured by benchmarks/results/{name}/seed{seed}.json: "
            f"{_duration(result['wall_time_s'])} for {result.get('max_iter', '?')} iterations at "
            f"{result.get('train_s_per_iter', '?')} s/iter with its evaluations, on "
            f"{result.get('device', '?')} ({result.get('machine', '?')})"
        )
    else:
        measured = f"no measured time: benchmarks/results/{name}/seed{seed}.json is missing"
    commands = "\n".join(f"    {c}" for c in training_commands(config_path, seed))
    return (
        f"No trained model of {config_path} (seed {seed}).\n{where_looked(url)}\n"
        f"To train and publish it, from the repository root ({measured}):\n{commands}"
    )


def get_checkpoint_url(config_path: str, seed: int = 0) -> str:
    """The checkpoint of the model trained with this config: ``cascade_zoo://`` for the project's
    own (the file must be in the model-zoo directory or in the repository's copy; with a URL
    base it is not checked), Detectron2's ``detectron2://`` for :data:`DETECTRON2_CHECKPOINTS`.
    ``config_path`` may be a Detectron2 model-zoo name (:func:`resolve_config_path`).

    Raises:
        RuntimeError: no trained model for this config (and seed); the message says where the
            zoo looked, how to point it elsewhere, and how to train the model
            (:func:`missing_checkpoint_message`).
    """
    config_path = resolve_config_path(config_path)
    if config_path in DETECTRON2_CHECKPOINTS:
        from detectron2 import model_zoo as d2_model_zoo

        return d2_model_zoo.get_checkpoint_url(DETECTRON2_CHECKPOINTS[config_path])
    url = f"{PREFIX}{config_name(config_path)}/seed{seed}/{CHECKPOINT_FILE}"
    if _is_url(model_zoo_base()) or PathManager.isfile(url):
        return url
    raise RuntimeError(missing_checkpoint_message(config_path, seed))


def get_config(config_path: str, trained: bool = False, seed: int = 0):
    """The config (not frozen), with ``MODEL.WEIGHTS`` set to the trained model if ``trained``.
    ``config_path`` may be a Detectron2 model-zoo name (:func:`resolve_config_path`)."""
    from .config import setup_cfg

    files = [str(CONFIGS_DIR / f) for f in config_parts(resolve_config_path(config_path))]
    cfg = setup_cfg(files, freeze=False)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path, seed)
    return cfg


def get(config_path: str, trained: bool = False, device: Optional[str] = None, seed: int = 0):
    """The model of a config (in eval mode is left to the caller, as in Detectron2), with its
    trained weights loaded if ``trained``; on ``device`` (default: the config's)."""
    from .engine.checkpoint import build_checkpointer
    from .modeling import build_model

    cfg = get_config(config_path, trained, seed)
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish_model(
    checkpoint: str,
    config_path: str,
    seed: int = 0,
    *,
    metrics: Optional[str] = None,
    zoo_dir: Optional[str] = None,
    overwrite: bool = False,
) -> Path:
    """Publish a trained model into a model-zoo directory, as Detectron2's model zoo holds its
    models: ``<zoo_dir>/<name>/seed<k>/`` gets

    - ``model_final.pth``: ``{"model": state_dict, "checksum": ...}``, the weights only (a
      training checkpoint's optimizer, scheduler, iteration and RNG states are dropped) with the
      sha256 of the weights, which :class:`ZooCheckpointer` checks when it loads them; it loads
      with ``torch.load(weights_only=True)``;
    - ``metrics.json``: a copy of ``metrics`` (the run's ``metrics.json``), if given;
    - ``SHA256SUMS``: the sha256 of those files, in ``sha256sum`` format.

    The checkpoint is read with ``torch.load(weights_only=True)`` (a file that needs arbitrary
    unpickling is refused), checked against the checksums it was saved with (a corrupt one is
    refused) and by loading it strictly into the config's model (on the
    CPU) before anything is written. ``zoo_dir`` defaults to :func:`model_zoo_base` (a
    directory); pass :data:`SHIPPED_DIR` to ship it with the repository. Then
    ``get_checkpoint_url(config_path, seed)`` finds it (with ``$CASCADE_ZOO_MODEL_ZOO`` pointing
    at ``zoo_dir``, or always for :data:`SHIPPED_DIR`).

    Returns:
        the directory written (``<zoo_dir>/<name>/seed<k>``).

    Raises:
        FileExistsError: a published model is there already and not ``overwrite``.
        ValueError: the checkpoint holds no model weights or does not fit the config's model.
    """
    import pickle

    import torch

    from .engine.checkpoint import UnsafeCheckpointError

    if not config_path.endswith(".yaml"):
        config_path += ".yaml"  # a model's name in the zoo
    config_path = resolve_config_path(config_path)
    name = config_name(config_path)
    zoo_dir = str(zoo_dir or model_zoo_base())
    if _is_url(zoo_dir):
        raise ValueError(f"cannot publish to a URL ({zoo_dir}); give a directory (zoo_dir)")
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"Refusing to publish '{checkpoint}': it does not load with "
            f"torch.load(weights_only=True) ({str(e).splitlines()[0]})"
        ) from None
    from .engine.checkpoint import CHECKSUM_KEY, checkpoint_checksums, verify_checksums

    verify_checksums(data, str(checkpoint))  # a corrupt training checkpoint is not published
    state = data.get("model", data) if isinstance(data, dict) else None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"'{checkpoint}' holds no model weights (a 'model' dict of tensors)")
    _check_fits(config_path, state, checkpoint)

    target = Path(zoo_dir) / name / f"seed{seed}"
    if (target / CHECKPOINT_FILE).exists() and not overwrite:
        raise FileExistsError(f"{target / CHECKPOINT_FILE} exists (overwrite=False)")
    target.mkdir(parents=True, exist_ok=True)
    partial = target / (CHECKPOINT_FILE + ".partial")
    published = {"model": state}
    published[CHECKSUM_KEY] = checkpoint_checksums(published)  # checked when it is loaded
    torch.save(published, partial)
    os.replace(partial, target / CHECKPOINT_FILE)
    files = [CHECKPOINT_FILE]
    if metrics:
        shutil.copyfile(metrics, target / METRICS_FILE)
        files.append(METRICS_FILE)
    elif (target / METRICS_FILE).exists():
        os.remove(target / METRICS_FILE)  # a previous model's
    lines = [f"{_sha256(target / f)}  {f}\n" for f in files]
    (target / MANIFEST_FILE).write_text("".join(lines))
    return target


def _check_fits(config_path: str, state, checkpoint: str) -> None:
    """Load ``state`` strictly into the config's model (CPU): every key, every shape."""
    from .modeling import build_model

    cfg = get_config(config_path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"'{checkpoint}' is not a model of configs/{config_path}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shapes {shapes[:5]}"
        )
