"""Config keys of IoU-Uniform R-CNN (Zhu et al., "IoU-uniform R-CNN: Breaking Through the
Limitations of RPN"): ``cfg.MODEL.IOU_UNIFORM``.

The detector itself is the box-cascade core's (``MODEL.ROI_BOX_CASCADE_HEAD.IOUS``: one entry for
Faster R-CNN, three for Cascade R-CNN; ``MODEL.BOX_CASCADE.*``). Keys holding one entry per stage
(``INTERVALS``, ``CENTER_SHIFTS``, ``SCALE_RANGES``, ``SAMPLES_PER_GT``, ``REG_WEIGHTS``) must
have as many entries as there are stages; their inner lists one entry per IoU interval.
"""

from detectron2.config import CfgNode as CN


def add_iou_uniform_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.IOU_UNIFORM`` with the paper's settings (Sec. 3, 4.1)."""
    _C = cfg.MODEL.IOU_UNIFORM = CN()
    # The regression + IoU branch of Fig. 4(b) (read by ROI_HEADS.NAME "IoUUniformROIHeads"):
    # per stage, two fc layers on the pooled P x P features, 4 class-agnostic box deltas and one
    # predicted IoU, trained on boxes generated around the ground truth; the stage's own box head
    # then only classifies (the official code's with_reg=False). False: the box-cascade core
    # unchanged (Faster / Cascade R-CNN): EFO must then be False, the other keys are unused.
    _C.ENABLED = True
    # The IoU intervals of the generated samples (Sec. 3.1, 4.1: N = 4, [0.5, 0.6), [0.6, 0.7),
    # [0.7, 0.8), [0.8, 1.0]), per stage, as (low, high) pairs, increasing and within [0, 1]; an
    # interval holds IoU in [low, high), the one ending at 1.0 also IoU 1. The official cascade:
    # stage 2 from 0.6, 0.7, 0.8, 0.9, stage 3 from 0.7, 0.8, 0.9 (configs/IoUUniform/
    # Base-IoUUniform-Cascade-*.yaml).
    _C.INTERVALS = (((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.0)),)
    # Eq. 1's random offsets: per stage and interval, the centre moves by U(-s, s) times the
    # ground truth's width (x) and height (y). Not in the paper; the official code's values.
    _C.CENTER_SHIFTS = ((0.75, 0.5, 0.3, 0.125),)
    # Eq. 1's random_w, random_h: per stage and interval, the width and the height are scaled by
    # independent draws of U(low, high). Not in the paper; the official code's values.
    _C.SCALE_RANGES = (((0.5, 2.0), (0.6, 1.6), (0.7, 1.4), (0.8, 1.25)),)
    # Candidate boxes drawn per ground truth and interval before the IoU filter, in one round (the
    # official code's 500; the paper: "a limited number of attempts").
    _C.NUM_CANDIDATES = 500
    # Candidates drawn at most per ground truth and interval: the (ground truth, interval) pairs
    # left with fewer than M / N boxes get further rounds of NUM_CANDIDATES until they have M / N
    # or this many were drawn, so that every interval gets M / N boxes, "a totally uniform IoU
    # distribution" (Sec. 3.1). NUM_CANDIDATES: one round, the official code's: about 1.1 % of
    # its 500 draws land in [0.9, 1.0] at cascade stages 2 and 3, which then get about 6 of their
    # 16 / 20 boxes there, and 3.2 % in [0.5, 0.6) at stage 1 (about 15 of 16).
    _C.MAX_CANDIDATES = 5000
    # M, generated samples kept per ground truth and stage, M / N per interval (Sec. 4.1: N = 4,
    # M = 64, "each GT bounding box will generate 64 samples"; the official code: 16 per interval,
    # and 20 per interval for its 3-interval stage 3, i.e. M = 60). Must be divisible by N. Sec.
    # 3.1's "M samples for each IoU interval" reading is M = 256.
    _C.SAMPLES_PER_GT = (64,)
    # w_j of Eq. 2, the regression loss weight of each interval, per stage (Sec. 4.1: 1.0, 1.5,
    # 3.0, 3.0; the official code: 1.0, 1.5, 2.0, 3.0). All ones: Table 4's rows before "tuning
    # weight".
    _C.REG_WEIGHTS = ((1.0, 1.5, 3.0, 3.0),)
    # Normalisation of the weighted regression loss on generated boxes (the paper does not say):
    # True: the mean over all 4 x (number of boxes) deltas (the official code's mmdetection
    # SmoothL1Loss), on the scale of Fast R-CNN's loss with a quarter of positives; False: the
    # smooth L1 summed over the 4 deltas, divided by the number of boxes (4 times larger).
    _C.REG_LOSS_MEAN_OVER_COORDINATES = True
    # What the branch's regression trains on: "generated" (the paper) or "rpn" (the stage's sampled
    # proposals, positives only, Detectron2's Fast R-CNN loss: Table 6's rows).
    _C.REG_SAMPLES = "generated"
    # The IoU output (IoU-Net's IoU prediction, Sec. 3.2): trained on the IoU of each sample with
    # its ground truth, used at test as score x predicted IoU. False: deltas only, ranking by
    # the class score (Table 4 "+uniform IoU distribution").
    _C.IOU_PREDICTION = True
    # What the IoU output trains on: "generated" (the paper) or "rpn" (the positives of the
    # stage's sampled proposals: Table 6 "Output of RPN").
    _C.IOU_SAMPLES = "generated"
    # The IoU loss: smooth L1 with this beta against the sample's IoU, averaged over the samples
    # (the official code's; the paper names no loss), times IOU_LOSS_WEIGHT.
    _C.IOU_SMOOTH_L1_BETA = 0.5
    _C.IOU_LOSS_WEIGHT = 1.0
    # A sigmoid on the IoU output (the paper does not say; the official code has none).
    _C.IOU_SIGMOID = False
    # Eliminating feature offsets (Sec. 3.2, Fig. 5): at test, pool again at the regressed boxes
    # and run the branch once more; its IoU scores the boxes, which stay as they are. False: the
    # IoU predicted at the input boxes (Table 6 "No"). Needs ENABLED and IOU_PREDICTION.
    _C.EFO = True
    # Where ROI_HEADS.SCORE_THRESH_TEST applies (the paper does not say): True: to the class
    # probability, before it is multiplied by the IoU (the official code: mmdetection's
    # multiclass_nms with score_factors); False: to the product. NMS ranks by the product.
    _C.THRESHOLD_BEFORE_IOU = True
    # At test, each box's score is its class probability x its predicted IoU (Sec. 3.2). False:
    # the class probability alone (the IoU factor set to 1), the IoU branch still trained: what
    # the test-time scoring buys, apart from what training on the generated boxes does.
    _C.TEST_IOU_SCORING = True
    # Table 5: the number of generated samples per image as a multiple of the positives among
    # the stage's sampled proposals ("Equal": 1.0, "Double": 2.0), drawn evenly over the
    # intervals from the M per ground truth; 0: all M per ground truth (the main setting).
    _C.NUM_SAMPLES_VS_RPN = 0.0
