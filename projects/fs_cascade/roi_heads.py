"""FSCascade's ROI heads on the box-cascade core (Li et al., BMVC 2019).

A stage's head is decoupled: the FPN box head's fc layers (``box_head.k``) classify, a conv head
on the pooled features (``loc_head.k``, ``sharing.py``) localizes; with ``LOC_HEAD "fc"`` the fc
layers do both, as in Cascade R-CNN. CFS (Eq. 1) sums the fc features of every stage up to the
current one, each on the current stage's pooled features X_i; serial LFS (Eq. 2) runs X_i through
the convs of every stage up to the current one in series, each line adding X_i back. The
``serial_memory`` ablation (not the paper's) instead reads the B_{i-1} that the previous stage
computed for the same box, which the core carries from stage to stage as per-box memory
(``stage_features`` with ``reads_memory``: rows follow the boxes through the boxes dropped in
training, and the ``all_on_final`` ensemble re-runs the earlier stages in order on the final
boxes).

Shapes: R boxes, C channels and P resolution of the pooled features, D the fc layers' output,
K foreground classes.
"""

from typing import Dict, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn

from box_cascade import BoxCascadeROIHeads
from box_cascade.build import check_memory_support
from box_cascade.head_rule import StageModule

from .sharing import (
    LFS_MODES,
    build_localization_convs,
    classification_feature_sharing,
    localization_feature_sharing,
)

__all__ = ["BOX_DELTA_INPUTS", "DecoupledOutputLayers", "FSCascadeROIHeads", "LOC_HEADS"]

LOC_HEADS = ("conv", "fc")
BOX_DELTA_INPUTS = ("flatten", "avg_pool")
#: The per-box memory entry that carries B_i to the next stage (LFS "serial_memory").
BOX_FEATURE = "lfs_box_feature"


