"""Stand-in for ``detectron2._C`` in a Python-only Detectron2 install.

dev/setup_env.sh copies this file to ``detectron2/_C.py`` when it installs PyPI's
``pb1-detectron2`` (Detectron2 v0.6 without C++/CUDA sources). Detectron2 imports ``_C`` at
import time in a few modules but only touches its ops when they are called, so this module lets
everything import and turns a call of a missing op into an error that says what is missing.
Ops that need it: deformable convolution, rotated boxes / ROIAlignRotated, the fast COCO
evaluation (``COCOEvaluator(use_fast_impl=True)``).
"""

# Marker read by cascade_zoo.utils.env.compiled_ops_available().
PYTHON_ONLY_STUB = True

_MESSAGE = (
    "detectron2._C.{name} is a compiled Detectron2 op, and this Detectron2 install is "
    "Python-only (PyPI pb1-detectron2 installed by cascade-zoo's dev/setup_env.sh, without "
    "C++/CUDA sources). Install official Detectron2 with its compiled ops "
    "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html) and re-run the "
    "setup, which then uses it."
)


class CompiledOpUnavailableError(RuntimeError):
    """Raised when a compiled Detectron2 op is called in a Python-only install."""


def get_compiler_version():
    return "none (Python-only install, compiled ops unavailable)"


def get_cuda_version():
    return "none (Python-only install, compiled ops unavailable)"


def has_cuda():
    return False


def _register_torch_ops():
    """Ops the compiled extension registers with torch (``torch.ops.detectron2.*``, e.g. used by
    ``detectron2.layers.nms_rotated``) get placeholders that raise the same clear error."""
    try:
        import torch

        library = torch.library.Library("detectron2", "DEF")
        library.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")

        def nms_rotated(boxes, scores, iou_threshold):
            raise CompiledOpUnavailableError(_MESSAGE.format(name="nms_rotated"))

        library.impl("nms_rotated", nms_rotated, "CompositeExplicitAutograd")
        return library
    except Exception:  # an older torch, or the op exists already: leave torch's own error
        return None


_TORCH_LIBRARY = _register_torch_ops()  # kept alive: the registration lasts as long as it


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise CompiledOpUnavailableError(_MESSAGE.format(name=name))

    unavailable.__name__ = name
    return unavailable
