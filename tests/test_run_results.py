"""cascade_zoo.results and tools/run_results.py: skipping finished runs, resuming killed ones,
refusing results of another config, re-doing corrupt ones, the config hash, protocol files merged
over method configs, progress lines, publishing, and the reports (written only where told).
Training is replaced by a fake trainer that writes what train_net.py writes (metrics.json,
checkpoints), so this is cheap."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.runs import SLEEPING_RUN

from cascade_zoo import model_zoo, results, setup_cfg
from cascade_zoo.results import identity, records, registry, runner

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "Baselines/faster_rcnn_instant_test.yaml"
CASCADE = "CascadeRCNN/cascade_rcnn_instant_test.yaml"


@pytest.fixture(scope="module")
def rb():
    return results


def _tool(name="run_results"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeTrainer:
    """Writes a metrics.json with two evaluations (AP = ap_base + seed, per-IoU AP decreasing
    with the IoU) and model_final.pth; ``fail_once`` makes the first call stop half-way, like a
    killed run (a checkpoint but no final model)."""

    def __init__(self, ap_base=20.0, fail_once=False, stages=()):
        self.calls = []
        self.ap_base = ap_base
        self.fail_once = fail_once
        self.stages = stages

    def __call__(self, run, device):
        out = run.output_dir
        self.calls.append(sorted(p.name for p in out.iterdir()))
        (out / "model_0000001.pth").write_bytes(b"checkpoint")
        (out / "last_checkpoint").write_text("model_0000001.pth")
        if self.fail_once and len(self.calls) == 1:
            raise RuntimeError("killed")
        ap = self.ap_base + run.seed
        evaluation = {"iteration": 3, "bbox/AP": ap}
        for i in range(10):
            evaluation[f"bbox/AP{50 + 5 * i}"] = ap + 20 - 4 * i
        for s, stage in enumerate(self.stages):
            evaluation.update({f"{stage}/bbox/{k[5:]}": v - 1 - s for k, v in evaluation.items()
                               if k.startswith("bbox/")})  # fmt: skip
        records = [
            {"iteration": 0, "time": 0.5, "total_loss": 2.0},
            {"iteration": 1, "bbox/AP": ap / 2, **{f"bbox/AP{50 + 5 * i}": 1.0 for i in range(10)}},
            {"iteration": 3, "time": 0.7, "total_loss": 1.0},
            evaluation,
        ]
        (out / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
        (out / "model_final.pth").write_bytes(b"final")
        return {"peak_rss_mb": 100.0}


def _run(rb, tmp_path, config=CONFIG, seed=0, opts=()):
    return rb.Run(config, seed, tmp_path / "results", tmp_path / "runs", opts)


def _execute(rb, run, trainer):
    return rb.execute(run, device="cpu", trainer=trainer, publish_models=False)


def test_finished_run_is_skipped(rb, tmp_path):
    trainer = FakeTrainer()
    run = _run(rb, tmp_path)
    result = _execute(rb, run, trainer)
    assert len(trainer.calls) == 1
    saved = json.loads(run.result_path.read_text())
    assert run.result_path == tmp_path / "results/Baselines/faster_rcnn_instant_test/seed0.json"
    assert saved["metrics"]["bbox"]["AP"] == 20.0 and saved["metrics"]["bbox"]["AP95"] == 4.0
    assert saved["config_hash"] == run.hash and saved["device"] == "cpu"
    assert saved["train_s_per_iter"] == pytest.approx(0.6)  # median of 0.5 and 0.7
    assert [p["iteration"] for p in saved["curve"]] == [2, 4]
    assert "--config-file configs/Baselines/faster_rcnn_instant_test.yaml" in saved["command"]
    again = _execute(rb, _run(rb, tmp_path), trainer)
    assert len(trainer.calls) == 1 and again == result


def test_killed_run_resumes_in_its_output_dir(rb, tmp_path):
    trainer = FakeTrainer(fail_once=True)
    run = _run(rb, tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        _execute(rb, run, trainer)
    assert not run.result_path.exists()
    _execute(rb, _run(rb, tmp_path), trainer)
    # the second call found the first one's checkpoint, so train_net.py --resume continues it
    assert "last_checkpoint" in trainer.calls[1] and "model_0000001.pth" in trainer.calls[1]
    assert run.result_path.is_file()


def test_wall_time_survives_a_segment_killed_outright(rb, tmp_path):
    """A session's end kills its runs with SIGKILL, where no finally clause runs: the wall time
    of that segment is on disk all the same and the resumed run's result adds it up."""
    import signal
    import time

    child = subprocess.Popen(
        [sys.executable, "-c", SLEEPING_RUN, CONFIG, str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout.readline().strip() == "training"
    time.sleep(1.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    run = _run(rb, tmp_path)
    saved = json.loads((run.output_dir / "benchmark_wall_time.json").read_text())
    assert 1.3 <= saved["wall_time_s"] < 10.0
    result = _execute(rb, run, FakeTrainer())
    assert result["wall_time_s"] >= saved["wall_time_s"] - 0.05  # the result keeps 0.1 s


def test_result_names_the_commit_the_training_ran_at(rb, tmp_path, monkeypatch):
    """The code can change while a run trains (and between a killed run and its resume): the
    result names the commit at each start of the training, not the one at its end."""
    head = {"commit": "a" * 40}
    monkeypatch.setattr(records, "git_commit", lambda: head["commit"])

    class CommitDuringTraining(FakeTrainer):
        def __call__(self, run, device):
            head["commit"] = "c" * 40  # committed while it trains
            return super().__call__(run, device)

    trainer = CommitDuringTraining(fail_once=True)
    run = _run(rb, tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        _execute(rb, run, trainer)
    head["commit"] = "b" * 40  # resumed at another commit
    saved = _execute(rb, _run(rb, tmp_path), trainer)
    assert saved["git_commit"] == "a" * 40 and saved["git_commits"] == ["a" * 40, "b" * 40]
    head["commit"] = "e" * 40
    one = _execute(rb, _run(rb, tmp_path, seed=1), CommitDuringTraining())
    assert one["git_commit"] == "e" * 40 and "git_commits" not in one


def test_git_commit_marks_a_tree_with_uncommitted_changes(rb, monkeypatch):
    outputs = {"rev-parse": "f" * 40 + "\n"}

    def fake_run(cmd, **kwargs):
        if cmd[1] == "diff":
            return subprocess.CompletedProcess(cmd, outputs["diff"])
        return subprocess.CompletedProcess(cmd, 0, stdout=outputs["rev-parse"])

    monkeypatch.setattr(records.subprocess, "run", fake_run)
    outputs["diff"] = 0
    assert records.git_commit() == "f" * 40
    outputs["diff"] = 1
    assert records.git_commit() == "f" * 40 + "+dirty"


def test_trained_run_without_result_file_is_collected_not_retrained(rb, tmp_path):
    trainer = FakeTrainer()
    run = _run(rb, tmp_path)
    first = _execute(rb, run, trainer)
    run.result_path.unlink()  # e.g. killed after training, before the result was written
    again = _execute(rb, _run(rb, tmp_path), trainer)
    assert len(trainer.calls) == 1
    assert again["metrics"] == first["metrics"]


class PeriodicTrainer(FakeTrainer):
    """A FakeTrainer that also writes a periodic checkpoint every 2 iterations, named as
    Detectron2 names them (the one after iteration k is model_{k - 1})."""

    def __call__(self, run, device):
        for k in range(2, run.max_iter + 1, 2):
            (run.output_dir / f"model_{k - 1:07d}.pth").write_bytes(b"checkpoint")
        out = super().__call__(run, device)
        metrics = run.output_dir / "metrics.json"
        with metrics.open("a") as f:  # the last evaluation, at the schedule's end
            f.write(json.dumps({"iteration": run.max_iter - 1, "bbox/AP": 30.0}) + "\n")
        return out


def _checkpoints(run):
    return sorted(p.name for p in run.output_dir.glob("model_*.pth"))


# 8 iterations, drops at 6 and 7: the checkpoint after iteration 6 is the last one a longer
# schedule may start from (its learning rate drops at iteration 6 itself)
SCHEDULE = ("SOLVER.MAX_ITER", "8", "SOLVER.STEPS", "(6, 7)")


def test_prune_keeps_model_final_and_the_checkpoint_before_the_first_drop(rb, tmp_path):
    run = _run(rb, tmp_path, opts=SCHEDULE)
    rb.execute(run, device="cpu", trainer=PeriodicTrainer(), publish_models=False, prune=True)
    assert _checkpoints(run) == ["model_0000005.pth", "model_final.pth"]
    assert run.result_path.is_file() and (run.output_dir / "metrics.json").is_file()
    # without it, every checkpoint stays (Detectron2's behaviour)
    other = _run(rb, tmp_path / "all", opts=SCHEDULE)
    rb.execute(other, device="cpu", trainer=PeriodicTrainer(), publish_models=False)
    assert _checkpoints(other) == [f"model_{k - 1:07d}.pth" for k in (2, 4, 6, 8)] + [
        "model_final.pth"
    ]


def test_prune_of_a_run_done_before_does_not_retrain_it(rb, tmp_path):
    trainer = PeriodicTrainer()
    run = _run(rb, tmp_path, opts=SCHEDULE)
    rb.execute(run, device="cpu", trainer=trainer, publish_models=False)
    rb.execute(_run(rb, tmp_path, opts=SCHEDULE), device="cpu", trainer=trainer,
               publish_models=False, prune=True)  # fmt: skip
    assert len(trainer.calls) == 1
    assert _checkpoints(run) == ["model_0000005.pth", "model_final.pth"]


def test_an_unfinished_run_keeps_its_checkpoints(rb, tmp_path):
    run = _run(rb, tmp_path, opts=SCHEDULE)
    with pytest.raises(RuntimeError, match="killed"):
        rb.execute(run, device="cpu", trainer=PeriodicTrainer(fail_once=True),
                   publish_models=False, prune=True)  # fmt: skip
    kept = _checkpoints(run)
    assert "model_0000005.pth" in kept and "model_0000001.pth" in kept
    with pytest.raises(RuntimeError, match="not finished"):
        runner.prune_checkpoints(run)
    assert _checkpoints(run) == kept


def test_an_output_dir_of_another_config_is_not_pruned(rb, tmp_path):
    run = _run(rb, tmp_path, opts=SCHEDULE)
    rb.execute(run, device="cpu", trainer=PeriodicTrainer(), publish_models=False)
    other = _run(rb, tmp_path, opts=SCHEDULE + ("SOLVER.BASE_LR", "0.001"))
    assert other.output_dir == run.output_dir and other.hash != run.hash
    with pytest.raises(RuntimeError, match="not a run of"):
        runner.prune_checkpoints(other)
    assert len(_checkpoints(run)) == 5


def test_the_tool_prunes_only_when_told(rb, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "execute", lambda run, **kw: seen.append(kw["prune"]) or {})
    tool = _tool()
    for flags in ([], ["--prune-checkpoints"]):
        tool.main(["--configs", CONFIG, "--seeds", "0", "--no-report", "--device", "cpu",
                   "--results-dir", str(tmp_path / "r"), "--runs-dir", str(tmp_path / "x"),
                   *flags])  # fmt: skip
    assert seen == [False, True]


def test_output_dir_of_another_config_is_moved_aside(rb, tmp_path):
    trainer = FakeTrainer(fail_once=True)
    with pytest.raises(RuntimeError):
        _execute(rb, _run(rb, tmp_path), trainer)
    _execute(rb, _run(rb, tmp_path, opts=["SOLVER.BASE_LR", "0.001"]), trainer)
    # did not resume the other model (its wall time file starts at this segment)
    assert trainer.calls[1] == ["benchmark_config_hash.txt", "benchmark_wall_time.json"]
    assert len(list((tmp_path / "runs/Baselines/faster_rcnn_instant_test").glob("seed0.stale-*")))


def test_result_of_another_config_is_refused_and_redone(rb, tmp_path):
    old = _run(rb, tmp_path)
    _execute(rb, old, FakeTrainer(ap_base=50.0))
    new = _run(rb, tmp_path, opts=["SOLVER.BASE_LR", "0.001"])
    assert new.hash != old.hash
    assert rb.read_result(new)[0] == "stale"
    trainer = FakeTrainer(ap_base=10.0)
    result = _execute(rb, new, trainer)
    assert len(trainer.calls) == 1 and result["metrics"]["bbox"]["AP"] == 10.0
    stale = new.result_path.with_name("seed0.stale.json")
    assert json.loads(stale.read_text())["metrics"]["bbox"]["AP"] == 50.0  # kept, not mixed in


@pytest.mark.parametrize("content", ["{not json", "{}", '{"format": 1, "metrics": {"bbox": {}}}'])
def test_corrupt_result_is_redone(rb, tmp_path, content):
    run = _run(rb, tmp_path)
    run.result_path.parent.mkdir(parents=True)
    run.result_path.write_text(content)
    trainer = FakeTrainer()
    _execute(rb, run, trainer)
    assert len(trainer.calls) == 1
    assert rb.read_result(run)[0] == "ok"
    assert run.result_path.with_name("seed0.corrupt.json").read_text() == content


def test_hash_is_of_the_difference_from_the_defaults(rb, monkeypatch):
    import cascade_zoo

    config = str(ROOT / "configs" / CONFIG)
    diff = rb.config_diff(config)
    assert diff["SOLVER.MAX_ITER"] == 4 and diff["MODEL.RESNETS.DEPTH"] == 18
    assert "OUTPUT_DIR" not in diff and "MODEL.DEVICE" not in diff
    assert "SOLVER.MOMENTUM" not in diff  # a default value
    assert rb.config_diff(config, ["SEED", "3", "OUTPUT_DIR", "/x"]) == diff
    assert rb.config_hash(rb.config_diff(config, ["SOLVER.BASE_LR", "0.5"])) != rb.config_hash(diff)

    original = cascade_zoo.get_zoo_cfg

    def with_new_key():
        cfg = original()
        cfg.MODEL.SOME_NEW_KEY = 1.0  # a key added later, with its default
        return cfg

    monkeypatch.setattr(cascade_zoo, "get_zoo_cfg", with_new_key)
    assert rb.config_hash(rb.config_diff(config)) == rb.config_hash(diff)


def test_reports_mean_std_per_iou_and_stages(rb, tmp_path):
    stages = ("stage1", "stage2", "ensemble")
    for seed in (0, 1):
        _execute(rb, _run(rb, tmp_path, seed=seed), FakeTrainer(ap_base=10.0))
        _execute(rb, _run(rb, tmp_path, CASCADE, seed), FakeTrainer(ap_base=14.0, stages=stages))
    # a stale file and a stray file are left out of the report
    (tmp_path / "results/Baselines/faster_rcnn_instant_test/seed0.stale.json").write_text("{}")
    grouped = rb.load_results(tmp_path / "results")
    assert sorted(grouped) == [
        "Baselines/faster_rcnn_instant_test",
        "CascadeRCNN/cascade_rcnn_instant_test",
    ]
    assert len(grouped["Baselines/faster_rcnn_instant_test"]) == 2
    figures = rb.plot_results(grouped, tmp_path / "fig", "Baselines/faster_rcnn_instant_test")
    assert len(figures) == 4 and all(Path(f).stat().st_size > 0 for f in figures)
    md = tmp_path / "results.md"
    rb.write_results_md(grouped, md, figures, "cmd")
    text = md.read_text()
    # AP of seeds 0 and 1: 10 and 11 -> mean 10.5, sample std 0.707
    std = math.sqrt(((10 - 10.5) ** 2 + (11 - 10.5) ** 2) / 1)
    assert f"| `Baselines/faster_rcnn_instant_test` | 2 | 10.5 ± {std:.1f} | 30.5 ± 0.7 |" in text
    assert "| `CascadeRCNN/cascade_rcnn_instant_test` stage2 | 2 | 12.5 ± 0.7 |" in text
    assert "| `CascadeRCNN/cascade_rcnn_instant_test` stage1 | 2 |" in text
    assert "`Baselines/faster_rcnn_instant_test` stage" not in text
    zoo = tmp_path / "MODEL_ZOO.md"
    rb.write_model_zoo_md(grouped, zoo)
    url = "cascade_zoo://CascadeRCNN/cascade_rcnn_instant_test/seed1/model_final.pth"
    assert url in zoo.read_text()


def test_a_one_stage_model_gets_no_stage_row(rb, tmp_path):
    """The core's Faster R-CNN reports one stage, equal to its final output: no second row."""
    for seed in (0, 1):
        trainer = FakeTrainer(ap_base=10.0, stages=("stage1", "ensemble"))
        _execute(rb, _run(rb, tmp_path, seed=seed), trainer)
    rows = rb.summary_rows(rb.load_results(tmp_path / "results"))
    assert [row[0] for row in rows] == ["`Baselines/faster_rcnn_instant_test`"]


def test_stage_gaps_pair_the_seeds_and_reach_results_md_and_readme_blocks(rb, tmp_path):
    """FSCascade's Fig. 1 / 3 rows. The fake trainer's stage k is the final AP - k at every IoU,
    so stage2 - stage1 is -1; against the baseline, seed s gives (base_s + s - 2) - (10 + s)."""
    stages = ("stage1", "stage2", "ensemble")
    baseline = "Baselines/faster_rcnn_instant_test"
    cascade = "CascadeRCNN/cascade_rcnn_instant_test"
    for seed in (0, 1):
        _execute(rb, _run(rb, tmp_path, seed=seed), FakeTrainer(ap_base=10.0))
    for seed, base in ((0, 14.0), (1, 15.0), (2, 40.0)):  # seed 2 has no baseline to pair with
        _execute(rb, _run(rb, tmp_path, CASCADE, seed), FakeTrainer(ap_base=base, stages=stages))
    grouped = rb.load_results(tmp_path / "results")
    gaps = rb.stage_gaps(grouped, baseline)
    assert list(gaps) == [f"`{cascade}` stage2 - stage1", f"`{cascade}` stage2 - `{baseline}`"]
    assert all(v == pytest.approx([-1.0] * 3) for v in gaps[f"`{cascade}` stage2 - stage1"])
    assert all(v == pytest.approx([2.0, 3.0]) for v in gaps[f"`{cascade}` stage2 - `{baseline}`"])
    std = math.sqrt((0.5**2 + 0.5**2) / 1)
    md = tmp_path / "results.md"
    figures = rb.plot_results(grouped, tmp_path / "fig", baseline)
    assert any(f.endswith("results_stage_gaps.png") for f in figures)
    rb.write_results_md(grouped, md, figures, "cmd", baseline)
    text = md.read_text()
    assert "## Figures from the runs' models" not in text  # none of their images is there
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "fs_cascade_score_vs_iou.png").write_bytes(b"png")
    rb.write_results_md(grouped, md, figures, "cmd", baseline)
    text = md.read_text()
    assert "## Figures from the runs' models" in text
    assert "](images/fs_cascade_score_vs_iou.png)" in text and "iou_uniform_fig3" not in text
    assert f"| `{cascade}` stage2 - stage1 | 3 | -1.00 ± 0.00 |" in text
    assert f"| `{cascade}` stage2 - `{baseline}` | 2 | 2.50 ± {std:.2f} |" in text
    block = rb.results_block(grouped, [baseline, cascade, "+gaps"])
    assert f"| `{cascade}` stage2 - `{baseline}` | 2 | 2.50 ± {std:.2f} |" in block
    assert "+gaps" not in block and "stage2 - stage1" not in rb.results_block(grouped, [cascade])
    with pytest.raises(ValueError, match=r"\+gap"):
        rb.results_block(grouped, [cascade, "+gap"])
    rb.write_results_md(grouped, md, figures, "cmd", None)  # no baseline: stage gaps only
    text = md.read_text()
    assert f"| `{cascade}` stage2 - stage1 | 3 | -1.00 ± 0.00 |" in text
    assert "`None`" not in text and f"stage2 - `{baseline}`" not in text


def test_gains_pair_the_seeds_against_the_first_model(rb, tmp_path):
    """Table 4's "+x AP" rows. The fake trainer's AP at every column is ap_base + seed (+ a
    per-IoU offset that is the same for both models), so the gain of seed s is the difference of
    the two bases; a seed without a baseline is left out."""
    baseline = "Baselines/faster_rcnn_instant_test"
    other = "CascadeRCNN/cascade_rcnn_instant_test"
    for seed in (0, 1):
        _execute(rb, _run(rb, tmp_path, seed=seed), FakeTrainer(ap_base=10.0))
    for seed, base in ((0, 12.0), (1, 15.0), (2, 99.0)):
        _execute(rb, _run(rb, tmp_path, CASCADE, seed), FakeTrainer(ap_base=base))
    grouped = rb.load_results(tmp_path / "results")
    gains = rb.gains_over(grouped, baseline)
    assert list(gains) == [f"`{other}` - `{baseline}`"]
    assert len(gains[f"`{other}` - `{baseline}`"]) == len(rb.AP_COLUMNS)
    assert all(v == pytest.approx([2.0, 5.0]) for v in gains[f"`{other}` - `{baseline}`"])
    block = rb.results_block(grouped, [baseline, other, "+gains"])
    std = math.sqrt((1.5**2 + 1.5**2) / 1)
    assert f"| `{other}` - `{baseline}` | 2 | 3.5 ± {std:.1f} | 3.5 ± {std:.1f} |" in block
    assert "+gains" not in block and " - `" not in rb.results_block(grouped, [baseline, other])
    assert rb.gains_over(grouped, "Baselines/missing") == {}


def test_results_of_another_backbone_are_redone_and_a_lost_backbone_is_retrained(
    rb, tmp_path, monkeypatch
):
    zoo = tmp_path / "zoo"
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(zoo))
    weights = "cascade_zoo://Test/backbone.pth"
    monkeypatch.setitem(
        rb.PRETRAINED, weights, rb.Pretraining(CONFIG, None, 0, "backbone.bottom_up.")
    )
    made = []

    def extract(checkpoint, output, prefix):  # new backbone weights each time it is made
        made.append(checkpoint)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": {"backbone.bottom_up.w": torch.full((2,), float(len(made)))}}, output)

    monkeypatch.setattr(runner, "extract_weights", extract)
    trainer = FakeTrainer()
    run = _run(rb, tmp_path, CASCADE, opts=["MODEL.WEIGHTS", weights])
    first = _execute(rb, run, trainer)
    assert len(made) == 1 and first["pretrained_sha256"]
    assert len(trainer.calls) == 2  # the backbone's run, then the run
    _execute(rb, run, trainer)
    assert len(trainer.calls) == 2  # same backbone: skipped
    # another clone: the backbone file and the pretraining run's checkpoint are gone
    (zoo / "Test" / "backbone.pth").unlink()
    source = _run(rb, tmp_path, CONFIG)
    (source.output_dir / "model_final.pth").unlink()
    second = _execute(rb, run, trainer)
    assert len(made) == 2 and len(trainer.calls) == 4  # the backbone retrained, the run redone
    assert second["pretrained_sha256"] != first["pretrained_sha256"]
    names = sorted(p.name for p in run.result_path.parent.iterdir())
    assert names == ["seed0.json", "seed0.other-backbone.json"]
    assert (source.result_path.parent / "seed0.lost-checkpoint.json").is_file()


def test_report_leaves_out_results_of_another_backbone(rb, tmp_path, monkeypatch, caplog):
    """A result made from another version of the project's pretrained backbone is not averaged
    with the others (the runner makes it again; see the test above)."""
    zoo = tmp_path / "zoo"
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(zoo))
    weights = "cascade_zoo://Test/backbone.pth"
    # a repository whose configs start from that backbone, as the Benchmark configs do
    repo = tmp_path / "repo"
    start = f'MODEL:\n  WEIGHTS: "{weights}"\n'
    for name, base, extra in [("Test/pretrain.yaml", CONFIG, ""),
                              ("Test/from_backbone.yaml", CASCADE, start)]:  # fmt: skip
        (repo / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "configs" / name).write_text(f'_BASE_: "{ROOT / "configs" / base}"\n{extra}')
    monkeypatch.setattr(identity, "REPO", repo)
    pretraining = rb.Pretraining("Test/pretrain.yaml", None, 0, "backbone.bottom_up.")
    monkeypatch.setitem(rb.PRETRAINED, weights, pretraining)

    def extract(checkpoint, output, prefix):
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": {"backbone.bottom_up.w": torch.ones(2)}}, output)

    monkeypatch.setattr(runner, "extract_weights", extract)
    results = tmp_path / "results"
    for seed in (0, 1):
        _execute(rb, rb.Run("Test/from_backbone.yaml", seed, results, tmp_path / "runs"),
                 FakeTrainer())  # fmt: skip
    assert len(rb.load_results(results)["Test/from_backbone"]) == 2
    # the backbone file changes under seed 1's result (seed 0 is made again from the new one)
    torch.save(
        {"model": {"backbone.bottom_up.w": torch.full((2,), 2.0)}}, zoo / "Test/backbone.pth"
    )
    _execute(rb, rb.Run("Test/from_backbone.yaml", 0, results, tmp_path / "runs"), FakeTrainer())
    grouped = rb.load_results(results)["Test/from_backbone"]
    assert [r["seed"] for r in grouped] == [0]
    assert "seed1.json: trained from another pretrained backbone" in caplog.text


# ---------------------------------------------------------------- subsets, variants, backfill


class DetectingTrainer(FakeTrainer):
    """FakeTrainer that also writes, as the final evaluation would, COCO results on the test set:
    every ground-truth box of the images in ``perfect`` detected exactly (score 1), nothing
    elsewhere."""

    def __init__(self, perfect=None, final=b"final", **kwargs):
        super().__init__(**kwargs)
        self.perfect = perfect
        self.final = final

    def __call__(self, run, device):
        out = super().__call__(run, device)
        (run.output_dir / "model_final.pth").write_bytes(self.final)
        gt = _gt(run)
        anns = [
            a for a in gt["annotations"] if self.perfect is None or a["image_id"] in self.perfect
        ]
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                 "score": 1.0} for a in anns]  # fmt: skip
        inference = run.output_dir / "inference" / run.diff["DATASETS.TEST"][0]
        inference.mkdir(parents=True, exist_ok=True)
        (inference / "coco_instances_results.json").write_text(json.dumps(dets))
        return out


