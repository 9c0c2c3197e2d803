"""Checkpoints that a kill cannot corrupt and that load safely.

:class:`ZooCheckpointer` is Detectron2's ``DetectionCheckpointer`` with:

- **atomic saves**: the file is written as ``<name>.partial.pth``, flushed to disk and renamed
  into place, and ``last_checkpoint`` is rewritten the same way after the rename. A kill at any
  moment leaves either the previous checkpoint named by ``last_checkpoint`` or the new one, never
  a half-written file under a checkpoint's name. A failed save (e.g. a full disk) removes the
  partial file and raises :class:`CheckpointSaveError` naming the file and the checkpoint that is
  still intact;
- **checksums**: each checkpoint holds, under ``"checksum"``, the sha256 of each of its other
  entries (tensors by dtype, shape and bytes; other values by ``repr``), which is checked when it
  is read: a checkpoint whose bytes changed on disk is :class:`CorruptCheckpointError`, naming
  the file and the entry. Checkpoints without a checksum (older ones, other tools') load as
  before, and so does one from which a whole entry was removed (e.g. the optimizer);
- **resume from the newest good checkpoint**: ``resume_or_load(..., resume=True)`` tries the
  file ``last_checkpoint`` names, then the other ``model_*.pth`` of the directory from the newest
  iteration down; a file that cannot be read or fails its checksum is reported by name (an
  error in the log) and the previous one is used; so is a ``last_checkpoint`` that does not
  hold a file name (binary garbage);
- **files that are not checkpoints** (a directory, an empty file, an image, text) are refused
  with an error saying what the file is (:class:`NotACheckpointError`, ``IsADirectoryError``);
- **safe loading**: ``.pth`` files load with ``torch.load(weights_only=True)`` (tensors,
  containers and plain values only: no code runs); Detectron2/Detectron1 model-zoo ``.pkl``
  files are first read by an unpickler that accepts only the numpy array classes they hold. A
  file that needs anything else is refused with :class:`UnsafeCheckpointError`, which says how to
  opt in (``ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE True``, for files from a source you trust);
- **strict loading** (``ZOO.CHECKPOINT.STRICT True``): missing keys, unexpected keys or shape
  mismatches stop the load with an error listing them (by default Detectron2 logs them and
  loads the rest, which is what fine-tuning from another dataset's model needs).
"""

import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
import zipfile
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import Checkpointer

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointSaveError",
    "CorruptCheckpointError",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "ZooCheckpointer",
    "build_checkpointer",
    "checkpoint_checksums",
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


class CorruptCheckpointError(ValueError):
    """A checkpoint's contents differ from the checksum saved with them."""


class NotACheckpointError(ValueError):
    """A file given as a checkpoint is not one (empty, an image, text, ...)."""


# The checkpoint entry holding {entry name: "sha256:<hex>"} for every other entry.
CHECKSUM_KEY = "checksum"


# Values hashed by repr (which is the same after a reload).
_PLAIN = (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device)


def _hash_value(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.layout != torch.strided:
            t = t.to_dense()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for key, item in sorted(value.items(), key=lambda kv: repr(kv[0])):
            h.update(f"{key!r}=".encode())
            _hash_value(h, item)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}:".encode())
        for item in value:
            _hash_value(h, item)
    elif isinstance(value, _PLAIN):
        h.update(f"V{value!r};".encode())
    else:  # an object (only with unsafe pickling): its repr may hold an address
        h.update(f"O{type(value).__qualname__};".encode())


def checkpoint_checksums(data: Dict) -> Dict[str, str]:
    """``{entry: "sha256:<hex>"}`` for every entry of a checkpoint dict but the checksum."""
    out = {}
    for key, value in data.items():
        if key != CHECKSUM_KEY:
            h = hashlib.sha256()
            _hash_value(h, value)
            out[key] = f"sha256:{h.hexdigest()}"
    return out


def verify_checksums(data, filename: str) -> None:
    """Check a loaded checkpoint against the checksums saved in it (none saved: nothing to
    check; an entry removed since: not checked). Raises :class:`CorruptCheckpointError`."""
    saved = data.get(CHECKSUM_KEY) if isinstance(data, dict) else None
    if not isinstance(saved, dict):
        return
    present = {k: v for k, v in data.items() if k in saved}
    for key, digest in checkpoint_checksums(present).items():
        if digest != saved[key]:
            raise CorruptCheckpointError(
                f"Checkpoint '{filename}' is corrupt: its '{key}' entry does not match the "
                f"checksum saved with it ({saved[key][:19]}..., now {digest[:19]}...)"
            )


# The first bytes of files that are often given as a checkpoint by mistake.
_FILE_KINDS = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive",
}


