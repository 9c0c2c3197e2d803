"""Checkpoints that a kill cannot corrupt and that load safely.

:class:`ZooCheckpointer` is Detectron2's ``DetectionCheckpointer`` with:

- **atomic saves**: the file is written as ``<name>.partial.pth``, flushed to disk and renamed
  into place, and ``last_checkpoint`` is rewritten the same way after the rename. A kill at any
  moment leaves either the previous checkpoint named by ``last_checkpoint`` or the new one, never
  a half-written file under a checkpoint's name. A failed save (e.g. a full disk) removes the
  partial file and raises :class:`CheckpointSaveError` naming the file and the checkpoint that is
  still intact;
- **resume from the newest good checkpoint**: ``resume_or_load(..., resume=True)`` tries the
  file ``last_checkpoint`` names, then the other ``model_*.pth`` of the directory from the newest
  iteration down; a file that cannot be read is reported by name (an error in the log) and the
  previous one is used;
- **safe loading**: ``.pth`` files load with ``torch.load(weights_only=True)`` (tensors,
  containers and plain values only: no code runs); Detectron2/Detectron1 model-zoo ``.pkl``
  files are first read by an unpickler that accepts only the numpy array classes they hold. A
  file that needs anything else is refused with :class:`UnsafeCheckpointError`, which says how to
  opt in (``ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE True``, for files from a source you trust);
- **strict loading** (``ZOO.CHECKPOINT.STRICT True``): missing keys, unexpected keys or shape
  mismatches stop the load with an error listing them (by default Detectron2 logs them and
  loads the rest, which is what fine-tuning from another dataset's model needs).
"""

import io
import logging
import os
import pickle
import re
import zipfile
from typing import List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointSaveError",
    "UnsafeCheckpointError",
    "ZooCheckpointer",
    "build_checkpointer",
]

_PARTIAL = ".partial"
_ITER_RE = re.compile(r"^model_(\d+)\.pth$")
# Errors that mean "this file is not a readable checkpoint" (truncated zip, bad pickle, ...).
_UNREADABLE = (
    EOFError,
    RuntimeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    ValueError,
    KeyError,
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs arbitrary unpickling (it could run code when loaded)."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the previous one is intact."""


_OPT_IN = (
    "If you trust the file's source, set ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE True (or pass "
    "allow_unsafe_pickle=True to ZooCheckpointer) to load it with full unpickling."
)

# What Detectron2 / Detectron1 model-zoo pickles hold: dicts of numpy arrays and plain values.
_SAFE_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"it needs the Python object {module}.{name}")


