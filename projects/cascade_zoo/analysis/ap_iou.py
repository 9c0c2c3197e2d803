"""AP as a function of the IoU threshold, per model and per stage, and differences between curves
(Cascade R-CNN Fig. 7-8, FSCascade Fig. 1 and 3), from this project's evaluation JSON files."""

import csv
import io
import json
import os
import re
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

from ..utils.markdown import markdown_table
from ._plot import pyplot, save_figure

IOU_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]
AP_KEYS = [f"AP{int(round(t * 100))}" for t in IOU_THRESHOLDS]

Curves = "OrderedDict[str, List[float]]"  # curve name -> AP (%) at IOU_THRESHOLDS


class AnalysisInputError(ValueError):
    """An input file is missing, of the wrong kind, or lacks what the analysis needs."""


def load_ap_curves(path: str, label: str = "") -> "OrderedDict[str, List[float]]":
    """AP-vs-IoU curves from one evaluation output of this project.

    Accepts ``stagewise_results.json`` (one curve per stage and the ensemble, from the
    box-cascade core's stage-wise evaluation) or a ``metrics.json`` holding per-IoU AP
    ("bbox/AP50" ... "bbox/AP95", from any model; the last evaluation in the file is used).
    Curve names are ``label/stage`` (or ``label`` for a single curve).

    Raises:
        AnalysisInputError: the file is missing, is not JSON of either kind, or has no AP at
            every IoU.
    """
    if os.path.isdir(path):
        return _mean_of_benchmark_results(path, label)
    if not os.path.isfile(path):
        raise AnalysisInputError(f"{path}: no such file")
    label = label or os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    text = open(path).read()
    curves = OrderedDict()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None  # maybe metrics.json: one JSON object per line
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict) and "format" in data:
        # a result file of tools/run_results.py: the final output and each stage
        metrics = data["metrics"]
        curves[label] = _curve(metrics.get("bbox") or {}, f"{path} [metrics.bbox]")
        for stage, table in (metrics.get("stages") or {}).items():
            curves[f"{label}/{stage}"] = _curve(table, f"{path} [metrics.stages.{stage}]")
    elif isinstance(data, dict) and any(k.endswith("/bbox") for k in data):
        for key, metrics in data.items():
            if key.endswith("/bbox"):
                curves[f"{label}/{key[: -len('/bbox')]}"] = _curve(metrics, f"{path} [{key}]")
    else:
        evaluations = []
        for n, line in enumerate(text.splitlines()):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnalysisInputError(
                    f"{path}: neither a stagewise_results.json nor a metrics.json (line {n + 1}: "
                    f"{e})"
                ) from None
            if isinstance(record, dict) and "bbox/AP50" in record:
                evaluations.append(record)
        if not evaluations:
            raise AnalysisInputError(
                f"{path}: no per-IoU bbox AP found (expected 'stageN/bbox' entries of a "
                "stagewise_results.json, or 'bbox/AP50'...'bbox/AP95' in a metrics.json)"
            )
        last = evaluations[-1]
        stages = sorted(
            {k.split("/")[0] for k in last if k.endswith("/bbox/AP50") and k.count("/") == 2}
        )
        curves[label] = _curve(
            {k[len("bbox/") :]: v for k, v in last.items() if k.startswith("bbox/")}, path
        )
        for stage in stages:
            prefix = f"{stage}/bbox/"
            curves[f"{label}/{stage}"] = _curve(
                {k[len(prefix) :]: v for k, v in last.items() if k.startswith(prefix)}, path
            )
    return curves


def _mean_of_benchmark_results(folder: str, label: str) -> "OrderedDict[str, List[float]]":
    """The mean curves over the seeds of one config's result files (``folder/seed<k>.json`` of
    tools/run_results.py); curves every seed has."""
    files = sorted(f for f in os.listdir(folder) if re.fullmatch(r"seed\d+\.json", f))
    if not files:
        raise AnalysisInputError(f"{folder}: no seed<k>.json result files")
    label = label or os.path.basename(os.path.abspath(folder))
    per_seed = [load_ap_curves(os.path.join(folder, f), label) for f in files]
    common = [name for name in per_seed[0] if all(name in c for c in per_seed)]
    return OrderedDict(
        (name, [sum(c[name][i] for c in per_seed) / len(per_seed) for i in range(len(AP_KEYS))])
        for name in common
    )


def _curve(metrics: Dict[str, float], where: str) -> List[float]:
    missing = [k for k in AP_KEYS if k not in metrics]
    if missing:
        raise AnalysisInputError(f"{where}: no {', '.join(missing)} (AP at every IoU is needed)")
    return [float(metrics[k]) for k in AP_KEYS]


def difference_curves(
    curves: "OrderedDict[str, List[float]]", pairs: Sequence[Tuple[str, str]]
) -> "OrderedDict[str, List[float]]":
    """``a - b`` for each (a, b) of curve names, e.g. ("run/stage3", "run/stage2")."""
    out = OrderedDict()
    for a, b in pairs:
        for name in (a, b):
            if name not in curves:
                raise AnalysisInputError(f"no curve named '{name}' (have: {', '.join(curves)})")
        out[f"{a} - {b}"] = [x - y for x, y in zip(curves[a], curves[b])]
    return out


def curves_table(curves: "OrderedDict[str, List[float]]", fmt: str = "markdown") -> str:
    """The curves as a Markdown or CSV table: one row per curve, one column per IoU."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["curve"] + AP_KEYS)
        for name, values in curves.items():
            writer.writerow([name] + [f"{v:.3f}" for v in values])
        return buf.getvalue()
    return markdown_table(["curve"] + AP_KEYS, [[n] + list(v) for n, v in curves.items()]) + "\n"


def plot_ap_curves(
    curves: "OrderedDict[str, List[float]]",
    output_path: str,
    differences: "OrderedDict[str, List[float]]" = None,
    title: str = "AP vs IoU threshold",
) -> str:
    """One PNG: AP (%) against the IoU threshold for every curve; if ``differences`` are given,
    a second panel with them (and a zero line). Returns ``output_path``."""
    plt = pyplot()

    panels = 2 if differences else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.6), squeeze=False)
    ax = axes[0][0]
    for name, values in curves.items():
        ax.plot(IOU_THRESHOLDS, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if differences:
        ax = axes[0][1]
        for name, values in differences.items():
            ax.plot(IOU_THRESHOLDS, values, marker="o", markersize=3, label=name)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("IoU threshold")
        ax.set_ylabel("AP difference (points)")
        ax.set_title("differences")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, output_path)
