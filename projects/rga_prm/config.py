"""Config keys of RGA + PRM (Ge et al., "Delving into the Imbalance of Positive Proposals in
Two-stage Object Detection"): ``cfg.MODEL.RGA`` and ``cfg.MODEL.PRM``.

PRM's modules themselves are the box-cascade core's parallel modules: their number, positive
fractions, box module and merge are ``MODEL.BOX_CASCADE.PARALLEL.*`` (a sampling ratio 1:n is a
positive fraction 1 / (1 + n): 1:1 -> 0.5, 1:3 -> 0.25, 1:5 -> 1/6, 1:9 -> 0.1).
"""

from detectron2.config import CfgNode as CN


def add_rga_prm_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.RGA`` and ``cfg.MODEL.PRM`` with the paper's defaults."""
    _C = cfg.MODEL.RGA = CN()
    # R-CNN Gradient Annealing (Sec. 3.1, Eq. 1): after the backward pass and before gradient
    # clipping and the optimizer step, the gradients of the R-CNN module's parameters (every
    # stage's and module's box head and predictor) are multiplied by lambda(t).
    _C.ENABLED = False
    # lambda0, the factor at iteration 0 (Table 4: 3, 5, 7, 9; the paper's choice 7). >= 1.
    _C.LAMBDA0 = 7.0
    # True: lambda(t) = lambda0 - (lambda0 - 1) * t / T with T = SOLVER.MAX_ITER (lambda(T) = 1);
    # False: lambda(t) = lambda0 at every iteration (Table 4, row 2).
    _C.ANNEAL = True
    # Also scale the mask head's gradients (the paper's R-CNN module has no mask head).
    _C.INCLUDE_MASK_HEAD = False

    _C = cfg.MODEL.PRM = CN()
    # How each module's sampling ratio is met (appendix A, Table 8): "soft" (Detectron2's and the
    # paper's choice: at most the ratio's share of positives, all of them when there are fewer,
    # negatives fill the batch) or "hard" (positives duplicated until they reach the ratio's
    # share of the batch; negatives fill the rest).
    _C.SAMPLING = "soft"
    # Which module's outputs the detections come from at test: -1 merges them (pre-softmax
    # logits averaged, boxes from the box module); m >= 0: module m alone (0-based, in the order
    # of MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS; Tables 1 and 5, "R1" / "R2").
    _C.EVAL_MODULE = -1