def check_pickle_is_safe(path: str) -> None:
    """Read a pickle file with an unpickler that accepts only numpy arrays and plain
    containers; raise :class:`UnsafeCheckpointError` naming the file otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"Refusing to load '{path}': {e}. {_OPT_IN}") from None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _iteration_of(basename: str) -> int:
    if basename == "model_final.pth":
        return 1 << 62
    m = _ITER_RE.match(basename)
    return int(m.group(1)) if m else -1


class _WeightsOnlyLoad(Checkpointer):
    """Sits between DetectionCheckpointer and fvcore's Checkpointer in the MRO, so that
    Detectron2's own ``.pth`` loading (v0.6: ``super()._load_file``; main: ``_torch_load``)
    comes here: ``torch.load(weights_only=True)`` unless unsafe pickling is allowed."""

    allow_unsafe_pickle = False
    _preloaded = None

    def _torch_load_file(self, filename: str):
        if self._preloaded is not None and self._preloaded[0] == filename:
            data, self._preloaded = self._preloaded[1], None
            return data
        weights_only = not self.allow_unsafe_pickle
        try:
            return torch.load(filename, map_location=torch.device("cpu"), weights_only=weights_only)
        except pickle.UnpicklingError as e:
            if weights_only and "global" in str(e).lower():  # a class or function, not garbage
                raise UnsafeCheckpointError(
                    f"Refusing to load '{filename}': it holds Python objects other than tensors "
                    f"and plain containers, and unpickling them could run code. {_OPT_IN}"
                ) from None
            raise

    def _load_file(self, f: str):
        return self._torch_load_file(f)


class ZooCheckpointer(DetectionCheckpointer, _WeightsOnlyLoad):
    """DetectionCheckpointer with atomic saves, fallback to the newest good checkpoint at
    resume, weights-only loading and an optional strict mode (see module doc)."""

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        allow_unsafe_pickle: bool = False,
        strict: bool = False,
        **kwargs,
    ):
        super().__init__(model, save_dir, **kwargs)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.strict = strict
        self._tag_after_rename = False
        #: the checkpoint file the last ``resume_or_load(resume=True)`` resumed from (None: none
        #: was readable, or it was not asked to resume)
        self.resumed_from = None

    # ------------------------------------------------------------------ saving

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        os.makedirs(self.save_dir, exist_ok=True)
        final = os.path.join(self.save_dir, f"{name}.pth")
        partial = os.path.join(self.save_dir, f"{name}{_PARTIAL}.pth")
        self._tag_after_rename = True  # fvcore's save tags the partial name: skip that
        try:
            super().save(f"{name}{_PARTIAL}", **kwargs)
            with open(partial, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(partial, final)
            _fsync_dir(self.save_dir)
        except OSError as e:
            if os.path.exists(partial):
                os.remove(partial)
            previous = self.get_checkpoint_file() if self.has_checkpoint() else "none"
            raise CheckpointSaveError(
                e.errno,
                f"Could not save checkpoint '{final}': {e.strerror or e}. The previous "
                f"checkpoint ({previous}) is intact; free space or change OUTPUT_DIR, then "
                "resume with --resume",
            ) from e
        finally:
            self._tag_after_rename = False
        self.tag_last_checkpoint(os.path.basename(final))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self._tag_after_rename:
            return
        path = os.path.join(self.save_dir, "last_checkpoint")
        tmp = path + _PARTIAL
        with open(tmp, "w") as f:
            f.write(last_filename_basename)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ------------------------------------------------------------------ resuming

    def resume_candidates(self) -> List[str]:
        """Checkpoint files to resume from, best first: the one ``last_checkpoint`` names, then
        the directory's other ``model_*.pth`` / ``model_final.pth``, newest iteration first."""
        named = self.get_checkpoint_file() if self.has_checkpoint() else ""
        others = sorted(
            (
                f
                for f in (os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else [])
                if _iteration_of(f) >= 0
            ),
            key=_iteration_of,
            reverse=True,
        )
        out = [named] if named else []
        out += [os.path.join(self.save_dir, f) for f in others]
        return list(dict.fromkeys(out))

    def resume_or_load(self, path: str, *, resume: bool = True):
        self.resumed_from = None
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        candidates = self.resume_candidates()
        for i, candidate in enumerate(candidates):
            if not os.path.isfile(candidate):
                logger.error(f"Checkpoint '{candidate}' (named by last_checkpoint) is missing")
                continue
            try:
                self._read_file(candidate)  # check it is whole before touching the model
            except UnsafeCheckpointError:
                raise
            except _UNREADABLE as e:
                nxt = candidates[i + 1] if i + 1 < len(candidates) else "none: starting over"
                logger.error(
                    f"Checkpoint '{candidate}' is corrupt or truncated ({type(e).__name__}: "
                    f"{e}); resuming from the previous one ({nxt})"
                )
                continue
            loaded = self.load(candidate)
            self.resumed_from = candidate
            return loaded
        logger.error(f"No readable checkpoint in '{self.save_dir}': training from MODEL.WEIGHTS")
        return super().resume_or_load(path, resume=False)

    # ------------------------------------------------------------------ loading

    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path.split("?")[0]):
            raise FileNotFoundError(
                f"Checkpoint file '{path}' does not exist (MODEL.WEIGHTS or --resume). Give a "
                "local file, a URL, or a detectron2:// / cascade_zoo:// model-zoo name."
            )
        return super().load(path, *args, **kwargs)

    def _read_file(self, filename: str):
        """Read a checkpoint file safely (see module doc); kept for the load that follows."""
        if filename.endswith(".pkl"):
            if not self.allow_unsafe_pickle:
                check_pickle_is_safe(filename)
            return None  # Detectron2 reads it (pickle) once it is known to be safe
        data = self._torch_load_file(filename)
        self._preloaded = (filename, data)
        return data

    def _load_file(self, filename: str):
        if filename.endswith(".pkl") and not self.allow_unsafe_pickle:
            check_pickle_is_safe(filename)
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self.strict and incompatible is not None:
            problems = []
            if incompatible.missing_keys:
                problems.append(f"missing keys: {sorted(incompatible.missing_keys)[:20]}")
            if incompatible.unexpected_keys:
                problems.append(f"unexpected keys: {sorted(incompatible.unexpected_keys)[:20]}")
            mismatches = getattr(incompatible, "incorrect_shapes", [])
            if mismatches:
                shown = [
                    f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatches
                ]
                problems.append(f"shape mismatches: {shown[:20]}")
            if problems:
                raise ValueError(
                    "ZOO.CHECKPOINT.STRICT: the checkpoint does not match the model ("
                    + "; ".join(problems)
                    + "). Use a checkpoint of this architecture and number of classes, or set "
                    "ZOO.CHECKPOINT.STRICT False to load what matches."
                )
        return incompatible


def build_checkpointer(cfg, model, save_dir: str = "", **kwargs) -> ZooCheckpointer:
    """A :class:`ZooCheckpointer` with the config's ``ZOO.CHECKPOINT`` settings."""
    return ZooCheckpointer(
        model,
        save_dir,
        allow_unsafe_pickle=cfg.ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE,
        strict=cfg.ZOO.CHECKPOINT.STRICT,
        **kwargs,
    )
