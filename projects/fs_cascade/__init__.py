"""FSCascade (Li et al., "Rethinking Classification and Localization for Cascade R-CNN", BMVC
2019): Cascade R-CNN with classification feature sharing (Eq. 1), a conv localization head and
localization feature sharing (Eq. 2), ROI heads on the box-cascade core. Importing it registers
``FSCascadeROIHeads``."""

from . import results  # noqa: F401  (registers its part of the benchmark's reports)
from .config import add_fs_cascade_config
from .roi_heads import BOX_DELTA_INPUTS, LOC_HEADS, DecoupledOutputLayers, FSCascadeROIHeads
from .sharing import (
    LFS_MODES,
    FirstStageBoxConvs,
    LaterStageBoxConvs,
    build_localization_convs,
    classification_feature_sharing,
    localization_feature_sharing,
)

__all__ = [
    "add_fs_cascade_config",
    "BOX_DELTA_INPUTS",
    "DecoupledOutputLayers",
    "FSCascadeROIHeads",
    "FirstStageBoxConvs",
    "LFS_MODES",
    "LOC_HEADS",
    "LaterStageBoxConvs",
    "build_localization_convs",
    "classification_feature_sharing",
    "localization_feature_sharing",
]
