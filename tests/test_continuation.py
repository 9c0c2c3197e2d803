"""A longer run started from a shorter run's checkpoint (cascade_zoo.results.continuation,
dev/continue_run.py): refused unless the two train the same up to that iteration; otherwise
Detectron2 resumes from the copied checkpoint and the result file has the whole curve."""

import fcntl
import json

import pytest

from cascade_zoo.results import Run, RunBusy, runner
from cascade_zoo.results.continuation import check_same_until, continue_from

CONFIG = "Baselines/faster_rcnn_instant_test.yaml"
SHORT = ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "TEST.EVAL_PERIOD", "2"]
LONG = ["SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(5,)", "TEST.EVAL_PERIOD", "2"]


def _runs(tmp_path, short=SHORT, long=LONG, seed=0):
    source = Run(CONFIG, 0, tmp_path / "results", tmp_path / "short", short)
    target = Run(CONFIG, seed, tmp_path / "results-long", tmp_path / "long", long)
    return source, target


def test_the_longer_run_resumes_from_the_shorter_runs_checkpoint(tmp_path):
    source, target = _runs(tmp_path)
    # pruned as the benchmark's runs are: the checkpoint before the first drop (3) stays
    runner.execute(source, device="cpu", publish_models=False, prune=True)
    assert sorted(p.name for p in source.output_dir.glob("model_*.pth")) == [
        "model_0000001.pth", "model_final.pth"
    ]  # fmt: skip
    record = continue_from(source, target, 2)
    assert record["checkpoint"] == "model_0000001.pth" and record["iteration"] == 2
    assert (target.output_dir / "last_checkpoint").read_text() == "model_0000001.pth"
    result = runner.execute(target, device="cpu", publish_models=False)
    lines = [json.loads(x) for x in (target.output_dir / "metrics.json").read_text().splitlines()]
    evals = [x["iteration"] for x in lines if "bbox/AP" in x]
    # the evaluation at 2 is the source's, once: training went on at iteration 2, not from 0
    assert evals == [1, 3, 6]  # (Detectron2 logs the final one at MAX_ITER)
    source_lines = (source.output_dir / "metrics.json").read_text().splitlines()
    first = [x for x in source_lines if json.loads(x)["iteration"] < 2]
    assert (target.output_dir / "metrics.json").read_text().splitlines()[: len(first)] == first
    assert [c["iteration"] for c in result["curve"]] == [2, 4, 6]
    assert result["continued_from"] == record and result["max_iter"] == 6


def _fake_source(run, iterations=(2,)):
    run.output_dir.mkdir(parents=True)
    (run.output_dir / "benchmark_config_hash.txt").write_text(run.hash + "\n")
    for i in iterations:
        (run.output_dir / f"model_{i - 1:07d}.pth").write_bytes(b"weights")
    (run.output_dir / "metrics.json").write_text('{"iteration": 0}\n{"iteration": 3}\n')


@pytest.mark.parametrize(
    "long, iteration, error",
    [
        (LONG + ["SOLVER.BASE_LR", "0.01"], 2, r"differ in \['SOLVER.BASE_LR'\]"),
        (LONG, 4, "same only up to iteration 3"),  # after the short run's drop
        (["SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(1,)", "TEST.EVAL_PERIOD", "2"], 2,
         "same only up to iteration 1"),  # the long run drops first
    ],
)  # fmt: skip
def test_runs_that_differ_before_the_iteration_are_refused(tmp_path, long, iteration, error):
    source, target = _runs(tmp_path, long=long)
    with pytest.raises(ValueError, match=error):
        check_same_until(source, target, iteration)
    _fake_source(source)
    with pytest.raises(ValueError, match=error):
        continue_from(source, target, iteration)
    assert not target.output_dir.exists()


def test_a_missing_checkpoint_another_source_or_a_started_target_is_refused(tmp_path):
    source, target = _runs(tmp_path)
    _, other_seed = _runs(tmp_path, seed=1)
    with pytest.raises(ValueError, match="SEED"):
        check_same_until(source, other_seed, 2)
    _fake_source(source, iterations=(1,))
    with pytest.raises(FileNotFoundError, match="no checkpoint of iteration 2"):
        continue_from(source, target, 2)
    (source.output_dir / "benchmark_config_hash.txt").write_text("0123456789abcdef\n")
    with pytest.raises(ValueError, match="is not a run of"):
        continue_from(source, target, 1)
    (source.output_dir / "benchmark_config_hash.txt").write_text(source.hash + "\n")
    target.output_dir.mkdir(parents=True)
    (target.output_dir / "model_0000003.pth").write_bytes(b"its own")
    with pytest.raises(ValueError, match="not empty"):
        continue_from(source, target, 1)
    assert (target.output_dir / "model_0000003.pth").read_bytes() == b"its own"
    # the metrics copied are those before the iteration
    (target.output_dir / "model_0000003.pth").unlink()
    with open(runner.lock_path(target), "a") as held:  # a runner making the target run now
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RunBusy, match="another process is making it"):
            continue_from(source, target, 1)
    assert not any(target.output_dir.iterdir())
    continue_from(source, target, 1)
    assert (target.output_dir / "metrics.json").read_text() == '{"iteration": 0}\n'


def test_a_metrics_line_cut_by_a_kill_is_left_out(tmp_path):
    """A session's end (SIGKILL) can cut the line being written; the run resumed after it. The
    longer run gets the whole lines before the iteration, not an error."""
    source, target = _runs(tmp_path)
    _fake_source(source)
    whole = ['{"iteration": 0, "total_loss": 2.5}', '{"iteration": 1, "bbox/AP": 3.0}']
    cut = '{"iteration": 1, "bbox/AP": 3.0, "stage1/bb'
    text = "\n".join([whole[0], cut + whole[1], '{"iteration": 2}']) + "\n"
    (source.output_dir / "metrics.json").write_text(text)
    continue_from(source, target, 2)
    assert (target.output_dir / "metrics.json").read_text().splitlines() == [whole[0]]


def _continue_run_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "dev" / "continue_run.py"
    spec = importlib.util.spec_from_file_location("continue_run_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_names_a_source_made_with_its_own_overrides(tmp_path):
    """A protocol's schedule changed: the shorter run is the protocol with overrides, and
    --source-opts names it; without them the source is another config and is refused."""
    source, target = _runs(tmp_path)
    _fake_source(source)
    tool = _continue_run_tool()
    common = ["--config", CONFIG, "--seed", "0", "--iteration", "2", "--source-runs-dir",
              str(tmp_path / "short"), "--runs-dir", str(tmp_path / "long")]  # fmt: skip
    with pytest.raises(SystemExit, match="differ in"):  # the source without its overrides
        tool.main(common + LONG)
    assert not target.output_dir.exists()
    with pytest.raises(SystemExit, match="KEY VALUE pairs"):
        tool.main(common + ["--source-opts", "SOLVER.MAX_ITER"] + LONG)
    assert tool.main(common + ["--source-opts", " ".join(SHORT)] + LONG) == 0
    assert (target.output_dir / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (
        json.loads((target.output_dir / "continued_from.json").read_text())["config_hash"]
        == source.hash
    )
