"""The installed Detectron2 does what the project needs; in the Python-only fallback, compiled
ops fail only when called, with an error naming the op."""

import os

import pytest
from detectron2 import model_zoo

from cascade_zoo.utils.env import compiled_ops_available, default_device


def test_model_zoo_configs_are_installed():
    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
    assert model_zoo.get_config("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml").MODEL.MASK_ON


def test_layers_import_and_compiled_ops_fail_only_when_called():
    import detectron2.layers  # imports deform_conv, rotated boxes: they import _C
    from detectron2 import _C

    assert hasattr(detectron2.layers, "ROIAlign")
    if compiled_ops_available():
        pytest.skip("official Detectron2 with compiled ops is installed")
    with pytest.raises(RuntimeError, match=r"_C\.nms_rotated is a compiled Detectron2 op"):
        _C.nms_rotated()
    import torch
    from detectron2.layers import nms_rotated  # a torch op the extension would register

    with pytest.raises(RuntimeError, match=r"_C\.nms_rotated is a compiled Detectron2 op"):
        nms_rotated(torch.zeros(1, 5), torch.ones(1), 0.5)


def test_collect_env_works_without_compiled_ops():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_device_falls_back_to_cpu_without_cuda():
    import torch

    assert default_device("cpu") == "cpu"
    assert default_device("cuda") == ("cuda" if torch.cuda.is_available() else "cpu")
