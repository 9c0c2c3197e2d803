"""Contract tests of the core's extension points: each is used by a small subclass here, doing
what a paper of the project will do with it (per-box stage memory, parallel modules, a branch
trained on its own generated boxes with an extra output and rescoring before NMS, a schedule of
the R-CNN gradients, shared modules with per-loop weights, mask strategies, an extra
evaluator)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from helpers.core import (
    CORE,
    CORE_MASK,
    cfg_of,
    detections_of,
    eval_inputs,
    losses_of,
    model_of,
    roi_test_pass,
    roi_train_pass,
    train_batch,
)
from torch import nn

from box_cascade import (
    MASK_STRATEGY_REGISTRY,
    STAGE_SAMPLER_REGISTRY,
    BoxCascadeROIHeads,
    MaskStrategy,
    StageRecord,
    StageSampler,
    merge_branch_predictions,
)
from box_cascade.head_rule import StageModule
from box_cascade.masks import EveryStageMask
from box_cascade.samplers import SampleProposals, label_boxes
from box_cascade.stages import d2_pair
from cascade_zoo.engine.gradients import GradientScale, GradientScaleHook

# ---------------------------------------------------------------- per-box stage memory


@ROI_HEADS_REGISTRY.register()
class _MemoryHeadsForTest(BoxCascadeROIHeads):
    """FSCascade-like: stage k's feature is its head's output plus half the previous stage's
    feature for the same box (read from the memory), and it writes its own for the next."""

    reads_memory = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []  # (stage, rows of memory received, boxes)

    def stage_features(self, stage, box_features, memory):
        x = self.stage_head(stage)(box_features)
        self.seen.append((stage, memory.get("feat"), len(box_features)))
        if "feat" in memory:
            assert len(memory["feat"]) == len(x), "memory rows must follow the boxes"
            x = x + 0.5 * memory["feat"]
        return x, {"feat": x}


MEMORY = ["MODEL.ROI_HEADS.NAME", "_MemoryHeadsForTest", "MODEL.BOX_CASCADE.LATER_STAGE_GT", "keep"]


def test_memory_rows_stay_aligned_through_dropped_boxes_in_training():
    cfg = cfg_of(CORE, *MEMORY)
    model = model_of(cfg)
    heads = model.roi_heads
    original = heads.refine_boxes

    def refine_with_drops(record):  # every third box of image 1 made empty after stage 1
        boxes, scores = original(record)
        if record.stage == 0:
            boxes = [b.clone() for b in boxes]
            boxes[0][::3, 2] = boxes[0][::3, 0]
        return boxes, scores

    heads.refine_boxes = refine_with_drops
    _, records, _, _, _ = roi_train_pass(model, train_batch(cfg))
    assert sum(records[1].num_boxes) < sum(records[0].num_boxes)  # boxes were dropped
    for k in (1, 2):
        prev, cur = records[k - 1], records[k]
        keep = []
        for b, props in zip(prev.boxes, prev.proposals):
            clipped = Boxes(b.clone())
            clipped.clip(props.image_size)
            keep.append(clipped.nonempty())
        keep = torch.cat(keep)
        received = next(m for s, m, _ in heads.seen if s == k)
        assert torch.equal(received, prev.memory["feat"][keep])
        assert len(received) == sum(cur.num_boxes)


@pytest.mark.parametrize("ensemble", ["none", "mean_probs", "mean_logits", "all_on_final"])
def test_memory_heads_under_every_test_ensemble(ensemble):
    cfg = cfg_of(CORE, *MEMORY, "MODEL.BOX_CASCADE.TEST_ENSEMBLE", ensemble,
                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)  # fmt: skip
    model = model_of(cfg)
    heads = model.roi_heads
    model.eval()
    inputs = eval_inputs(cfg, 1)
    with torch.no_grad():
        out = model.inference(inputs, do_postprocess=False)[0]
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        # literal: the chain, each stage adding half the previous stage's feature
        feats = [features[f] for f in heads.box_in_features]
        boxes, x_prev, logits, probs = proposals[0].proposal_boxes, None, [], []
        for t in range(3):
            pooled = heads.box_pooler(feats, [boxes])
            x = heads.box_head[t](pooled) + (0.5 * x_prev if x_prev is not None else 0)
            lg, d = heads.box_predictor[t](x)
            logits.append(lg)
            probs.append(F.softmax(lg, dim=1))
            last_pooled, last_boxes, last_deltas = pooled, boxes, d
            boxes = Boxes(heads.box_predictor[t].box2box_transform.apply_deltas(d, boxes.tensor))
            boxes.clip(proposals[0].image_size)
            x_prev = x
        if ensemble == "none":
            scores = probs[-1]
        elif ensemble == "mean_probs":
            scores = sum(probs) / 3
        elif ensemble == "mean_logits":
            scores = F.softmax(sum(logits) / 3, dim=1)
        else:  # stages 1, 2 re-run on the last stage's boxes, with their own memory chain
            x1 = heads.box_head[0](last_pooled)
            x2 = heads.box_head[1](last_pooled) + 0.5 * x1
            scores = (
                F.softmax(heads.box_predictor[0](x1)[0], 1)
                + F.softmax(heads.box_predictor[1](x2)[0], 1)
                + probs[-1]
            ) / 3
        out_boxes = heads.box_predictor[2].box2box_transform.apply_deltas(
            last_deltas, last_boxes.tensor
        )
        want, _ = fast_rcnn_inference(
            [out_boxes], [scores], [proposals[0].image_size], 0.01, 0.5, 100
        )
    assert len(out) > 0
    assert torch.allclose(out.scores, want[0].scores, atol=1e-5)
    assert torch.allclose(out.pred_boxes.tensor, want[0].pred_boxes.tensor, atol=1e-4)


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.BOX_CASCADE.STAGE_SAMPLERS", '["sample", "resample", "refined"]'],
         "MODEL.BOX_CASCADE.STAGE_SAMPLERS: stages \\[2\\] re-sample"),
        (["MODEL.BOX_CASCADE.LATER_STAGE_GT", "readd"], "MODEL.BOX_CASCADE.LATER_STAGE_GT 'readd'"),
    ],
)  # fmt: skip
def test_memory_heads_refuse_box_reordering_configs(opts, message):
    with pytest.raises(ValueError, match=message):
        model_of(cfg_of(CORE, *MEMORY, *opts))


# ---------------------------------------------------------------- parallel modules


@ROI_HEADS_REGISTRY.register()
class _ParallelHeadsForTest(BoxCascadeROIHeads):
    """PRM-like: every stage has a second module (box head + predictor) trained on its own
    sample at positive fraction 0.1; losses summed; at test the two modules' logits are
    averaged and the boxes come from the main module, which also refines for the next stage."""

    STAGE_MODULES = {
        **BoxCascadeROIHeads.STAGE_MODULES,
        "prm_head": StageModule("head"),
        "prm_predictor": StageModule("predictor"),
    }

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["stage_modules"] = {
            "prm_head": torch.nn.ModuleList(copy.deepcopy(ret["box_heads"])),
            "prm_predictor": torch.nn.ModuleList(copy.deepcopy(ret["box_predictors"])),
        }
        return ret

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prm_sampler = SampleProposals(positive_fraction=0.1)

    def stage_samples(self, stage, proposals, targets):
        samples = super().stage_samples(stage, proposals, targets)
        if stage == 0:
            samples["prm"] = self.prm_sampler(self, stage, proposals, targets)
        else:  # later stages: the same boxes for both modules
            samples["prm"] = [copy.copy(p) for p in samples["main"]]
        return samples

    def run_branches(self, record, features, samples):
        box_features = self.pool(features, samples["prm"])
        predictions = self._prm_predict(record.stage, box_features)
        return {"prm": StageRecord(record.stage, samples["prm"], box_features, predictions)}

    def _prm_predict(self, stage, box_features):
        logits, deltas = self.prm_predictor[stage](self.prm_head[stage](box_features))
        return {"scores": logits, "proposal_deltas": deltas}

    def stage_losses(self, record):
        losses = super().stage_losses(record)
        prm = record.branches["prm"]
        extra = self.prm_predictor[record.stage].losses(d2_pair(prm.predictions), prm.proposals)
        w = self.plan.loss_weights[record.stage]
        losses.update({f"{k}_prm": v * w for k, v in extra.items()})
        return losses

    def predict(self, stage, box_features, memory):
        main, memory = super().predict(stage, box_features, memory)
        if self.training:
            return main, memory
        branches = {"main": main, "prm": self._prm_predict(stage, box_features)}
        return merge_branch_predictions(branches, box_branch="main"), memory


def test_parallel_modules_sample_train_and_merge():
    cfg = cfg_of(CORE, "MODEL.ROI_HEADS.NAME", "_ParallelHeadsForTest",
                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)  # fmt: skip
    model = model_of(cfg)
    heads = model.roi_heads
    losses, records, targets, _, _ = roi_train_pass(model, train_batch(cfg))
    assert {"loss_cls_prm_stage0", "loss_box_reg_prm_stage2", "loss_cls_stage2"} <= set(losses)
    # each module's observed positive fraction follows its sampler's setting
    main = records[0].proposals
    prm = records[0].branches["prm"].proposals
    batch = cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    main_cap, prm_cap = int(batch * 0.25), int(batch * 0.1)
    for m, p in zip(main, prm):
        main_pos, prm_pos = int((m.gt_classes < 6).sum()), int((p.gt_classes < 6).sum())
        assert 0 < main_pos <= main_cap
        # both sample the same candidates: main keeps min(available, 16) positives, so the
        # 10 % module keeps min(available, 6) = min(main's, 6) (the batch is random: SEED -1)
        assert prm_pos == min(main_pos, prm_cap)
    # the main module refines: stage 2's boxes are stage 1's main regressions (+ ground truth)
    assert sum(records[1].num_boxes) <= sum(records[0].num_boxes) + sum(len(t) for t in targets)
    # the second module gets gradients, the loss sum includes it
    sum(losses.values()).backward()
    assert heads.prm_predictor[1].cls_score.weight.grad.abs().sum() > 0
    assert "prm_head.0.fc1.weight" in heads.rcnn_parameter_names()

    # test: logits averaged over the two modules, boxes from the main module
    model.eval()
    inputs = eval_inputs(cfg, 1)
    with torch.no_grad():
        out = model.inference(inputs, do_postprocess=False)[0]
    last = roi_test_pass(model, inputs)[-1]
    with torch.no_grad():
        main_logits, main_deltas = heads.box_predictor[2](heads.box_head[2](last.box_features))
        prm_logits, _ = heads.prm_predictor[2](heads.prm_head[2](last.box_features))
    assert torch.allclose(last.predictions["scores"], (main_logits + prm_logits) / 2, atol=1e-6)
    assert torch.equal(last.predictions["proposal_deltas"], main_deltas)
    assert len(out) > 0


def test_branch_merge_policies():
    a = {"scores": torch.tensor([[1.0, 3.0]]), "proposal_deltas": torch.ones(1, 4)}
    b = {"scores": torch.tensor([[3.0, 1.0]]), "proposal_deltas": torch.zeros(1, 4)}
    mean = merge_branch_predictions({"a": a, "b": b}, box_branch="b")
    assert torch.equal(mean["scores"], torch.tensor([[2.0, 2.0]]))
    assert torch.equal(mean["proposal_deltas"], b["proposal_deltas"])
    top = merge_branch_predictions({"a": a, "b": b}, box_branch="a", how="max_logits")
    assert torch.equal(top["scores"], torch.tensor([[3.0, 3.0]]))
    with pytest.raises(KeyError, match="no branch named 'c'"):
        merge_branch_predictions({"a": a}, box_branch="c")


def test_parallel_modules_with_one_module_equal_the_core():
    cfg = cfg_of(CORE, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01)
    core = model_of(cfg)
    parallel = model_of(cfg_of(CORE, "MODEL.ROI_HEADS.NAME", "_ParallelHeadsForTest",
                               "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01))  # fmt: skip
    parallel.load_state_dict(core.state_dict(), strict=False)
    heads = parallel.roi_heads
    heads.prm_head.load_state_dict(heads.box_head.state_dict())
    heads.prm_predictor.load_state_dict(heads.box_predictor.state_dict())
    inputs = eval_inputs(cfg, 1)
    for model in (core, parallel):
        model.eval()
    with torch.no_grad():
        a = core.inference(inputs, do_postprocess=False)[0]
        b = parallel.inference(inputs, do_postprocess=False)[0]
    assert torch.allclose(a.scores, b.scores, atol=1e-6)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-5)


# ------------------------------------------ a branch on generated boxes, an extra output, rescoring


@STAGE_SAMPLER_REGISTRY.register()
class _JitterAroundGroundTruthForTest(StageSampler):
    """Generated training boxes: each ground-truth box shifted by 10% of its size right and
    down, labelled at the stage's threshold."""

    def __call__(self, heads, stage, proposals, targets):
        out = []
        for t in targets:
            b = t.gt_boxes.tensor.clone()
            wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)
            p = Instances(t.image_size, proposal_boxes=Boxes(b + 0.1 * wh))
            out.append(label_boxes(p, t, heads.proposal_matchers[stage], heads.num_classes))
        return out