def _gt(run):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import cascade_zoo  # noqa: F401

    name = run.diff["DATASETS.TEST"][0]
    DatasetCatalog.get(name)  # writes the split on first use (the test may run alone)
    return json.loads(Path(MetadataCatalog.get(name).json_file).read_text())


def _counts(gt):
    counts = {img["id"]: 0 for img in gt["images"]}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            counts[a["image_id"]] += 1
    return counts


def test_results_hold_ap_by_objects_per_image(rb, tmp_path):
    run = _run(rb, tmp_path)
    gt = _gt(run)
    counts = _counts(gt)
    few = {i for i, n in counts.items() if 1 <= n <= 3}
    assert few and len(few) < len(counts), "the tiny split needs images with few and many objects"
    result = _execute(rb, run, DetectingTrainer(perfect=few))
    subsets = result["subsets"]
    assert subsets["[1,3]"]["images"] == len(few)
    assert subsets["[8,inf)"]["images"] == sum(1 for n in counts.values() if n >= 8)
    assert subsets["[1,3]"]["AP"] == pytest.approx(100.0)  # detected exactly
    if subsets["[8,inf)"]["images"]:
        assert subsets["[8,inf)"]["AP"] == pytest.approx(0.0)  # nothing detected there
    assert 0.0 < subsets["all"]["AP"] < 100.0
    grouped = rb.load_results(tmp_path / "results")
    header, rows = rb.subset_rows(grouped)
    assert header[2:4] == ["AP [1,3]", "AP75 [1,3]"] and rows[0][2] == "100.0"


