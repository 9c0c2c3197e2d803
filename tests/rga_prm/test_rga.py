"""RGA (Sec. 3.1, Eq. 1): lambda(t), and training steps through ZooTrainer with momentum, weight
decay and gradient clipping (per tensor, as the shapes recipe clips, or of the whole model)
against SGD written out here: the R-CNN module's gradients times lambda(t) (and the cascade's
head rule), then clipped, then weight decay and momentum."""

import json
import math
import re

import pytest
import torch
from conftest import ROOT, run_train_net
from detectron2.engine import HookBase
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import EventStorage
from torch import nn

from cascade_zoo import setup_cfg
from cascade_zoo.engine import ZooTrainer
from rga_prm import rga_lambda, rga_parameter_names, rga_schedule

FASTER = ROOT / "configs" / "RGA_PRM" / "faster_rcnn_rga_prm_instant_test.yaml"
CASCADE = ROOT / "configs" / "RGA_PRM" / "cascade_rcnn_rga_prm_instant_test.yaml"


def test_lambda_is_the_papers_linear_annealing():
    T = 90000
    # a literal re-statement of Eq. 1: lambda = lambda0 - (lambda0 - 1) t / T
    for lambda0 in (3.0, 5.0, 7.0, 9.0):
        for t in (0, 1, 12345, T // 2, T - 1, T):
            assert rga_lambda(t, T, lambda0) == pytest.approx(lambda0 - (lambda0 - 1) * t / T)
    assert rga_lambda(0, T, 7.0) == 7.0 and rga_lambda(T, T, 7.0) == 1.0
    assert rga_lambda(T // 2, T, 7.0) == 4.0
    assert all(rga_lambda(t, T, 7.0, anneal=False) == 7.0 for t in (0, T // 2, T))
    with pytest.raises(ValueError, match="MODEL.RGA.LAMBDA0 must be >= 1"):
        rga_schedule(0.5)


LAMBDA0, STEPS, LR, WD, MOMENTUM = 5.0, 3, 0.01, 0.01, 0.9

# SGD with momentum and weight decay (none on biases and normalisation layers), gradient
# clipping on, a constant learning rate, RGA from lambda0 = 5 annealed over the 3 steps, the data
# stream's seed fixed.
SGD = [
    "SOLVER.BASE_LR", LR, "SOLVER.MOMENTUM", MOMENTUM, "SOLVER.NESTEROV", False,
    "SOLVER.WEIGHT_DECAY", WD, "SOLVER.WEIGHT_DECAY_BIAS", 0.0, "SOLVER.WEIGHT_DECAY_NORM", 0.0,
    "SOLVER.BIAS_LR_FACTOR", 1.0, "SOLVER.WARMUP_ITERS", 0, "SOLVER.STEPS", "()",
    "SOLVER.MAX_ITER", STEPS, "SOLVER.CHECKPOINT_PERIOD", 1000,
    "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.NORM_TYPE", 2.0,
    "MODEL.RGA.ENABLED", True, "MODEL.RGA.LAMBDA0", LAMBDA0, "MODEL.RGA.ANNEAL", True,
    "DATASETS.TEST", "()", "SEED", 3,
]  # fmt: skip
# Sampling that takes every anchor and every proposal, so that the losses do not depend on
# random subsampling and can be recomputed.
ALL_BOXES = [
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 100000, "MODEL.RPN.POSITIVE_FRACTION", 1.0,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 1024,
    "MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS", "[1.0, 1.0]",
]  # fmt: skip
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def _lambda(t):
    """lambda(t) of Eq. 1, written out: lambda0 - (lambda0 - 1) t / T."""
    return LAMBDA0 - (LAMBDA0 - 1.0) * t / STEPS


def _clip(grads, clip_type, value):
    """Gradient clipping written out: "norm" scales each tensor by min(1, value / ||g||)
    (Detectron2's), "full_model" every tensor by min(1, value / ||all gradients||); the norms
    with torch's 1e-6."""
    if clip_type == "norm":
        return {n: g * min(1.0, value / (g.norm().item() + 1e-6)) for n, g in grads.items()}
    assert clip_type == "full_model"
    total = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads.values()))
    return {n: g * min(1.0, value / (total + 1e-6)) for n, g in grads.items()}


def _sgd(weights, grads, buffers, hyper, momentum):
    """torch's SGD step (dampening 0, no Nesterov) written out, in place: d = g + wd w;
    b = d at a parameter's first step, else momentum b + d; w = w - lr b, with each parameter's
    (lr, wd) from ``hyper``."""
    for n, g in grads.items():
        lr, wd = hyper[n]
        d = g + wd * weights[n]
        buffers[n] = d if n not in buffers else momentum * buffers[n] + d
        weights[n] = weights[n] - lr * buffers[n]


def _hyperparameters(cfg, model):
    """Each parameter's (lr, weight decay) as the config's SOLVER keys say, written out: a
    normalisation layer's parameters decay at WEIGHT_DECAY_NORM; a bias learns at BASE_LR x
    BIAS_LR_FACTOR and decays at WEIGHT_DECAY_BIAS when that is set; the rest at BASE_LR and
    WEIGHT_DECAY."""
    solver = cfg.SOLVER
    hyper = {}
    for m, module in model.named_modules():
        for n, _ in module.named_parameters(recurse=False):
            lr, wd = solver.BASE_LR, solver.WEIGHT_DECAY
            if isinstance(module, NORM_LAYERS) and solver.WEIGHT_DECAY_NORM is not None:
                wd = solver.WEIGHT_DECAY_NORM
            if n == "bias":
                lr = solver.BASE_LR * solver.BIAS_LR_FACTOR
                if solver.WEIGHT_DECAY_BIAS is not None:
                    wd = solver.WEIGHT_DECAY_BIAS
            hyper[f"{m}.{n}" if m else n] = (lr, wd)
    return hyper


class _Snapshots(HookBase):
    """The model's weights after every step."""

    def __init__(self):
        self.weights = []

    def after_step(self):
        model = self.trainer.model
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})