class _PredictorWithIoU(nn.Module):
    """A predictor with a third, named output: a predicted IoU (R, 1) in [0, 1]."""

    def __init__(self, predictor):
        super().__init__()
        self.inner = predictor
        self.iou = nn.Linear(predictor.cls_score.in_features, 1)

    def forward(self, x):
        scores, deltas = self.inner(x.flatten(1))
        return {"scores": scores, "proposal_deltas": deltas, "iou": torch.sigmoid(self.iou(x))}

    def __getattr__(self, name):  # Detectron2's predictor API of the inner predictor
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@ROI_HEADS_REGISTRY.register()
class _IoUBranchHeadsForTest(BoxCascadeROIHeads):
    """IoU-Uniform-like: classification on the sampled proposals, regression and IoU on boxes
    generated around the ground truth; at test the class probability times the predicted IoU
    ranks the boxes in NMS."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.box_predictor = nn.ModuleList(_PredictorWithIoU(p) for p in self.box_predictor)
        self.jitter = _JitterAroundGroundTruthForTest()

    def stage_samples(self, stage, proposals, targets):
        samples = super().stage_samples(stage, proposals, targets)
        samples["generated"] = self.jitter(self, stage, proposals, targets)
        return samples

    def run_branches(self, record, features, samples):
        return {"generated": self.run_stage(record.stage, features, samples["generated"], {})}

    def stage_losses(self, record):
        w = self.plan.loss_weights[record.stage]
        predictor = self.stage_predictor(record.stage)
        cls = predictor.losses(d2_pair(record.predictions), record.proposals)["loss_cls"]
        gen = record.branches["generated"]
        reg = predictor.losses(d2_pair(gen.predictions), gen.proposals)["loss_box_reg"]
        iou_target = torch.cat(
            [pairwise_iou(p.proposal_boxes, p.gt_boxes).diagonal() for p in gen.proposals]
        )
        iou = F.smooth_l1_loss(gen.predictions["iou"][:, 0], iou_target, beta=0.5)
        return {"loss_cls": cls * w, "loss_box_reg": reg * w, "loss_iou": iou * w}

    def rescore(self, features, record, boxes, probs, score_thresh):
        ious = record.predictions["iou"].split(record.num_boxes)
        return [p * i for p, i in zip(probs, ious)]


IOU_BRANCH = ["MODEL.ROI_HEADS.NAME", "_IoUBranchHeadsForTest"]


def test_branch_on_generated_boxes_trains_apart_and_never_reaches_the_next_stage():
    cfg = cfg_of(CORE, *IOU_BRANCH)
    model = model_of(cfg)
    losses, records, targets, _, _ = roi_train_pass(model, train_batch(cfg))
    assert {"loss_iou_stage0", "loss_cls_stage2", "loss_box_reg_stage1"} <= set(losses)
    for k, record in enumerate(records):
        generated = {tuple(b) for p in record.branches["generated"].proposals
                     for b in p.proposal_boxes.tensor.tolist()}  # fmt: skip
        assert generated
        main = {tuple(b) for p in record.proposals for b in p.proposal_boxes.tensor.tolist()}
        assert not generated & main, "generated boxes in the classification samples"
        if k + 1 < len(records):  # the next stage: main boxes' regressions + ground truth
            nxt = records[k + 1]
            assert sum(nxt.num_boxes) <= sum(record.num_boxes) + sum(len(t) for t in targets)
    # the extra named output travels in the record
    assert records[0].predictions["iou"].shape == (sum(records[0].num_boxes), 1)


def test_rescoring_happens_before_nms_and_reaches_the_stagewise_ensemble():
    cfg = cfg_of(CORE, *IOU_BRANCH, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.001,
                 "MODEL.BOX_CASCADE.TEST_ENSEMBLE", "none")  # fmt: skip
    model = model_of(cfg)
    heads = model.roi_heads
    with torch.no_grad():
        for p in heads.box_predictor:
            p.iou.weight.normal_(0, 0.02)
    model.eval()
    inputs = eval_inputs(cfg, 1)
    with torch.no_grad():
        out = model.inference(inputs, do_postprocess=False)
    last = roi_test_pass(model, inputs)[-1]
    probs = F.softmax(last.predictions["scores"], dim=1) * last.predictions["iou"]
    boxes = heads.box_predictor[2].box2box_transform.apply_deltas(
        last.predictions["proposal_deltas"], last.proposals[0].proposal_boxes.tensor
    )
    want, _ = fast_rcnn_inference([boxes], [probs], [last.proposals[0].image_size], 0.001, 0.5, 100)
    got = out[0]
    assert len(got) > 0
    assert torch.allclose(got.scores, want[0].scores, atol=1e-6)
    assert torch.allclose(got.pred_boxes.tensor, want[0].pred_boxes.tensor, atol=1e-4)
    # NMS ranked by the product: without it the kept set differs
    plain, _ = fast_rcnn_inference(
        [boxes], [F.softmax(last.predictions["scores"], 1)], [last.proposals[0].image_size],
        0.001, 0.5, 100,
    )  # fmt: skip
    assert not torch.equal(plain[0].pred_boxes.tensor, got.pred_boxes.tensor)
    # the stage-wise outputs carry the rescored detections
    with torch.no_grad():
        staged = model(inputs)[0]["stage_instances"]
    assert torch.allclose(staged["ensemble"].scores, staged["stage3"].scores)


# ---------------------------------------------------------------- R-CNN gradient schedule


class _FakeTrainer:
    def __init__(self, model, max_iter):
        self.model, self.iter, self.max_iter = model, 0, max_iter
        self.storage = EventStorage(0)


def _grads(model, batch):
    model.zero_grad()
    losses, _ = losses_of(model, batch)
    sum(losses.values()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_schedule_scales_rcnn_gradients_only():
    opts = ["MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", False]
    cfg = cfg_of(CORE, *opts)
    model, reference = model_of(cfg), model_of(cfg)
    reference.load_state_dict(model.state_dict())
    hook = GradientScaleHook(lambda it, total: 7.0 - 6.0 * it / total, scalar_name="rga_lambda")
    hook.trainer = _FakeTrainer(model, max_iter=100)
    hook.before_train()
    batch = train_batch(cfg)
    want = _grads(reference, batch)
    for iteration, factor in ((0, 7.0), (50, 4.0), (100, 1.0)):
        hook.trainer.iter = iteration
        with hook.trainer.storage:
            hook.before_step()
        assert hook.trainer.storage.history("rga_lambda").latest() == factor
        got = _grads(model, batch)
        rcnn = set(model.roi_heads.rcnn_parameter_names())
        assert rcnn and all(n.startswith(("box_head.", "box_predictor.")) for n in rcnn)
        for name, g in got.items():
            short = name[len("roi_heads.") :]
            expected = want[name] * (factor if short in rcnn else 1.0)
            assert torch.allclose(g, expected, rtol=1e-4, atol=1e-7), (iteration, name)
    hook.after_train()
    assert torch.allclose(_grads(model, batch)["roi_heads.box_head.0.fc1.weight"],
                          want["roi_heads.box_head.0.fc1.weight"], rtol=1e-4)  # fmt: skip


def test_gradient_scale_comes_before_clipping_and_the_sgd_step():
    """Plain SGD: the R-CNN weights move by lr * lambda * g, the others by lr * g; with gradient
    clipping, the scaled gradient is what gets clipped."""
    from cascade_zoo.engine.optim import build_optimizer

    plain = ["SOLVER.MOMENTUM", 0.0, "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.BASE_LR", 0.01,
             "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", False]  # fmt: skip
    for clip in (False, True):
        cfg = cfg_of(CORE, *plain, "SOLVER.CLIP_GRADIENTS.ENABLED", clip,
                     "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value",
                     "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.001)  # fmt: skip
        model, reference = model_of(cfg), model_of(cfg)
        reference.load_state_dict(model.state_dict())
        batch = train_batch(cfg)
        g = _grads(reference, batch)
        scale = GradientScale(
            [dict(model.named_parameters())["roi_heads." + n]
             for n in model.roi_heads.rcnn_parameter_names()], value=3.0
        )  # fmt: skip
        optimizer = build_optimizer(cfg, model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        losses, _ = losses_of(model, batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        for name in ("roi_heads.box_predictor.1.bbox_pred.weight", "backbone.fpn_output3.weight"):
            step = model.state_dict()[name] - before[name]
            grad = g[name] * (3.0 if "box_predictor" in name else 1.0)
            if clip:
                grad = grad.clamp(-0.001, 0.001)
            assert torch.allclose(step, -0.01 * grad, atol=1e-8), (clip, name)
        scale.remove()


def _ddp_worker(rank, world, port, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    ddp = nn.parallel.DistributedDataParallel(model)
    GradientScale(model[1].parameters(), value=5.0)
    x = torch.full((2, 3), float(rank + 1))
    ddp(x).sum().backward()
    # plain lists: a tensor sent through the queue needs its sender alive until it is received
    queue.put((rank, [p.grad.tolist() for p in model.parameters()]))
    dist.destroy_process_group()


def test_gradient_scale_under_ddp_equals_the_scaled_mean_gradient():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: [torch.tensor(g) for g in grads]
               for rank, grads in (queue.get(timeout=300) for _ in procs)}  # fmt: skip
    for p in procs:
        p.join(timeout=60)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    grads = []
    for rank in range(2):
        model.zero_grad()
        model(torch.full((2, 3), float(rank + 1))).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    mean = [(a + b) / 2 for a, b in zip(*grads)]
    for rank in range(2):
        for i, (got, want) in enumerate(zip(results[rank], mean)):
            factor = 5.0 if i >= 2 else 1.0
            assert torch.allclose(got, want * factor, atol=1e-6), (rank, i)


# ---------------------------------------------------------------- shared modules, per-loop weights


def test_shared_head_gets_the_sum_of_every_loops_weighted_gradient():
    loops = ["MODEL.BOX_CASCADE.SHARED_HEAD", True,
             "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", str(((10.0, 10.0, 5.0, 5.0),) * 3),
             "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", False,
             "MODEL.BOX_CASCADE.LOSS_WEIGHTING", "explicit"]  # fmt: skip
    cfg = cfg_of(CORE, *loops, "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS", "[1.0, 0.75, 0.5]")
    weighted = model_of(cfg)
    unweighted = model_of(cfg_of(CORE, *loops, "MODEL.BOX_CASCADE.STAGE_LOSS_WEIGHTS",
                                 "[1.0, 1.0, 1.0]"))  # fmt: skip
    unweighted.load_state_dict(weighted.state_dict())
    batch = train_batch(cfg)
    shared = [p for n, p in unweighted.named_parameters() if n.startswith("roi_heads.box_head.0")]
    losses, _ = losses_of(unweighted, batch)
    per_loop = []
    for t in range(3):
        loop_loss = losses[f"loss_cls_stage{t}"] + losses[f"loss_box_reg_stage{t}"]
        per_loop.append(torch.autograd.grad(loop_loss, shared, retain_graph=True))
    want = [sum(w * g[i] for w, g in zip((1.0, 0.75, 0.5), per_loop)) for i in range(len(shared))]
    got = _grads(weighted, batch)
    names = [n for n, _ in unweighted.named_parameters() if n.startswith("roi_heads.box_head.0")]
    for name, w in zip(names, want):
        assert torch.allclose(got[name], w, rtol=1e-4, atol=1e-7), name


# ---------------------------------------------------------------- mask strategies


@MASK_STRATEGY_REGISTRY.register_as("second_stage_for_test")
class _SecondStageMaskForTest(MaskStrategy):
    """The second stage's positives train the one mask head."""

    def training_stages(self):
        return [1]


