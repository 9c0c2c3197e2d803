"""Protocol v4's convergence criteria (cascade_zoo.results.convergence) against hand-worked
curves, and the generated blocks of docs/benchmark_protocol.md."""

import importlib.util
import json

import pytest
from conftest import ROOT

from cascade_zoo.results import convergence


def _result(points, max_iter=12000, steps=(9000, 10800), final=None, name="X/run", lr=None):
    curve = [{"iteration": i, "AP": ap} for i, ap in points]
    final = points[-1][1] if final is None else final
    diff = {"SOLVER.STEPS": list(steps), **({"SOLVER.BASE_LR": lr} if lr else {})}
    return {"name": name, "seed": 0, "max_iter": max_iter, "curve": curve, "config_diff": diff,
            "metrics": {"bbox": {"AP": final}}}  # fmt: skip


# AP every 1000 iterations of a 12000-iteration schedule, drops at 9000 and 10800
CURVE = [(1000, 20.0), (2000, 30.0), (3000, 35.0), (4000, 38.0), (5000, 40.0), (6000, 41.0),
         (7000, 41.5), (8000, 41.6), (9000, 41.9), (10000, 45.0), (11000, 45.5),
         (12000, 45.6)]  # fmt: skip


def test_the_plateau_compares_the_last_evaluation_before_the_drop_with_one_20_percent_earlier():
    p = convergence.plateau(_result(CURVE))
    # by hand: the last evaluation at or before 9000 is 9000 (all of it at the first rate); 20% of
    # 12000 is 2400, so the earlier one is the last at or before 6600: 6000
    assert (p.early, p.late) == (6000, 9000)
    assert p.rise == pytest.approx(41.9 - 41.0) and p.span == pytest.approx(0.25)
    assert p.holds  # 0.9 < 1.0
    steeper = [(i, ap + (0.2 if i == 9000 else 0.0)) for i, ap in CURVE]
    assert not convergence.plateau(_result(steeper)).holds  # 1.1
    # an evaluation exactly 20% before counts; the drops are read from the run's own config
    p = convergence.plateau(_result(CURVE, max_iter=10000, steps=(8000, 9000)))
    assert (p.early, p.late) == (6000, 8000) and p.rise == pytest.approx(0.6)


def test_no_drop_within_the_schedule_means_the_end_and_too_few_evaluations_mean_none():
    p = convergence.plateau(_result(CURVE, steps=(20000,)))
    assert (p.early, p.late) == (9000, 12000) and p.rise == pytest.approx(3.7)
    assert convergence.plateau(_result([(9000, 40.0)])) is None
    assert convergence.plateau(_result([(8000, 40.0), (9000, 41.0)])) is None  # 8% apart


def _write(tmp_path, name, result):
    path = tmp_path / name
    path.write_text(json.dumps(result))
    return name


def test_the_block_shows_the_curves_and_both_verdicts(tmp_path):
    one = _write(tmp_path, "one.json", _result(CURVE, final=45.6))
    longer = [(i * 1.5, ap) for i, ap in CURVE]
    longer_file = _write(tmp_path, "longer.json", _result(longer, 18000, (13500, 16200), 46.3))
    text = convergence.convergence_block([f"{one}={longer_file}"], tmp_path)
    assert "41.0 at 6000 -> 41.9 at 9000 (25% of the schedule): +0.9, holds" in text
    assert "45.6 -> 46.3: +0.7, fails (needs < 0.5)" in text
    assert "| `X/run` seed 0, lr 0.001, 18000 iter, drops 13500, 16200 |" in text
    # the longer run is a schedule too: its own plateau, by hand 9000 (<= 13500 - 3600) and 13500
    longer_row = (
        "| `X/run` seed 0, lr 0.001, 18000 iter, drops 13500, 16200 | 41.0 at 9000 -> "
        "41.9 at 13500 (25% of the schedule): +0.9, holds (needs < 1.0) | not run |"
    )
    assert longer_row in text
    doc = tmp_path / "doc.md"
    block = f"<!-- convergence: {one} -->\ntyped by hand\n<!-- /convergence -->\n"
    doc.write_text(f"before\n{block}after\n")
    new = convergence.regenerated(doc.read_text(), tmp_path)
    assert new.startswith("before\n<!-- convergence: one.json -->\nAP on")
    assert "typed by hand" not in new and new.endswith("<!-- /convergence -->\nafter\n")
    assert "not run" in new  # no longer run given


def test_rows_of_one_run_name_are_told_apart_by_their_learning_rate(tmp_path):
    """A sweep's runs share the method's run name; the label says each one's rate (the
    default when the diff names none: 0.001 here)."""
    files = [_write(tmp_path, f"lr{lr}.json", _result(CURVE, lr=lr)) for lr in (0.005, 0.01)]
    files.append(_write(tmp_path, "default.json", _result(CURVE)))
    text = convergence.convergence_block(files, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| `X/run`")]
    assert len(rows) == 6  # a curve row and a verdict row per run
    for lr in ("0.005", "0.01", "0.001"):
        assert sum(f"seed 0, lr {lr}, 12000 iter, drops 9000, 10800 |" in r for r in rows) == 2


def _tool():
    spec = importlib.util.spec_from_file_location("conv", ROOT / "tools/convergence_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_protocol_doc_is_generated_from_its_result_files(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--check"]) == 0  # docs/benchmark_protocol.md is up to date
    stale = tmp_path / "doc.md"
    three_x = "benchmarks/convergence-v4/Pretrain/shapes_backbone_R_18_w32_3x/seed0.json"
    block = f"<!-- convergence: {three_x} -->"
    stale.write_text(f"{block}\ntyped by hand\n<!-- /convergence -->\n")
    assert tool.main(["--doc", str(stale), "--check"]) == 1
    assert tool.main(["--doc", str(stale)]) == 0 and "67.6 |" in stale.read_text()
    missing = tmp_path / "missing.md"
    missing.write_text("<!-- convergence: no/such/seed0.json -->\n<!-- /convergence -->\n")
    with pytest.raises(SystemExit, match="no/such/seed0.json"):
        tool.main(["--doc", str(missing)])
