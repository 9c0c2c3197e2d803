#!/usr/bin/env python
"""Export a model of this project (or a Detectron2 baseline) to TorchScript or ONNX, by tracing.

    python tools/deploy/export_model.py --config-file CONFIG --output DIR \
        [--format torchscript|onnx] [--sample-image IMG] [--check [--check-images IMG ...]] \
        --opts MODEL.WEIGHTS model.pth

Config overrides go after --opts, last, as in Detectron2's tools/deploy/export_model.py; the
older form without --opts (trailing KEY VALUE pairs) still works. MODEL.WEIGHTS may be a file, a
URL or a model-zoo name (detectron2://, cascade_zoo://); it is loaded by ZooCheckpointer, which
refuses a checkpoint whose unpickling could run code unless ZOO.CHECKPOINT.ALLOW_UNSAFE_PICKLE.

The traced function is the model's inference on one CHW uint8-range float image (BGR, already
resized as DefaultPredictor does), without post-processing: it returns the detections' fields
(boxes, scores, classes, masks with MASK_ON) in the resized image's coordinates. Pre-processing
(normalisation, padding) is inside the exported graph; resizing and ``detector_postprocess``
(rescaling to the original image, mask pasting) stay with the caller, as in Detectron2's
tools/deploy.

Tracing goes through ``detectron2.export.TracingAdapter`` when ``detectron2.export`` imports
(current Detectron2); with Detectron2 v0.6 it does not (it imports caffe2, gone from torch 2),
and a small adapter of this file flattens the outputs instead. ``--check`` runs the exported
model and the eager one on images (``--check-images``, default three of the test set) and reports
the largest differences; it fails when the detections differ beyond the tolerances of
``compare_instances``. The ONNX graph's input is named ``image`` (dynamic height and width) and
its outputs after the detections' fields (``pred_boxes``, ``scores``, ``pred_classes``,
``pred_masks``; dynamic number of detections; current Detectron2's TracingAdapter orders them
its own way and adds ``image_size``).
"""

import argparse
import contextlib
import logging
import os
import sys
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger
from torch import nn

from cascade_zoo import setup_cfg
from cascade_zoo.engine.checkpoint import UnsafeCheckpointError, build_checkpointer
from cascade_zoo.modeling import build_model
from cascade_zoo.predictor import add_config_arguments, config_overrides, missing_weights_message

# Tracing warns about every Python value it records as a constant; the equivalence checks are what
# tell whether that matters.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
# PyTorch deprecates TorchScript (torch.jit.trace / load) and the TorchScript-based ONNX exporter
# in favour of torch.export, which Detectron2's models do not go through yet; this tool traces, as
# Detectron2's tools/deploy does, and says so once (main) instead of at every call. The ONNX
# exporter's note on negative indices does not apply: the graph indexes with arange and classes.
for _message in (
    r"`torch\.jit\.(trace|trace_method|load)` is deprecated",
    r"You are using the legacy TorchScript-based ONNX export",
    r"no signature found for <torch\.ScriptMethod",
    r"Exporting aten::index operator of advanced indexing",
):
    warnings.filterwarnings("ignore", message=_message)

logger = logging.getLogger("cascade_zoo.export")

# Fields of the detections, in the order the fallback adapter returns them.
FIELDS = ("pred_boxes", "scores", "pred_classes", "pred_masks")
# Exported vs eager detections (same image, same CPU): largest allowed differences.
TOLERANCE = {"pred_boxes": 1e-2, "scores": 1e-4, "pred_masks": 1e-3}  # pixels, probability


def load_model(cfg) -> nn.Module:
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def prepare_image(cfg, bgr: np.ndarray) -> torch.Tensor:
    """The CHW float tensor DefaultPredictor would give the model (BGR, resized)."""
    if cfg.INPUT.FORMAT == "RGB":
        bgr = bgr[:, :, ::-1]
    aug = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    image = aug.get_transform(bgr).apply_image(bgr)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def _infer(model: nn.Module, image: torch.Tensor) -> Instances:
    return model.inference([{"image": image}], do_postprocess=False)[0]


