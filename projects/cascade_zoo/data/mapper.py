"""A DatasetMapper that names the file when an image cannot be read (or would be read wrongly),
and can skip it."""

import logging
import random

from detectron2.data import DatasetMapper
from detectron2.utils.file_io import PathManager
from PIL import Image

logger = logging.getLogger(__name__)

# In "skip" mode, give up after this many unreadable images in a row.
MAX_CONSECUTIVE_SKIPS = 10


class BadImageError(OSError):
    """An image of a dataset is missing or cannot be decoded."""


class UnsupportedImageModeError(OSError):
    """An image with more than 8 bits per channel, which Detectron2 would read wrongly."""


def check_image_mode(path: str) -> None:
    """Refuse an image that Detectron2's ``read_image`` would read wrongly: PIL opens a 16-bit
    grayscale PNG (or TIFF) as mode "I" / "I;16" and a float one as "F", and ``read_image``'s
    conversion to RGB clips every value to 0..255, so a 16-bit image reads as 255 almost
    everywhere. Reads only the header.

    Raises:
        UnsupportedImageModeError: naming the file and its PIL mode.
    """
    with PathManager.open(path, "rb") as f:
        mode = Image.open(f).mode
    if mode in ("I", "F") or mode.startswith("I;"):
        raise UnsupportedImageModeError(
            f"'{path}' has more than 8 bits per pixel (PIL mode '{mode}', e.g. a 16-bit "
            "grayscale PNG), which Detectron2's read_image clips to 255: convert it to 8 bits "
            "per channel (e.g. for 16 bits: numpy's image >> 8, then PIL mode 'L')"
        )


def with_float_boxes(dataset_dict: dict) -> dict:
    """``dataset_dict`` with its annotations' ``bbox`` as floats (a shallow copy; the input is
    left as it is). Detectron2 v0.6's transforms change box coordinates in place
    (``apply_coords``), so an integer box (COCO files often hold them, the shapes dataset does)
    is floored after a resize: by up to a pixel, a large error for a small object at IoU 0.9."""
    annotations = dataset_dict.get("annotations")
    if not annotations:
        return dataset_dict
    out = dict(dataset_dict)
    out["annotations"] = [
        {**a, "bbox": [float(v) for v in a["bbox"]]} if "bbox" in a else a for a in annotations
    ]
    return out


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper, with a policy for images that cannot be read.

    ``on_bad_image="error"`` raises :class:`BadImageError` naming the file (also from inside a
    data-loader worker, whose traceback PyTorch re-raises in the main process). ``"skip"`` logs a
    warning naming the file and maps a random other record of ``fallback_dataset`` instead
    (Detectron2 v0.6's own retry on None breaks on Python >= 3.11). Evaluation always uses
    "error": a skipped image would silently change the evaluated set. Images with more than 8
    bits per channel count as unreadable (:func:`check_image_mode`).
    """

    def __init__(self, cfg, is_train: bool = True, on_bad_image: str = None, fallback_dataset=None):
        super().__init__(cfg, is_train)
        policy = on_bad_image or cfg.ZOO.ON_BAD_IMAGE
        if policy not in ("error", "skip"):
            raise ValueError(f"ZOO.ON_BAD_IMAGE must be 'error' or 'skip', got {policy!r}")
        if policy == "skip" and is_train and fallback_dataset is None:
            raise ValueError("ZOO.ON_BAD_IMAGE 'skip' needs the dataset to draw replacements from")
        self.on_bad_image = policy if is_train else "error"
        self.fallback_dataset = fallback_dataset

    def __call__(self, dataset_dict):
        for _ in range(MAX_CONSECUTIVE_SKIPS + 1):
            try:
                check_image_mode(dataset_dict["file_name"])
                return super().__call__(with_float_boxes(dataset_dict))
            except (OSError, SyntaxError) as e:  # PIL reports undecodable files with these
                path = dataset_dict.get("file_name", "<no file_name>")
                if self.on_bad_image != "skip":
                    raise BadImageError(
                        f"Cannot read image '{path}' (image_id={dataset_dict.get('image_id')}): "
                        f"{e}. Fix or remove it, or set ZOO.ON_BAD_IMAGE skip to skip such "
                        "images in training."
                    ) from e
                logger.warning(f"Skipping unreadable image '{path}': {e}")
                # Python's RNG: the resumable data stream seeds it per position, so the
                # replacement is the same in a resumed or multi-process run.
                index = random.randrange(len(self.fallback_dataset))
                dataset_dict = self.fallback_dataset[index]
        raise BadImageError(
            f"{MAX_CONSECUTIVE_SKIPS + 1} unreadable images in a row (last: '{path}'): "
            "is the image root right?"
        )