@pytest.fixture
def paper():
    """A sixth paper package's declarations, forgotten after the test."""
    yield registry.register_results
    registry.unregister_results("test_paper")


def test_a_protocol_run_gets_the_variants_registered_for_its_method_config(paper):
    paper("test_paper", eval_variants={"Test/x": [("v", ["K", "1"])]})
    own = [registry.EvalVariant("v", ["K", "1"])]
    assert registry.variants_of_run("Test/x") == own
    assert registry.variants_of_run("shapes_v3/Test/x") == own
    assert registry.variants_of_run("shapes_v4/Test/x") == own
    assert registry.variants_of_run("no_such_protocol/Test/x") == []
    assert registry.variants_of_run("shapes_v4/Test/y") == []
    # the papers' own: R3-CNN's test-loop evaluations under either protocol
    r3 = registry.variants_of_run("shapes_v4/R3CNN/r3_cnn_R_18_FPN_shapes")
    assert [v.name for v in r3] == [f"L_e={n}" for n in range(1, 6)]


def test_eval_variants_are_stored_and_reported(rb, tmp_path, monkeypatch, paper):
    run = _run(rb, tmp_path)
    variants = [("L_e=1", ["K", "1"]), ("L_e=2", ["K", "2"])]
    paper("test_paper", eval_variants={run.name: variants})
    seen = []

    def fake_eval(run, device, opts):
        seen.append(opts)
        ap = 10.0 * int(opts[1])
        return {"all": {"AP": ap, **{f"AP{50 + 5 * i}": ap for i in range(10)}}}

    monkeypatch.setattr(runner, "eval_variant", fake_eval)
    result = _execute(rb, run, DetectingTrainer())
    assert seen == [["K", "1"], ["K", "2"]]
    assert result["variants"]["L_e=2"]["metrics"]["all"]["AP"] == 20.0
    rows = rb.variant_rows(rb.load_results(tmp_path / "results"))
    assert [r[1] for r in rows] == ["L_e=1", "L_e=2"] and rows[1][3] == "20.0"