def test_a_registered_mask_strategy_is_picked_by_its_config_name():
    cfg = cfg_of(CORE_MASK, "MODEL.BOX_CASCADE.MASK_STRATEGY", "second_stage_for_test")
    model = model_of(cfg)
    heads = model.roi_heads
    assert isinstance(heads.mask_strategy, _SecondStageMaskForTest)
    _, records, _, _, features = roi_train_pass(model, train_batch(cfg))
    with EventStorage(0):
        losses = heads.mask_losses(features, [r.proposals for r in records])
        fg, _ = select_foreground_proposals(records[1].proposals, heads.num_classes)
        pooled = heads.mask_inputs(features, [p.proposal_boxes for p in fg])
        want = heads.mask_head(pooled, fg)["loss_mask"]  # Detectron2's head on stage 2's positives
    assert len(fg) and torch.equal(losses["loss_mask"], want)
    with pytest.raises(ValueError) as error:
        model_of(cfg_of(CORE_MASK, "MODEL.BOX_CASCADE.MASK_STRATEGY", "middle"))
    message = str(error.value)
    assert "MODEL.BOX_CASCADE.MASK_STRATEGY" in message and "'middle'" in message
    for name in ("first", "last", "every", "second_stage_for_test"):
        assert f"'{name}'" in message