class _InstancesAdapter(nn.Module):
    """The fallback for Detectron2 v0.6: image tensor -> tuple of the detections' field tensors
    (FIELDS order, those the model produces)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.fields: List[str] = []

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        instances = _infer(self.model, image)
        self.fields = [f for f in FIELDS if instances.has(f)]
        return tuple(
            instances.get(f).tensor if f == "pred_boxes" else instances.get(f) for f in self.fields
        )


@contextlib.contextmanager
def _traceable_detectron2():
    """Two of Detectron2's inference paths record Python values that tracing freezes; while tracing
    (one image), they are replaced by equivalents made of tensor operations:

    - ``mask_rcnn_inference`` splits the mask probabilities per image by ``len(instances)``, a
      Python int: the trace keeps the traced image's count and fails on any other. For one image
      the split is the identity, so the class-specific masks are selected without it.
    - Detectron2 v0.6's CascadeROIHeads applies ``_ScaleGradient`` (a Python autograd Function,
      which TorchScript cannot save) at inference too; its forward is the identity (main applies
      it only in training).
    """
    from detectron2.modeling.roi_heads import cascade_rcnn, mask_head

    original_masks = mask_head.mask_rcnn_inference

    def one_image_mask_inference(pred_mask_logits, pred_instances):
        if len(pred_instances) != 1:
            return original_masks(pred_mask_logits, pred_instances)
        (instances,) = pred_instances
        if pred_mask_logits.shape[1] > 1:  # class-specific masks: the predicted class's
            index = torch.arange(pred_mask_logits.shape[0])
            pred_mask_logits = pred_mask_logits[index, instances.pred_classes][:, None]
        instances.pred_masks = pred_mask_logits.sigmoid()

    scale = getattr(cascade_rcnn, "_ScaleGradient", None)
    patch_scale = scale is not None and "apply" not in vars(scale)
    mask_head.mask_rcnn_inference = one_image_mask_inference
    if patch_scale:
        scale.apply = staticmethod(lambda tensor, factor: tensor)
    try:
        yield
    finally:
        mask_head.mask_rcnn_inference = original_masks
        if patch_scale:
            del scale.apply


def _schema_output_names(schema) -> List[str]:
    """Names of the flattened outputs of Detectron2's TracingAdapter, from its outputs schema
    (``InstancesSchema``: each field, a field flattened to several tensors as ``field.i``, then the
    image size)."""
    keys, sizes = getattr(schema, "keys", None), getattr(schema, "sizes", None)
    if not keys or not sizes or len(keys) != len(sizes):
        return []
    names = []
    for key, size in zip(keys, sizes):
        names += [key] if size == 1 else [f"{key}.{i}" for i in range(size)]
    if type(schema).__name__ == "InstancesSchema":
        names.append("image_size")
    return names


def trace(
    model: nn.Module, image: torch.Tensor
) -> Tuple[torch.jit.ScriptModule, Callable, List[str]]:
    """Trace ``model``'s inference on ``image``. Returns the traced module (one tensor in, a tuple
    of tensors out), a function turning its outputs, for an input of a given (H, W), back into
    Instances, and the outputs' names (the detections' fields, in order)."""
    try:
        from detectron2.export import TracingAdapter
    except ImportError:  # Detectron2 v0.6: detectron2.export imports caffe2
        TracingAdapter = None
    with torch.no_grad(), _traceable_detectron2():
        if TracingAdapter is not None:
            adapter = TracingAdapter(model, [{"image": image}], _infer_flat)
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
            schema = adapter.outputs_schema
            names = _schema_output_names(schema)

            def rebuild(outputs, image_size):
                instances = schema(outputs)
                # The schema keeps the traced image's size: the actual input's is the caller's.
                return Instances(image_size, **instances.get_fields())

        else:
            adapter = _InstancesAdapter(model)
            traced = torch.jit.trace(adapter, (image,), check_trace=False)
            fields = list(adapter.fields)
            names = list(fields)

            def rebuild(outputs, image_size):
                values = dict(zip(fields, outputs))
                if "pred_boxes" in values:
                    values["pred_boxes"] = Boxes(values["pred_boxes"])
                return Instances(image_size, **values)

    return traced, rebuild, names


def _infer_flat(model, inputs):
    return model.inference(inputs, do_postprocess=False)[0]


def compare_instances(eager: Instances, exported: Instances) -> Dict[str, float]:
    """Largest differences between two detection sets; raises AssertionError beyond TOLERANCE
    (any difference in count or classes is an error)."""
    if len(eager) != len(exported):
        raise AssertionError(f"{len(exported)} detections exported vs {len(eager)} eager")
    diffs = {}
    for field in FIELDS:
        if not eager.has(field):
            continue
        if not exported.has(field):
            raise AssertionError(f"the exported model returns no {field}")
        a, b = eager.get(field), exported.get(field)
        a, b = (a.tensor, b.tensor) if field == "pred_boxes" else (a, b)
        if field == "pred_classes":
            if not torch.equal(a, b):
                raise AssertionError("pred_classes differ")
            continue
        diffs[field] = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
        if diffs[field] > TOLERANCE[field]:
            raise AssertionError(f"{field} differ by {diffs[field]:g} > {TOLERANCE[field]:g}")
    return diffs


def export_onnx(
    traced: torch.jit.ScriptModule, image: torch.Tensor, path: str, output_names: Sequence[str] = ()
) -> None:
    """ONNX from the traced module (opset 17; torchvision's ROIAlign and NMS have ONNX forms).
    The input is named ``image`` (CHW, dynamic H and W), the outputs ``output_names`` (what
    :func:`trace` returns), each with a dynamic number of detections."""
    dynamic_axes = {"image": {1: "height", 2: "width"}}
    dynamic_axes.update({n: {0: "detections"} for n in output_names if n != "image_size"})
    torch.onnx.export(
        traced,
        (image,),
        path,
        opset_version=17,
        input_names=["image"],
        output_names=list(output_names),
        dynamic_axes=dynamic_axes,
        dynamo=False,
    )


def onnx_runner(path: str) -> Callable:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(image: torch.Tensor):
        outputs = session.run(None, {session.get_inputs()[0].name: image.numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)

    return run


def sample_images(cfg, paths: Sequence[str], count: int) -> List[np.ndarray]:
    """BGR images: the given files, or the first ``count`` of the config's first test set."""
    if paths:
        return [read_image(p, format="BGR") for p in paths]
    records = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:count]
    return [read_image(r["file_name"], format="BGR") for r in records]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--output", required=True, help="directory for model.ts / model.onnx")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument(
        "--sample-image", help="image to trace with (default: the first of DATASETS.TEST[0])"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare the exported model with eager mode"
    )
    parser.add_argument(
        "--check-images",
        nargs="+",
        default=[],
        metavar="IMG",
        help="images for --check (default: the first 3 of DATASETS.TEST[0])",
    )
    args = parser.parse_args(argv)
    opts = config_overrides(parser, args, "check_images")
    setup_logger(name="cascade_zoo")
    cfg = setup_cfg(args.config_file, opts)
    if cfg.MODEL.DEVICE != "cpu":
        logger.info("exporting on the CPU (MODEL.DEVICE %s ignored)", cfg.MODEL.DEVICE)
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
    missing = missing_weights_message(cfg.MODEL.WEIGHTS)
    if missing:
        sys.exit(f"error: {missing}")
    os.makedirs(args.output, exist_ok=True)

    logger.info("[1/3] building the model and loading %s", cfg.MODEL.WEIGHTS or "no weights")
    try:
        model = load_model(cfg)
    except UnsafeCheckpointError as e:
        sys.exit(f"error: {e}")
    image = prepare_image(
        cfg, sample_images(cfg, [args.sample_image] if args.sample_image else [], 1)[0]
    )
    logger.info(
        "[2/3] tracing on a %dx%d image (TorchScript tracing, which PyTorch deprecates in favour "
        "of torch.export)",
        image.shape[2],
        image.shape[1],
    )
    traced, rebuild, names = trace(model, image)
    if args.format == "torchscript":
        path = os.path.join(args.output, "model.ts")
        traced.save(path)
        run = torch.jit.load(path)
    else:
        path = os.path.join(args.output, "model.onnx")
        export_onnx(traced, image, path, names)
        run = onnx_runner(path)
    logger.info("wrote %s (outputs: %s)", path, ", ".join(names))

    if args.check:
        images = [prepare_image(cfg, im) for im in sample_images(cfg, args.check_images, 3)]
        logger.info("[3/3] comparing with eager mode on %d images", len(images))
        for i, im in enumerate(images):
            with torch.no_grad():
                eager = _infer(model, im)
                exported = rebuild(run(im), eager.image_size)
            try:
                diffs = compare_instances(eager, exported)
            except AssertionError as e:
                logger.error("image %d: exported and eager detections differ: %s", i, e)
                return 1
            logger.info("image %d: %d detections, largest differences %s", i, len(eager), diffs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
