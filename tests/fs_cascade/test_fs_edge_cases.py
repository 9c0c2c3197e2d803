"""FSCascade on degenerate input (no ground truth, no proposals, a stage without positives, boxes
dropped between stages, whose B_i rows must follow them) and on configs it cannot run."""

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers.core import eval_inputs, model_of, roi_train_pass, train_batch
from helpers.fs import cfg_of, conv1x1, conv3x3_relu, memory_opts, switches


def _finite(losses):
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v)}
    assert not bad, bad


def _empty_like(instances):
    return instances[torch.zeros(len(instances), dtype=torch.bool)]


def test_images_without_ground_truth_and_without_proposals():
    cfg = cfg_of()
    model = model_of(cfg)
    batch = train_batch(cfg)
    for record in batch:
        record["instances"] = _empty_like(record["instances"])
    model.train()
    with EventStorage(0):
        losses = model(batch)  # no ground truth: every box is background
        _finite(losses)
        assert losses["loss_box_reg_stage2"] == 0
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        empty = []
        for size in images.image_sizes:
            p = Instances(size, proposal_boxes=Boxes(torch.zeros(0, 4)))
            p.objectness_logits = torch.zeros(0)
            empty.append(p)
        targets = [x["instances"] for x in train_batch(cfg)]
        _, losses = model.roi_heads(images, features, empty, targets)  # ground truth only
        _finite(losses)
        _, losses = model.roi_heads(images, features, empty, [_empty_like(t) for t in targets])
        _finite(losses)  # nothing at all
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(eval_inputs(cfg, 2))
        features = model.backbone(images.tensor)
        out, extras = model.roi_heads(images, features, empty, None)
    assert all(len(o) == 0 for o in out)
    assert all(len(o) == 0 for o in extras["stage_instances"]["stage3"])


@pytest.mark.parametrize("lfs", ["serial", "serial_memory"])
def test_stage_whose_threshold_leaves_no_positives(lfs):
    # "keep": no exact ground-truth box is added back, so nothing reaches IoU 0.999
    cfg = cfg_of("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 0.6, 0.999)", "MODEL.FS_CASCADE.LFS",
                 lfs, "MODEL.BOX_CASCADE.LATER_STAGE_GT", "keep")  # fmt: skip
    model = model_of(cfg)
    with torch.no_grad():  # stage 2 moves every box, so that none stays at IoU >= 0.999
        model.roi_heads.box_predictor[1].bbox_pred.bias.copy_(torch.tensor([0.5, 0.5, 0.3, 0.3]))
    losses, records, *_ = roi_train_pass(model, train_batch(cfg))
    _finite(losses)
    assert all((p.gt_classes == model.roi_heads.num_classes).all() for p in records[2].proposals)
    assert losses["loss_box_reg_stage2"] == 0
    if lfs == "serial_memory":
        shape = (sum(records[2].num_boxes), 64, 7, 7)
        assert records[2].memory["lfs_box_feature"].shape == shape


def test_box_features_follow_their_boxes_when_boxes_are_dropped():
    # the per-box memory of the "serial_memory" ablation
    cfg = cfg_of("MODEL.FS_CASCADE.LFS", "serial_memory", *memory_opts("serial_memory"))
    model = model_of(cfg)
    heads = model.roi_heads
    refine, features = heads.refine_boxes, heads.stage_features
    received = {}

    def refine_with_drops(record):  # every third box of image 1 made empty after stage 1
        boxes, scores = refine(record)
        if record.stage == 0:
            boxes = [b.clone() for b in boxes]
            boxes[0][::3, 2] = boxes[0][::3, 0]
        return boxes, scores

    def recording(stage, box_features, memory):
        received[stage] = (box_features, memory.get("lfs_box_feature"))
        return features(stage, box_features, memory)

    heads.refine_boxes, heads.stage_features = refine_with_drops, recording
    losses, records, *_ = roi_train_pass(model, train_batch(cfg))
    _finite(losses)
    assert sum(records[1].num_boxes) < sum(records[0].num_boxes)  # boxes were dropped
    for k in (1, 2):
        prev = records[k - 1]
        keep = []
        for b, props in zip(prev.boxes, prev.proposals):
            clipped = Boxes(b.clone())
            clipped.clip(props.image_size)
            keep.append(clipped.nonempty())
        keep = torch.cat(keep)
        x, b_prev = received[k]
        assert len(x) == sum(records[k].num_boxes) == int(keep.sum())
        assert torch.equal(b_prev, prev.memory["lfs_box_feature"][keep])
        # the memory reading of Eq. 2 on the kept rows
        convs = heads.loc_head[k]
        want = x + conv1x1(convs.g, conv3x3_relu(convs.f1, b_prev))
        assert torch.allclose(records[k].memory["lfs_box_feature"], want, atol=1e-5)


BAD_CONFIGS = [
    (["MODEL.FS_CASCADE.LFS", "diagonal"], "MODEL.FS_CASCADE.LFS must be one of"),
    (["MODEL.FS_CASCADE.LOC_HEAD", "mlp"], "MODEL.FS_CASCADE.LOC_HEAD must be one of"),
    (switches(True, "fc", "serial"), "MODEL.FS_CASCADE.LFS 'serial' .*LOC_HEAD 'conv'"),
    (switches(False, "fc", "parallel"), "MODEL.FS_CASCADE.LFS 'parallel' .*LOC_HEAD 'conv'"),
    (["MODEL.FS_CASCADE.BOX_DELTA_INPUT", "max"], "MODEL.FS_CASCADE.BOX_DELTA_INPUT must be"),
    # the memory extension point refuses what reorders or replaces boxes between stages
    (["MODEL.FS_CASCADE.LFS", "serial_memory"], "MODEL.BOX_CASCADE.LATER_STAGE_GT 'readd'"),
    (["MODEL.FS_CASCADE.LFS", "serial_memory", *memory_opts("serial_memory"),
      "MODEL.BOX_CASCADE.STAGE_SAMPLERS", '["sample", "resample", "refined"]'],
     "MODEL.BOX_CASCADE.STAGE_SAMPLERS: stages \\[2\\] re-sample"),
    (["MODEL.BOX_CASCADE.SHARED_HEAD", "True", "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", "False",
      "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", str(((10.0, 10.0, 5.0, 5.0),) * 3)],
     "MODEL.BOX_CASCADE.SHARED_HEAD: FSCascade"),
    (["MODEL.BOX_CASCADE.NUM_TEST_STAGES", "4"], "MODEL.BOX_CASCADE.NUM_TEST_STAGES 4"),
]  # fmt: skip


@pytest.mark.parametrize("opts,message", BAD_CONFIGS, ids=lambda x: str(x)[:48])
def test_bad_configs_stop_naming_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        model_of(cfg_of(*opts))


@pytest.mark.parametrize(
    "mode", [(True, "conv", "serial"), (True, "fc", "none"), (False, "conv", "parallel")]
)
def test_without_per_box_memory_boxes_may_be_replaced_between_stages(mode):
    # no per-box memory is read, so the core's default ground-truth handling is allowed
    heads = model_of(
        cfg_of(*switches(*mode), "MODEL.BOX_CASCADE.LATER_STAGE_GT", "readd")
    ).roi_heads
    assert not heads.reads_memory and heads.later_stage_gt == "readd"
