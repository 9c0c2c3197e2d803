"""The core on degenerate input (no ground truth, no proposals, collapsed boxes, a stage with no
positives) and on inconsistent configs."""

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers.core import CORE, CORE_MASK, cfg_of, eval_inputs, model_of, train_batch


def _finite(losses):
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v)}
    assert not bad, bad


def _empty_like(instances: Instances) -> Instances:
    return instances[torch.zeros(len(instances), dtype=torch.bool)]


def test_images_without_ground_truth_train_without_nan():
    cfg = cfg_of(CORE_MASK)
    model = model_of(cfg)
    model.train()
    batch = train_batch(cfg)
    for record in batch:
        record["instances"] = _empty_like(record["instances"])
    with EventStorage(0):
        losses = model(batch)
    _finite(losses)
    assert losses["loss_box_reg_stage2"] == 0


def _roi_inputs(model, batch):
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    return images, features


def test_no_proposals_left_in_training_and_at_test():
    cfg = cfg_of(CORE_MASK)
    model = model_of(cfg)
    batch = train_batch(cfg)
    targets = [x["instances"] for x in batch]
    model.train()
    with EventStorage(0):
        images, features = _roi_inputs(model, batch)
        empty = []
        for size in images.image_sizes:
            p = Instances(size)
            p.proposal_boxes = Boxes(torch.zeros(0, 4))
            p.objectness_logits = torch.zeros(0)
            empty.append(p)
        _, losses = model.roi_heads(images, features, empty, targets)  # ground truth only
        _finite(losses)
        no_gt = [_empty_like(t) for t in targets]
        _, losses = model.roi_heads(images, features, empty, no_gt)  # nothing at all
        _finite(losses)
    model.eval()
    with torch.no_grad():
        images, features = _roi_inputs(model, eval_inputs(cfg, 2))
        out, extras = model.roi_heads(images, features, empty, None)
    assert all(len(o) == 0 for o in out)
    assert all(len(o) == 0 for o in extras["stage_instances"]["stage3"])


def test_boxes_collapsing_to_zero_area_after_refinement():
    cfg = cfg_of(CORE, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    model = model_of(cfg)
    predictor = model.roi_heads.box_predictor[0]
    with torch.no_grad():  # stage 1 shrinks every box to (nearly) nothing
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.copy_(torch.tensor([0.0, 0.0, -50.0, -50.0]))
    model.train()
    with EventStorage(0):
        losses = model(train_batch(cfg))
    _finite(losses)
    model.eval()
    with torch.no_grad():
        out = model(eval_inputs(cfg, 1))[0]["instances"]
    assert torch.isfinite(out.scores).all() and torch.isfinite(out.pred_boxes.tensor).all()


@pytest.mark.parametrize("mode", ["keep", "readd"])
def test_stage_whose_threshold_leaves_no_positives(mode):
    cfg = cfg_of(CORE, "MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 0.6, 0.999)",
                 "MODEL.BOX_CASCADE.LATER_STAGE_GT", mode)  # fmt: skip
    model = model_of(cfg)
    with torch.no_grad():  # stage 2 moves every box, so that none stays at IoU >= 0.999
        model.roi_heads.box_predictor[1].bbox_pred.bias.copy_(torch.tensor([0.5, 0.5, 0.3, 0.3]))
    model.train()
    batch = train_batch(cfg)
    with EventStorage(0):
        losses = model(batch)
    _finite(losses)
    positives = model.roi_heads.iou_stats.positives[3, 2]
    if mode == "keep":
        assert positives == 0, "stage 3 should have no positives"
        assert losses["loss_box_reg_stage2"] == 0
    else:  # the re-added ground-truth boxes are stage 3's only positives
        assert positives == sum(len(x["instances"]) for x in batch)


BAD_CONFIGS = [
    (["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10.0, 10.0, 5.0, 5.0),)"],
     "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS has 1 entries but there are 3 stages"),
    (["MODEL.BOX_CASCADE.STAGE_SAMPLERS", '["sample", "refined"]'],
     "MODEL.BOX_CASCADE.STAGE_SAMPLERS has 2 entries"),
    (["MODEL.BOX_CASCADE.STAGE_SAMPLERS", '["sample", "refined", "magic"]'],
     "unknown sampler 'magic'"),
    (["MODEL.BOX_CASCADE.LOSS_WEIGHTING", "explicit", "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS",
      "[1.0, 0.5]"], "STAGE_LOSS_WEIGHTS must hold one positive weight per stage"),
    (["MODEL.BOX_CASCADE.LOSS_WEIGHTING", "half"], "LOSS_WEIGHTING must be one of"),
    (["MODEL.BOX_CASCADE.TEST_STAGE", "4"], "TEST_STAGE must be -1 or in 1..3"),
    (["MODEL.BOX_CASCADE.TEST_ENSEMBLE", "vote"], "TEST_ENSEMBLE: unknown ensemble 'vote'"),
    (["MODEL.BOX_CASCADE.LATER_STAGE_GT", "drop"], "LATER_STAGE_GT must be one of"),
    (["MODEL.BOX_CASCADE.NUM_TEST_STAGES", "-1"], "NUM_TEST_STAGES must be >= 0"),
    (["MODEL.BOX_CASCADE.SHARED_HEAD", "True", "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS",
      str(((10.0, 10.0, 5.0, 5.0),) * 3)], "box_head.0 is shared by stages 1 and 2"),
    (["MODEL.BOX_CASCADE.MASK_STRATEGY", "middle"], "MASK_STRATEGY must be one of"),
    (["MODEL.BOX_CASCADE.SHARED_HEAD", "True"], "SHARED_HEAD needs one"),
    (["MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.6]"], "IOU_THRESHOLDS\\[0\\] must equal"),
]  # fmt: skip


@pytest.mark.parametrize("opts,message", BAD_CONFIGS, ids=lambda x: str(x)[:40])
def test_inconsistent_configs_fail_at_build_time_naming_the_key(opts, message):
    with pytest.raises((ValueError, KeyError), match=message):
        model_of(cfg_of(CORE, *opts))


def test_shared_head_and_more_test_stages_than_trained():
    # iterative BBox (Table 1): one head trained as one stage, applied three times at test
    cfg = cfg_of(CORE, "MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5,)",
                 "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "((10.0, 10.0, 5.0, 5.0),)",
                 "MODEL.BOX_CASCADE.NUM_TEST_STAGES", 3)  # fmt: skip
    model = model_of(cfg)
    assert len(model.roi_heads.box_head) == 1
    model.eval()
    with torch.no_grad():
        out = model(eval_inputs(cfg, 1))[0]
    assert set(out["stage_instances"]) == {"stage1", "stage2", "stage3", "ensemble"}
    # R3-CNN-like: three training stages sharing one head
    cfg = cfg_of(CORE, "MODEL.BOX_CASCADE.SHARED_HEAD", True,
                 "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", str(((10.0, 10.0, 5.0, 5.0),) * 3),
                 "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", False)  # fmt: skip
    model = model_of(cfg)
    assert len(model.roi_heads.box_head) == 1 and model.roi_heads.plan.head_indices == (0, 0, 0)
    model.train()
    with EventStorage(0):
        losses = model(train_batch(cfg))
    assert {"loss_cls_stage0", "loss_cls_stage2"} <= set(losses)
    _finite(losses)
