"""Datasets: the embedded shapes splits (registered at import, as Detectron2 registers its
builtin datasets), command-line COCO registration and dataset checks."""

from .crowdhuman import load_odgt, register_crowdhuman, register_crowdhuman_splits
from .datasets import (
    SHAPES_SPLITS,
    check_coco_json,
    check_dataset_files,
    check_test_dataset,
    datasets_root,
    load_checked_coco_json,
    prepare_shapes,
    register_coco_dataset,
    register_shapes,
    validate_dataset_dicts,
)
from .mapper import (
    BadImageError,
    CheckedDatasetMapper,
    UnsupportedImageModeError,
    check_image_mode,
)
from .shapes import CLASSES as SHAPES_CLASSES

register_shapes()
register_crowdhuman_splits(datasets_root())

__all__ = [
    "SHAPES_SPLITS",
    "SHAPES_CLASSES",
    "BadImageError",
    "CheckedDatasetMapper",
    "UnsupportedImageModeError",
    "check_image_mode",
    "check_coco_json",
    "check_dataset_files",
    "check_test_dataset",
    "datasets_root",
    "load_odgt",
    "register_crowdhuman",
    "load_checked_coco_json",
    "prepare_shapes",
    "register_coco_dataset",
    "register_shapes",
    "validate_dataset_dicts",
]
