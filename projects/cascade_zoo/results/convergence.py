"""Has a schedule converged? Protocol v4's two criteria (docs/benchmark_protocol.md), computed
from result files' AP-vs-iteration curves, and the Markdown blocks that show them.

- :func:`plateau`: at the last two evaluations before the first learning-rate drop that are at
  least ``min_span`` of the schedule apart, AP rises by less than ``max_rise``.
- :func:`longer_gain`: the same run made ``1.5x`` as long (drops moved in proportion) ends less
  than ``max_gain`` AP higher.

``<!-- convergence: FILE [FILE ...] -->`` ... ``<!-- /convergence -->`` blocks of a Markdown file
list result files (relative to the repository); :func:`regenerated` rebuilds each
one with the runs' curves and verdicts. A file may be paired with its longer run as
``FILE=LONGER_FILE``.
"""

import json
import re
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

from .identity import REPO

CONVERGENCE_BLOCK = re.compile(
    r"(<!-- convergence: ([^>]*?) -->\n)(.*?)(<!-- /convergence -->)", re.S
)
TOOL = "tools/convergence_report.py"


class Plateau(NamedTuple):
    """AP at ``late`` (the last evaluation at or before the first drop) against ``early`` (the
    last one at least ``min_span`` of the schedule before it)."""

    early: int
    early_ap: float
    late: int
    late_ap: float
    max_iter: int
    max_rise: float

    @property
    def rise(self) -> float:
        return self.late_ap - self.early_ap

    @property
    def span(self) -> float:
        return (self.late - self.early) / self.max_iter

    @property
    def holds(self) -> bool:
        return self.rise < self.max_rise


def _solver(result: dict, key: str):
    """SOLVER.<key> of the run: from its config diff, else the defaults'."""
    value = result.get("config_diff", {}).get(f"SOLVER.{key}")
    if value is None:
        from cascade_zoo import get_zoo_cfg

        value = get_zoo_cfg().SOLVER[key]
    return value


def _steps(result: dict) -> List[int]:
    return sorted(int(s) for s in _solver(result, "STEPS"))


def first_drop(result: dict) -> int:
    """The iteration of the first learning-rate drop (the schedule's end if it has none). An
    evaluation "at" that iteration has run every earlier iteration at the first rate."""
    steps = [s for s in _steps(result) if s < result["max_iter"]]
    return steps[0] if steps else result["max_iter"]


def curve(result: dict) -> List[tuple]:
    """(iteration, AP) of each evaluation of the run, in order."""
    return sorted((int(c["iteration"]), float(c["AP"])) for c in result.get("curve", []))


def plateau(result: dict, min_span: float = 0.2, max_rise: float = 1.0) -> Optional[Plateau]:
    """The plateau criterion of a run (None when its curve has no two such evaluations)."""
    drop, max_iter = first_drop(result), int(result["max_iter"])
    before = [(i, ap) for i, ap in curve(result) if i <= drop]
    if not before:
        return None
    late, late_ap = before[-1]
    earlier = [(i, ap) for i, ap in before if i <= late - min_span * max_iter]
    if not earlier:
        return None
    early, early_ap = earlier[-1]
    return Plateau(early, early_ap, late, late_ap, max_iter, max_rise)


def final_ap(result: dict) -> float:
    return float(result["metrics"]["bbox"]["AP"])


def longer_gain(result: dict, longer: dict) -> float:
    """How much higher the longer run ends (AP points)."""
    return final_ap(longer) - final_ap(result)


def _label(result: dict, path: str) -> str:
    """The run's name, seed and schedule: its learning rate, length and drops (runs of one name
    made with other overrides, e.g. a learning-rate sweep, differ there)."""
    opts = ""
    if result.get("max_iter"):
        drops = ", ".join(map(str, _steps(result)))
        opts = (
            f", lr {float(_solver(result, 'BASE_LR')):g}, {result['max_iter']} iter, drops {drops}"
        )
    return f"`{result.get('name', path)}` seed {result.get('seed', '?')}{opts}"


def _plateau_text(result: dict) -> str:
    p = plateau(result)
    if p is None:
        return "no two evaluations before the first drop that far apart"
    return (f"{p.early_ap:.1f} at {p.early} -> {p.late_ap:.1f} at {p.late} "
            f"({p.span:.0%} of the schedule): {p.rise:+.1f}, "
            f"{'holds' if p.holds else 'fails'} (needs < {p.max_rise:.1f})")  # fmt: skip


def convergence_block(entries: Sequence[str], repo: Path = REPO, max_gain: float = 0.5) -> str:
    """The Markdown of one block: each run's curve (a table with one column per evaluation),
    then each run's plateau criterion and, for ``FILE=LONGER`` entries, the longer run's gain."""
    from cascade_zoo.utils.markdown import markdown_table

    runs: List[tuple] = []  # (path, result, longer path, longer result)
    for entry in entries:
        path, _, longer_path = entry.partition("=")
        result = json.loads((repo / path).read_text())
        longer = json.loads((repo / longer_path).read_text()) if longer_path else None
        runs.append((path, result, longer_path, longer))
    shown = [(p, r) for p, r, _, _ in runs] + [(lp, lr) for _, _, lp, lr in runs if lr]
    iterations = sorted({i for _, r in shown for i, _ in curve(r)})
    rows = []
    for path, result in shown:
        aps = dict(curve(result))
        rows.append(
            [_label(result, path)] + [f"{aps[i]:.1f}" if i in aps else "" for i in iterations]
        )
    text = ["AP on `shapes_val` at each evaluation (iteration):", "",
            markdown_table(["run"] + [str(i) for i in iterations], rows), ""]  # fmt: skip
    # a verdict row per curve row: a longer run is a schedule too, with its own plateau
    longer_of = {path: longer for path, _, _, longer in runs if longer is not None}
    verdicts = []
    for path, result in shown:
        gain = "not run"
        if path in longer_of:
            longer = longer_of[path]
            g = longer_gain(result, longer)
            gain = (f"{final_ap(result):.1f} -> {final_ap(longer):.1f}: {g:+.1f}, "
                    f"{'holds' if g < max_gain else 'fails'} (needs < {max_gain:.1f})")  # fmt: skip
        verdicts.append([_label(result, path), _plateau_text(result), gain])
    header = ["run", "plateau before the first drop", "the run 1.5x as long ends"]
    text += [markdown_table(header, verdicts), "", "Result files: " +
             ", ".join(f"`{e.replace('=', '`, `')}`" for e in entries) + ".", "",
             f"(Generated by `{TOOL}` from those files.)"]  # fmt: skip
    return "\n".join(text) + "\n"


def regenerated(text: str, repo: Path = REPO) -> str:
    """``text`` with each ``<!-- convergence: ... -->`` block regenerated from its files.

    Raises:
        OSError, ValueError, KeyError: a result file that is missing, not JSON or not a result.
    """

    def block(m):
        try:
            return m.group(1) + convergence_block(m.group(2).split(), repo) + m.group(4)
        except OSError as e:
            raise OSError(f"convergence block {m.group(2)!r}: {e}") from None

    return CONVERGENCE_BLOCK.sub(block, text)
