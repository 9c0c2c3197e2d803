"""tools/deploy/export_model.py: the exported model (TorchScript, ONNX) gives the eager model's
detections on shapes images other than the one it was traced on (other sizes, other numbers of
detections), within export_model.TOLERANCE (boxes 0.01 px, scores 1e-4, mask probabilities 1e-3;
classes and counts exactly)."""

import importlib.util

import pytest
import torch
from conftest import ROOT

from cascade_zoo import setup_cfg

spec = importlib.util.spec_from_file_location(
    "export_model", ROOT / "tools" / "deploy" / "export_model.py"
)
export_model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_model)

# The core with and without masks, and Detectron2's own cascade (its ROI heads, mask head and
# Faster R-CNN box head are those of the other baselines); the tool test below exports the core
# with masks to ONNX.
CASES = [
    ("CascadeRCNN/cascade_rcnn_instant_test.yaml", "onnx"),
    ("CascadeRCNN/cascade_mask_rcnn_instant_test.yaml", "torchscript"),
    ("Baselines/cascade_mask_rcnn_instant_test.yaml", "torchscript"),
    # the core's other registered heads
    ("CascadeRCNN/cascade_rcnn_parallel_modules_instant_test.yaml", "torchscript"),
    # the integral-loss delta over the shapes config (BASE+DELTA)
    (
        "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+CascadeRCNN/ablations/integral_loss.yaml",
        "torchscript",
    ),
    ("RGA_PRM/faster_rcnn_rga_prm_instant_test.yaml", "onnx"),
    ("RGA_PRM/cascade_rcnn_rga_prm_instant_test.yaml", "torchscript"),
]


def _model_with_varied_counts(config):
    """A randomly initialised model whose score threshold lies halfway between the two middle
    scores on the second image, so that the images get different numbers of detections (and no
    score sits at the threshold). ``config``: a file under configs/, or BASE+DELTA."""
    files = [str(ROOT / "configs" / f) for f in config.split("+")]
    cfg = setup_cfg(files, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    model = export_model.load_model(cfg)
    images = [export_model.prepare_image(cfg, im) for im in export_model.sample_images(cfg, [], 3)]
    with torch.no_grad():
        scores = export_model._infer(model, images[1]).scores.sort().values
    threshold = float(scores[len(scores) // 2 - 1 : len(scores) // 2 + 1].mean())
    cfg = setup_cfg(files, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(threshold)])
    thresholded = export_model.load_model(cfg)
    thresholded.load_state_dict(model.state_dict())
    return thresholded, images, threshold


@pytest.mark.parametrize("config,fmt", CASES, ids=[f"{c}-{f}" for c, f in CASES])
def test_exported_detections_equal_eager_mode(config, fmt, tmp_path):
    model, images, _ = _model_with_varied_counts(config)
    traced, rebuild, names = export_model.trace(model, images[0])
    if fmt == "torchscript":
        traced.save(str(tmp_path / "model.ts"))
        run = torch.jit.load(str(tmp_path / "model.ts"))
    else:
        export_model.export_onnx(traced, images[0], str(tmp_path / "model.onnx"), names)
        run = export_model.onnx_runner(str(tmp_path / "model.onnx"))
    counts, sizes = set(), set()
    for image in images:
        with torch.no_grad():
            eager = export_model._infer(model, image)
            exported = rebuild(run(image), eager.image_size)
        export_model.compare_instances(eager, exported)  # raises beyond the tolerances
        counts.add(len(eager))
        sizes.add(tuple(image.shape))
        if "mask" in config:
            assert exported.pred_masks.shape[0] == len(eager)
    assert len(counts) > 1 and len(sizes) > 1  # the trace was not specialised to its image


def test_compare_instances_rejects_a_moved_box():
    from detectron2.structures import Boxes, Instances

    a = Instances((10, 10), pred_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]])), scores=torch.ones(1))
    a.pred_classes = torch.zeros(1, dtype=torch.long)
    b = Instances((10, 10), **a.get_fields())
    b.pred_boxes = Boxes(torch.tensor([[0.0, 0, 5, 5.1]]))
    with pytest.raises(AssertionError, match="pred_boxes differ by"):
        export_model.compare_instances(a, b)
    b.pred_boxes = Boxes(torch.tensor([[0.0, 0, 5, 5.001]]))
    assert export_model.compare_instances(a, b)["pred_boxes"] == pytest.approx(1e-3, rel=1e-2)


def _onnx_names(path):
    """(input names, output names) of an ONNX file: read with onnx if installed, else from the
    graph onnxruntime loads."""
    try:
        import onnx
    except ImportError:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    graph = onnx.load(str(path)).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def test_export_tool_writes_and_checks_an_onnx_model_with_masks(tmp_path, monkeypatch):
    """--opts, a model-zoo name as MODEL.WEIGHTS (cascade_zoo://), named ONNX inputs/outputs."""
    from detectron2.checkpoint import DetectionCheckpointer

    config = "CascadeRCNN/cascade_mask_rcnn_instant_test.yaml"
    model, _, threshold = _model_with_varied_counts(config)
    zoo = tmp_path / "zoo"
    (zoo / "mine").mkdir(parents=True)
    DetectionCheckpointer(model, save_dir=str(zoo / "mine")).save("weights")
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(zoo))
    argv = ["--config-file", str(ROOT / "configs" / config), "--output", str(tmp_path)]
    argv += [
        "--format",
        "onnx",
        "--check",
        "--opts",
        "MODEL.WEIGHTS",
        "cascade_zoo://mine/weights.pth",
    ]
    argv += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(threshold)]
    assert export_model.main(argv) == 0
    inputs, outputs = _onnx_names(tmp_path / "model.onnx")
    assert inputs == ["image"]
    # the detections' fields (in Detectron2 v0.6's order, or in the order of current Detectron2's
    # TracingAdapter, which adds the image size last)
    fields = [o for o in outputs if o != "image_size"]
    assert sorted(fields) == ["pred_boxes", "pred_classes", "pred_masks", "scores"]
    assert outputs == fields or outputs == [*fields, "image_size"]
    # a model-zoo name that is not there stops before anything is built, saying where it looked
    argv[argv.index("cascade_zoo://mine/weights.pth")] = "cascade_zoo://mine/other.pth"
    with pytest.raises(SystemExit, match=f"looked for cascade_zoo://mine/other.pth at:\n    {zoo}"):
        export_model.main(argv)