class DecoupledOutputLayers(FastRCNNOutputLayers):
    """Detectron2's output layers (losses, box decoding, inference) with the classifier and the
    regressor on their own features: ``forward({"cls": (R, D), "box": (R, E)})`` -> (scores
    (R, K+1), deltas (R, 4 or 4K)). With ``box_input_dim`` the regressor reads E =
    ``box_input_dim`` features (the conv head's B_i) instead of the fc layers' D."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, box_input_dim: Optional[int] = None, **kwargs):
        super().__init__(input_shape, **kwargs)
        if box_input_dim is not None:
            self.bbox_pred = nn.Linear(box_input_dim, self.bbox_pred.out_features)
            nn.init.normal_(self.bbox_pred.weight, std=0.001)  # Detectron2's init
            nn.init.constant_(self.bbox_pred.bias, 0)

    def forward(self, x: Dict[str, torch.Tensor]):
        return self.cls_score(x["cls"].flatten(1)), self.bbox_pred(x["box"].flatten(1))


@ROI_HEADS_REGISTRY.register()
class FSCascadeROIHeads(BoxCascadeROIHeads):
    """Cascade R-CNN with classification and localization feature sharing (see module doc)."""

    #: ``loc_head.t``: stage t's conv localization head (None with the fc localization head).
    STAGE_MODULES = {**BoxCascadeROIHeads.STAGE_MODULES, "loc_head": StageModule("stage")}

    @configurable
    def __init__(
        self,
        *,
        cfs: bool = True,
        lfs: str = "serial",
        box_delta_input: str = "flatten",
        **kwargs,
    ):
        """
        Args (beyond BoxCascadeROIHeads'):
            cfs: classification feature sharing (Eq. 1).
            lfs: one of LFS_MODES (Eq. 2, its ablations, none); needs the conv localization
                heads (``stage_modules={"loc_head": sharing.build_localization_convs(...)}``;
                without them the fc layers localize) unless "none".
            box_delta_input: one of BOX_DELTA_INPUTS, how the regressor reads B_i.
        """
        super().__init__(**kwargs)
        loc_heads = self.loc_head
        if lfs not in LFS_MODES:
            raise ValueError(f"MODEL.FS_CASCADE.LFS must be one of {LFS_MODES}, got {lfs!r}")
        if box_delta_input not in BOX_DELTA_INPUTS:
            raise ValueError(
                f"MODEL.FS_CASCADE.BOX_DELTA_INPUT must be one of {BOX_DELTA_INPUTS}, "
                f"got {box_delta_input!r}"
            )
        if loc_heads is None and lfs != "none":
            raise ValueError(
                f"MODEL.FS_CASCADE.LFS {lfs!r} shares the features of the conv localization "
                "head: it needs MODEL.FS_CASCADE.LOC_HEAD 'conv' (with 'fc', set LFS 'none')"
            )
        num_stages = self.num_cascade_stages
        if len(set(self.plan.head_indices)) != num_stages:
            raise ValueError(
                "MODEL.BOX_CASCADE.SHARED_HEAD: FSCascade shares features between the stages' "
                "own heads, so every stage needs its own head (set SHARED_HEAD False)"
            )
        if self.plan.num_test_stages > num_stages:
            raise ValueError(
                f"MODEL.BOX_CASCADE.NUM_TEST_STAGES {self.plan.num_test_stages}: FSCascade's "
                f"sharing is defined over the {num_stages} trained stages; use 0 or at most "
                f"{num_stages}"
            )
        if loc_heads is not None and len(loc_heads) != num_stages:
            raise ValueError(f"{len(loc_heads)} localization heads for {num_stages} stages")
        self.cfs = cfs
        self.lfs = lfs
        self.box_delta_input = box_delta_input
        # the core checked the class's (memory-free) default; "serial_memory" reads the memory
        self.reads_memory = loc_heads is not None and lfs == "serial_memory"
        check_memory_support(self)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        fs = cfg.MODEL.FS_CASCADE
        ret.update(cfs=fs.CFS, lfs=fs.LFS, box_delta_input=fs.BOX_DELTA_INPUT)
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        """The core's stages with decoupled predictors and, with LOC_HEAD "conv", the conv
        localization heads."""
        ret = super()._init_box_head(cfg, input_shape)
        fs = cfg.MODEL.FS_CASCADE
        if fs.LOC_HEAD not in LOC_HEADS:
            raise ValueError(
                f"MODEL.FS_CASCADE.LOC_HEAD must be one of {LOC_HEADS}, got {fs.LOC_HEAD!r}"
            )
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        box_input_dim, loc_heads = None, None
        if fs.LOC_HEAD == "conv":
            num_stages = len(ret["box_heads"])
            loc_heads = build_localization_convs(num_stages, channels, cfg.MODEL.ROI_BOX_HEAD.NORM)
            flat = fs.BOX_DELTA_INPUT == "flatten"
            box_input_dim = channels * resolution**2 if flat else channels
        ret["box_predictors"] = [
            DecoupledOutputLayers(
                cfg,
                head.output_shape,
                box2box_transform=predictor.box2box_transform,
                box_input_dim=box_input_dim,
            )
            for head, predictor in zip(ret["box_heads"], ret["box_predictors"])
        ]
        ret["stage_modules"] = {"loc_head": loc_heads}
        return ret

    def stage_features(self, stage: int, box_features: torch.Tensor, memory: Dict):
        """Stage ``stage``'s classification and box features on pooled features (R, C, P, P):
        ({"cls": (R, D), "box": (R, D) from the fc layers or (R, E) from B_i}, memory with B_i
        under LFS "serial_memory"). ``memory`` holds B_{i-1} of the same boxes under
        "serial_memory"."""
        if self.cfs:
            cls_features, own = classification_feature_sharing(
                self.box_head[: stage + 1], box_features
            )
        else:
            cls_features = own = self.stage_head(stage)(box_features)
        if self.loc_head is None:
            return {"cls": cls_features, "box": own}, {}
        if self.reads_memory and stage > 0 and BOX_FEATURE not in memory:
            raise ValueError(
                f"LFS serial_memory at stage {stage + 1} got no box features of stage {stage}: "
                "stages must run in order on the previous stage's boxes"
            )
        b = localization_feature_sharing(
            self.lfs, self.loc_head[: stage + 1], box_features, memory.get(BOX_FEATURE)
        )
        box = b.flatten(1) if self.box_delta_input == "flatten" else b.mean(dim=(2, 3))
        memory_out = {BOX_FEATURE: b} if self.reads_memory else {}
        return {"cls": cls_features, "box": box}, memory_out
