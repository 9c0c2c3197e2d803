"""Statistics over the seeds of each model, the reports' tables and their plots. ``grouped`` is
:func:`cascade_zoo.results.records.load_results`' mapping: model name -> its result files'
contents (one per seed).
"""

import math
import re
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

from .records import AP_COLUMNS, SUBSET_BINS


def mean_std(values: List[float]):
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values: List[float], digits: int = 1) -> str:
    """ "mean ± std" (sample std) of the numbers among ``values``; "-" if none."""
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def summary_rows(grouped) -> List[list]:
    """One row per model (final output) and, for cascades, one per stage: mean ± std. A model
    of one stage (Faster R-CNN on the core) gets no stage row: it would repeat the first."""
    rows = []
    for name, results in grouped.items():
        rows.append(
            [f"`{name}`", len(results)]
            + [pm([r["metrics"]["bbox"][k] for r in results]) for k in AP_COLUMNS]
        )
        stages = [s for s in results[0]["metrics"].get("stages") or {} if s != "ensemble"]
        for stage in stages if len(stages) > 1 else ():
            rows.append(
                [f"`{name}` {stage}", len(results)]
                + [pm([r["metrics"]["stages"].get(stage, {}).get(k) for r in results])
                   for k in AP_COLUMNS]
            )  # fmt: skip
    return rows


def subset_rows(grouped) -> Tuple[List[str], List[list]]:
    """AP and AP75 by objects per image (SUBSET_BINS), mean ± std over the seeds that have them."""
    from cascade_zoo.analysis.subsets import bin_label

    labels = [bin_label(lo, hi) for lo, hi in SUBSET_BINS]
    header = ["model", "seeds"] + [f"{m} {b}" for b in labels for m in ("AP", "AP75")]
    rows = []
    for name, results in grouped.items():
        have = [r["subsets"] for r in results if r.get("subsets")]
        if not have:
            continue
        cells = [pm([s.get(b, {}).get(m) for s in have]) for b in labels for m in ("AP", "AP75")]
        images = " / ".join(str(have[0].get(b, {}).get("images", 0)) for b in labels)
        rows.append([f"`{name}`", len(have)] + cells)
    if rows:
        header[1] = f"seeds (images: {images})"
    return header, rows


def variant_rows(grouped) -> List[list]:
    """Each run's extra evaluations (the registered eval variants): one row per model and
    variant."""
    rows = []
    for name, results in grouped.items():
        names = []
        for r in results:
            names += [v for v in (r.get("variants") or {}) if v not in names]
        for v in names:
            tables = [r["variants"][v]["metrics"]["all"] for r in results
                      if (r.get("variants") or {}).get(v, {}).get("metrics")]  # fmt: skip
            rows.append([f"`{name}`", v, len(tables)]
                        + [pm([t.get(k) for t in tables]) for k in AP_COLUMNS])  # fmt: skip
    return rows


def _last_stage(results) -> Optional[int]:
    """The highest N with a "stageN" AP table in every one of ``results``."""
    common = None
    for r in results:
        found = map(re.compile(r"stage(\d+)").fullmatch, r["metrics"].get("stages") or {})
        have = {int(m.group(1)) for m in found if m}
        common = have if common is None else common & have
    return max(common) if common else None


def stage_gaps(grouped, baseline: Optional[str]) -> "OrderedDict[str, List[List[float]]]":
    """FSCascade's Fig. 1 / 3 for every cascade of ``grouped``: at each IoU 0.50..0.95, the last
    stage's AP minus the stage before it, and minus ``baseline``'s final AP of the same seed;
    label -> per IoU, the list of per-seed differences."""
    base = {r["seed"]: r["metrics"]["bbox"] for r in grouped.get(baseline, [])}
    out = OrderedDict()
    for name, results in grouped.items():
        n = _last_stage(results)
        if n is None or n < 2:
            continue
        last, before = f"stage{n}", f"stage{n - 1}"
        table = lambda r, s: r["metrics"]["stages"][s]  # noqa: E731
        out[f"`{name}` {last} - {before}"] = [
            [table(r, last)[k] - table(r, before)[k] for r in results] for k in AP_COLUMNS[1:]
        ]
        paired = [r for r in results if r["seed"] in base]
        if paired and name != baseline:
            out[f"`{name}` {last} - `{baseline}`"] = [
                [table(r, last)[k] - base[r["seed"]][k] for r in paired] for k in AP_COLUMNS[1:]
            ]
    return out


def stage_gap_rows(gaps) -> List[list]:
    """The rows of :func:`stage_gaps`: label, seeds, mean ± std at each IoU (2 decimals)."""
    return [[label, len(d[0])] + [pm(v, digits=2) for v in d] for label, d in gaps.items()]


def stage_gap_table(grouped, baseline) -> str:
    """:func:`stage_gap_rows` as a Markdown table; "" when no model has a stage before its last."""
    from cascade_zoo.utils.markdown import markdown_table

    rows = stage_gap_rows(stage_gaps(grouped, baseline))
    return markdown_table(["difference", "seeds"] + AP_COLUMNS[1:], rows) if rows else ""


