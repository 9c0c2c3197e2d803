"""RGA: lambda(t) of Eq. 1, and one plain SGD step that moves the R-CNN module's weights by
lr * lambda * g and every other weight by lr * g."""

import copy
import json

import pytest
import torch
from conftest import ROOT, run_train_net
from detectron2.utils.events import EventStorage

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


# Plain SGD, no clipping, no warm-up, and sampling that takes every anchor and proposal (so the
# step's losses do not depend on random subsampling and can be recomputed).
PLAIN_SGD = [
    "SOLVER.MOMENTUM", 0.0, "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.WEIGHT_DECAY_BIAS", 0.0,
    "SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.CLIP_GRADIENTS.ENABLED", False,
    "SOLVER.WARMUP_ITERS", 0, "SOLVER.BASE_LR", 0.01, "SOLVER.MAX_ITER", 1,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 100000, "MODEL.RPN.POSITIVE_FRACTION", 1.0,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 1024, "DATASETS.TEST", "()", "SEED", 3,
]  # fmt: skip


@pytest.mark.parametrize("config", [FASTER, CASCADE], ids=["faster_prm", "cascade_prm"])
def test_one_sgd_step_scales_only_the_rcnn_gradients(config, tmp_path):
    # positive fraction 1.0 for every module: each takes every proposal, in any order
    opts = [*PLAIN_SGD, "MODEL.BOX_CASCADE.PARALLEL.POSITIVE_FRACTIONS", "[1.0, 1.0]",
            "MODEL.RGA.LAMBDA0", 5.0, "OUTPUT_DIR", tmp_path]  # fmt: skip
    cfg = setup_cfg(str(config), [str(o) for o in opts])
    trainer = ZooTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    reference = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = next(iter(ZooTrainer.build_train_loader(cfg)))  # the stream's first batch
    reference.train()
    with EventStorage(0):
        sum(reference(batch).values()).backward()
    grads = {n: p.grad for n, p in reference.named_parameters()}
    rcnn = set(rga_parameter_names(model))
    assert rcnn and all(n.startswith("roi_heads.") for n in rcnn)
    assert any(n.startswith("roi_heads.parallel_box_predictor.") for n in rcnn)
    assert not any(n.startswith(("backbone.", "proposal_generator.")) for n in rcnn)

    # the cascade's head rule (1/w_t on stage t's head, a gradient hook installed when the model
    # is built, which the deep copy does not carry) multiplies with lambda
    rule = {f"roi_heads.{n}": f for n, f in model.roi_heads.head_gradient_multipliers().items()}
    assert (config == CASCADE) == any(f != 1.0 for f in rule.values())
    trainer.train()  # one step, lambda(0) = lambda0 = 5
    checked = {"rcnn": 0, "other": 0}
    for name, p in model.named_parameters():
        if grads[name] is None:
            continue
        factor = (5.0 if name in rcnn else 1.0) * rule.get(name, 1.0)
        want = before[name] - 0.01 * factor * grads[name]
        scale = (0.01 * factor * grads[name]).abs().max().item()
        assert torch.allclose(p.detach(), want, atol=1e-4 * scale + 1e-9), name
        checked["rcnn" if name in rcnn else "other"] += 1
    assert checked["rcnn"] > 0 and checked["other"] > 0
    assert trainer.storage.history("rga_lambda").latest() == 5.0


def test_lambda_is_logged_by_train_net(tmp_path):
    run_train_net("--config-file", FASTER, "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path)
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