def _train_and_replay(cfg, raw_gradients, factor):
    """STEPS steps of ZooTrainer (its optimizer, its RGA hook), recording the weights after each,
    and each step written out from the trainer's weights before it: ``raw_gradients(weights,
    batch)`` (the loss's gradients at those weights, by name), each times ``factor(name, t)``,
    clipped, then SGD with the momentum carried over from the written-out steps before. (The
    gradients are taken at the trainer's own weights: elsewhere the RPN's proposals, and so the
    losses, could change.) Asserts the trainer's weights after each step are the written-out
    ones; returns (the model, step 1's raw gradients)."""
    trainer = ZooTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    snapshots = _Snapshots()
    trainer.register_hooks([snapshots])
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    hyper = _hyperparameters(cfg, model)
    assert not cfg.SOLVER.NESTEROV and cfg.SOLVER.WARMUP_ITERS == 0 and not cfg.SOLVER.STEPS
    clip = cfg.SOLVER.CLIP_GRADIENTS
    trainer.train()
    assert len(snapshots.weights) == STEPS
    logged = [v for v, _ in trainer.storage.history("rga_lambda").values()]
    assert logged == pytest.approx([_lambda(t) for t in range(STEPS)])  # 5, 11/3, 7/3

    batches = iter(ZooTrainer.build_train_loader(cfg))  # the trainer's stream
    buffers = {}
    for t in range(STEPS):
        before = initial if t == 0 else {n: snapshots.weights[t - 1][n] for n in initial}
        raw = raw_gradients(before, next(batches))
        if t == 0:
            first = raw
        scaled = {n: g * factor(n, t) for n, g in raw.items()}
        weights = dict(before)
        clipped = _clip(scaled, clip.CLIP_TYPE, clip.CLIP_VALUE)
        _sgd(weights, clipped, buffers, hyper, cfg.SOLVER.MOMENTUM)
        for n, want in weights.items():
            got = snapshots.weights[t][n]
            # float32 rounding: of the step's sums, and of the weights themselves
            step = (want - before[n]).abs().max().item()
            atol = 1e-3 * step + 4 * torch.finfo(torch.float32).eps * want.abs().max().item()
            assert torch.allclose(got, want, rtol=0, atol=atol), (
                f"step {t + 1}: {n} differs by {(got - want).abs().max().item():.3g} "
                f"(step {step:.3g})"
            )
    return model, first


