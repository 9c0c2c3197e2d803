"""Shared test set-up: a dataset cache inside the clone, and helpers to run train_net.py."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Before cascade_zoo is imported: the shapes splits are registered under this root.
os.environ.setdefault("DETECTRON2_DATASETS", str(ROOT / ".cache" / "test-datasets"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

INSTANT = ROOT / "configs" / "Baselines"


def trainer_model_losses(cfg, batch):
    """A model built by ZooTrainer from seed 0 and its training losses on ``batch``, with the
    same random ROI sampling for every model so built: (model, {name: loss})."""
    import torch
    from detectron2.utils.events import EventStorage

    from cascade_zoo.engine import ZooTrainer

    torch.manual_seed(0)
    model = ZooTrainer.build_model(cfg)
    model.train()
    torch.manual_seed(1)
    with EventStorage(0):
        losses = model(batch)
    return model, losses


def run_train_net(*args, cwd=None, check=True, timeout=900, prefix=()):
    """Run train_net.py in a new process; returns the CompletedProcess (stdout+stderr merged)."""
    cmd = [*prefix] if prefix else [sys.executable]
    cmd += [str(ROOT / "train_net.py"), *map(str, args)]
    proc = subprocess.run(
        cmd,
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def run_tool(name, *args, check=True, timeout=600):
    """Run tools/<name> in a new process; returns the CompletedProcess (stdout+stderr merged)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def load_checkpoint_warnings(model, path):
    """Load ``path`` into ``model`` through the public ``DetectionCheckpointer.load`` and return
    the warnings it logs (missing keys, unexpected keys, shape mismatches): [] for a clean load."""
    from detectron2.checkpoint import DetectionCheckpointer

    assert os.path.isfile(path), path  # load() only logs, and loads nothing, for a missing file
    checkpointer = DetectionCheckpointer(model)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    checkpointer.logger.addHandler(handler)
    try:
        checkpointer.load(str(path))
    finally:
        checkpointer.logger.removeHandler(handler)
    return [record.getMessage() for record in records]


@pytest.fixture(autouse=True)
def _same_random_state():
    """Every test starts from one random state (Python, NumPy, torch). Training batches come from
    Detectron2's TrainingSampler, which draws its seed from NumPy when SEED is -1, so without this
    a data-dependent assertion sees a different batch on every run and a failure cannot be
    reproduced."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained_cascade(tmp_path_factory):
    """An instant-test Cascade R-CNN trained by train_net.py for 4 iterations (checkpoints at
    iterations 2 and 4) on the data stream of seed 0. Returns its OUTPUT_DIR."""
    out = tmp_path_factory.mktemp("cascade_instant")
    run_train_net("--config-file", INSTANT / "cascade_rcnn_instant_test.yaml", "OUTPUT_DIR", out,
                  "SEED", 0)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def trained_core(tmp_path_factory):
    """An instant-test Cascade R-CNN of the box-cascade core trained (data stream of seed 0) and
    evaluated by train_net.py (stage-wise outputs, IoU statistics). Returns (OUTPUT_DIR,
    stdout)."""
    out = tmp_path_factory.mktemp("core_instant")
    config = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"
    proc = run_train_net("--config-file", config, "OUTPUT_DIR", out, "SEED", 0)
    return out, proc.stdout


# The benchmark protocols (configs/Protocols/), each merged over a method config.
PROTOCOLS = sorted((ROOT / "configs" / "Protocols").glob("*.yaml"))


def flat_config(node, prefix=""):
    """A config (or any nested dict) as {"A.B.C": value}."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def assert_under_the_protocol(files, protocol, baseline):
    """``files`` (a config and its deltas) merged with ``protocol`` last: the model of ``files``
    (every MODEL key the protocol does not set) with the protocol's settings (the pretrained
    weights, a protocol's handling of them) and its run of ``baseline``'s schedule, data, loader
    and evaluation."""
    import yaml

    from cascade_zoo import setup_cfg

    ours = flat_config(setup_cfg([str(f) for f in (*files, protocol)], freeze=False))
    alone = flat_config(setup_cfg([str(f) for f in files], freeze=False))
    ref = flat_config(setup_cfg([str(baseline), str(protocol)], freeze=False))
    set_by_protocol = set(flat_config(yaml.safe_load(Path(protocol).read_text())))
    assert set_by_protocol and all(ours[k] == ref[k] for k in set_by_protocol)
    assert ours["MODEL.WEIGHTS"] != alone["MODEL.WEIGHTS"]
    for key in ours:
        if key.startswith("MODEL.") and key not in set_by_protocol:
            assert ours[key] == alone[key], key
        if key.split(".")[0] in ("TEST", "INPUT", "DATASETS", "DATALOADER", "SOLVER"):
            assert ours[key] == ref[key], key
    return setup_cfg([str(f) for f in (*files, protocol)])


def shapes_configs(paper_dir):
    """The CPU (shapes) configs of a paper's configs/ folder, each as the files merged in order:
    every ``*_shapes.yaml``, and every ablation delta over the shapes config its header names."""
    from cascade_zoo.config import documented_compositions

    out = [[p] for p in sorted(paper_dir.glob("**/*_shapes.yaml"))]
    for delta in sorted(paper_dir.glob("ablations/*.yaml")):
        out += [[ROOT / "configs" / f for f in files] for files in documented_compositions(delta)
                if files[0].endswith("_shapes.yaml")]  # fmt: skip
    return out


def config_id(files):
    """A test id for a config given as files: their paths under configs/, joined by +."""
    return "+".join(str(f.relative_to(ROOT / "configs")) for f in files)
