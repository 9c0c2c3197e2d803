"""Eq. 1 (CFS) and Eq. 2 (LFS), and the parallel and unshared forms, written out slowly in
tests/helpers/fs.py, equal the heads' outputs: on random pooled features in training, and on a test
image through the whole test chain (pooling, regression between stages, every test ensemble,
NMS)."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes
from helpers.core import eval_inputs, model_of
from helpers.fs import (
    cfg_of,
    eq2,
    eq2_from_memory,
    literal_scores,
    literal_stage,
    memory_opts,
    spread_weights,
    switches,
)

MODES = [
    (True, "conv", "serial"),  # FSCascade
    (False, "conv", "serial"),  # LFS only
    (True, "conv", "serial_memory"),  # the per-box memory ablation
    (True, "conv", "parallel"),
    (False, "conv", "none"),  # conv head without sharing
    (True, "fc", "none"),  # CFS only
]


def _close(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "mode,box_delta_input",
    [(m, "flatten") for m in MODES] + [(MODES[0], "avg_pool")],
    ids=lambda m: "-".join(map(str, m)) if isinstance(m, tuple) else m,
)
def test_stage_chain_is_the_papers_equations_on_random_features(mode, box_delta_input):
    cfs, loc_head, lfs = mode
    cfg = cfg_of(*switches(*mode), "MODEL.FS_CASCADE.BOX_DELTA_INPUT", box_delta_input,
                 *memory_opts(lfs))  # fmt: skip
    heads = model_of(cfg).roi_heads
    spread_weights(heads)
    heads.train()
    g = torch.Generator().manual_seed(5)
    memory, b_prev = {}, None
    for i in range(3):
        x = torch.randn(11, 64, 7, 7, generator=g)  # a stage's pooled features of 11 boxes
        predictions, memory = heads.predict(i, x, memory)
        scores, deltas, b = literal_stage(heads, i, x, b_prev, *mode, box_delta_input)
        assert _close(predictions["scores"], scores), (mode, i)
        assert _close(predictions["proposal_deltas"], deltas), (mode, i)
        if lfs == "serial_memory":
            assert _close(memory["lfs_box_feature"], b)
        else:
            assert memory == {}  # Eq. 2 reads only X_i: nothing is carried between stages
        b_prev = b
    # the sharing is real: stage 3's scores differ from its own fc layers' alone
    own = F.linear(
        heads.box_head[2](x), heads.box_predictor[2].cls_score.weight,
        heads.box_predictor[2].cls_score.bias,
    )  # fmt: skip
    assert _close(predictions["scores"], own) != cfs


def test_eq2_reads_the_current_stages_features_in_every_line():
    # Eq. 2 as printed has X_i^box in every line: stage 3's B_3 depends on stage 3's pooled
    # features only, through the convs of stages 1, 2 and 3; the per-box memory ablation's B_3
    # is another function (it reads the B_2 that stage 2 computed on its own features)
    cfg = cfg_of()
    heads = model_of(cfg).roi_heads
    spread_weights(heads)
    heads.train()
    g = torch.Generator().manual_seed(9)
    x2, x3 = (torch.randn(7, 64, 7, 7, generator=g) for _ in range(2))
    predictions, memory = heads.predict(2, x3, {})
    assert memory == {}
    b3 = eq2(heads, 2, x3)
    deltas = F.linear(b3.flatten(1), heads.box_predictor[2].bbox_pred.weight,
                      heads.box_predictor[2].bbox_pred.bias)  # fmt: skip
    assert _close(predictions["proposal_deltas"], deltas)
    # what stage 2 carried on is not read: the same with any memory
    again, _ = heads.predict(2, x3, {"lfs_box_feature": eq2(heads, 1, x2)})
    assert torch.equal(again["proposal_deltas"], predictions["proposal_deltas"])
    memory_b3 = eq2_from_memory(heads, 2, x3, eq2(heads, 1, x2))
    assert not _close(b3, memory_b3)
    # each conv of stages 1..3 is on the path: zeroing stage 2's 1x1 conv changes B_3
    with torch.no_grad():
        heads.loc_head[1].g.weight.zero_()
        heads.loc_head[1].g.bias.zero_()
    zeroed, _ = heads.predict(2, x3, {})
    assert not _close(zeroed["proposal_deltas"], predictions["proposal_deltas"])


ENSEMBLES = ("none", "all_on_final", "mean_probs", "mean_logits")


@pytest.mark.parametrize("mode", MODES[:4], ids=lambda m: "-".join(map(str, m)))
def test_test_chain_is_the_papers_equations_under_every_ensemble(mode):
    cfs = mode[0]
    cfg = cfg_of(*switches(*mode), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01, *memory_opts(mode[2]))
    model = model_of(cfg)
    spread_weights(model)
    heads = model.roi_heads
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(eval_inputs(cfg, 1))
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        out = {}
        for ensemble in ENSEMBLES:
            heads.test_ensemble = ensemble
            out[ensemble] = heads(images, features, proposals)[0][0]
        # the paper's chain, written out
        feats = [features[f] for f in heads.box_in_features]
        size = proposals[0].image_size
        boxes, b_prev, logits, probs = proposals[0].proposal_boxes, None, [], []
        for i in range(3):
            x = heads.box_pooler(feats, [boxes])
            scores, deltas, b_prev = literal_stage(heads, i, x, b_prev, *mode)
            logits.append(scores)
            probs.append(F.softmax(scores, dim=1))
            last_x, last_boxes, last_deltas = x, boxes, deltas
            transform = heads.box_predictor[i].box2box_transform
            boxes = Boxes(transform.apply_deltas(deltas, boxes.tensor))
            boxes.clip(size)
        final = {
            "none": probs[-1],
            "mean_probs": sum(probs) / 3,
            "mean_logits": F.softmax(sum(logits) / 3, dim=1),
            # every stage's classifier (with its own CFS sum) on the last stage's boxes
            "all_on_final": sum(
                F.softmax(literal_scores(heads, j, last_x, cfs), dim=1) for j in range(3)
            )
            / 3,
        }
        out_boxes = heads.box_predictor[2].box2box_transform.apply_deltas(
            last_deltas, last_boxes.tensor
        )
    for ensemble in ENSEMBLES:
        want = fast_rcnn_inference([out_boxes], [final[ensemble]], [size], 0.01, 0.5, 100)[0][0]
        got = out[ensemble]
        assert len(got) > 0 and len(got) == len(want), ensemble
        assert torch.equal(got.pred_classes, want.pred_classes), ensemble
        assert torch.allclose(got.scores, want.scores, atol=1e-5), ensemble
        assert torch.allclose(got.pred_boxes.tensor, want.pred_boxes.tensor, atol=1e-3), ensemble
    assert not torch.allclose(final["none"], final["all_on_final"])  # the ensembles differ
