"""build_any_width_resnet_fpn_backbone: Detectron2's R-18/R-34 FPN at width 64, any width else."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

import cascade_zoo  # noqa: F401  (registers the backbone)
from cascade_zoo import get_zoo_cfg
from cascade_zoo.backbone import build_any_width_resnet_fpn_backbone


def _cfg(depth=18, res2=64, stem=64, fpn=32):
    cfg = get_zoo_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = stem
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = fpn
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


@pytest.mark.parametrize("depth", [18, 34])
def test_width_64_is_detectron2s_resnet_fpn(depth):
    """At RES2_OUT_CHANNELS 64 the builder makes Detectron2's own backbone: the same parameter
    names and shapes, and with Detectron2's weights loaded, the same outputs."""
    cfg = _cfg(depth)
    torch.manual_seed(0)
    reference = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours = build_any_width_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(ref_state) == list(our_state)
    assert all(ref_state[k].shape == our_state[k].shape for k in ref_state)
    ours.load_state_dict(ref_state)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert list(expected) == list(got) == ["p2", "p3", "p4", "p5", "p6"]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    assert ours.output_shape() == reference.output_shape()


def test_narrow_widths_double_per_stage():
    """RES2_OUT_CHANNELS w gives stages of w, 2w, 4w, 8w channels at strides 4..32, with about
    (w / 64)^2 of R-18's parameters, and the FPN keeps its own width."""
    cfg = _cfg(18, res2=16, stem=24, fpn=32)
    backbone = build_any_width_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    shapes = backbone.bottom_up.output_shape()
    assert [shapes[f"res{k}"].channels for k in range(2, 6)] == [16, 32, 64, 128]
    assert [shapes[f"res{k}"].stride for k in range(2, 6)] == [4, 8, 16, 32]
    assert backbone.bottom_up.stem.conv1.weight.shape == (24, 3, 7, 7)
    assert backbone.bottom_up.res2[0].conv1.weight.shape == (16, 24, 3, 3)
    # the first block of res2 changes 24 -> 16 channels, so it gets a shortcut projection
    assert backbone.bottom_up.res2[0].shortcut is not None
    out = backbone(torch.randn(1, 3, 64, 64))
    assert all(v.shape[1] == 32 for v in out.values())

    def n_params(module):
        return sum(p.numel() for p in module.parameters())

    full = build_any_width_resnet_fpn_backbone(_cfg(18), ShapeSpec(channels=3)).bottom_up
    ratio = n_params(backbone.bottom_up) / n_params(full)
    assert 0.5 * (16 / 64) ** 2 < ratio < 2 * (16 / 64) ** 2


def test_selected_by_config_and_trains():
    """MODEL.BACKBONE.NAME selects it through the registry; its gradients reach the stem."""
    from detectron2.modeling import build_backbone

    cfg = _cfg(18, res2=8, stem=8, fpn=16)
    cfg.MODEL.BACKBONE.NAME = "build_any_width_resnet_fpn_backbone"
    backbone = build_backbone(cfg)
    assert backbone.bottom_up.res5[0].conv2.weight.shape[0] == 64
    sum(v.sum() for v in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    assert backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("DEPTH", 50, "MODEL.RESNETS.DEPTH 50"),
        ("RES2_OUT_CHANNELS", 0, "MODEL.RESNETS.RES2_OUT_CHANNELS"),
        ("STEM_OUT_CHANNELS", -8, "MODEL.RESNETS.STEM_OUT_CHANNELS"),
        ("NUM_GROUPS", 2, "NUM_GROUPS"),
        ("RES5_DILATION", 2, "RES5_DILATION"),
    ],
)
def test_bad_config_names_the_key(key, value, message):
    cfg = _cfg()
    setattr(cfg.MODEL.RESNETS, key, value)
    with pytest.raises(ValueError, match=message):
        build_any_width_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