# ------------------------------------------------------------------ a model differentiated by hand


class _RGATinyDetector(nn.Module):
    """A "detector" whose loss the test writes out: a backbone, a box head and a box predictor
    (named as Detectron2's StandardROIHeads names them, which RGA takes as the R-CNN module) on
    each image's mean colour, fitted to (number of objects / 20, 0.5) by squared error."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = nn.Linear(4, 4)
        self.roi_heads.box_predictor = nn.Linear(4, 2)

    def forward(self, batched_inputs):
        x, y = _tiny_inputs(batched_inputs)
        heads = self.roi_heads
        out = heads.box_predictor(torch.tanh(heads.box_head(torch.tanh(self.backbone(x)))))
        return {"loss_fit": ((out - y) ** 2).mean()}


if "_RGATinyDetector" not in META_ARCH_REGISTRY:
    META_ARCH_REGISTRY.register(_RGATinyDetector)


def _tiny_inputs(batch):
    """(N, 3) mean colours in [0, 1] and (N, 2) targets of a batch of training images."""
    x = torch.stack([b["image"].float().mean(dim=(1, 2)) / 255.0 for b in batch])
    y = torch.tensor([[len(b["instances"]) / 20.0, 0.5] for b in batch])
    return x, y


def _tiny_loss_gradients(weights, batch):
    """The tiny detector's loss written out on plain tensors, differentiated."""
    w = {n: v.detach().clone().requires_grad_(True) for n, v in weights.items()}
    x, y = _tiny_inputs(batch)
    h = torch.tanh(x @ w["backbone.weight"].T + w["backbone.bias"])
    h = torch.tanh(h @ w["roi_heads.box_head.weight"].T + w["roi_heads.box_head.bias"])
    out = h @ w["roi_heads.box_predictor.weight"].T + w["roi_heads.box_predictor.bias"]
    loss = ((out - y) ** 2).mean()
    return dict(zip(w, torch.autograd.grad(loss, list(w.values()))))


@pytest.mark.parametrize("clip_type,clip_value", [("norm", 2.0), ("full_model", 2.0)])
def test_rga_lambda_reaches_the_sgd_update_of_a_model_differentiated_by_hand(
    clip_type, clip_value, tmp_path
):
    """Three ZooTrainer steps of a tiny model with momentum 0.9, weight decay and clipping: the
    weights are those of SGD written out with the loss's own gradients, lambda(t) = 5, 11/3, 7/3
    on the box head's and predictor's before clipping, 1 on the backbone's."""
    opts = [*SGD, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type,
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", clip_value,
            "MODEL.META_ARCHITECTURE", "_RGATinyDetector", "OUTPUT_DIR", tmp_path]  # fmt: skip
    cfg = setup_cfg(str(FASTER), [str(o) for o in opts])
    rcnn = {"roi_heads.box_head.weight", "roi_heads.box_head.bias",
            "roi_heads.box_predictor.weight", "roi_heads.box_predictor.bias"}  # fmt: skip

    def factor(name, t):
        return _lambda(t) if name in rcnn else 1.0

    torch.manual_seed(0)
    model, raw = _train_and_replay(cfg, _tiny_loss_gradients, factor)
    assert set(rga_parameter_names(model)) == rcnn
    _check_lambda_is_visible(raw, rcnn, (clip_type, clip_value))


