"""Helpers of the FSCascade tests: configs and switches, and Eq. 1 / Eq. 2 written out slowly
with explicit loops and explicit calls of the modules' weights. Models, batches and passes are
``helpers.core``'s."""

import torch.nn.functional as F
from conftest import ROOT

from helpers import core

CONFIGS = ROOT / "configs" / "FSCascade"
INSTANT = CONFIGS / "fs_cascade_instant_test.yaml"

# switches: (CFS, LOC_HEAD, LFS)
AS_CASCADE = ["MODEL.FS_CASCADE.CFS", "False", "MODEL.FS_CASCADE.LOC_HEAD", "fc",
              "MODEL.FS_CASCADE.LFS", "none"]  # fmt: skip


def switches(cfs, loc_head, lfs):
    return ["MODEL.FS_CASCADE.CFS", str(cfs), "MODEL.FS_CASCADE.LOC_HEAD", loc_head,
            "MODEL.FS_CASCADE.LFS", lfs]  # fmt: skip


def memory_opts(lfs):
    """The ground-truth handling that LFS mode ``lfs`` needs: the per-box memory of
    "serial_memory" needs the boxes kept between stages."""
    return ["MODEL.BOX_CASCADE.LATER_STAGE_GT", "keep"] if lfs == "serial_memory" else []


def cfg_of(*opts, path=INSTANT):
    """The FSCascade instant-test config (or ``path``) with ``opts``."""
    return core.cfg_of(path, *opts)


def spread_weights(model, seed=1):
    """Non-trivial weights for the predictors and the conv heads, so that scores and deltas
    differ from box to box and comparisons are not vacuous."""
    core.spread_predictor_weights(model, seed, names=("box_predictor", "loc_head"))


# ------------------------------------------------------------------ the paper, written out


def fc_stack(head, x):
    """W_j2(W_j1(x)): the two fc layers of a stage (Detectron2's FastRCNNConvFCHead), ReLU after
    each."""
    x = x.flatten(1)
    x = F.relu(F.linear(x, head.fc1.weight, head.fc1.bias))
    return F.relu(F.linear(x, head.fc2.weight, head.fc2.bias))


def conv3x3_relu(conv, x):
    return F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1))


def conv1x1(conv, x):
    return F.conv2d(x, conv.weight, conv.bias)


def eq1(heads, i, x):
    """Eq. 1 for (0-based) stage i: C = sum over j = 0..i of W_j2(W_j1(X_i))."""
    total = None
    for j in range(i + 1):
        c_j = fc_stack(heads.box_head[j], x)
        total = c_j if total is None else total + c_j
    return total


def own_conv_head(heads, j, x):
    """Stage j's conv head on its own features (no sharing): F_12(F_11(X)) for the first stage,
    X + G_{j-1}(F_j1(X)) for the others."""
    convs = heads.loc_head[j]
    if j == 0:
        return conv3x3_relu(convs.f2, conv3x3_relu(convs.f1, x))
    return x + conv1x1(convs.g, conv3x3_relu(convs.f1, x))


def eq2(heads, i, x):
    """Eq. 2 as the paper prints it, for (0-based) stage i on its own pooled features x = X_i:
    B_1 = F_12(F_11(X_i)), B_2 = X_i + G_1(F_21(B_1)), ..., B_i = X_i + G_{i-1}(F_i1(B_{i-1})),
    line by line with the convs of stages 1, 2, ..., i."""
    first = heads.loc_head[0]
    b = conv3x3_relu(first.f2, conv3x3_relu(first.f1, x))  # B_1
    for line in range(1, i + 1):  # B_2 .. B_i, each line adding X_i
        convs = heads.loc_head[line]
        b = x + conv1x1(convs.g, conv3x3_relu(convs.f1, b))
    return b


def eq2_from_memory(heads, i, x, b_prev):
    """The "serial_memory" ablation (not the paper's): B_i = X_i + G_{i-1}(F_i1(b_prev)), b_prev
    being the B_{i-1} that stage i-1 computed on its own pooled features."""
    convs = heads.loc_head[i]
    if i == 0:
        return conv3x3_relu(convs.f2, conv3x3_relu(convs.f1, x))
    return x + conv1x1(convs.g, conv3x3_relu(convs.f1, b_prev))


def literal_scores(heads, i, x, cfs):
    """Stage i's class logits on pooled features x: its classifier on Eq. 1's sum (CFS) or on
    its own fc feature."""
    c = eq1(heads, i, x) if cfs else fc_stack(heads.box_head[i], x)
    predictor = heads.box_predictor[i]
    return F.linear(c, predictor.cls_score.weight, predictor.cls_score.bias)


def literal_stage(heads, i, x, b_prev, cfs, loc_head, lfs, box_delta_input="flatten"):
    """Stage i's (scores, deltas, B_i) on pooled features x (R, C, P, P), from the paper's
    equations; B_i is None with the fc localization head. ``b_prev`` (the previous stage's B) is
    read only by the "serial_memory" ablation."""
    predictor = heads.box_predictor[i]
    own = fc_stack(heads.box_head[i], x)
    scores = literal_scores(heads, i, x, cfs)
    if loc_head == "fc":
        b, box = None, own
    else:
        if lfs == "serial":
            b = eq2(heads, i, x)
        elif lfs == "serial_memory":
            b = eq2_from_memory(heads, i, x, b_prev)
        elif lfs == "parallel":
            b = own_conv_head(heads, 0, x)
            for j in range(1, i + 1):
                b = b + own_conv_head(heads, j, x)
        else:
            b = own_conv_head(heads, i, x)
        box = b.flatten(1) if box_delta_input == "flatten" else b.mean(dim=(2, 3))
    deltas = F.linear(box, predictor.bbox_pred.weight, predictor.bbox_pred.bias)
    return scores, deltas, b
