"""Reliability: a killed run resumes to the model an uninterrupted run trains, checkpoints are
written atomically and loaded safely, several processes train what one process trains."""

import errno
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, run_train_net
from torch import nn

from cascade_zoo.data.stream import ResumableBatchSampler, StreamOrder
from cascade_zoo.engine.checkpoint import (
    CheckpointSaveError,
    UnsafeCheckpointError,
    ZooCheckpointer,
)

CORE = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"
FASTER = ROOT / "configs" / "Baselines" / "faster_rcnn_instant_test.yaml"
# 10 iterations, a checkpoint every 2 and an evaluation every 4 (at checkpoint iterations, where
# an evaluation that moved the RNGs would make the resumed run differ), a loader worker.
RESUME_ARGS = [
    "SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2, "TEST.EVAL_PERIOD", 4,
    "DATALOADER.NUM_WORKERS", 1, "SEED", 7,
]  # fmt: skip


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _start(out, *extra):
    cmd = [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(CORE)]
    cmd += [*map(str, RESUME_ARGS), "OUTPUT_DIR", str(out), *map(str, extra)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc, condition, timeout=300):
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError("training ended before the kill")
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the moment to kill")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run_train_net("--config-file", CORE, *RESUME_ARGS, "OUTPUT_DIR", out)
    return out


def test_killed_at_a_random_iteration_resumes_to_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = _start(out)
    delay = random.Random().uniform(0.0, 2.0)  # a random iteration after the first checkpoint
    first = out / "model_0000001.pth"
    seen = []

    def after_first_checkpoint_and_delay():
        if not seen and first.exists():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    _kill_when(proc, after_first_checkpoint_and_delay)
    assert not (out / "model_final.pth").exists()
    proc = run_train_net("--resume", "--config-file", CORE, *RESUME_ARGS, "OUTPUT_DIR", out)
    assert "Starting training from iteration" in proc.stdout
    _assert_same_weights(uninterrupted / "model_final.pth", out / "model_final.pth")


def test_killed_while_saving_a_checkpoint_resumes_to_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "killed_saving"
    proc = _start(out)
    partial = out / "model_0000005.partial.pth"
    _kill_when(proc, partial.exists)
    # last_checkpoint names a complete checkpoint, never the partial file
    named = (out / "last_checkpoint").read_text().strip()
    assert named == "model_0000003.pth"
    torch.load(out / named, map_location="cpu", weights_only=True)
    run_train_net("--resume", "--config-file", CORE, *RESUME_ARGS, "OUTPUT_DIR", out)
    _assert_same_weights(uninterrupted / "model_final.pth", out / "model_final.pth")


# ----------------------------------------------------------------- checkpoint files


class _Net(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.cls = nn.Linear(8, classes)


def _saved(tmp_path, iterations=(1, 3)):
    ck = ZooCheckpointer(_Net(), str(tmp_path))
    for it in iterations:
        with torch.no_grad():
            ck.model.body.weight.fill_(float(it))
        ck.save(f"model_{it:07d}", iteration=it)
    return ck


def test_truncated_last_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog):
    _saved(tmp_path)
    last = tmp_path / "model_0000003.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    model = _Net()
    loaded = ZooCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 1
    assert torch.all(model.body.weight == 1.0)
    assert f"'{last}' is corrupt or truncated" in caplog.text


def test_no_readable_checkpoint_starts_over_from_the_weights(tmp_path, caplog):
    _saved(tmp_path)
    for name in ("model_0000001.pth", "model_0000003.pth"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    ck = ZooCheckpointer(_Net(), str(tmp_path))
    ck.resume_or_load("", resume=True)
    assert ck.resumed_from is None  # ZooTrainer then starts at iteration 0
    assert "No readable checkpoint" in caplog.text
    good = _saved(tmp_path / "good")
    good.resume_or_load("", resume=True)
    assert good.resumed_from == str(tmp_path / "good" / "model_0000003.pth")


def test_a_failed_save_leaves_the_previous_checkpoint_named(tmp_path, monkeypatch):
    ck = _saved(tmp_path, iterations=(1,))

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError, match="No space left on device.*model_0000001.pth"):
        ck.save("model_0000003")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