def _files_of_run(name):
    """A registered run name's config files: ``<name>.yaml``, or for ``<dir>/<base>+<delta>`` (a
    composed config) the delta ``<dir>/<delta>.yaml`` over the base its header names."""
    from cascade_zoo.config import documented_compositions

    if "+" not in name:
        return [ROOT / "configs" / f"{name}.yaml"]
    folder, stems = name.rsplit("/", 1)
    base, delta = stems.split("+")
    delta = ROOT / "configs" / folder / f"{delta}.yaml"
    bases = [files[0] for files in documented_compositions(delta) if Path(files[0]).stem == base]
    return [ROOT / "configs" / b for b in bases] + [delta]


def test_every_eval_variant_names_a_benchmark_config_and_changes_it(rb):
    """A typo in a variant's key, or a variant equal to the trained config, would only show at
    the end of a long run (or never): each must resolve and differ from the run's own config."""
    assert rb.eval_variants()
    for name, variants in rb.eval_variants().items():
        config = [str(f) for f in _files_of_run(name)]
        assert all(Path(f).is_file() for f in config), name
        assert rb.run_name("+".join(config)).endswith(name), name
        own = rb.config_diff(config)
        for variant, opts in variants:
            changed = rb.config_diff(config, opts)
            assert changed != own, (name, variant)
            assert {k for k in changed if changed[k] != own.get(k)} <= set(opts[0::2]), variant