def paired_gains(grouped, baseline: str) -> "OrderedDict[str, List[List[float]]]":
    """Model name -> per AP_COLUMNS column, its final AP minus ``baseline``'s of the same seed,
    one value per seed the baseline also has; models with no such seed are left out."""
    base = {r["seed"]: r["metrics"]["bbox"] for r in grouped.get(baseline, [])}
    out = OrderedDict()
    for name, results in grouped.items():
        paired = [r for r in results if r["seed"] in base]
        if name == baseline or not paired:
            continue
        out[name] = [
            [r["metrics"]["bbox"][k] - base[r["seed"]][k] for r in paired] for k in AP_COLUMNS
        ]
    return out


def gains_over(grouped, baseline: str) -> "OrderedDict[str, List[List[float]]]":
    """An ablation table's gains (IoU-Uniform's Table 4): each model's final AP, AP50..AP95 minus
    ``baseline``'s of the same seed; label -> per column, the list of per-seed differences.
    Seeds the baseline lacks are left out."""
    gains = paired_gains(grouped, baseline)
    return OrderedDict((f"`{name}` - `{baseline}`", d) for name, d in gains.items())


def curves(grouped, stage: Optional[str] = None):
    """name -> (mean AP at each IoU, std) over seeds."""
    out = OrderedDict()
    for name, results in grouped.items():
        if stage is None:
            tables = [r["metrics"]["bbox"] for r in results]
        else:
            tables = [r["metrics"]["stages"][s] for r in results for s in [stage]
                      if s in r["metrics"]["stages"]]  # fmt: skip
            if not tables:
                continue
        stats = [mean_std([t[k] for t in tables]) for k in AP_COLUMNS[1:]]
        out[name] = ([s[0] for s in stats], [s[1] for s in stats])
    return out


# ---------------------------------------------------------------------------------------------
# Plots


def many_lines(ax) -> None:
    """Up to 20 curves told apart: ten colours, solid then dashed (the default cycle repeats its
    ten colours)."""
    from cycler import cycler
    from matplotlib import colormaps

    ax.set_prop_cycle(cycler(linestyle=["-", "--"]) * cycler(color=colormaps["tab10"].colors))


def _line_figure(plt, ncols: int = 1, width: float = 11):
    """A report figure of ``ncols`` axes side by side, each styled by :func:`many_lines`."""
    fig, axes = plt.subplots(1, ncols, figsize=(width, 4.6), squeeze=False)
    for ax in axes[0]:
        many_lines(ax)
    return fig, (axes[0] if ncols > 1 else axes[0][0])


def _legend_right(ax, fontsize: int = 7) -> None:
    """The legend beside the axes, where it hides no curve."""
    ax.legend(fontsize=fontsize, loc="center left", bbox_to_anchor=(1.01, 0.5))


def plot_results(grouped, figures_dir: Path, baseline: Optional[str]) -> List[str]:
    """AP vs IoU (mean ± std over seeds), gains over the baseline at each IoU, AP vs iteration,
    and each cascade's last-stage gaps; returns the files written."""
    from cascade_zoo.analysis._plot import pyplot, save_figure
    from cascade_zoo.analysis.ap_iou import IOU_THRESHOLDS

    plt = pyplot()
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    mean_curves = curves(grouped)
    fig, ax = _line_figure(plt)
    for name, (mean, std) in mean_curves.items():
        ax.errorbar(IOU_THRESHOLDS, mean, yerr=std, marker="o", markersize=3, capsize=2, label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%) on shapes_val, mean ± std over seeds")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    written.append(save_figure(fig, str(figures_dir / "results_ap_vs_iou.png"), "AP vs IoU"))

    if baseline in grouped:
        fig, ax = _line_figure(plt)
        for name, diffs in paired_gains(grouped, baseline).items():
            stats = [mean_std(d) for d in diffs[1:]]  # AP50..AP95
            ax.errorbar(IOU_THRESHOLDS, [s[0] for s in stats], yerr=[s[1] for s in stats],
                        marker="o", markersize=3, capsize=2, label=name)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel(f"AP gain over {baseline} (points)")
        ax.grid(alpha=0.3)
        _legend_right(ax)
        written.append(
            save_figure(fig, str(figures_dir / "results_gain_vs_iou.png"), "Gain over the baseline")
        )

    fig, ax = _line_figure(plt)
    for name, results in grouped.items():
        by_iter = OrderedDict()
        for r in results:
            for point in r.get("curve", []):
                by_iter.setdefault(point["iteration"], []).append(point["AP"])
        if len(by_iter) < 2:
            continue
        its = sorted(by_iter)
        stats = [mean_std(by_iter[i]) for i in its]
        ax.errorbar(its, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                    markersize=3, capsize=2, label=name)  # fmt: skip
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP (%) on shapes_val, mean ± std over seeds")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    written.append(save_figure(fig, str(figures_dir / "results_ap_vs_iter.png"), "AP vs iteration"))

    gaps = stage_gaps(grouped, baseline)
    if gaps:
        # left: the last stage against the one before it; right: against the baseline
        fig, axes = _line_figure(plt, ncols=2, width=12)
        for label, per_iou in gaps.items():
            ax = axes[1] if label.endswith(f"`{baseline}`") else axes[0]
            stats = [mean_std(v) for v in per_iou]
            ax.errorbar(IOU_THRESHOLDS, [s[0] for s in stats], yerr=[s[1] for s in stats],
                        marker="o", markersize=3, capsize=2,
                        label=label.replace("`", "").replace(f" - {baseline}", ""))  # fmt: skip
        axes[0].set_title("last stage - the stage before it", fontsize=9)
        axes[1].set_title(f"last stage - {baseline} (same seed)", fontsize=9)
        for ax in axes:
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel("IoU threshold")
            ax.set_ylabel("AP difference (points), mean ± std over seeds")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        written.append(
            save_figure(fig, str(figures_dir / "results_stage_gaps.png"), "Last-stage gaps")
        )
    return written