def _check_lambda_is_visible(raw, rcnn, clip):
    """The first step's gradient update with lambda = 1, or with lambda applied after clipping,
    differs from the one with lambda(0) before clipping: the tests could not pass without lambda
    where it belongs. With per-tensor clipping, some R-CNN tensor is under the limit (lambda
    shows in full) and some tensor is clipped; with whole-model clipping, the model is clipped
    (lambda then shows in the other tensors' share of the clipped norm)."""
    clip_type, value = clip

    def lam(n):
        return LAMBDA0 if n in rcnn else 1.0

    def update(before, after):  # -lr x the clipped gradients, ``before`` / ``after`` clipping
        clipped = _clip({n: g * before(n) for n, g in raw.items()}, clip_type, value)
        return {n: -LR * g * after(n) for n, g in clipped.items()}

    def gap(a, b, names):
        return max((a[n] - b[n]).abs().max().item() / a[n].abs().max().item() for n in names)

    right = update(lam, lambda n: 1.0)
    assert gap(right, update(lambda n: 1.0, lambda n: 1.0), set(raw)) > 0.5
    assert gap(right, update(lambda n: 1.0, lam), set(raw)) > 0.1
    scaled = {n: (g * lam(n)).norm().item() for n, g in raw.items()}
    if clip_type == "norm":
        assert any(scaled[n] < value for n in rcnn & set(raw)), scaled
        assert any(v > value for v in scaled.values()), scaled
    else:
        assert math.sqrt(sum(v**2 for v in scaled.values())) > value, scaled


# ------------------------------------------------------------------ the detectors of the paper


def _rule(name):
    """The cascade's head rule written out: stage t's heads and predictors (also the parallel
    modules') at 1 / w_t = 2^t (the "decay" weights); 1 elsewhere and on a one-stage model."""
    m = re.match(r"roi_heads\.(?:parallel_)?box_(?:head|predictor)\.(?:\d+\.)?(\d+)\.", name)
    return 2.0 ** int(m.group(1)) if m else 1.0


def _replay_detector(cfg, plain_cfg):
    """:func:`_train_and_replay` of a detector, the losses' gradients taken from a second model
    built from ``plain_cfg`` (without RGA and the head rule) at the trainer's weights, scaled by
    lambda(t) on the R-CNN module (every box head and predictor, of every stage and parallel
    module) and by the head rule. Returns (the model, step 1's raw gradients, the R-CNN
    parameter names)."""
    plain = ZooTrainer.build_model(plain_cfg)
    plain.train()
    params = dict(plain.named_parameters())

    def raw_gradients(weights, batch):
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
        plain.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        with EventStorage(0):
            sum(plain(batch).values()).backward()
        return {n: p.grad.clone() for n, p in params.items() if p.grad is not None}

    rcnn = {n for n in params if re.match(r"roi_heads\.(parallel_)?box_(head|predictor)\.", n)}

    def factor(name, t):
        return (_lambda(t) if name in rcnn else 1.0) * _rule(name)

    torch.manual_seed(0)
    model, raw = _train_and_replay(cfg, raw_gradients, factor)
    return model, raw, rcnn