def test_fill_missing_retrains_a_gone_run_and_adds_only_to_the_same_model(rb, tmp_path, caplog):
    import shutil

    run = _run(rb, tmp_path)
    _execute(rb, run, DetectingTrainer())
    data = json.loads(run.result_path.read_text())
    del data["subsets"]
    run.result_path.write_text(json.dumps(data))
    shutil.rmtree(run.output_dir)  # another clone: only the result file is here
    other = DetectingTrainer(final=b"another model")
    rb.execute(run, device="cpu", trainer=other, publish_models=False, fill_missing=True)
    assert len(other.calls) == 1
    assert "subsets" not in json.loads(run.result_path.read_text())  # not the recorded model
    assert "not the recorded one" in caplog.text
    shutil.rmtree(run.output_dir)
    same = DetectingTrainer()
    rb.execute(run, device="cpu", trainer=same, publish_models=False, fill_missing=True)
    assert len(same.calls) == 1
    filled = json.loads(run.result_path.read_text())
    assert filled["subsets"]["all"]["AP"] == pytest.approx(100.0) and filled["backfilled"]
    assert filled["metrics"] == data["metrics"] and filled["finished"] == data["finished"]
    rb.execute(run, device="cpu", trainer=same, publish_models=False, fill_missing=True)
    assert len(same.calls) == 1  # complete now: skipped


def test_readme_results_blocks_are_regenerated_and_the_rest_kept(rb, tmp_path):
    for seed in (0, 1):
        _execute(rb, _run(rb, tmp_path, seed=seed), FakeTrainer(ap_base=10.0))
    grouped = rb.load_results(tmp_path / "results")
    readme = tmp_path / "README.md"
    names = "Baselines/faster_rcnn_instant_test Other/not_run"
    readme.write_text(f"# Paper\n\nintro\n\n<!-- results: {names} -->\nold table\n"
                      "<!-- /results -->\n\nafter\n")  # fmt: skip
    assert rb.write_readme_blocks(grouped, [readme]) == [readme]
    text = readme.read_text()
    assert text.startswith("# Paper\n\nintro\n\n<!-- results: ") and text.endswith("\n\nafter\n")
    assert "old table" not in text
    assert "| `Baselines/faster_rcnn_instant_test` | 2 | 10.5 ± 0.7 |" in text
    assert "No results yet: `Other/not_run`." in text
    assert rb.write_readme_blocks(grouped, [readme]) == []  # unchanged the second time
    nothing = rb.results_block(grouped, ["Other/not_run"])
    assert "| model |" not in nothing and "No results yet: `Other/not_run`." in nothing


def test_weights_hash_follows_the_tensors_not_the_file(rb, tmp_path):
    """Two files of the same weights, written with different extra keys (the source path), hash
    the same; a changed value, name, dtype or shape changes the hash."""
    weights = {"a.w": torch.arange(6.0).reshape(2, 3), "a.n": torch.tensor(3)}

    def sha(model, **extra):
        path = tmp_path / f"w{len(list(tmp_path.iterdir()))}.pth"
        torch.save({"model": model, **extra}, path)
        return rb.weights_sha256(path)

    base = sha(weights, source="/one/clone/model_final.pth")
    assert sha(dict(reversed(list(weights.items()))), source="/another/clone") == base
    changed = dict(weights, **{"a.w": weights["a.w"].clone()})
    changed["a.w"][1, 2] = 5.5
    assert sha(changed) != base
    assert sha({"b.w": weights["a.w"], "a.n": weights["a.n"]}) != base
    assert sha(dict(weights, **{"a.w": weights["a.w"].double()})) != base
    assert sha(dict(weights, **{"a.w": weights["a.w"].reshape(3, 2)})) != base
    # an independent restatement for one tensor: sha256 over "name|dtype|shape" and the bytes
    one = {"x": torch.tensor([1.0, -2.0], dtype=torch.float32)}
    import hashlib
    import struct

    expected = hashlib.sha256(b"x|torch.float32|(2,)\n" + struct.pack("<2f", 1.0, -2.0))
    assert sha(one) == expected.hexdigest()
    torch.save([1, 2], tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="not a weights file"):
        rb.weights_sha256(tmp_path / "bad.pth")


def test_plot_styles_tell_twenty_models_apart(rb):
    """results.md's plots hold a line per model (13 and growing): Matplotlib's default cycle
    repeats its ten colours, so models 1 and 11 looked alike; the report's cycle gives each of 20
    lines its own colour and line style."""
    from cascade_zoo.analysis._plot import pyplot

    fig, ax = pyplot().subplots()
    rb.many_lines(ax)
    styles = set()
    for i in range(20):
        (line,) = ax.plot([0, 1], [i, i])
        styles.add((tuple(line.get_color()), line.get_linestyle()))
    pyplot().close(fig)
    assert len(styles) == 20


