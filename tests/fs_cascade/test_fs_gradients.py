"""Where the gradients of stage 3's losses go: under CFS its classification loss reaches stage 1's
and stage 2's fc layers, under serial LFS its box loss reaches stage 1's and stage 2's convs;
with the switches off neither does."""

import pytest
import torch
from helpers.core import model_of, roi_train_pass, train_batch
from helpers.fs import cfg_of, switches

FC = {j: [f"box_head.{j}.fc1.weight", f"box_head.{j}.fc2.weight"] for j in range(3)}
CONVS = {0: ["loc_head.0.f1.weight", "loc_head.0.f2.weight"],
         1: ["loc_head.1.f1.weight", "loc_head.1.g.weight"],
         2: ["loc_head.2.f1.weight", "loc_head.2.g.weight"]}  # fmt: skip


def _reached(loss, heads, names):
    """{name: whether ``loss`` has a non-zero gradient on the parameter}."""
    params = dict(heads.named_parameters())
    grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True,
                                allow_unused=True)  # fmt: skip
    return {n: g is not None and bool(g.abs().sum() > 0) for n, g in zip(names, grads)}


@pytest.mark.parametrize("shared", [True, False], ids=["cfs_and_lfs", "neither"])
def test_stage3_losses_reach_earlier_stages_only_through_sharing(shared):
    mode = (True, "conv", "serial") if shared else (False, "conv", "none")
    cfg = cfg_of(*switches(*mode))
    model = model_of(cfg)
    heads = model.roi_heads
    losses, *_ = roi_train_pass(model, train_batch(cfg))
    cls, box = losses["loss_cls_stage2"], losses["loss_box_reg_stage2"]
    assert box > 0, "stage 3 needs positives for this test"
    earlier_fc = FC[0] + FC[1]
    earlier_convs = CONVS[0] + CONVS[1]
    # each stage's own head always learns from its own loss
    assert all(_reached(cls, heads, FC[2]).values())
    assert all(_reached(box, heads, CONVS[2]).values())
    # CFS: stage 3's classification loss reaches stage 1's and 2's fc layers
    assert _reached(cls, heads, earlier_fc) == {n: shared for n in earlier_fc}
    # LFS: stage 3's box loss reaches stage 1's and 2's convs through B_1, B_2
    assert _reached(box, heads, earlier_convs) == {n: shared for n in earlier_convs}
    # classification and localization stay decoupled
    assert not any(_reached(cls, heads, earlier_convs + CONVS[2]).values())
    assert not any(_reached(box, heads, earlier_fc + FC[2]).values())


def test_under_cfs_with_the_fc_head_only_the_classification_loss_is_shared():
    cfg = cfg_of(*switches(True, "fc", "none"))
    model = model_of(cfg)
    losses, *_ = roi_train_pass(model, train_batch(cfg))
    heads = model.roi_heads
    earlier_fc = FC[0] + FC[1]
    assert all(_reached(losses["loss_cls_stage2"], heads, earlier_fc).values())
    assert losses["loss_box_reg_stage2"] > 0
    assert not any(_reached(losses["loss_box_reg_stage2"], heads, earlier_fc).values())
    assert all(_reached(losses["loss_box_reg_stage2"], heads, FC[2]).values())


def test_the_cores_head_rule_and_gradient_schedules_cover_the_conv_heads():
    cfg = cfg_of()  # "decay" stage losses w = 1, 1/2, 1/4 with the head rule 1/w_t
    model = model_of(cfg)
    heads = model.roi_heads
    rule = heads.head_gradient_multipliers()
    for k, factor in enumerate((1.0, 2.0, 4.0)):
        for name in CONVS[k] + FC[k]:
            assert rule[name] == factor, name
    names = set(heads.rcnn_parameter_names())  # what RGA-like schedules scale
    assert set(CONVS[0] + CONVS[1] + CONVS[2]) <= names
    # the installed factor reaches the gradient: 4 on stage 3's convs, 2 on stage 2's
    losses, *_ = roi_train_pass(model, train_batch(cfg))
    params = dict(heads.named_parameters())
    watched = [params[n] for n in CONVS[1] + CONVS[2]]
    scaled = torch.autograd.grad(losses["loss_box_reg_stage2"], watched, retain_graph=True)
    for scale in heads._gradient_scales:
        scale.remove()
    plain = torch.autograd.grad(losses["loss_box_reg_stage2"], watched)
    for name, a, b in zip(CONVS[1] + CONVS[2], scaled, plain):
        assert b.abs().sum() > 0
        assert torch.allclose(a, b * rule[name], rtol=1e-5, atol=1e-12), name