# ---------------------------------------------------------------------------------------------
# Claims (cascade_zoo.results.registry.Claim; the verdict rule is in docs/benchmark_protocol.md)


class ClaimResult(NamedTuple):
    """A claim measured on the result files: its two run names, seed -> the paired difference
    (method - baseline), their mean and sample std (None when not measured) and the verdict."""

    method: Optional[str]
    baseline: Optional[str]
    differences: "OrderedDict[int, float]"
    mean: Optional[float]
    std: Optional[float]
    verdict: str


def metric_value(
    result: dict, metric: str, stage: Optional[str] = None, variant: Optional[str] = None
) -> Optional[float]:
    """``metric`` ("AP90", or "AP90-AP50") of a result file's final AP table, of its ``stage``
    table, or the difference of two stages' ("stage3-stage2"); of its eval ``variant``'s AP
    table (on the whole test set) if one is named. None if a table or a column is missing."""
    names = metric.split("-")
    if len(names) > 2 or not all(n in AP_COLUMNS for n in names):
        raise ValueError(f"claim metric {metric!r}: an AP column or COLUMN-COLUMN of {AP_COLUMNS}")
    if variant is not None:
        if stage is not None:
            raise ValueError(f"claim: eval variant {variant!r} has no stage tables ({stage!r})")
        variant_metrics = ((result.get("variants") or {}).get(variant) or {}).get("metrics")
        tables = [(variant_metrics or {}).get("all")]
    elif stage is None:
        tables = [result["metrics"]["bbox"]]
    else:
        stages = stage.split("-")
        if len(stages) > 2:
            raise ValueError(f"claim stage {stage!r}: a stage or STAGE-STAGE")
        tables = [result["metrics"].get("stages", {}).get(s) for s in stages]
    values = []
    for table in tables:
        columns = [(table or {}).get(n) for n in names]
        if any(not isinstance(v, (int, float)) for v in columns):
            return None
        values.append(columns[0] - columns[1] if len(columns) == 2 else columns[0])
    return values[0] - values[1] if len(values) == 2 else values[0]


def claim_verdict(differences: List[float], expect: str, size: Optional[float]) -> str:
    """The verdict on a claim from its per-seed differences (docs/benchmark_protocol.md):
    "not measured" under 2 seeds; for "+" / "-", "reproduced" when every seed's difference has
    the expected sign and the mean reaches ``size`` (if given), "partly" when the mean has the
    expected sign but a seed has not or the mean falls short of ``size``, "not reproduced"
    otherwise; for "~", "reproduced" when every seed is within ``size``, "partly" when the mean
    is, "not reproduced" otherwise."""
    if len(differences) < 2:
        return "not measured"
    mean = statistics.mean(differences)
    if expect == "~":
        if all(abs(d) <= size for d in differences):
            return "reproduced"
        return "partly" if abs(mean) <= size else "not reproduced"
    sign = 1.0 if expect == "+" else -1.0
    if sign * mean <= 0:
        return "not reproduced"
    if all(sign * d > 0 for d in differences) and (size is None or sign * mean >= size):
        return "reproduced"
    return "partly"


def measure_claim(grouped, claim, protocol: Optional[str] = None) -> ClaimResult:
    """A claim's paired differences over the seeds both runs have (a seed missing the metric in
    either run is left out), under ``protocol``'s run names."""
    c = claim.compare
    method, baseline = c.run_names(protocol)
    base = {r["seed"]: metric_value(r, c.metric, c.baseline_stage, c.baseline_variant)
            for r in grouped.get(baseline, [])}  # fmt: skip
    differences = OrderedDict()
    for r in sorted(grouped.get(method, []), key=lambda r: r["seed"]):
        value = metric_value(r, c.metric, c.stage, c.variant)
        if value is not None and base.get(r["seed"]) is not None:
            differences[r["seed"]] = value - base[r["seed"]]
    verdict = claim_verdict(list(differences.values()), c.expect, c.size)
    mean, std = mean_std(list(differences.values())) if verdict != "not measured" else (None, None)
    return ClaimResult(method, baseline, differences, mean, std, verdict)