# ---------------------------------------------------------------- protocols


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository whose configs/ holds a method config and a protocol file over it."""
    repo = tmp_path / "repo"
    files = {
        "Test/method.yaml": f'_BASE_: "{ROOT / "configs" / CONFIG}"\nSOLVER:\n  BASE_LR: 0.1\n',
        "Protocols/shapes_test.yaml": "SOLVER:\n  BASE_LR: 0.005\n  MAX_ITER: 6\n",
    }
    for name, text in files.items():
        (repo / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "configs" / name).write_text(text)
    monkeypatch.setattr(identity, "REPO", repo)
    monkeypatch.setattr(model_zoo, "CONFIGS_DIR", repo / "configs")
    return repo


def test_protocol_runs_merge_the_protocol_over_the_method_and_are_named_by_it(rb, tmp_path, repo):
    protocol = "Protocols/shapes_test.yaml"
    plain = rb.Run("Test/method.yaml", 0, tmp_path / "results", tmp_path / "runs")
    run = rb.Run("Test/method.yaml", 0, tmp_path / "results", tmp_path / "runs",
                 protocol=protocol)  # fmt: skip
    assert plain.name == "Test/method" and run.name == "shapes_test/Test/method"
    assert run.result_path == tmp_path / "results/shapes_test/Test/method/seed0.json"
    assert run.output_dir == tmp_path / "runs/shapes_test/Test/method/seed0"
    # merged in order: the protocol's keys win, the method's others stay
    assert plain.diff["SOLVER.BASE_LR"] == 0.1 and run.diff["SOLVER.BASE_LR"] == 0.005
    assert run.max_iter == 6 and run.diff["MODEL.RESNETS.DEPTH"] == 18
    assert run.hash != plain.hash
    args = run.train_args("cpu")
    files = ["--config-file", "configs/Test/method.yaml", "--config-file", f"configs/{protocol}"]
    assert args[:6] == ["train_net.py", *files, "--resume"]
    assert plain.train_args("cpu")[:4] == ["train_net.py", "--config-file",
                                           "configs/Test/method.yaml", "--resume"]  # fmt: skip
    saved = _execute(rb, run, FakeTrainer())
    _execute(rb, plain, FakeTrainer(ap_base=30.0))
    assert saved["config_files"] == ["configs/Test/method.yaml", f"configs/{protocol}"]
    assert saved["config"] == "configs/Test/method.yaml" and saved["max_iter"] == 6
    assert (
        "--config-file configs/Test/method.yaml --config-file configs/Protocols/shapes_test.yaml"
        in saved["command"]
    )
    grouped = rb.load_results(tmp_path / "results")
    assert sorted(grouped) == ["Test/method", "shapes_test/Test/method"]
    assert grouped["shapes_test/Test/method"][0]["metrics"]["bbox"]["AP"] == 20.0
    assert grouped["Test/method"][0]["metrics"]["bbox"]["AP"] == 30.0
    # the protocol file changes: its results are refused in the report, like a changed config
    (repo / "configs" / protocol).write_text("SOLVER:\n  BASE_LR: 0.002\n  MAX_ITER: 6\n")
    assert sorted(rb.load_results(tmp_path / "results")) == ["Test/method"]


def test_a_protocols_pretraining_is_made_from_its_method_and_protocol(
    rb, tmp_path, repo, monkeypatch
):
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "zoo"))
    weights = "cascade_zoo://shapes_test/backbone.pth"
    (repo / "configs/Test/from_backbone.yaml").write_text(
        f'_BASE_: "{ROOT / "configs" / CASCADE}"\nMODEL:\n  WEIGHTS: "{weights}"\n'
    )
    how = rb.Pretraining("Test/method.yaml", "Protocols/shapes_test.yaml", 0, "backbone.bottom_up.")
    monkeypatch.setitem(rb.PRETRAINED, weights, how)
    made = []

    def extract(checkpoint, output, prefix):
        made.append((checkpoint, prefix))
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": {"backbone.bottom_up.w": torch.ones(2)}}, output)

    monkeypatch.setattr(runner, "extract_weights", extract)
    trainer = FakeTrainer()
    run = rb.Run("Test/from_backbone.yaml", 0, tmp_path / "results", tmp_path / "runs",
                 protocol="Protocols/shapes_test.yaml")  # fmt: skip
    result = _execute(rb, run, trainer)
    source = tmp_path / "runs/shapes_test/Test/method/seed0"
    assert made == [(source / "model_final.pth", "backbone.bottom_up.")]
    assert (tmp_path / "results/shapes_test/Test/method/seed0.json").is_file()
    assert result["pretrained_sha256"] and len(trainer.calls) == 2


def test_composed_configs_are_merged_in_order_and_named_and_hashed_by_what_they_resolve_to(
    rb, tmp_path, repo, monkeypatch, caplog, paper
):
    """--configs BASE.yaml+DELTA.yaml: the delta merged over the base (before any protocol), the
    run named <delta's folder>/<base stem>+<delta stem>, the hash that of the merged config
    (whichever way the files are spelled, and the same as one file with the same settings);
    variants registered under that name are evaluated; it is published under that name."""
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "zoo"))
    (repo / "configs/Test/ablations").mkdir()
    delta = repo / "configs/Test/ablations/lr.yaml"
    delta.write_text("SOLVER:\n  BASE_LR: 0.02\n  WARMUP_ITERS: 3\n")
    (repo / "configs/Test/method_lr.yaml").write_text(
        '_BASE_: "method.yaml"\nSOLVER:\n  BASE_LR: 0.02\n  WARMUP_ITERS: 3\n'
    )
    results, runs = tmp_path / "results", tmp_path / "runs"
    run = rb.Run("Test/method.yaml+Test/ablations/lr.yaml", 0, results, runs)
    assert run.name == "Test/ablations/method+lr"
    assert run.configs == ["Test/method.yaml", "Test/ablations/lr.yaml"]
    assert run.output_dir == runs / "Test/ablations/method+lr/seed0"
    assert run.diff["SOLVER.BASE_LR"] == 0.02 and run.diff["MODEL.RESNETS.DEPTH"] == 18
    respelled = rb.Run("./Test/method.yaml + Test/ablations/../ablations/lr.yaml", 0, results, runs)
    assert (respelled.name, respelled.configs, respelled.hash) == (run.name, run.configs, run.hash)
    assert rb.Run("Test/method_lr.yaml", 0, results, runs).hash == run.hash
    files = ["--config-file", "configs/Test/method.yaml", "--config-file",
             "configs/Test/ablations/lr.yaml"]  # fmt: skip
    assert run.train_args("cpu")[:6] == ["train_net.py", *files, "--resume"]
    protocol = rb.Run(run.config, 0, results, runs, protocol="Protocols/shapes_test.yaml")
    assert protocol.name == "shapes_test/Test/ablations/method+lr"
    assert protocol.configs == [*run.configs, "Protocols/shapes_test.yaml"]
    assert protocol.diff["SOLVER.BASE_LR"] == 0.005 and protocol.diff["SOLVER.WARMUP_ITERS"] == 3

    paper("test_paper", eval_variants={run.name: [("short", ["SOLVER.MAX_ITER", "2"])]})
    evaluated = []
    monkeypatch.setattr(runner, "eval_variant", lambda r, device, opts: evaluated.append(r.name))
    trainer = CheckpointingTrainer()
    saved = rb.execute(run, device="cpu", trainer=trainer)
    assert evaluated == [run.name] and list(saved["variants"]) == ["short"]
    assert saved["config"] == "configs/Test/method.yaml+configs/Test/ablations/lr.yaml"
    assert saved["config_files"] == ["configs/Test/method.yaml", "configs/Test/ablations/lr.yaml"]
    # published under the run's name; the zoo loads it from the same spelling
    published = tmp_path / "zoo/Test/ablations/method+lr/seed0/model_final.pth"
    assert sorted(torch.load(published, weights_only=True)["model"]) == sorted(
        trainer.model.state_dict()
    )
    assert model_zoo.get_checkpoint_url(run.config) == (
        "cascade_zoo://Test/ablations/method+lr/seed0/model_final.pth"
    )
    assert model_zoo.get_config(run.config).SOLVER.BASE_LR == 0.02
    _execute(rb, protocol, FakeTrainer(ap_base=30.0))
    grouped = rb.load_results(results)
    assert sorted(grouped) == ["Test/ablations/method+lr", "shapes_test/Test/ablations/method+lr"]
    assert grouped["shapes_test/Test/ablations/method+lr"][0]["metrics"]["bbox"]["AP"] == 30.0
    # the delta changes: the results of both runs are refused, like those of a changed config
    delta.write_text("SOLVER:\n  BASE_LR: 0.02\n  WARMUP_ITERS: 4\n")
    assert sorted(rb.load_results(results)) == []


# ---------------------------------------------------------------- progress, publishing


def test_progress_line_names_iteration_eta_and_last_ap(rb, tmp_path):
    run = _run(rb, tmp_path, opts=["SOLVER.MAX_ITER", "40"])
    assert "starting" in rb.progress_line(run, [])
    metrics = [
        {"iteration": 9, "eta_seconds": 125.0, "time": 0.5},
        {"iteration": 9, "bbox/AP": 12.34},
        {"iteration": 19, "eta_seconds": 65.2, "time": 0.5},
    ]
    assert rb.progress_line(run, metrics) == (
        "Baselines/faster_rcnn_instant_test seed 0: iteration 20/40 (50%), ETA 1 min 05 s, "
        "last AP 12.3 (iteration 10)"
    )
    assert rb.progress_line(run, metrics[:1]).endswith("iteration 10/40 (25%), ETA 2 min 05 s")


FAKE_TRAINING = """
import json, sys, time
out = sys.argv[1]
print("fake training starts", flush=True)
for it in range(3):
    with open(out + "/metrics.json", "a") as f:
        f.write(json.dumps({"iteration": it, "eta_seconds": 10.0 * (3 - it)}) + "\\n")
        if it == 1:
            f.write(json.dumps({"iteration": it, "bbox/AP": 7.5}) + "\\n")
    time.sleep(0.4)
