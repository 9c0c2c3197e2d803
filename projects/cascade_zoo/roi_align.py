"""ROIAlign with a vectorized input gradient for CPU training.

torchvision's CPU ``roi_align`` backward runs on one thread and recomputes every bilinear
weight for every channel; on the shapes recipes it is 35-45% of a training step. ROIAlign is
linear in its input, and its bilinear sampling is separable: for one box, the pooled output is
``Ay @ X @ Ax^T`` per channel, where ``Ay`` (PH, H) and ``Ax`` (PW, W) hold the summed
interpolation weights of the bins' sample rows and columns. The input gradient is therefore
``Ay^T @ G @ Ax`` on a window around the box: two batched matrix products and one scatter-add.
The forward pass stays torchvision's, so predictions are unchanged; the gradient equals
torchvision's up to floating-point summation order (tests/test_roi_align.py).

``ZOO.ROI_ALIGN_CPU_BACKWARD`` selects it ("vectorized", the default) or torchvision's kernel
("torchvision"); either way CUDA tensors and inference use torchvision's kernels.

Shapes: B images, C channels, H x W feature map, R boxes, PH x PW output bins, g samples per bin
along an axis, L window length along an axis.
"""

from typing import Tuple

import torch
from detectron2.layers import ROIAlign
from torchvision.ops import roi_align

from .utils.modules import set_module_class

__all__ = [
    "BACKWARDS",
    "VectorizedBackwardROIAlign",
    "roi_align_input_grad",
    "use_roi_align_backward",
]

BACKWARDS = ("vectorized", "torchvision")


def _axis_samples(start, bin_size, grid: int, pooled: int, length: int):
    """Bilinear taps of every sample along one axis, as torchvision's kernel places them.

    Args:
        start, bin_size: (R,) the box's first coordinate and bin size, in feature pixels.
    Returns:
        low, high: (R, pooled, grid) the two neighbouring indices of each sample;
        w_low, w_high: their weights (zero for a sample outside [-1, length]).
    """
    dtype = start.dtype
    bins = torch.arange(pooled, dtype=dtype)[None, :, None]
    steps = (torch.arange(grid, dtype=dtype)[None, None, :] + 0.5) / grid
    pos = start[:, None, None] + (bins + steps) * bin_size[:, None, None]
    inside = ((pos >= -1.0) & (pos <= length)).to(dtype)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= length - 1
    low = low.clamp(max=length - 1)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(dtype))
    return low, high, (1 - frac) * inside, frac * inside


def _window_weights(low, high, w_low, w_high, origin, length: int):
    """(R, pooled, length): the summed weights of each bin on the window that starts at
    ``origin`` (R,)."""
    num, pooled, _ = low.shape
    out = w_low.new_zeros(num, pooled, length)
    for index, weight in ((low, w_low), (high, w_high)):
        out.scatter_add_(2, (index - origin[:, None, None]).clamp(0, length - 1), weight)
    return out


def _next_pow2(x: torch.Tensor) -> torch.Tensor:
    return torch.pow(2, torch.ceil(torch.log2(x.clamp(min=1).double()))).long()


