"""Several processes on one results matrix (tools/run_results.py --lanes): a run that one process
is making is left to it by the others (cascade_zoo.results.runner.run_lock), a killed holder
leaves no stale lock, the matrix order (--seed-major), and how --lanes starts its processes.
Training is replaced by fake trainers, so this is cheap."""

import functools
import importlib.util
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.runs import SLEEPING_RUN

from cascade_zoo.results import RunBusy, identity, runner

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "Baselines/faster_rcnn_instant_test.yaml"
CASCADE = "CascadeRCNN/cascade_rcnn_instant_test.yaml"


def _tool():
    spec = importlib.util.spec_from_file_location("run_results", ROOT / "tools" / "run_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SleepyTrainer:
    """Writes the files a finished train_net.py run leaves (one evaluation, model_final.pth)
    after ``seconds``; records (run name, seed, thread name) of each call."""

    def __init__(self, seconds=0.0):
        self.seconds = seconds
        self.calls = []
        self.started = threading.Event()

    def __call__(self, run, device):
        self.calls.append((run.name, run.seed, threading.current_thread().name))
        self.started.set()
        time.sleep(self.seconds)
        out = run.output_dir
        evaluation = {"iteration": 3, "bbox/AP": 30.0 + run.seed}
        evaluation.update({f"bbox/AP{50 + 5 * i}": 50.0 - 4 * i for i in range(10)})
        records = [{"iteration": 0, "time": 0.5, "total_loss": 2.0}, evaluation]
        (out / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / "model_final.pth").write_bytes(b"final")
        return {"peak_rss_mb": 1.0}


def _matrix(tmp_path, configs, seeds, **kwargs):
    return runner.run_matrix(configs, seeds, results_dir=tmp_path / "results",
                             runs_dir=tmp_path / "runs", device="cpu", **kwargs)  # fmt: skip


def _fake_execute(monkeypatch, trainer):
    """run_matrix's execute, training with ``trainer`` and publishing nothing."""
    real = runner.execute
    monkeypatch.setattr(
        runner, "execute", functools.partial(real, trainer=trainer, publish_models=False)
    )


def test_a_run_another_process_makes_is_left_to_it_and_its_kill_frees_it(tmp_path, monkeypatch):
    """The holder is a separate process killed outright (SIGKILL, as at a session's end): while
    it trains, the matrix skips its run without counting it failed; once it is dead, the run is
    taken (no stale lock to clear by hand)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", SLEEPING_RUN, CONFIG, str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "training"
        trainer = SleepyTrainer()
        run = identity.Run(CONFIG, 0, tmp_path / "results", tmp_path / "runs", ())
        with pytest.raises(RunBusy, match="another process is making it"):
            runner.execute(run, device="cpu", trainer=trainer, publish_models=False, wait=False)
        _fake_execute(monkeypatch, trainer)
        assert _matrix(tmp_path, [CONFIG], [0]) == []
        assert trainer.calls == [] and not run.result_path.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _matrix(tmp_path, [CONFIG], [0]) == []
    assert [c[:2] for c in trainer.calls] == [(run.name, 0)]
    assert run.result_path.is_file()
    assert runner.lock_path(run) == run.output_dir.with_name("seed0.lock")


def test_two_lanes_share_a_matrix_and_make_each_run_once(tmp_path, monkeypatch):
    trainer = SleepyTrainer(seconds=0.4)
    _fake_execute(monkeypatch, trainer)
    failed = {}

    def lane(name):
        failed[name] = _matrix(tmp_path, [CONFIG, CASCADE], [0, 1])

    first = threading.Thread(target=lane, args=("lane1",), name="lane1")
    second = threading.Thread(target=lane, args=("lane2",), name="lane2")
    first.start()
    assert trainer.started.wait(60)  # lane 1 holds the first run when lane 2 starts
    second.start()
    first.join(120)
    second.join(120)
    assert failed == {"lane1": [], "lane2": []}
    made = sorted(c[:2] for c in trainer.calls)
    names = sorted({identity.Run(c, 0, tmp_path, tmp_path, ()).name for c in (CONFIG, CASCADE)})
    assert made == [(n, s) for n in names for s in (0, 1)]  # each run once, none twice
    assert {c[2] for c in trainer.calls} == {"lane1", "lane2"}
    assert trainer.calls[0][2] == "lane1" and trainer.calls[1][2] == "lane2"
    for name in names:
        for seed in (0, 1):
            assert (tmp_path / "results" / name / f"seed{seed}.json").is_file()


def test_matrix_order(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "execute", lambda run, **kw: seen.append((run.config, run.seed)))
    _matrix(tmp_path, [CONFIG, CASCADE], [0, 1])
    assert seen == [(CONFIG, 0), (CONFIG, 1), (CASCADE, 0), (CASCADE, 1)]
    seen.clear()
    _matrix(tmp_path, [CONFIG, CASCADE], [0, 1], seed_major=True)
    assert seen == [(CONFIG, 0), (CASCADE, 0), (CONFIG, 1), (CASCADE, 1)]
    seen.clear()
    tool = _tool()
    tool.main(["--configs", CONFIG, CASCADE, "--seeds", "0", "1", "--seed-major", "--no-report",
               "--device", "cpu", "--results-dir", str(tmp_path / "r"), "--runs-dir",
               str(tmp_path / "x"), "--lane", "2"])  # fmt: skip
    assert seen == [(CONFIG, 0), (CASCADE, 0), (CONFIG, 1), (CASCADE, 1)]


class _FakePopen:
    started = []
    codes = []

    def __init__(self, args, env):
        self.args, self.env = args, env
        self.code = self.codes[len(self.started)]
        self.started.append(self)

    def wait(self):
        return self.code


@pytest.mark.parametrize("omp", [None, "1"])
def test_lanes_start_one_process_each_then_report_once(tmp_path, monkeypatch, omp):
    tool = _tool()
    _FakePopen.started, _FakePopen.codes = [], [0, 3]
    monkeypatch.setattr(tool.subprocess, "Popen", _FakePopen)
    monkeypatch.setattr(tool.time, "sleep", lambda s: None)
    monkeypatch.setattr(tool.os, "cpu_count", lambda: 8)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(tool, "run_matrix", lambda *a, **k: pytest.fail("the parent trained"))
    reports = []
    monkeypatch.setattr(tool, "write_reports", lambda *a, **k: reports.append(k))
    argv = ["--configs", CONFIG, "--seeds", "0", "1", "--lanes", "2", "--device", "cpu",
            "--results-dir", str(tmp_path / "r"), "--runs-dir", str(tmp_path / "x"),
            "--results-md", str(tmp_path / "results.md"), "SOLVER.BASE_LR", "0.001"]  # fmt: skip
    assert tool.main(argv) == 1  # lane 2 exited with 3
    assert len(_FakePopen.started) == 2
    for k, child in enumerate(_FakePopen.started, start=1):
        args = child.args
        assert args[0] == sys.executable and args[1].endswith("run_results.py")
        assert args[2:4] == ["--lane", str(k)] and args.count("--no-report") == 1
        assert "--lanes" not in args and args[-2:] == ["SOLVER.BASE_LR", "0.001"]
        assert child.env["OMP_NUM_THREADS"] == (omp or "4")
    assert len(reports) == 1  # by the parent, after both lanes


def test_lanes_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        _tool().main(["--configs", CONFIG, "--lanes", "0", "--no-report"])


@pytest.mark.parametrize(
    "configs, opts, message",
    [
        ([CONFIG, "SOLVER.MAX_ITER", "4"], [], "SOLVER.MAX_ITER: .*overrides go after `--`"),
        (["Baselines/no_such_config.yaml"], [], "no_such_config.yaml.*does not exist"),
        ([CONFIG], ["--", "SOLVER.MAX_ITER"], "odd length"),
    ],
)
def test_a_bad_matrix_is_refused_before_anything_trains(tmp_path, monkeypatch, capsys,
                                                        configs, opts, message):  # fmt: skip
    """A KEY VALUE pair swallowed by --configs used to train every config before it at full
    length and fail only at the pair."""
    monkeypatch.setattr(runner, "execute", lambda run, **kw: pytest.fail("something trained"))
    with pytest.raises(SystemExit):
        _tool().main(["--no-report", "--results-dir", str(tmp_path), "--configs", *configs, *opts])
    assert re.search(message, capsys.readouterr().err)


def test_overrides_after_a_double_dash(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "execute", lambda run, **kw: seen.append(run.opts))
    _tool().main(["--no-report", "--results-dir", str(tmp_path / "r"), "--runs-dir",
                  str(tmp_path / "x"), "--device", "cpu", "--configs", CONFIG, CASCADE, "--",
                  "SOLVER.MAX_ITER", "4"])  # fmt: skip
    assert seen == [["SOLVER.MAX_ITER", "4"]] * 6  # 2 configs x the default 3 seeds