sys.exit(int(sys.argv[2]))
"""


def test_the_parent_prints_progress_while_the_child_trains(rb, tmp_path, caplog, monkeypatch):
    """subprocess_trainer with a fake train_net.py child that writes metrics.json over 1.2 s:
    progress lines come meanwhile, the child's output goes to train_stdout.txt (a run started
    before the rename keeps its benchmark_stdout.txt), a failure names the log."""
    import logging

    caplog.set_level(logging.INFO, logger="run_results")
    run = _run(rb, tmp_path, opts=["SOLVER.MAX_ITER", "3"])
    run.output_dir.mkdir(parents=True)
    monkeypatch.setattr(run, "train_args", lambda device: ["-c", FAKE_TRAINING,
                                                           str(run.output_dir), "0"])  # fmt: skip
    assert rb.subprocess_trainer(run, "cpu", progress_every=0.25)["peak_rss_mb"] > 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(run.name)]
    assert lines and all(line.startswith(f"{run.name} seed 0: iteration") for line in lines)
    assert any("last AP 7.5 (iteration 2)" in line for line in lines)
    assert (run.output_dir / "train_stdout.txt").read_text() == "fake training starts\n"

    old = tmp_path / "old"
    old.mkdir()
    (old / "benchmark_stdout.txt").write_text("earlier segment\n")
    monkeypatch.setattr(run, "output_dir", old)
    monkeypatch.setattr(run, "train_args", lambda device: ["-c", FAKE_TRAINING, str(old), "3"])
    with pytest.raises(RuntimeError, match=r"exited with 3 \(see .*old/benchmark_stdout.txt\)"):
        rb.subprocess_trainer(run, "cpu", progress_every=0.25)
    assert (old / "benchmark_stdout.txt").read_text() == "earlier segment\nfake training starts\n"
    assert not (old / "train_stdout.txt").exists()


class CheckpointingTrainer(FakeTrainer):
    """FakeTrainer whose model_final.pth is a real training checkpoint of the run's model: its
    weights, an optimizer state and the iteration."""

    def __call__(self, run, device):
        out = super().__call__(run, device)
        from detectron2.modeling import build_model

        from cascade_zoo import setup_cfg

        self.model = build_model(setup_cfg(run.config_files, ["MODEL.DEVICE", "cpu"]))
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        torch.save({"model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                    "iteration": 3}, run.output_dir / "model_final.pth")  # fmt: skip
        return out


def test_finished_runs_publish_model_only_checkpoints(rb, tmp_path, monkeypatch, caplog):
    zoo = tmp_path / "zoo"
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(zoo))
    trainer = CheckpointingTrainer()
    run = _run(rb, tmp_path)
    result = rb.execute(run, device="cpu", trainer=trainer)
    target = zoo / "Baselines/faster_rcnn_instant_test/seed0"
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "metrics.json",
                                                        "model_final.pth"]  # fmt: skip
    published = torch.load(target / "model_final.pth", weights_only=True)
    assert sorted(published) == ["checksum", "model"]  # no optimizer, no iteration
    expected = trainer.model.state_dict()
    assert sorted(published["model"]) == sorted(expected)
    assert all(torch.equal(published["model"][k], v) for k, v in expected.items())
    assert (target / "metrics.json").read_bytes() == (run.output_dir / "metrics.json").read_bytes()
    assert result["checkpoint_sha256"] == records.sha256(run.output_dir / "model_final.pth")
    # a checkpoint that is not a model of the config: the result stands, nothing is published
    other = _run(rb, tmp_path, seed=1)
    result = rb.execute(other, device="cpu", trainer=FakeTrainer())
    assert result["metrics"]["bbox"]["AP"] == 21.0 and other.result_path.is_file()
    assert not (zoo / "Baselines/faster_rcnn_instant_test/seed1").exists()
    assert "seed 1: not published" in caplog.text


def test_protocol_runs_are_published_under_their_run_name(rb, tmp_path, repo, monkeypatch):
    """The zoo names a protocol run's model as the runner names the run, and loads it with the
    protocol merged over the method config, as it was trained."""
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setenv("CASCADE_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CASCADE_ZOO_IGNORE_SHIPPED", "1")
    run = rb.Run("Test/method.yaml", 0, tmp_path / "results", tmp_path / "runs",
                 protocol="Protocols/shapes_test.yaml")  # fmt: skip
    trainer = CheckpointingTrainer()
    rb.execute(run, device="cpu", trainer=trainer)
    target = tmp_path / "zoo/shapes_test/Test/method/seed0"
    published = torch.load(target / "model_final.pth", weights_only=True)["model"]
    expected = trainer.model.state_dict()
    assert sorted(published) == sorted(expected)
    assert all(torch.equal(published[k], v) for k, v in expected.items())
    url = "cascade_zoo://shapes_test/Test/method/seed0/model_final.pth"
    for name in ("Test/method.yaml+Protocols/shapes_test.yaml", "shapes_test/Test/method.yaml"):
        assert model_zoo.get_checkpoint_url(name) == url
        cfg = model_zoo.get_config(name)
        assert cfg.SOLVER.BASE_LR == 0.005 and cfg.SOLVER.MAX_ITER == 6  # the protocol's
        assert cfg.MODEL.RESNETS.DEPTH == 18  # the method's base
    # one flat file of the composition, for train_net.py --config-file
    flat = model_zoo.get_config_file("shapes_test/Test/method.yaml")
    assert flat.startswith(str(tmp_path / "cache")) and "_BASE_" not in open(flat).read()
    from cascade_zoo.config import flat_dump

    merged = setup_cfg(run.config_files, freeze=False)
    assert flat_dump(setup_cfg(flat, freeze=False)) == flat_dump(merged)


def test_runs_with_overrides_are_not_published(rb, tmp_path, repo, monkeypatch, caplog):
    """A model trained with KEY VALUE overrides is not the model its name in the zoo says (a
    1.5x run would replace the protocol's own)."""
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "zoo"))
    run = rb.Run("Test/method.yaml", 0, tmp_path / "results", tmp_path / "runs",
                 ["SOLVER.MAX_ITER", "9"], protocol="Protocols/shapes_test.yaml")  # fmt: skip
    rb.execute(run, device="cpu", trainer=CheckpointingTrainer())
    assert run.result_path.is_file() and not (tmp_path / "zoo").exists()
    assert "shapes_test/Test/method seed 0: not published (trained with the overrides" in (
        caplog.text
    )