@pytest.mark.parametrize(
    "config,clip_type,clip_value",
    [(FASTER, "norm", 2.0), (CASCADE, "full_model", 2.0)],
    ids=["faster_prm_norm", "cascade_prm_full_model"],
)
def test_rga_lambda_reaches_the_sgd_update_of_the_detectors(
    config, clip_type, clip_value, tmp_path
):
    """Three ZooTrainer steps of Faster R-CNN + PRM and Cascade R-CNN + PRM with momentum 0.9,
    weight decay and clipping, against SGD written out from the losses' gradients (taken from a
    second model, built without RGA and without the head rule, at the trainer's weights): every
    box head's and predictor's gradient (every stage, every parallel module) times lambda(t) and,
    on the cascade, times 1/w_t, before clipping; every other gradient as it is."""
    opts = [*SGD, *ALL_BOXES, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type,
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", clip_value, "OUTPUT_DIR", tmp_path]  # fmt: skip
    cfg = setup_cfg(str(config), [str(o) for o in opts])
    plain_cfg = setup_cfg(str(config), [str(o) for o in opts] + [
        "MODEL.RGA.ENABLED", "False",
        "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", "False"])  # fmt: skip
    model, raw, rcnn = _replay_detector(cfg, plain_cfg)
    assert set(rga_parameter_names(model)) == rcnn
    assert any(n.startswith("roi_heads.parallel_box_predictor.") for n in rcnn)
    assert (config == CASCADE) == any(_rule(n) != 1.0 for n in rcnn)
    rule_raw = {n: g * _rule(n) for n, g in raw.items()}
    _check_lambda_is_visible(rule_raw, rcnn, (clip_type, clip_value))


def test_lambda_is_logged_by_train_net(tmp_path):
    run_train_net("--config-file", FASTER, "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path,
                  "SEED", 0)  # fmt: skip
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    last = rows[-1]
    # 4 iterations, lambda0 7: the last step (t = 3) uses 7 - 6 * 3 / 4
    assert last["iteration"] == 3 and last["rga_lambda"] == pytest.approx(2.5)
    assert "loss_cls_module1_stage0" in last


def test_rga_off_adds_no_hook():
    cfg = setup_cfg(str(FASTER), ["MODEL.RGA.ENABLED", "False"])
    from rga_prm import build_rga_hooks

    assert build_rga_hooks(cfg) == []
    cfg = setup_cfg(str(FASTER), ["MODEL.RGA.LAMBDA0", "0.9"])
    with pytest.raises(ValueError, match="MODEL.RGA.LAMBDA0"):
        build_rga_hooks(cfg)


PROTOCOL = ROOT / "configs" / "Protocols" / "shapes_v4.yaml"


def test_rga_lambda_reaches_the_sgd_update_under_the_benchmark_protocol(tmp_path):
    """Cascade R-CNN + RGA + PRM under the benchmark protocol's own optimizer (its learning rate,
    momentum, weight decay and gradient clipping, read from configs/Protocols/shapes_v4.yaml, with
    its frozen batch norm and frozen stem): three steps against SGD written out. Only the schedule
    (warm-up, drops, length), the sampling and the start are the test's."""
    protocol = setup_cfg([str(CASCADE), str(PROTOCOL)], ["MODEL.WEIGHTS", ""])
    assert protocol.SOLVER.CLIP_GRADIENTS.ENABLED
    assert protocol.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"  # no per-tensor clipping
    assert protocol.SOLVER.MOMENTUM > 0 and protocol.SOLVER.WEIGHT_DECAY > 0
    schedule = ["SOLVER.WARMUP_ITERS", 0, "SOLVER.STEPS", "()", "SOLVER.MAX_ITER", STEPS,
                "SOLVER.CHECKPOINT_PERIOD", 1000, "MODEL.WEIGHTS", "",
                "MODEL.RGA.ENABLED", True, "MODEL.RGA.LAMBDA0", LAMBDA0, "MODEL.RGA.ANNEAL", True,
                "DATASETS.TEST", "()", "SEED", 3, *ALL_BOXES, "OUTPUT_DIR", tmp_path]  # fmt: skip
    files = [str(CASCADE), str(PROTOCOL)]
    cfg = setup_cfg(files, [str(o) for o in schedule])
    plain_cfg = setup_cfg(files, [str(o) for o in schedule] + [
        "MODEL.RGA.ENABLED", "False",
        "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE", "False"])  # fmt: skip
    assert cfg.SOLVER.BASE_LR == protocol.SOLVER.BASE_LR
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == protocol.SOLVER.CLIP_GRADIENTS.CLIP_VALUE
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    model, raw, rcnn = _replay_detector(cfg, plain_cfg)
    assert set(rga_parameter_names(model)) == rcnn
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".stem." in n)
    # lambda changes the first update: without it the update would be another one
    clip = (cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE)
    rule_raw = {n: g * _rule(n) for n, g in raw.items()}
    with_lambda = _clip(
        {n: g * (LAMBDA0 if n in rcnn else 1.0) for n, g in rule_raw.items()}, *clip
    )
    without = _clip(rule_raw, *clip)
    assert max((with_lambda[n] - without[n]).abs().max().item() for n in rcnn & set(raw)) > 0
