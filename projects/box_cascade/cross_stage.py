"""Every stage's detector on every stage's proposals (the paper's Fig. 8), optionally with the
ground-truth boxes added to the proposals (Fig. 7b): a T x T table of AP and AP at each IoU.

Proposals of stage i are the boxes that enter stage i in the ordinary test chain (stage 1: the
RPN's; stage i > 1: stage i-1's regressions). Detector j is stage j's head and predictor (for
heads that read per-box memory, stages 1..j-1 are run first on the same boxes to give it its
memory), its regression of those boxes and its own class probabilities, rescored and NMS'd as
the model's output is. With ``add_gt`` the image's ground-truth boxes are appended to every
proposal set.
"""

import copy
import itertools
import logging
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.structures import Instances

from cascade_zoo.evaluation import PerIoUCOCOEvaluator
from cascade_zoo.utils.env import compiled_ops_available
from cascade_zoo.utils.markdown import markdown_table

from .roi_heads import BoxCascadeROIHeads
from .stages import StageRecord

logger = logging.getLogger(__name__)

Cell = Tuple[int, int]  # (proposal stage i, detector j), 1-based


def cross_stage_detections(model, inputs, add_gt: bool = False) -> List[Dict[Cell, Instances]]:
    """For each input image, detector j's detections on stage i's proposals for every (i, j),
    in the image's original size. ``inputs`` hold "instances" (ground truth in the input image's
    frame) when ``add_gt``."""
    heads = model.roi_heads
    if not isinstance(heads, BoxCascadeROIHeads):
        raise TypeError(
            f"cross-stage evaluation needs the box-cascade core's ROI heads, not {type(heads)}"
        )
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    feats = [features[f] for f in heads.box_in_features]
    num = heads.plan.num_run_at_test
    records = heads.run_test_stages(feats, proposals, num)
    out = [{} for _ in inputs]
    for i, record in enumerate(records):
        stage_proposals = record.proposals
        if add_gt:
            gt = [x["instances"].gt_boxes.to(model.device) for x in inputs]
            stage_proposals = add_ground_truth_to_proposals(gt, stage_proposals)
        box_features = heads.pool(feats, stage_proposals)
        memory = {}
        for j in range(num):
            predictions, memory = heads.predict(j, box_features, memory)
            cell = StageRecord(j, stage_proposals, box_features, predictions)
            detections = heads.detect(feats, cell)
            for per_image, inst, x in zip(out, detections, inputs):
                height, width = (
                    x.get("height", inst.image_size[0]),
                    x.get("width", inst.image_size[1]),
                )
                per_image[(i + 1, j + 1)] = detector_postprocess(inst, height, width)
    return out


def _test_loader_with_annotations(cfg, dataset_name: str):
    """The test loader (test-time resize), keeping the annotations as "instances"."""
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        ],
        image_format=cfg.INPUT.FORMAT,
    )
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)


def evaluate_cross_stage(
    cfg, model, dataset_name: str, *, add_gt: bool = False, max_images: int = 0
) -> "OrderedDict[str, Dict[str, float]]":
    """COCO box AP (and AP50..AP95) of every (proposal stage i, detector j) on a dataset.
    Returns {"proposals{i}/detector{j}": results}."""
    num = model.roi_heads.plan.num_run_at_test
    base = PerIoUCOCOEvaluator(
        dataset_name, tasks=("bbox",), distributed=False, use_fast_impl=compiled_ops_available()
    )
    cells = [(i, j) for i in range(1, num + 1) for j in range(1, num + 1)]
    evaluators = OrderedDict((c, copy.copy(base)) for c in cells)  # share the ground truth
    for ev in evaluators.values():
        ev.reset()
    loader = (
        _test_loader_with_annotations(cfg, dataset_name)
        if add_gt
        else build_detection_test_loader(cfg, dataset_name)
    )
    if max_images:
        loader = itertools.islice(loader, max_images)
    model.eval()
    with torch.no_grad():
        for n, inputs in enumerate(loader):
            for x, per_image in zip(inputs, cross_stage_detections(model, inputs, add_gt)):
                for cell, instances in per_image.items():
                    evaluators[cell].process([x], [{"instances": instances.to("cpu")}])
            if (n + 1) % 50 == 0:
                logger.info(f"cross-stage evaluation: {n + 1} images")
    results = OrderedDict()
    for (i, j), ev in evaluators.items():
        results[f"proposals{i}/detector{j}"] = ev.evaluate()["bbox"]
    return results


def cross_stage_tables(results: Dict[str, Dict[str, float]]) -> str:
    """Markdown: the T x T AP table (rows: proposals of stage i; columns: detector of stage j),
    then AP at each IoU for every cell."""
    cells = [tuple(int(p[len(w) :]) for p, w in zip(k.split("/"), ("proposals", "detector")))
             for k in results]  # fmt: skip
    num = max(i for i, _ in cells)
    ap = markdown_table(
        ["proposals \\ detector"] + [f"stage {j}" for j in range(1, num + 1)],
        [[f"stage {i}"] + [results[f"proposals{i}/detector{j}"]["AP"] for j in range(1, num + 1)]
         for i in range(1, num + 1)],
    )  # fmt: skip
    keys = [f"AP{t}" for t in range(50, 100, 5)]
    per_iou = markdown_table(
        ["proposals", "detector"] + keys,
        [[f"stage {i}", f"stage {j}"] + [results[f"proposals{i}/detector{j}"][k] for k in keys]
         for i, j in cells],
    )  # fmt: skip
    return ap + "\n\n" + per_iou
