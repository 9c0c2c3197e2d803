"""ZooPredictor: Detectron2's DefaultPredictor with the weights loaded by ZooCheckpointer; the
same outputs as DefaultPredictor for a safe checkpoint, on the CPU and (when there is one) on a
GPU. (Unsafe checkpoints: tests/test_unsafe_weights.py.)"""

import logging

import pytest
import torch
from conftest import ROOT
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor

from cascade_zoo import ZooPredictor, setup_cfg
from cascade_zoo.data import prepare_shapes

CONFIG = str(ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised model of CONFIG, saved as train_net.py saves one."""
    from detectron2.modeling import build_model

    from cascade_zoo.engine.checkpoint import ZooCheckpointer

    out = tmp_path_factory.mktemp("predictor")
    torch.manual_seed(3)
    model = build_model(setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"]))
    ZooCheckpointer(model, str(out)).save("model_final")
    return str(out / "model_final.pth")


@pytest.fixture(scope="module")
def image():
    prepare_shapes("shapes_tiny_val")
    return read_image(DatasetCatalog.get("shapes_tiny_val")[0]["file_name"], format="BGR")


def _same(a, b):
    assert len(a) == len(b) > 0
    assert torch.allclose(a.pred_boxes.tensor.cpu(), b.pred_boxes.tensor.cpu(), atol=1e-3)
    assert torch.allclose(a.scores.cpu(), b.scores.cpu(), atol=1e-4)


def test_zoo_predictor_gives_default_predictors_outputs(checkpoint, image, caplog):
    opts = ["MODEL.WEIGHTS", checkpoint, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    cfg = setup_cfg(CONFIG, [*opts, "MODEL.DEVICE", "cpu"])
    with caplog.at_level(logging.INFO, logger="fvcore.common.checkpoint"):
        ours = ZooPredictor(cfg)
    # the model is built without weights, then loaded: no "initializing from scratch" line
    assert "No checkpoint found" not in caplog.text and checkpoint in caplog.text
    assert ours.cfg.MODEL.WEIGHTS == checkpoint and ours.input_format == "BGR"
    _same(ours(image)["instances"], DefaultPredictor(cfg)(image)["instances"])
    assert "stage_instances" in ours(image)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_zoo_predictor_on_cuda_gives_the_cpus_outputs(checkpoint, image):
    opts = ["MODEL.WEIGHTS", checkpoint, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    on_gpu = ZooPredictor(setup_cfg(CONFIG, [*opts, "MODEL.DEVICE", "cuda"]))
    assert next(on_gpu.model.parameters()).is_cuda
    on_cpu = ZooPredictor(setup_cfg(CONFIG, [*opts, "MODEL.DEVICE", "cpu"]))
    _same(on_gpu(image)["instances"], on_cpu(image)["instances"])
