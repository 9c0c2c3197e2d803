"""Config keys of R3-CNN (Rossi et al., "Recursively Refined R-CNN: Instance Segmentation with
Self-RoI Rebalancing"): ``cfg.MODEL.R3_CNN``.

The loops themselves are the box-cascade core's stages sharing one head
(``MODEL.BOX_CASCADE.SHARED_HEAD``, which R3CNNROIHeads requires):

- one IoU threshold per training loop: ``MODEL.ROI_BOX_CASCADE_HEAD.IOUS`` (L_t = its length;
  (0.5, 0.6, 0.7) increasing, (0.7, 0.6, 0.5) decreasing, Table 1 rows 4-5);
- test loops L_e: ``MODEL.BOX_CASCADE.NUM_TEST_STAGES`` (0: L_e = L_t); a test loop beyond the
  L_t trained ones runs the same shared head with the last loop's regression weights (the core's
  StagePlan rule; an IoU threshold is a training quantity and plays no part at test);
- per-loop loss weights: ``MODEL.BOX_CASCADE.LOSS_WEIGHTING "explicit"`` +
  ``STAGE_LOSS_WEIGHTS`` (official code: 1, 0.75, 0.5), with ``HEAD_GRADIENT_RESCALE False``: the
  shared head learns from the sum of the loops' weighted losses at the base learning rate;
- per-loop re-sampling (512 RoIs, 25 % positives, the official behaviour):
  ``MODEL.BOX_CASCADE.STAGE_SAMPLERS ["sample", "resample", ...]``; the core's carry-all mode:
  ``["sample", "refined", ...]``;
- the test-time merge of the loops' class logits: ``MODEL.BOX_CASCADE.TEST_ENSEMBLE``
  "mean_logits" (the paper and the official code) or "max_logits" (registered here); boxes come
  from the last loop;
- masks: ``MODEL.BOX_CASCADE.MASK_STRATEGY "every"``: the one mask head trained on every loop's
  positives with the loop's weight, predicted on the final boxes; which boxes of loop t are its
  positives: ``MODEL.R3_CNN.MASK_BOXES``.
"""

from detectron2.config import CfgNode as CN


def add_r3_cnn_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.R3_CNN`` and the keys of the R3-CNN-L box head."""
    _C = cfg.MODEL.R3_CNN = CN()
    # HTC-style mask information flow between loops (the official code's variant; needs MASK_ON
    # and MASK_STRATEGY "every"): loop t's mask is predicted by a chain of t+1 applications of
    # the shared mask head on loop t's positives, link j adding a 1x1 conv of link j-1's conv
    # features to the pooled features; at test the chain of L_t links runs on the final boxes
    # and the links' mask probabilities are averaged (HTC's test-time merge).
    _C.MASK_INFO_FLOW = False
    # Which boxes train loop t's mask (Sec. 3, Fig. 1b: the proposal set that loop t's box head
    # produces goes both to the mask module M_t and to the next loop's pooler; the official code
    # runs HTC's interleaved mode):
    # "output": loop t's regressed boxes (clipped, empty ones dropped, ground truth as
    #     BOX_CASCADE.LATER_STAGE_GT says), labelled at loop t's IoU threshold and sampled by the
    #     later loops' sampler (BOX_CASCADE.STAGE_SAMPLERS; "resample" for one loop);
    # "input": loop t's own training samples, the boxes its box head was trained on (Cascade Mask
    #     R-CNN's choice; not the paper's).
    _C.MASK_BOXES = "output"

    # R3-CNN-L's box head (ROI_BOX_HEAD.NAME "NonLocalConvBoxHead", Table 1 row 6, Table 4): a
    # non-local block (embedded Gaussian, residual) whose query/key/value convs have this kernel
    # size ("incremented kernel size of 7 x 7"), then 7x7 convs of these output channels, flattened
    # into the predictor.
    _C.NL_KERNEL_SIZE = 7
    _C.NL_REDUCTION = 2  # the block's inner channels: C / NL_REDUCTION
    _C.CONV_DIMS = [128, 64]
    _C.CONV_KERNEL_SIZE = 7

    # R3-CNN-L's optional mask-IoU scoring head (after Mask Scoring R-CNN, mask_iou.py; needs
    # MASK_ON and MASK_STRATEGY "every"): trained on every loop's positives, with the loop's
    # weight, to regress the IoU of the box's predicted mask (binarised at 0.5) with its
    # ground-truth mask on the box's mask grid (L2 loss); its input, the predicted mask, is
    # detached, so the mask head trains as without it.
    _C.MASK_IOU_HEAD = False
    _C.MASK_IOU_LOSS_WEIGHT = 1.0
    _C.MASK_IOU_CONV_DIM = 256
    _C.MASK_IOU_NUM_CONVS = 4
    _C.MASK_IOU_FC_DIM = 1024
    # At test every detection gets ``mask_scores`` = score x predicted mask IoU. True: they also
    # replace ``scores`` (then COCO evaluation ranks boxes and masks by them; Mask Scoring R-CNN
    # rescored the masks only).
    _C.MASK_IOU_RESCORE = False