def _what_file_is(filename: str):
    """What a file that failed to load is, if it is clearly not a checkpoint (None: it may be
    a damaged one: a zip archive as torch.save writes, or a pickle)."""
    with open(filename, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    for magic, kind in _FILE_KINDS.items():
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"not in PyTorch's format (it starts with {head[:8]!r})"
    if all(c.isprintable() or c.isspace() for c in text):
        return f"a text file (it starts with {text[:40]!r})"
    return f"not in PyTorch's format (it starts with {head[:8]!r})"


@contextlib.contextmanager
def _loading(filename: str):
    """Turn a failure to load a file that is empty or clearly not a checkpoint into
    :class:`NotACheckpointError` saying what the file is."""
    if os.path.isfile(filename) and os.path.getsize(filename) == 0:
        raise NotACheckpointError(f"Checkpoint file '{filename}' is empty (0 bytes)")
    try:
        yield
    except (UnsafeCheckpointError, CorruptCheckpointError, NotACheckpointError):
        raise
    except Exception as e:
        kind = _what_file_is(filename) if os.path.isfile(filename) else None
        if kind is None:
            raise
        raise NotACheckpointError(
            f"'{filename}' is not a checkpoint: it is {kind}. A checkpoint is a .pth file "
            "written by torch.save (e.g. a model_*.pth of a training's OUTPUT_DIR) or a "
            "Detectron2 model-zoo .pkl"
        ) from e


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
            data = torch.load(filename, map_location=torch.device("cpu"), weights_only=weights_only)
        except pickle.UnpicklingError as e:
            if weights_only and "global" in str(e).lower():  # a class or function, not garbage
                raise UnsafeCheckpointError(
                    f"Refusing to load '{filename}': it holds Python objects other than tensors "
                    f"and plain containers, and unpickling them could run code. {_OPT_IN}"
                ) from None
            raise
        verify_checksums(data, filename)
        if isinstance(data, dict) and isinstance(data.get(CHECKSUM_KEY), dict):
            del data[CHECKSUM_KEY]
        return data

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
        #: the checkpoint file the last ``resume_or_load(resume=True)`` resumed from (None: none
        #: was readable, or it was not asked to resume)
        self.resumed_from = None

    # ------------------------------------------------------------------ saving

    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``save`` (the model, the checkpointables' states and ``kwargs``), plus the
        checksums of exactly what is written, written atomically (see module doc)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        data[CHECKSUM_KEY] = checkpoint_checksums(data)
        os.makedirs(self.save_dir, exist_ok=True)
        final = os.path.join(self.save_dir, f"{name}.pth")
        partial = os.path.join(self.save_dir, f"{name}{_PARTIAL}.pth")
        self.logger.info(f"Saving checkpoint to {final}")
        try:
            with open(partial, "wb") as f:
                torch.save(data, f)
                f.flush()
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
        self.tag_last_checkpoint(os.path.basename(final))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        tmp = path + _PARTIAL
        with open(tmp, "w") as f:
            f.write(last_filename_basename)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ------------------------------------------------------------------ resuming

    def get_checkpoint_file(self) -> str:
        """fvcore's, except that a ``last_checkpoint`` that does not hold a file name (binary
        garbage) is reported by name and ignored (""), like one naming a missing file."""
        path = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with self.path_manager.open(path, "rb") as f:
                raw = f.read()
        except OSError:  # removed meanwhile, as fvcore allows
            return ""
        try:
            named = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            named = None
        if named is None or any(c in named for c in "\x00\n\r"):
            logger.error(
                f"'{path}' does not hold a checkpoint file name ({len(raw)} bytes of binary "
                "data): ignoring it and resuming from the newest readable model_*.pth"
            )
            return ""
        return os.path.join(self.save_dir, named)

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
        if path and "://" not in path and os.path.isdir(path):
            inside = sorted(f for f in os.listdir(path) if f.endswith((".pth", ".pkl")))
            hint = f" it holds {', '.join(inside[-3:])}" if inside else " it holds no .pth file"
            raise IsADirectoryError(
                f"Checkpoint '{path}' (MODEL.WEIGHTS or --resume) is a directory, not a file:"
                f"{hint}. Give the checkpoint file, e.g. '{os.path.join(path, 'model_final.pth')}'"
            )
        if path and "://" not in path and not os.path.isfile(path.split("?")[0]):
            raise FileNotFoundError(
                f"Checkpoint file '{path}' does not exist (MODEL.WEIGHTS or --resume). Give a "
                "local file, a URL, or a detectron2:// / cascade_zoo:// model-zoo name."
            )
        return super().load(path, *args, **kwargs)

    def _read_file(self, filename: str):
        """Read a checkpoint file safely and check its checksums (see module doc); kept for the
        load that follows."""
        with _loading(filename):
            if filename.endswith(".pkl"):
                if not self.allow_unsafe_pickle:
                    check_pickle_is_safe(filename)
                return None  # Detectron2 reads it (pickle) once it is known to be safe
            data = self._torch_load_file(filename)
        self._preloaded = (filename, data)
        return data

    def _load_file(self, filename: str):
        with _loading(filename):
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