class _Killed(BaseException):
    """A kill: not an OSError, so no clean-up of the save runs, and nothing after it."""


def test_last_checkpoint_moves_only_after_the_new_file_is_in_place(tmp_path, monkeypatch):
    """The moment between writing the new file and renaming it into place: last_checkpoint must
    still name the previous checkpoint (the partial file is whole by then, so a resume that
    followed a last_checkpoint naming it would take a checkpoint that was never committed)."""
    _saved(tmp_path, iterations=(1,))
    ck = ZooCheckpointer(_Net(), str(tmp_path))
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        named = (tmp_path / "last_checkpoint").read_text()
        renames.append((os.path.basename(src), os.path.basename(dst), named))
        if os.path.basename(src) == "model_0000003.partial.pth":
            raise _Killed  # killed right before the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        ck.save("model_0000003", iteration=3)
    # the only rename so far is the kill's: last_checkpoint was not rewritten before it
    assert renames == [("model_0000003.partial.pth", "model_0000003.pth", "model_0000001.pth")]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert torch.load(tmp_path / "model_0000003.partial.pth", weights_only=True)["iteration"] == 3
    monkeypatch.setattr(os, "replace", real_replace)
    model = _Net()
    resumed = ZooCheckpointer(model, str(tmp_path))
    assert resumed.resume_or_load("", resume=True)["iteration"] == 1
    assert resumed.resumed_from == str(tmp_path / "model_0000001.pth")
    assert torch.all(model.body.weight == 1.0)

    # uninterrupted: the file is renamed into place, then last_checkpoint (written aside and
    # renamed) names it
    renames.clear()
    monkeypatch.setattr(os, "replace", replace)
    ck.save("model_0000005", iteration=5)
    assert renames == [
        ("model_0000005.partial.pth", "model_0000005.pth", "model_0000001.pth"),
        ("last_checkpoint.partial", "last_checkpoint", "model_0000001.pth"),
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_checkpoints_with_code_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Net().state_dict(), "extra": _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="ALLOW_UNSAFE_PICKLE"):
        ZooCheckpointer(_Net()).load(str(path))
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"model": {}, "__author__": "x", "extra": _Payload()}))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        ZooCheckpointer(_Net()).load(str(pkl))
    # a Detectron2 model-zoo style pickle of numpy arrays loads
    net = _Net()
    arrays = {k: v.numpy() + 1 for k, v in net.state_dict().items()}
    good = tmp_path / "zoo.pkl"
    good.write_bytes(pickle.dumps({"model": arrays, "__author__": "test"}))
    ZooCheckpointer(net).load(str(good))
    assert np.allclose(net.body.weight.detach().numpy(), arrays["body.weight"])