class _OneMaskHeadOnEveryStage(EveryStageMask):
    """Every stage's positives train one mask head, times w_t (R3-CNN's loops do this)."""

    def build_head(self, cfg, head, input_shape):
        return head

    def stage_module(self):
        return None

    def losses(self, heads, features, stage_proposals):
        out = {}
        for t in self.training_stages():
            fg, _ = select_foreground_proposals(stage_proposals[t], heads.num_classes)
            pooled = heads.mask_inputs(features, [p.proposal_boxes for p in fg])
            loss = heads.mask_head(pooled, fg)["loss_mask"]
            out[f"loss_mask_stage{t}"] = loss * heads.plan.loss_weights[t]
        return out

    def inference(self, heads, features, instances):
        return MaskStrategy.inference(self, heads, features, instances)


@ROI_HEADS_REGISTRY.register()
class _SharedMaskHeadsForTest(BoxCascadeROIHeads):
    @classmethod
    def mask_strategy_from_config(cls, cfg):
        strategy = super().mask_strategy_from_config(cfg)
        if isinstance(strategy, EveryStageMask):
            return _OneMaskHeadOnEveryStage(strategy.num_stages)
        return strategy


def test_a_heads_class_gives_its_own_mask_strategy():
    cfg = cfg_of(CORE_MASK, "MODEL.ROI_HEADS.NAME", "_SharedMaskHeadsForTest",
                 "MODEL.BOX_CASCADE.MASK_STRATEGY", "every")  # fmt: skip
    model = model_of(cfg)
    heads = model.roi_heads
    assert not isinstance(heads.mask_head, nn.ModuleList)  # built by its strategy: one head
    rule = heads.head_gradient_multipliers()
    assert rule["mask_head.predictor.weight"] == 1.0 and rule["box_head.2.fc1.weight"] == 4.0
    losses, _ = losses_of(model, train_batch(cfg))
    assert {f"loss_mask_stage{t}" for t in range(3)} <= set(losses)
    out = detections_of(model, eval_inputs(cfg, 1))[0]["instances"]
    assert len(out) and len(out.pred_masks) == len(out)


# ---------------------------------------------------------------- extra evaluators


def test_registered_extra_evaluator_joins_every_evaluation(tmp_path):
    from cascade_zoo.engine import ZooTrainer
    from cascade_zoo.evaluation import EXTRA_EVALUATOR_REGISTRY

    calls = []

    def _extra_evaluator_for_test(cfg, dataset_name, output_folder):
        calls.append(dataset_name)
        return None

    EXTRA_EVALUATOR_REGISTRY.register(_extra_evaluator_for_test)
    try:
        cfg = cfg_of(CORE)
        ZooTrainer.build_evaluator(cfg, "shapes_tiny_val", str(tmp_path))
    finally:
        EXTRA_EVALUATOR_REGISTRY._obj_map.pop("_extra_evaluator_for_test")
    assert calls == ["shapes_tiny_val"]