# ---------------------------------------------------------------- writing only where told


def _tree(path):
    return {p: p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def test_reports_are_written_only_where_told(rb, tmp_path, monkeypatch):
    """--results-md, --model-zoo-md, --figures-dir and --readme-dir elsewhere: every file goes
    there, the repository's READMEs, docs and MODEL_ZOO.md are left alone."""
    for seed in (0, 1):
        _execute(rb, _run(rb, tmp_path, seed=seed), FakeTrainer(ap_base=10.0))
    repo_files = [ROOT / "MODEL_ZOO.md", ROOT / "docs/results.md", *rb.readmes()]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in repo_files}
    images = _tree(ROOT / "docs/images")
    out = tmp_path / "out"
    tool = _tool()
    monkeypatch.setattr(tool.signal, "signal", lambda *args: None)
    args = ["--report-only", "--results-dir", str(tmp_path / "results"), "--results-md",
            str(out / "results.md"), "--model-zoo-md", str(out / "MODEL_ZOO.md"), "--figures-dir",
            str(out / "figs")]  # fmt: skip
    assert tool.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_ZOO.md", "figs", "results.md"]
    report = (out / "results.md").read_text()
    assert "| `Baselines/faster_rcnn_instant_test` | 2 | 10.5 ± 0.7 |" in report
    # the report names the result files it was made from, and how to make it again from them
    results = (tmp_path / "results").resolve().as_posix()
    assert f"from the result files in `{results}/`" in report
    assert (
        f"Regenerate: `python tools/run_results.py --report-only --results-dir {results}`" in report
    )
    assert (
        f"is generated from the result files in `{results}/`" in (out / "MODEL_ZOO.md").read_text()
    )
    assert rb.results_source(ROOT / "benchmarks" / "results-v4") == "benchmarks/results-v4/"
    assert tool.main(args + ["--readme-dir", str(out / "readmes")]) == 0
    copy = out / "readmes/projects/r3_cnn/README.md"
    assert "(Generated by `tools/run_results.py --report-only`" in copy.read_text()
    assert len(list((out / "readmes/projects").glob("*/README.md"))) == len(rb.readmes()) >= 5
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in repo_files} == before
    assert _tree(ROOT / "docs/images") == images


def test_readmes_default_to_the_repository_only_with_the_default_results_md(monkeypatch, tmp_path):
    tool = _tool()
    monkeypatch.setattr(tool.signal, "signal", lambda *args: None)
    seen = []
    monkeypatch.setattr(tool, "write_reports", lambda results_dir, **kw: seen.append(kw))
    elsewhere = ["--results-md", str(tmp_path / "r.md")]
    for args in ([], elsewhere, ["--no-readmes"], elsewhere + ["--readme-dir", str(tmp_path)]):
        assert tool.main(["--report-only", *args]) == 0
    assert [kw["readme_dir"] for kw in seen] == [ROOT, None, None, tmp_path]
    assert seen[0]["results_md"] == ROOT / "docs/results.md"


def test_the_old_tool_name_says_it_is_deprecated_and_runs_the_new_one():
    proc = subprocess.run([sys.executable, "tools/run_benchmark.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "--protocol" in proc.stdout and "--no-readmes" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "tools/run_benchmark.py is deprecated: use tools/run_results.py"
    ]


def test_a_new_paper_registers_its_variants_figures_and_readme(rb, tmp_path, paper):
    """What a sixth paper package's results.py does: nothing of the runner changes."""
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results: Baselines/faster_rcnn_instant_test -->\n<!-- /results -->\n")
    paper("test_paper", readme=readme, eval_variants={"Test/x": [("v", ["K", "1"])]},
          figures=[("images/test_fig.png", "Test's Fig. 1")])  # fmt: skip
    assert rb.eval_variants()["Test/x"] == [rb.EvalVariant("v", ["K", "1"])]
    assert rb.readmes()[-1] == readme
    assert rb.model_figures()[-1] == rb.ModelFigure("images/test_fig.png", "Test's Fig. 1", readme)
    with pytest.raises(ValueError, match="r3_cnn"):
        paper("test_paper", eval_variants={"R3CNN/r3_cnn_R_18_FPN_shapes": []})
    (tmp_path / "images").mkdir()
    (tmp_path / "images/test_fig.png").write_bytes(b"png")
    md = tmp_path / "results.md"
    rb.write_results_md({}, md, [], "cmd")
    assert f"Test's Fig. 1 ([{tmp_path.name}](README.md)):" in md.read_text()


def test_model_zoo_md_says_what_the_repository_ships(rb, tmp_path, monkeypatch):
    """MODEL_ZOO.md's sections and "in this repository" columns follow benchmarks/model_zoo/."""

    for seed in (0, 1):
        _execute(rb, _run(rb, tmp_path, seed=seed), FakeTrainer())
    grouped = rb.load_results(tmp_path / "results")
    path = tmp_path / "MODEL_ZOO.md"

    def rows():
        text = path.read_text()
        assert text.index("## Shipped in the repository") < text.index("## Trained by the")
        assert text.index("## Trained by the benchmark") < text.index("## Detectron2's model zoo")
        cells = [line.split(" | ") for line in text.splitlines() if line.startswith("| `")]
        return text, {(c[0][2:], c[1]): c[2] if c[1].isdigit() else c[1] for c in cells}

    rb.write_model_zoo_md(grouped, path)
    text, found = rows()
    assert found[("`Benchmark/shapes_backbone_R_18_w32`", "yes")] == "yes"
    assert found[("`Baselines/faster_rcnn_instant_test`", "0")] == "no"
    assert found[("`configs/Baselines/faster_rcnn_R_50_FPN_voc.yaml`", "`PascalVOC-Detection/"
                  "faster_rcnn_R_50_FPN.yaml`")]  # fmt: skip
    assert "the trained checkpoints are **not**" in text
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(model_zoo, "SHIPPED_DIR", shipped)
    (shipped / "Baselines/faster_rcnn_instant_test/seed1").mkdir(parents=True)
    (shipped / "Baselines/faster_rcnn_instant_test/seed1/model_final.pth").write_bytes(b"")
    rb.write_model_zoo_md(grouped, path)
    text, found = rows()
    assert found[("`Baselines/faster_rcnn_instant_test`", "1")] == "yes"
    assert found[("`Baselines/faster_rcnn_instant_test`", "0")] == "no"
    assert found[("`Benchmark/shapes_backbone_R_18_w32`", "no")] == "no"
    assert "the checkpoints of 1 of the 2 rows" in text
