"""Config keys of FSCascade (Li et al., "Rethinking Classification and Localization for Cascade
R-CNN", BMVC 2019): ``cfg.MODEL.FS_CASCADE``.

The cascade itself (stages, IoU thresholds, regression weights, stage losses, the test-time
ensemble) is the box-cascade core's: ``MODEL.ROI_BOX_CASCADE_HEAD.*`` and ``MODEL.BOX_CASCADE.*``.
"""

from detectron2.config import CfgNode as CN


def add_fs_cascade_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.FS_CASCADE`` with the paper's FSCascade (CFS + conv head + serial LFS)."""
    _C = cfg.MODEL.FS_CASCADE = CN()
    # Classification feature sharing (Sec. 3.1, Eq. 1, Fig. 2a): stage i's classifier predicts
    # from the element-wise sum of its pooled features passed through the two fc layers of every
    # stage j <= i, each with that stage's own weights (no new parameters). False: from its own
    # fc layers only, as Cascade R-CNN.
    _C.CFS = True
    # Localization head (Sec. 3.2): "conv": box deltas from a conv head on the pooled P x P
    # features (stage 1: two 3x3 convs F_11, F_12; stage i > 1: one 3x3 conv F_i1 and one 1x1 conv
    # G_{i-1}; all with the pooled features' channels, 256 on COCO), the fc layers classifying
    # only; "fc": from the stage's own fc layers, as Cascade R-CNN.
    _C.LOC_HEAD = "conv"
    # Localization feature sharing (Sec. 3.2, Eq. 2, Fig. 2b; needs LOC_HEAD "conv"):
    # "serial" (Eq. 2 as the paper prints it, X_i^box in every line): stage i runs its own pooled
    #     features X_i through the convs of stages 1..i in series,
    #     B_1 = F_12(F_11(X_i)), B_2 = X_i + G_1(F_21(B_1)), ...,
    #     B_i = X_i + G_{i-1}(F_i1(B_{i-1}));
    # "serial_memory" (an ablation, not the paper's):
    #     B_i = X_i + G_{i-1}(F_i1(B_{i-1})) with B_{i-1} the box feature that the previous stage
    #     computed for the same box from its own pooled features, carried as per-box memory
    #     (needs BOX_CASCADE.LATER_STAGE_GT "keep" and 'refined' samplers after stage 1);
    # "parallel" (tried in Sec. 3.2, its form not given): B_i = the sum over stages j <= i of stage
    #     j's own head applied to X_i, as CFS sums the fc stacks;
    # "none" (Table 1 "w/o LFS"): each stage's own head on its own features,
    #     F_12(F_11(X_1)) at stage 1, B_i = X_i + G_{i-1}(F_i1(X_i)) after.
    _C.LFS = "serial"
    # How the box deltas come from B_i (C x P x P; the paper does not say): "flatten": a linear
    # layer on the flattened B_i, which keeps the spatial layout the conv head is there for;
    # "avg_pool": a linear layer on B_i averaged over its P x P cells.
    _C.BOX_DELTA_INPUT = "flatten"
