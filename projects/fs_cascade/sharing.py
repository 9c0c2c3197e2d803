"""FSCascade's feature sharing (Sec. 3 of the paper): classification feature sharing (CFS, Eq. 1)
over the stages' fc layers, the conv localization head, and localization feature sharing (LFS,
Eq. 2) over its convs.

Shapes: R boxes, C channels of the pooled features (256 on COCO), P pooler resolution (7), D the
fc layers' output (1024 on COCO). Stages are 0-based here (stage i of the paper is ``i - 1``).
"""

from typing import Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn

__all__ = [
    "LFS_MODES",
    "FirstStageBoxConvs",
    "LaterStageBoxConvs",
    "build_localization_convs",
    "classification_feature_sharing",
    "localization_feature_sharing",
]

#: MODEL.FS_CASCADE.LFS values: Eq. 2, Eq. 2 read from the previous stage's per-box memory (not
#: the paper's), the parallel form, no sharing.
LFS_MODES = ("serial", "serial_memory", "parallel", "none")


def classification_feature_sharing(
    fc_heads: Sequence[nn.Module], x: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 for stage i = ``len(fc_heads)``: the pooled features ``x`` (R, C, P, P) through the
    fc layers of every stage j <= i in parallel, C_j = W_j2(W_j1(x)), each with stage j's own
    weights. Returns (sum of the C_j, C_i), both (R, D): the first classifies, the second is
    stage i's own fc feature."""
    outputs = [head(x) for head in fc_heads]
    return torch.stack(outputs).sum(dim=0), outputs[-1]


def _conv(channels: int, kernel: int, norm: str, activation) -> Conv2d:
    conv = Conv2d(
        channels,
        channels,
        kernel_size=kernel,
        padding=kernel // 2,
        bias=not norm,
        norm=get_norm(norm, channels),
        activation=activation,
    )
    weight_init.c2_msra_fill(conv)  # as Detectron2's FastRCNNConvFCHead
    return conv


class FirstStageBoxConvs(nn.Module):
    """Stage 1's localization head: two 3x3 convs with ReLU, F_12(F_11(X))."""

    def __init__(self, channels: int, norm: str = ""):
        super().__init__()
        self.f1 = _conv(channels, 3, norm, F.relu)  # F_11
        self.f2 = _conv(channels, 3, norm, F.relu)  # F_12

    def forward(self, x: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(R, C, P, P) -> (R, C, P, P); ``source`` is unused (stage 1 has no residual)."""
        return self.f2(self.f1(x))


class LaterStageBoxConvs(nn.Module):
    """Stage i > 1's localization head: a 3x3 conv F_i1 with ReLU and a 1x1 conv G_{i-1} without
    activation (the residual branch's output): x + G_{i-1}(F_i1(source))."""

    def __init__(self, channels: int, norm: str = ""):
        super().__init__()
        self.f1 = _conv(channels, 3, norm, F.relu)  # F_i1
        self.g = _conv(channels, 1, norm, None)  # G_{i-1}

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """X (R, C, P, P) and what F_i1 reads (B_{i-1} under Eq. 2, X without sharing)."""
        return x + self.g(self.f1(source))


def build_localization_convs(num_stages: int, channels: int, norm: str = "") -> nn.ModuleList:
    """The conv localization heads of ``num_stages`` stages on ``channels``-channel features."""
    heads = [FirstStageBoxConvs(channels, norm)]
    heads += [LaterStageBoxConvs(channels, norm) for _ in range(num_stages - 1)]
    return nn.ModuleList(heads)


def localization_feature_sharing(
    mode: str,
    convs: Sequence[nn.Module],
    x: torch.Tensor,
    previous: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """B_i of stage i = ``len(convs)`` from its pooled features ``x`` = X_i^box (R, C, P, P),
    with ``convs`` the conv heads of stages 1..i (:func:`build_localization_convs`):

    - "serial" (Eq. 2 as printed): B_1 = F_12(F_11(X_i)), B_2 = X_i + G_1(F_21(B_1)), ...,
      B_i = X_i + G_{i-1}(F_i1(B_{i-1})): stage i's own pooled features run through the convs
      of stages 1..i in series, every line reading X_i (as Eq. 1 runs them through the fc
      layers of stages 1..i in parallel);
    - "serial_memory" (not the paper's): B_i = X_i + G_{i-1}(F_i1(previous)), ``previous``
      (R, C, P, P) being the B_{i-1} the previous stage computed for the same boxes on its own
      pooled features (carried as per-box memory);
    - "parallel": the sum over j <= i of stage j's own head on X_i (as "none" defines it);
    - "none": stage i's own head on X_i: F_12(F_11(X_i)) at stage 1, X_i + G_{i-1}(F_i1(X_i))
      after.
    """
    stage = len(convs) - 1
    if mode == "none" or stage == 0:
        return convs[stage](x, x)
    if mode == "serial":
        b = convs[0](x)
        for conv in convs[1:]:
            b = conv(x, b)
        return b
    if mode == "serial_memory":
        if previous is None:
            raise ValueError(
                f"serial_memory LFS at stage {stage + 1} needs B_{stage} of the same boxes"
            )
        return convs[stage](x, previous)
    if mode == "parallel":
        return torch.stack([head(x, x) for head in convs]).sum(dim=0)
    raise ValueError(f"MODEL.FS_CASCADE.LFS must be one of {LFS_MODES}, got {mode!r}")
