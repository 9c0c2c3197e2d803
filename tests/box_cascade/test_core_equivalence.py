"""The core at the Detectron2-equivalent config is Detectron2: same parameters, same training
losses and gradients, same detections. T = 1 is StandardROIHeads."""

import re

import pytest
import torch
from conftest import load_checkpoint_warnings
from detectron2.checkpoint import DetectionCheckpointer
from helpers.core import (
    AS_CORE_D2,
    D2_CASCADE,
    D2_CASCADE_MASK,
    D2_FASTER,
    assert_same_instances,
    cfg_of,
    detections_of,
    eval_inputs,
    losses_of,
    model_of,
    spread_predictor_weights,
    train_batch,
)

ONE_STAGE = [
    "MODEL.META_ARCHITECTURE", "BoxCascadeRCNN",
    "MODEL.ROI_HEADS.NAME", "BoxCascadeROIHeads",
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5,)",
    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10.0, 10.0, 5.0, 5.0),)",
]  # fmt: skip


def _core_name(name: str, case: str) -> str:
    """The core's name of a Detectron2 parameter (one-stage cores index their single head)."""
    if case != "one_stage_vs_standard":
        return name
    return re.sub(r"^roi_heads\.(box_head|box_predictor)\.", r"roi_heads.\1.0.", name)


def _pair(d2_config, core_opts, *extra):
    d2_cfg = cfg_of(d2_config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01, *extra)
    core_cfg = cfg_of(d2_config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01, *core_opts, *extra)
    d2 = model_of(d2_cfg, seed=0)
    spread_predictor_weights(d2)
    core = model_of(core_cfg, seed=5)
    core.load_state_dict(d2.state_dict(), strict=True)  # same names and shapes, or it raises
    return d2_cfg, d2, core


CASES = {
    "cascade": (D2_CASCADE, AS_CORE_D2),
    "cascade_mask": (D2_CASCADE_MASK, AS_CORE_D2),
    "one_stage_vs_standard": (D2_FASTER, ONE_STAGE),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_parameters_losses_gradients_and_detections(case):
    d2_config, core_opts = CASES[case]
    cfg, d2, core = _pair(d2_config, core_opts)
    assert [(_core_name(n, case), p.shape) for n, p in d2.state_dict().items()] == [
        (n, p.shape) for n, p in core.state_dict().items()
    ]

    batch = train_batch(cfg)
    d2_losses, _ = losses_of(d2, batch)
    core_losses, _ = losses_of(core, batch)
    if case == "one_stage_vs_standard":  # the core names every stage's losses
        d2_losses = {
            f"{k}_stage0" if k in ("loss_cls", "loss_box_reg") else k: v
            for k, v in d2_losses.items()
        }
    assert d2_losses.keys() == core_losses.keys()
    for key in d2_losses:
        assert torch.allclose(d2_losses[key], core_losses[key], atol=1e-5), key
    sum(d2_losses.values()).backward()
    sum(core_losses.values()).backward()
    core_params = dict(core.named_parameters())
    for name, p in d2.named_parameters():
        q = core_params[_core_name(name, case)]
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name

    inputs = eval_inputs(cfg)
    for a, b in zip(detections_of(d2, inputs), detections_of(core, inputs)):
        assert len(a["instances"]) > 0
        assert_same_instances(a["instances"], b["instances"])
        if a["instances"].has("pred_masks"):
            assert torch.allclose(
                a["instances"].pred_masks.float(), b["instances"].pred_masks.float()
            )


def test_detectron2_checkpoint_loads_without_missing_or_unexpected_keys(tmp_path):
    for case, (d2_config, core_opts) in CASES.items():
        d2_cfg = cfg_of(d2_config)
        d2 = model_of(d2_cfg)
        DetectionCheckpointer(d2, save_dir=str(tmp_path)).save("d2")
        core = model_of(cfg_of(d2_config, *core_opts))
        # no missing or unexpected keys (public DetectionCheckpointer.load)
        assert load_checkpoint_warnings(core, tmp_path / "d2.pth") == []
        core_state = core.state_dict()
        for name, value in d2.state_dict().items():
            assert torch.equal(core_state[_core_name(name, case)], value), name


def test_equivalent_yaml_differs_from_detectron2s_only_in_the_head_keys():
    from conftest import ROOT

    core = cfg_of(ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_R_50_FPN_1x_detectron2.yaml")
    d2 = cfg_of(ROOT / "configs" / "Baselines" / "cascade_rcnn_R_50_FPN_1x.yaml")

    def flat(node, prefix=""):
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}": v})
        return out

    a, b = flat(core), flat(d2)
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {
        "MODEL.META_ARCHITECTURE",
        "MODEL.ROI_HEADS.NAME",
        "MODEL.BOX_CASCADE.LOSS_WEIGHTING",
        "MODEL.BOX_CASCADE.TEST_ENSEMBLE",
        "MODEL.BOX_CASCADE.LATER_STAGE_GT",
    }
