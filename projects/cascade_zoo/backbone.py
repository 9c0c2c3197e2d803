"""ResNet-18/34 + FPN of any width, for the CPU recipe.

Detectron2's ``build_resnet_backbone`` asserts ``MODEL.RESNETS.RES2_OUT_CHANNELS == 64`` for the
BasicBlock ResNets (R-18, R-34). The shapes dataset needs far less capacity than ImageNet, and on
a 2-core CPU the backbone is most of an iteration's cost (docs/benchmark_protocol.md), so this
builder honours ``RES2_OUT_CHANNELS`` (and ``STEM_OUT_CHANNELS``) for them: stage k has
``RES2_OUT_CHANNELS * 2**(k-2)`` channels. Everything else is Detectron2's: its ``BasicStem``,
``BasicBlock``, ``ResNet``, ``FPN`` and ``LastLevelMaxPool``, so parameter names are those of
Detectron2's R-18/R-34 FPN (``backbone.bottom_up.res2.0.conv1.weight`` ...). With
``RES2_OUT_CHANNELS: 64`` it builds exactly Detectron2's ``build_resnet_fpn_backbone``.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem

_BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def build_any_width_basic_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """A BasicBlock ResNet (``MODEL.RESNETS.DEPTH`` 18 or 34) whose res2 has
    ``MODEL.RESNETS.RES2_OUT_CHANNELS`` channels, doubling at every later stage."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH {r.DEPTH}: build_any_width_resnet_fpn_backbone builds the "
            f"BasicBlock ResNets {sorted(_BLOCKS_PER_STAGE)}; use Detectron2's "
            "build_resnet_fpn_backbone for deeper ones"
        )
    for key in ("RES2_OUT_CHANNELS", "STEM_OUT_CHANNELS"):
        if getattr(r, key) < 1:
            raise ValueError(f"MODEL.RESNETS.{key} must be positive, got {getattr(r, key)}")
    if r.RES5_DILATION != 1 or r.NUM_GROUPS != 1 or any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            "MODEL.RESNETS.RES5_DILATION, NUM_GROUPS and DEFORM_ON_PER_STAGE are not supported "
            "by BasicBlock ResNets (set 1, 1 and all False)"
        )
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    stages = []
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    for index, num_blocks in enumerate(_BLOCKS_PER_STAGE[r.DEPTH]):
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=r.NORM,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_any_width_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``build_resnet_fpn_backbone`` on :func:`build_any_width_basic_resnet` (select with
    ``MODEL.BACKBONE.NAME: build_any_width_resnet_fpn_backbone``)."""
    return FPN(
        bottom_up=build_any_width_basic_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
