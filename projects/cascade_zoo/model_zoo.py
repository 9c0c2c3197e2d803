"""The project's model zoo, mirroring ``detectron2.model_zoo``.

- :func:`get_config_file`, :func:`get_config`, :func:`get` and :func:`get_checkpoint_url` take a
  config path relative to the repository's ``configs/`` (e.g.
  ``"Benchmark/cascade_rcnn_R_18_FPN_shapes.yaml"``), as Detectron2's take one relative to its
  own ``configs/``.
- Checkpoints are named ``cascade_zoo://<config name>/seed<k>/model_final.pth``. The
  :class:`CascadeZooHandler` (registered with Detectron2's ``PathManager`` when ``cascade_zoo`` is
  imported) maps that prefix to the model-zoo base: ``$CASCADE_ZOO_MODEL_ZOO`` (a directory, or
  an ``http(s)://`` URL whose files are downloaded and cached by iopath), by default
  ``$CASCADE_ZOO_CACHE/model_zoo`` (``$CASCADE_ZOO_CACHE`` defaults to ``<repo>/.cache``).
  ``tools/run_benchmark.py`` publishes its checkpoints there. A file the base lacks is read from
  the repository's own copy under ``benchmarks/model_zoo/`` if it ships one (the benchmark's
  pretrained backbone: every clone starts from the same weights without re-making them).
- Configs equivalent to a model of Detectron2's own model zoo (:data:`DETECTRON2_CHECKPOINTS`)
  resolve ``get_checkpoint_url``/``get(trained=True)`` to that model's ``detectron2://`` file.
"""

import os
from pathlib import Path
from typing import Optional

from detectron2.utils.file_io import PathHandler, PathManager

# The repository root (this file is projects/cascade_zoo/model_zoo.py).
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"
# The directory of the result files that tools/run_benchmark.py writes (one per trained model).
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
PREFIX = "cascade_zoo://"
# Model-zoo files the repository ships, served when the model-zoo base lacks them.
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


def cache_dir() -> str:
    """``$CASCADE_ZOO_CACHE``, default ``<repo>/.cache``: large files made by the project."""
    return os.environ.get("CASCADE_ZOO_CACHE") or str(REPO_ROOT / ".cache")


def model_zoo_base() -> str:
    """Where ``cascade_zoo://`` points: ``$CASCADE_ZOO_MODEL_ZOO`` (directory or URL), default
    ``<cache_dir()>/model_zoo``."""
    return os.environ.get("CASCADE_ZOO_MODEL_ZOO") or os.path.join(cache_dir(), "model_zoo")


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

    def _source(self, path: str) -> str:
        """Where ``path`` is read from: the model-zoo directory's file if it is there, else the
        repository's shipped copy if there is one, else :meth:`resolve` (a URL, or a missing
        file)."""
        target = self.resolve(path)
        if not _is_url(target) and os.path.exists(target):
            return target
        shipped = SHIPPED_DIR / path[len(PREFIX) :].lstrip("/")
        return str(shipped) if shipped.exists() else target

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


def config_name(config_path: str) -> str:
    """``"Benchmark/x.yaml"`` -> ``"Benchmark/x"``: the model's name in the zoo."""
    path = Path(config_path)
    try:
        path = path.resolve().relative_to(CONFIGS_DIR)
    except ValueError:
        pass
    return str(path.with_suffix("")).replace(os.sep, "/")


def get_config_file(config_path: str) -> str:
    """The absolute path of a config of this project, given relative to ``configs/``.

    Raises:
        RuntimeError: no such config (as ``detectron2.model_zoo.get_config_file``).
    """
    path = CONFIGS_DIR / config_path
    if not path.is_file():
        raise RuntimeError(f"{config_path} not available in the cascade-zoo configs ({path})")
    return str(path)


def get_checkpoint_url(config_path: str, seed: int = 0) -> str:
    """The checkpoint of the model trained with this config: ``cascade_zoo://`` for the project's
    own (a result file ``benchmarks/results/<name>/seed<k>.json`` must exist), Detectron2's
    ``detectron2://`` for :data:`DETECTRON2_CHECKPOINTS`.

    Raises:
        RuntimeError: no trained model for this config (and seed).
    """
    if config_path in DETECTRON2_CHECKPOINTS:
        from detectron2 import model_zoo as d2_model_zoo

        return d2_model_zoo.get_checkpoint_url(DETECTRON2_CHECKPOINTS[config_path])
    get_config_file(config_path)
    name = config_name(config_path)
    if not (RESULTS_DIR / name / f"seed{seed}.json").is_file():
        raise RuntimeError(
            f"{config_path}: no trained model for seed {seed} (no {RESULTS_DIR / name}/seed"
            f"{seed}.json; tools/run_benchmark.py trains and publishes it)"
        )
    return f"{PREFIX}{name}/seed{seed}/model_final.pth"


def get_config(config_path: str, trained: bool = False, seed: int = 0):
    """The config (not frozen), with ``MODEL.WEIGHTS`` set to the trained model if ``trained``."""
    from .config import setup_cfg

    cfg = setup_cfg(get_config_file(config_path), freeze=False)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path, seed)
    return cfg


def get(config_path: str, trained: bool = False, device: Optional[str] = None, seed: int = 0):
    """The model of a config (in eval mode is left to the caller, as in Detectron2), with its
    trained weights loaded if ``trained``; on ``device`` (default: the config's)."""
    from detectron2.modeling import build_model

    from .engine.checkpoint import build_checkpointer

    cfg = get_config(config_path, trained, seed)
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    return model
