"""Real multi-process training on CPUs: train_net.py --num-gpus 2 (gloo) and under torchrun."""

import json
import sys

from conftest import INSTANT, run_train_net

CONFIG = INSTANT / "faster_rcnn_instant_test.yaml"
# the data stream's seed fixed, so that a failure reproduces
OPTS = ["SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 2, "SOLVER.CHECKPOINT_PERIOD", 100, "SEED", 0]


def _check(out, proc):
    assert "Rank of current process: 0. World size: 2" in proc.stdout, proc.stdout[-3000:]
    assert (out / "log.txt.rank1").exists(), "the second process did not run"
    assert "Evaluation results for shapes_tiny_val" in proc.stdout, proc.stdout[-3000:]
    assert (out / "model_final.pth").exists()
    iters = [json.loads(line).get("iteration") for line in open(out / "metrics.json")]
    assert 1 in iters


def test_two_cpu_processes_with_launch(tmp_path):
    proc = run_train_net(
        "--config-file", CONFIG, "--num-gpus", 2, "--dist-url", "auto",
        *OPTS, "OUTPUT_DIR", tmp_path,
    )  # fmt: skip
    _check(tmp_path, proc)


def test_two_cpu_processes_with_torchrun(tmp_path):
    proc = run_train_net(
        "--config-file", CONFIG, *OPTS, "OUTPUT_DIR", tmp_path,
        prefix=(sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"),
    )  # fmt: skip
    _check(tmp_path, proc)