def roi_align_input_grad(
    grad_output: torch.Tensor,
    rois: torch.Tensor,
    input_shape: Tuple[int, int, int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """The gradient of ``torchvision.ops.roi_align`` with respect to its input.

    Args:
        grad_output: (R, C, PH, PW).
        rois: (R, 5) rows of (image index, x0, y0, x1, y1) in input-image coordinates.
        input_shape: (B, C, H, W) of the pooled feature map.
    Returns:
        (B, C, H, W).
    """
    num_images, channels, height, width = input_shape
    num, _, pooled_h, pooled_w = grad_output.shape
    dtype = grad_output.dtype
    grad = grad_output.new_zeros(num_images * height * width, channels)
    if num:
        offset = 0.5 if aligned else 0.0
        x0, y0, x1, y1 = (rois[:, 1:].to(dtype) * spatial_scale - offset).unbind(1)
        box_w, box_h = x1 - x0, y1 - y0
        if not aligned:
            box_w, box_h = box_w.clamp(min=1.0), box_h.clamp(min=1.0)
        if sampling_ratio > 0:
            grid_h = grid_w = torch.full((num,), sampling_ratio, dtype=torch.long)
            # one batch per size class, so that a window is at most twice its box
            group_h, group_w = (
                _next_pow2(box_h.abs().ceil() + 3),
                _next_pow2(box_w.abs().ceil() + 3),
            )
        else:
            grid_h, grid_w = (
                torch.ceil(box_h / pooled_h).long(),
                torch.ceil(box_w / pooled_w).long(),
            )
            # one batch per sample grid: g samples per bin bound the box to g bin heights
            group_h, group_w = grid_h, grid_w
        group = group_h.clamp(min=0) * (1 << 31) + group_w.clamp(min=0)
        order = torch.argsort(group)
        counts = torch.unique_consecutive(group[order], return_counts=True)[1].tolist()
        images = rois[:, 0].long()
        for sel in torch.split(order, counts):
            gh, gw = int(grid_h[sel[0]]), int(grid_w[sel[0]])
            if gh <= 0 or gw <= 0:
                continue  # no samples: torchvision's kernel gives zero too
            taps_y = _axis_samples(y0[sel], box_h[sel] / pooled_h, gh, pooled_h, height)
            taps_x = _axis_samples(x0[sel], box_w[sel] / pooled_w, gw, pooled_w, width)
            origin_y, origin_x = (
                taps_y[0].flatten(1).min(1).values,
                taps_x[0].flatten(1).min(1).values,
            )
            len_y = int((taps_y[1].flatten(1).max(1).values - origin_y).max()) + 1
            len_x = int((taps_x[1].flatten(1).max(1).values - origin_x).max()) + 1
            a_y = _window_weights(*taps_y, origin_y, len_y)  # (r, PH, Ly)
            a_x = _window_weights(*taps_x, origin_x, len_x)  # (r, PW, Lx)
            r = sel.numel()
            g = grad_output[sel] / (gh * gw)  # the mean over a bin's samples
            g = g.permute(0, 2, 3, 1).reshape(r, pooled_h, pooled_w * channels)
            rows = torch.bmm(a_y.transpose(1, 2), g).view(r, len_y, pooled_w, channels)
            rows = rows.transpose(1, 2).reshape(r, pooled_w, len_y * channels)
            window = torch.bmm(a_x.transpose(1, 2), rows)  # (r, Lx, Ly * C)
            ys = (origin_y[:, None] + torch.arange(len_y)).clamp(max=height - 1)
            xs = (origin_x[:, None] + torch.arange(len_x)).clamp(max=width - 1)
            # Window cells past the map's edge carry zero weight; clamping keeps their index valid.
            index = (
                images[sel][:, None, None] * (height * width)
                + xs[:, :, None]
                + ys[:, None, :] * width
            )
            grad.index_add_(0, index.flatten(), window.reshape(-1, channels))
    return grad.view(num_images, height, width, channels).permute(0, 3, 1, 2).contiguous()


class _ROIAlignVectorizedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.settings = (tuple(input.shape), spatial_scale, sampling_ratio, aligned)
        return roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        shape, spatial_scale, sampling_ratio, aligned = ctx.settings
        grad = roi_align_input_grad(
            grad_output, rois, shape, spatial_scale, sampling_ratio, aligned
        )
        return grad, None, None, None, None, None


class VectorizedBackwardROIAlign(ROIAlign):
    """Detectron2's ROIAlign whose input gradient on CPU is :func:`roi_align_input_grad`."""

    def forward(self, input, rois):
        if input.device.type != "cpu" or not (torch.is_grad_enabled() and input.requires_grad):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        size = self.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return _ROIAlignVectorizedBackward.apply(
            input, rois.to(dtype=input.dtype), size, self.spatial_scale, self.sampling_ratio,
            self.aligned,
        )  # fmt: skip


def use_roi_align_backward(model: torch.nn.Module, backward: str) -> int:
    """Make every Detectron2 ``ROIAlign`` of ``model`` use ``backward`` (one of BACKWARDS) for
    its CPU input gradient; returns how many modules were set."""
    if backward not in BACKWARDS:
        raise ValueError(f"ZOO.ROI_ALIGN_CPU_BACKWARD must be one of {BACKWARDS}, got {backward!r}")
    cls = VectorizedBackwardROIAlign if backward == "vectorized" else ROIAlign
    return set_module_class(model, (ROIAlign, VectorizedBackwardROIAlign), cls)
