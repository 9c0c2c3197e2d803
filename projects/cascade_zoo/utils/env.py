"""Facts about the installed Detectron2 and the machine."""

import functools

import torch


@functools.lru_cache(maxsize=None)
def compiled_ops_available() -> bool:
    """Whether Detectron2's compiled ops (``detectron2._C``) are installed.

    False for the Python-only fallback install, whose ``_C`` is dev/detectron2_C_stub.py.
    """
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "PYTHON_ONLY_STUB", False)


def default_device(requested: str) -> str:
    """``requested`` (a MODEL.DEVICE value) if usable here, else "cpu" when CUDA is missing."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return requested
