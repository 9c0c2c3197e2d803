"""RGA + PRM (Ge et al., "Delving into the Imbalance of Positive Proposals in Two-stage Object
Detection"): R-CNN gradient annealing, a training hook, and Parallel R-CNN Modules, ROI heads on
the box-cascade core. Importing it registers ``PRMROIHeads`` and the RGA hook builder."""

from . import results  # noqa: F401  (registers its part of the benchmark's reports)
from .config import add_rga_prm_config
from .prm import SAMPLINGS, PRMROIHeads, hard_ratio_sample
from .rga import build_rga_hooks, rga_lambda, rga_parameter_names, rga_schedule

__all__ = [
    "add_rga_prm_config",
    "PRMROIHeads",
    "SAMPLINGS",
    "build_rga_hooks",
    "hard_ratio_sample",
    "rga_lambda",
    "rga_parameter_names",
    "rga_schedule",
]
