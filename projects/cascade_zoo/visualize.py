"""Pictures of predictions (and ground truth) drawn with Detectron2's Visualizer."""

import logging
from typing import List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from .data import prepare_shapes
from .predictor import ZooPredictor

logger = logging.getLogger(__name__)


def montage(tiles: List[np.ndarray], columns: int) -> np.ndarray:
    """Tile RGB images (any sizes) into a grid, row-major, on a white background."""
    if not tiles:
        raise ValueError("montage: no images to tile")
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    out = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        out[r * cell_h : r * cell_h + tile.shape[0], c * cell_w : c * cell_w + tile.shape[1]] = tile
    return out


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    """The image with a white band on top holding ``text``."""
    from PIL import ImageDraw

    band = Image.new("RGB", (image.shape[1], 16), "white")
    ImageDraw.Draw(band).text((3, 2), text, fill="black")
    return np.concatenate([np.asarray(band), image], 0)


def draw_outputs(
    rgb: np.ndarray, outputs: dict, metadata, score_threshold: float, *, stages: bool = False
) -> List[np.ndarray]:
    """A model's outputs for one image drawn by Detectron2's Visualizer (detections with score >=
    ``score_threshold``): one RGB picture, or with ``stages`` one captioned picture per entry of
    ``outputs["stage_instances"]`` (each stage, then the ensemble)."""
    if stages:
        if "stage_instances" not in outputs:
            raise ValueError(
                "stages=True needs a model returning stage-wise outputs: "
                "MODEL.META_ARCHITECTURE BoxCascadeRCNN and MODEL.BOX_CASCADE.STAGEWISE_TEST"
            )
        panels = list(outputs["stage_instances"].items())
    else:
        panels = [("", outputs["instances"])]
    drawn = []
    for name, instances in panels:
        instances = instances.to("cpu")
        instances = instances[instances.scores >= score_threshold]
        picture = Visualizer(rgb, metadata).draw_instance_predictions(instances).get_image()
        drawn.append(_caption(picture, name) if stages else picture)
    return drawn


def draw_predictions(
    cfg,
    dataset_name: str,
    output_path: str,
    *,
    num_images: int = 8,
    score_threshold: float = 0.5,
    with_ground_truth: bool = True,
    stages: bool = False,
    columns: Optional[int] = None,
) -> str:
    """Run ``ZooPredictor(cfg)`` (Detectron2's ``DefaultPredictor``, loading the weights safely)
    on the first ``num_images`` images of a registered dataset and write one PNG: per image, the
    predictions (score >= threshold) and, beside them, the ground truth. With ``stages``, one row
    per image: each stage's own detections, the ensemble's, then the ground truth (needs a model
    returning "stage_instances", i.e. META_ARCHITECTURE BoxCascadeRCNN with
    MODEL.BOX_CASCADE.STAGEWISE_TEST). Returns ``output_path``.
    """
    prepare_shapes(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)
    if not dicts:
        raise ValueError(f"Dataset '{dataset_name}' is empty: nothing to draw")
    metadata = MetadataCatalog.get(dataset_name)
    predictor = ZooPredictor(cfg)
    tiles = []
    for record in dicts[:num_images]:
        image = read_image(record["file_name"], format=predictor.input_format)
        rgb = image[:, :, ::-1] if predictor.input_format == "BGR" else image
        row = draw_outputs(rgb, predictor(image), metadata, score_threshold, stages=stages)
        if with_ground_truth:
            truth = Visualizer(rgb, metadata).draw_dataset_dict(record).get_image()
            row.append(_caption(truth, "ground truth") if stages else truth)
        gap = np.full((row[0].shape[0], 4, 3), 255, np.uint8)
        tiles.append(np.concatenate([x for tile in row for x in (tile, gap)][:-1], 1))
    picture = montage(tiles, columns or (1 if stages else 2 if with_ground_truth else 4))
    Image.fromarray(picture).save(output_path)
    logger.info(f"Wrote {len(tiles)} images of predictions to {output_path}")
    return output_path
