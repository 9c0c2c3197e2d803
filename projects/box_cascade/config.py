"""Config keys of the box-cascade core: ``cfg.MODEL.BOX_CASCADE``.

The per-stage IoU thresholds and box-regression weights are Detectron2's own keys,
``MODEL.ROI_BOX_CASCADE_HEAD.IOUS`` / ``.BBOX_REG_WEIGHTS`` (their number is the number of
stages T), and class-agnostic regression is ``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG``. Paper
references are to Cai & Vasconcelos, "Cascade R-CNN: High Quality Object Detection and Instance
Segmentation" (TPAMI).
"""

from detectron2.config import CfgNode as CN


def add_box_cascade_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.BOX_CASCADE`` with the paper's defaults."""
    _C = cfg.MODEL.BOX_CASCADE = CN()
    # How the stage losses are combined (Sec. 6.3 "Stage Losses", Table 3):
    # "decay": w_t = 1 / 2^(t-1) (the paper's choice); "avg": w_t = 1 / T;
    # "explicit": w_t = STAGE_LOSS_WEIGHTS; "detectron2": w_t = 1 and the gradient of the pooled
    # features scaled by 1/T in every stage, as Detectron2's CascadeROIHeads does.
    _C.LOSS_WEIGHTING = "decay"
    # w_t per stage when LOSS_WEIGHTING is "explicit" (one per stage).
    _C.STAGE_LOSS_WEIGHTS = []
    # The paper's rule (Sec. 6.3): stage t's head (box head, predictor and, with MASK_STRATEGY
    # "every", its mask head) is trained at 1/w_t times the rate its weighted loss gives it, so
    # that it learns as from an unweighted loss while the backbone sees the weighted ones. As in
    # the authors' code it scales the head's gradient by 1/w_t (before weight decay, momentum and
    # clipping; the learning rate is unchanged), so weight decay is unchanged. Not used with
    # "detectron2"; a head shared by stages of different weights cannot have it (an error says
    # so). Formerly HEAD_LR_RESCALE, which still loads (cascade_zoo.config.RENAMED_KEYS).
    _C.HEAD_GRADIENT_RESCALE = True
    # How each stage gets its training boxes: a name in STAGE_SAMPLER_REGISTRY per stage, or []
    # for the paper's and Detectron2's ["sample", "refined", "refined", ...]: stage 1 samples
    # ROI_HEADS.BATCH_SIZE_PER_IMAGE RPN proposals (+ ground truth) with at most
    # ROI_HEADS.POSITIVE_FRACTION positives; later stages train on all refined boxes of the
    # previous stage (Sec. 4.3 / 6.1.2). "resample" re-samples a later stage's boxes with the same
    # batch size and positive fraction (with LATER_STAGE_GT "readd": mmdetection's cascade).
    _C.STAGE_SAMPLERS = []
    # Ground truth in the training boxes of stages after the first: "readd" (the authors' code
    # and mmdetection): the regressed copies of the ground-truth boxes that stage 1 added are
    # dropped and the exact ground-truth boxes added again; "keep" (Detectron2's
    # CascadeROIHeads): the regressed copies stay, nothing is added.
    _C.LATER_STAGE_GT = "readd"
    # All stages use one box head and predictor (iterative BBox, Table 1 / Fig. 3c, when trained
    # as one stage; R3-CNN's loops). Needs equal BBOX_REG_WEIGHTS for all stages.
    _C.SHARED_HEAD = False
    # Stages run at test time; 0: as many as are trained (len(IOUS)). More than are trained: the
    # extra stages reuse the last stage's head (iterative BBox at inference, Fig. 3c).
    _C.NUM_TEST_STAGES = 0
    # Stage whose boxes are output at test time, 1..NUM_TEST_STAGES; -1 = the last. Stages after
    # it do not run.
    _C.TEST_STAGE = -1
    # Test-time score ensemble over stages 1..TEST_STAGE:
    # "all_on_final": every stage's classifier applied to the output stage's input boxes,
    #     probabilities averaged (the paper's "1~3" ensemble, Table 2);
    # "mean_probs": each stage's probabilities on its own input boxes, averaged (Detectron2);
    # "mean_logits": each stage's logits on its own input boxes, averaged, then softmax
    #     (mmdetection); "none": the output stage's own probabilities.
    _C.TEST_ENSEMBLE = "all_on_final"
    # At test time, also return each stage's detections (its own scores on its own regressed
    # boxes) and the ensemble's, plus each stage's boxes as proposals, for the stage-wise
    # evaluation (Table 2, Fig. 8, Table 8). Only with META_ARCHITECTURE "BoxCascadeRCNN".
    _C.STAGEWISE_TEST = True
    # Cascade Mask R-CNN (Sec. 5.2, Fig. 6): "first": one mask head trained on the first stage's
    # positives (b, the paper's choice and Detectron2's); "last": one trained on the last stage's
    # positives (c); "every": one per stage, each trained on its stage's positives, their mask
    # probabilities averaged at test (d). Masks are always predicted on the final boxes.
    _C.MASK_STRATEGY = "first"
    # Training-sample statistics (Fig. 4): number of IoU bins of the histograms of each stage's
    # training boxes, accumulated over training and logged to EventStorage.
    _C.IOU_HISTOGRAM_BINS = 20
    # Sum the histograms over processes and write them to OUTPUT_DIR/training_iou_stats.json
    # every this many iterations and at the end of training; 0: with every checkpoint
    # (SOLVER.CHECKPOINT_PERIOD), which also lets --resume continue them.
    _C.IOU_STATS_PERIOD = 0
    # Parallel modules within each stage (ROI_HEADS.NAME "ParallelModulesROIHeads", parallel.py):
    # K box heads + predictors per stage, each trained on its own sample of the same boxes.
    _C.PARALLEL = CN()
    # K, the number of modules per stage.
    _C.PARALLEL.NUM_MODULES = 1
    # The largest share of positives in each module's sample (one per module); []: one module at
    # ROI_HEADS.POSITIVE_FRACTION. Stages whose sampler trains on all refined boxes give every
    # module those boxes.
    _C.PARALLEL.POSITIVE_FRACTIONS = []
    # The module whose boxes are output and refined for the next stage (0-based); -1: the one
    # with the largest positive fraction.
    _C.PARALLEL.BOX_MODULE = -1
    # How the modules' class logits are merged at test: "mean_logits" or "max_logits".
    _C.PARALLEL.MERGE = "mean_logits"
