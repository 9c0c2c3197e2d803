"""ParallelModulesROIHeads: K modules per stage, each on its own sample, merged at test; with
K = 1 it is the core."""

import pytest
import torch
from helpers.core import (
    CORE,
    assert_same_instances,
    cfg_of,
    detections_of,
    eval_inputs,
    literal_fast_rcnn_losses,
    losses_of,
    model_of,
    roi_test_pass,
    roi_train_pass,
    spread_predictor_weights,
    train_batch,
)

PARALLEL = ["MODEL.ROI_HEADS.NAME", "ParallelModulesROIHeads",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01]  # fmt: skip
TWO = ["MODEL.BOX_CASCADE.PARALLEL.NUM_MODULES", 2,
       "MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS", "[0.1, 0.5]"]  # fmt: skip


def test_one_module_is_the_core():
    cfg = cfg_of(CORE, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    core = model_of(cfg)
    spread_predictor_weights(core)
    one = model_of(cfg_of(CORE, *PARALLEL), seed=3)
    one.load_state_dict(core.state_dict(), strict=True)  # same parameters
    batch = train_batch(cfg)
    a, _ = losses_of(core, batch)
    b, _ = losses_of(one, batch)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    inputs = eval_inputs(cfg, 1)
    for x, y in zip(detections_of(core, inputs), detections_of(one, inputs)):
        assert_same_instances(x["instances"], y["instances"])


def test_two_modules_sample_with_their_fractions_and_sum_losses():
    cfg = cfg_of(CORE, *PARALLEL, *TWO, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64)
    model = model_of(cfg)
    heads = model.roi_heads
    assert heads.module_fractions == [0.5, 0.1]  # the box module (largest fraction) first
    names = dict(heads.named_parameters())
    assert "parallel_box_head.0.2.fc1.weight" in names and "box_head.2.fc1.weight" in names
    assert "parallel_box_predictor.0.1.bbox_pred.weight" in heads.rcnn_parameter_names()
    losses, records, _, _, _ = roi_train_pass(model, train_batch(cfg))
    assert {"loss_cls_module1_stage0", "loss_box_reg_module1_stage2", "loss_cls_stage1"} <= set(
        losses
    )
    main, other = records[0].proposals, records[0].branches["module1"].proposals
    for m, o in zip(main, other):
        m_pos, o_pos = int((m.gt_classes < 6).sum()), int((o.gt_classes < 6).sum())
        # each takes min(available positives, its fraction x 64): the main module took all
        # there were (m_pos < 32) or its 32, so the other one took min(m_pos, 6)
        assert m_pos <= 0.5 * 64 and o_pos == min(m_pos, int(0.1 * 64))
        assert len(m) == len(o) == 64
    # later stages train every module on all refined boxes (the stage's sampler does not sample)
    assert records[1].branches["module1"].proposals is records[1].proposals
    # the head rule covers the parallel modules with their stage's weight
    rule = heads.head_gradient_multipliers()
    assert rule["parallel_box_head.0.2.fc1.weight"] == 4.0
    assert rule["parallel_box_predictor.0.1.cls_score.weight"] == 2.0
    sum(losses.values()).backward()
    assert heads.parallel_box_predictor[0][2].cls_score.weight.grad.abs().sum() > 0


WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


def test_every_modules_losses_are_its_own_fast_rcnn_losses_times_w_t():
    """Each module of stage t: Fast R-CNN's losses of its own head and predictor on its own
    training boxes, re-pooled and written out here, times the stage's weight w_t = 1, 1/2, 1/4
    (the box module's and the other module's alike)."""
    cfg = cfg_of(CORE, *PARALLEL, *TWO)
    model = model_of(cfg)
    spread_predictor_weights(model)
    heads = model.roi_heads
    assert heads.plan.loss_weights == (1.0, 0.5, 0.25)
    losses, records, _, _, features = roi_train_pass(model, train_batch(cfg))
    feats = [features[f] for f in heads.box_in_features]
    modules = {
        "": (heads.box_head, heads.box_predictor, lambda r: r.proposals),
        "_module1": (heads.parallel_box_head[0], heads.parallel_box_predictor[0],
                     lambda r: r.branches["module1"].proposals),
    }  # fmt: skip
    for t, w in enumerate((1.0, 0.5, 0.25)):
        for suffix, (head, predictor, boxes_of) in modules.items():
            proposals = boxes_of(records[t])
            x = head[t](heads.box_pooler(feats, [p.proposal_boxes for p in proposals]))
            logits, deltas = predictor[t](x)
            loss_cls, loss_box = literal_fast_rcnn_losses(logits, deltas, proposals, WEIGHTS[t], 6)
            assert loss_cls > 0 and loss_box > 0, (t, suffix)
            for name, want in (("loss_cls", loss_cls), ("loss_box_reg", loss_box)):
                key = f"{name}{suffix}_stage{t}"
                assert torch.allclose(losses[key], w * want, rtol=1e-4, atol=1e-6), (
                    key, float(losses[key]), w * float(want))  # fmt: skip


@pytest.mark.parametrize("merge", ["mean_logits", "max_logits"])
def test_test_time_merge_of_the_modules_logits_and_box_module_deltas(merge):
    cfg = cfg_of(CORE, *PARALLEL, *TWO, "MODEL.BOX_CASCADE.PARALLEL.MERGE", merge,
                 "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none")  # fmt: skip
    model = model_of(cfg)
    spread_predictor_weights(model)
    heads = model.roi_heads
    for k, last in enumerate(roi_test_pass(model, eval_inputs(cfg, 1))):
        with torch.no_grad():
            x = last.box_features
            a_logits, a_deltas = heads.box_predictor[k](heads.box_head[k](x))
            b_logits, _ = heads.parallel_box_predictor[0][k](heads.parallel_box_head[0][k](x))
        both = torch.stack([a_logits, b_logits])
        want = both.mean(0) if merge == "mean_logits" else both.max(0).values
        assert torch.allclose(last.predictions["scores"], want, atol=1e-6), k
        assert torch.equal(last.predictions["proposal_deltas"], a_deltas)


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.BOX_CASCADE.PARALLEL.NUM_MODULES", 3,
          "MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS", "[0.5, 0.1]"],
         "POSITIVE_FRACTIONS has 2 entries but MODEL.BOX_CASCADE.PARALLEL.NUM_MODULES is 3"),
        (["MODEL.BOX_CASCADE.PARALLEL.NUM_MODULES", 2,
          "MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS", "[0.5, 1.5]"],
         "POSITIVE_FRACTIONS must hold one fraction in \\(0, 1\\]"),
        ([*TWO, "MODEL.BOX_CASCADE.PARALLEL.BOX_MODULE", 2], "BOX_MODULE must be -1 or in 0..1"),
        ([*TWO, "MODEL.BOX_CASCADE.PARALLEL.MERGE", "vote"], "PARALLEL.MERGE must be one of"),
    ],
)  # fmt: skip
def test_bad_parallel_configs_name_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        model_of(cfg_of(CORE, *PARALLEL, *opts))