def test_strict_loading_names_mismatched_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": _Net(classes=5).state_dict()}, path)
    with pytest.raises(
        ValueError, match=r"STRICT.*cls.weight: checkpoint \(5, 8\) vs model \(3, 8\)"
    ):
        ZooCheckpointer(_Net(), strict=True).load(str(path))
    net = _Net()
    ZooCheckpointer(net).load(str(path))  # default: loads what matches
    assert torch.equal(net.body.weight, torch.load(path, weights_only=True)["model"]["body.weight"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ZooCheckpointer(net).load(str(tmp_path / "missing.pth"))


# ----------------------------------------------------------------- the data stream


def test_processes_together_take_one_processs_batches_and_resume_skips_exactly():
    order = StreamOrder(13, seed=5)
    landscape = [i % 3 == 0 for i in range(13)]
    one = ResumableBatchSampler(order, landscape, 4)
    batches = [b for b, _ in zip(one, range(12))]
    # grouping: every batch holds one orientation only
    for b in batches:
        assert len({landscape[order.index(p)] for p in b}) == 1
    # every position of the stream is used once, in order of completion of its group
    used = sorted(p for b in batches for p in b)
    assert len(used) == len(set(used))
    for world in (2, 4):
        shards = [
            ResumableBatchSampler(order, landscape, 4, rank=r, world_size=world)
            for r in range(world)
        ]
        per_rank = [[b for b, _ in zip(s, range(12))] for s in shards]
        for i, b in enumerate(batches):
            assert sorted(p for r in range(world) for p in per_rank[r][i]) == sorted(b)
    resumed = ResumableBatchSampler(order, landscape, 4, start_iter=5)
    assert [b for b, _ in zip(resumed, range(7))] == batches[5:]
    # each epoch is a permutation of the records, different from the last
    first, second = [order.index(p) for p in range(13)], [order.index(p) for p in range(13, 26)]
    assert sorted(first) == sorted(second) == list(range(13)) and first != second


# ----------------------------------------------------------------- 2 processes = 1 process

# Sampling that takes every anchor and every proposal (so random subsampling plays no part) and
# no ground truth added to the proposals (so every image gives the same number of ROIs, and the
# per-process loss means average to the one-process mean), GroupNorm (per image, so the split of
# the batch over processes does not change it) and 160 x 160 crops (every batch is padded to the
# same size, which GroupNorm and the anchors on the padding see). See docs/reliability.md.
EQUAL_ARGS = [
    "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 1,
    "MODEL.RESNETS.NORM", "GN", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 100000,
    "MODEL.RPN.POSITIVE_FRACTION", 1.0, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 1024,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0, "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", False,
    "INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(160, 160)",
    "INPUT.MIN_SIZE_TRAIN", "(160,)", "DATASETS.TEST", "()", "SEED", 11,
]  # fmt: skip


@pytest.mark.parametrize("config", [FASTER, CORE], ids=["faster", "core_cascade"])
def test_two_processes_train_what_one_process_trains(config, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*EQUAL_ARGS] + (["MODEL.BOX_CASCADE.LATER_STAGE_GT", "keep"] if config == CORE else [])
    run_train_net("--config-file", config, *args, "OUTPUT_DIR", one)
    run_train_net("--num-gpus", 2, "--config-file", config, *args, "OUTPUT_DIR", two)
    first, final = _weights(one / "model_0000000.pth"), _weights(one / "model_final.pth")
    final_two = _weights(two / "model_final.pth")
    moved = max((final[k].float() - first[k].float()).abs().max().item() for k in final)
    diff = max((final[k].float() - final_two[k].float()).abs().max().item() for k in final)
    print(
        f"{config.name}: training moved weights by up to {moved:.3g}, 1 vs 2 processes {diff:.3g}"
    )
    # the summation order differs (per-process means, then the all-reduce): float32 rounding only
    assert moved > 1e-3
    # measured: 7.9e-7 against 1.4e-2 (Faster R-CNN), 2.1e-5 against 1.6e-2 (Cascade R-CNN);
    # batches that differed only in their padding gave 3e-4 against 1.2e-2
    assert diff <= 5e-3 * moved, (diff, moved)


def test_soak_summary_finds_growth_after_warm_up():
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak", ROOT / "tools" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    t = np.arange(0, 600, 5.0)
    warm = np.minimum(t, 60) * 10 + 1  # grows to 601 MB in the first minute, then flat
    # every 10th sample an evaluation worker runs: a second process, 900 MB more
    procs = [2 if i % 10 == 9 else 1 for i in range(len(t))]
    spike = [900.0 if p == 2 else 0.0 for p in procs]
    flat = soak.summarize(
        [(x, 0, m, 400 + m + e, p) for x, m, e, p in zip(t, warm, spike, procs)], 0.2
    )
    assert flat["warmup_mb"] == 1001 and abs(flat["growth_mb"]) < 1e-9
    assert abs(flat["slope_mb_per_hour"]) < 1e-6 and flat["peak_mb"] == 1901
    leak = soak.summarize(
        [(x, 0, m, 400 + m + 0.1 * x + e, p) for x, m, e, p in zip(t, warm, spike, procs)], 0.2
    )
    assert abs(leak["slope_mb_per_hour"] - 360.0) < 1e-6  # 0.1 MB/s
    assert leak["growth_mb"] > 30
