"""R3-CNN-L's box head (Table 1 row 6, Table 4): the fully connected layers of the FPN box head
replaced by a non-local block and light 7x7 convolutions, flattened into the predictor.

Shapes: R boxes, C channels, P pooler resolution.
"""

from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY
from torch import nn


class NonLocalBlock(nn.Module):
    """The embedded-Gaussian non-local block of Wang et al. with residual connection:
    z = x + W_z(softmax(theta(x)^T phi(x)) g(x)), over the P x P positions of each box.

    theta, phi and g are k x k convolutions C -> C / reduction (k = 1 in Wang et al.; R3-CNN-L
    uses 7); W_z is a 1x1 convolution back to C, zero-initialised so that the block starts as the
    identity (Wang et al.'s initialisation)."""

    def __init__(self, channels: int, kernel_size: int = 7, reduction: int = 2):
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"MODEL.R3_CNN.NL_KERNEL_SIZE must be odd and >= 1: {kernel_size}")
        if reduction < 1 or channels % reduction:
            raise ValueError(
                f"MODEL.R3_CNN.NL_REDUCTION must divide the {channels} channels: {reduction}"
            )
        inner = channels // reduction
        pad = kernel_size // 2
        self.theta = nn.Conv2d(channels, inner, kernel_size, padding=pad)
        self.phi = nn.Conv2d(channels, inner, kernel_size, padding=pad)
        self.g = nn.Conv2d(channels, inner, kernel_size, padding=pad)
        self.out = nn.Conv2d(inner, channels, 1)
        for conv in (self.theta, self.phi, self.g):
            weight_init.c2_msra_fill(conv)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (R, HW, C')
        phi = self.phi(x).flatten(2)  # (R, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (R, HW, C')
        attention = torch.softmax(theta @ phi, dim=-1)  # (R, HW, HW)
        y = (attention @ g).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.out(y)


@ROI_BOX_HEAD_REGISTRY.register()
class NonLocalConvBoxHead(nn.Module):
    """Pooled features (R, C, P, P) -> a non-local block -> k x k convs (+ ReLU) ->
    flattened (R, C_last * P * P)."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: List[int],
        conv_kernel_size: int = 7,
        nl_kernel_size: int = 7,
        nl_reduction: int = 2,
        conv_norm: str = "",
    ):
        super().__init__()
        if not conv_dims:
            raise ValueError("MODEL.R3_CNN.CONV_DIMS must list at least one conv")
        if conv_kernel_size % 2 != 1:
            raise ValueError(f"MODEL.R3_CNN.CONV_KERNEL_SIZE must be odd: {conv_kernel_size}")
        channels = input_shape.channels
        self.non_local = NonLocalBlock(channels, nl_kernel_size, nl_reduction)
        self.convs = nn.ModuleList()
        for dim in conv_dims:
            conv = Conv2d(
                channels,
                dim,
                kernel_size=conv_kernel_size,
                padding=conv_kernel_size // 2,
                bias=not conv_norm,
                norm=get_norm(conv_norm, dim),
                activation=nn.ReLU(),
            )
            weight_init.c2_msra_fill(conv)
            self.convs.append(conv)
            channels = dim
        self._output_size = channels * (input_shape.height or 1) * (input_shape.width or 1)

    @classmethod
    def from_config(cls, cfg, input_shape):
        r3 = cfg.MODEL.R3_CNN
        return {
            "input_shape": input_shape,
            "conv_dims": list(r3.CONV_DIMS),
            "conv_kernel_size": r3.CONV_KERNEL_SIZE,
            "nl_kernel_size": r3.NL_KERNEL_SIZE,
            "nl_reduction": r3.NL_REDUCTION,
            "conv_norm": cfg.MODEL.ROI_BOX_HEAD.NORM,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.non_local(x)
        for conv in self.convs:
            x = conv(x)
        return torch.flatten(x, start_dim=1)

    @property
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._output_size)
