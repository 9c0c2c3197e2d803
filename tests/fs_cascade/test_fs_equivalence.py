"""With CFS and LFS off and the fc localization head, FSCascade is the core's Cascade R-CNN (same
parameters, losses, detections); a Cascade R-CNN checkpoint loads into the full FSCascade with
only the conv localization head's keys missing."""

import pytest
import torch
from helpers.core import eval_inputs, losses_of, model_of, train_batch
from helpers.fs import AS_CASCADE, cfg_of, spread_weights

from box_cascade import BoxCascadeROIHeads
from cascade_zoo.engine.checkpoint import build_checkpointer
from fs_cascade import FSCascadeROIHeads

CORE = ["MODEL.ROI_HEADS.NAME", "BoxCascadeROIHeads"]


def _detections(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(inputs)


@pytest.mark.parametrize("later_stage_gt", ["keep", "readd"])
def test_without_sharing_and_with_the_fc_head_it_is_the_cores_cascade(later_stage_gt):
    opts = [*AS_CASCADE, "MODEL.BOX_CASCADE.LATER_STAGE_GT", later_stage_gt,
            "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "all_on_final",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01]  # fmt: skip
    fs_cfg, core_cfg = cfg_of(*opts), cfg_of(*opts, *CORE)
    fs, core = model_of(fs_cfg, seed=3), model_of(core_cfg)
    assert type(fs.roi_heads) is FSCascadeROIHeads and type(core.roi_heads) is BoxCascadeROIHeads
    assert not fs.roi_heads.reads_memory and fs.roi_heads.loc_head is None
    spread_weights(core)
    fs_state, core_state = fs.state_dict(), core.state_dict()
    assert {k: v.shape for k, v in fs_state.items()} == {k: v.shape for k, v in core_state.items()}
    fs.load_state_dict(core_state, strict=True)
    assert fs.roi_heads.head_gradient_multipliers() == core.roi_heads.head_gradient_multipliers()

    batch = train_batch(fs_cfg)
    a, b = losses_of(fs, batch)[0], losses_of(core, batch)[0]
    assert set(a) == set(b) and "loss_box_reg_stage2" in a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # gradients too (the head rule is installed the same way on both)
    sum(a.values()).backward()
    sum(b.values()).backward()
    grads = {n: p.grad for n, p in core.named_parameters()}
    for n, p in fs.named_parameters():
        assert (p.grad is None) == (grads[n] is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[n], atol=1e-6, rtol=1e-4), n

    inputs = eval_inputs(fs_cfg, 1)
    x, y = _detections(fs, inputs)[0], _detections(core, inputs)[0]
    assert len(x["instances"]) > 0
    for key in ("stage1", "stage2", "stage3", "ensemble"):
        p, q = x["stage_instances"][key], y["stage_instances"][key]
        assert len(p) == len(q) and torch.equal(p.pred_classes, q.pred_classes), key
        assert torch.allclose(p.scores, q.scores, atol=1e-6), key
        assert torch.allclose(p.pred_boxes.tensor, q.pred_boxes.tensor, atol=1e-4), key
    assert torch.allclose(x["instances"].scores, y["instances"].scores, atol=1e-6)


def _load_reporting(cfg, model, path):
    """Load ``path`` with the project's checkpointer; return what it reports as incompatible."""
    checkpointer = build_checkpointer(cfg, model)
    reports = []
    load_model = checkpointer._load_model

    def recording(checkpoint):
        reports.append(load_model(checkpoint))
        return reports[-1]

    checkpointer._load_model = recording
    checkpointer.load(str(path))
    assert len(reports) == 1
    return reports[0]


def test_a_cascade_checkpoint_loads_with_only_the_conv_head_missing(tmp_path):
    cfg = cfg_of()  # the full FSCascade
    core = model_of(cfg_of(*CORE))  # Cascade R-CNN from the same config
    spread_weights(core)
    path = tmp_path / "cascade.pth"
    torch.save({"model": core.state_dict()}, path)
    fs = model_of(cfg, seed=7)
    report = _load_reporting(cfg, fs, path)

    conv_head = {f"roi_heads.loc_head.{k}.{m}.{w}" for k, m in
                 [(0, "f1"), (0, "f2"), (1, "f1"), (1, "g"), (2, "f1"), (2, "g")]
                 for w in ("weight", "bias")}  # fmt: skip
    regressors = {f"roi_heads.box_predictor.{k}.bbox_pred.weight" for k in range(3)}
    assert set(report.missing_keys) == conv_head | regressors
    assert list(report.unexpected_keys) == []
    # the checkpoint's regressors read the fc features (FC_DIM 256); the conv head's read B_i
    assert sorted((k, tuple(a), tuple(b)) for k, a, b in report.incorrect_shapes) == [
        (f"roi_heads.box_predictor.{k}.bbox_pred.weight", (4, 256), (4, 64 * 7 * 7))
        for k in range(3)
    ]
    loaded = core.state_dict()
    for name, value in fs.state_dict().items():
        if name not in conv_head | regressors:
            assert torch.equal(value, loaded[name]), name
    # with the fc localization head (the CFS-only ablation) nothing is missing
    cfs_cfg = cfg_of("MODEL.FS_CASCADE.LOC_HEAD", "fc", "MODEL.FS_CASCADE.LFS", "none")
    report = _load_reporting(cfs_cfg, model_of(cfs_cfg), path)
    assert not report.missing_keys and not report.unexpected_keys
    assert not report.incorrect_shapes
