"""IoU-Uniform R-CNN (Zhu et al., "IoU-uniform R-CNN: Breaking Through the Limitations of RPN"):
training boxes generated around the ground truth with a uniform IoU distribution for a
regression + IoU branch, IoU-guided NMS scores with re-pooling at the regressed boxes (EFO), on
the box-cascade core (Faster and Cascade R-CNN). Importing it registers ``IoUUniformROIHeads``
and the ``UniformIoUSampler`` stage sampler."""

from . import results  # noqa: F401  (registers its part of the benchmark's reports)
from .config import add_iou_uniform_config
from .roi_heads import (
    IoUBranchPredictor,
    IoUUniformROIHeads,
    NoBoxRegression,
    interval_weighted_smooth_l1,
    iou_guided_scores,
)
from .sampler import (
    GenerationSettings,
    UniformIoUSampler,
    generation_settings_from_cfg,
    jitter_candidates,
    resample_evenly,
    select_uniform,
    uniform_iou_samples,
)

__all__ = [
    "add_iou_uniform_config",
    "GenerationSettings",
    "IoUBranchPredictor",
    "IoUUniformROIHeads",
    "NoBoxRegression",
    "UniformIoUSampler",
    "generation_settings_from_cfg",
    "interval_weighted_smooth_l1",
    "iou_guided_scores",
    "jitter_candidates",
    "resample_evenly",
    "select_uniform",
    "uniform_iou_samples",
]
