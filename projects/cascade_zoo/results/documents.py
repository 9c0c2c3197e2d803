"""The Markdown files made from the result files: docs/results.md, MODEL_ZOO.md and the
``<!-- results: NAME ... -->`` and ``<!-- claims -->`` blocks of the paper READMEs
(:func:`write_reports` writes them all, each only where it is told).
"""

import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

from . import identity, registry
from .records import AP_COLUMNS, load_results
from .report import (
    gains_over,
    measure_claim,
    plot_results,
    pm,
    stage_gap_table,
    subset_rows,
    summary_rows,
    variant_rows,
)

TOOL = "tools/run_results.py"
logger = logging.getLogger("run_results")


def _expectation(compare) -> str:
    """What a claim's comparison expects of the mean difference: "> 0", ">= 1", "within ±1"."""
    if compare.expect == "~":
        return f"within ±{compare.size:g}"
    op = ">" if compare.expect == "+" else "<"
    if compare.size is None:
        return f"{op} 0"
    return f"{op}= {compare.size:g}" if op == ">" else f"<= -{compare.size:g}"


def _side(name: str, stage: Optional[str], variant: Optional[str]) -> str:
    """One run of a comparison: its name, then the stage (or stage difference) or eval variant."""
    return f"`{name}`" + (f" {stage}" if stage else "") + (f" ({variant})" if variant else "")


def claims_table(
    grouped, claims, protocol: Optional[str] = None, paper_column: bool = False
) -> str:
    """The Markdown of a claims table: one row per claim (the claim, where the paper says it and
    its number, the comparison, each seed's paired difference, their mean ± std and the verdict),
    then the checks of every claim measured and not reproduced (or only partly). "" if no claims."""
    from cascade_zoo.utils.markdown import markdown_table

    if not claims:
        return ""
    rows, checks = [], []
    for claim in claims:
        c, m = claim.compare, measure_claim(grouped, claim, protocol)
        compared = (f"{_side(m.method, c.stage, c.variant)} - "
                    f"{_side(m.baseline, c.baseline_stage, c.baseline_variant)}, "
                    f"{c.metric}: {_expectation(c)}")  # fmt: skip
        seeds = ", ".join(f"s{seed} {d:+.2f}" for seed, d in m.differences.items()) or "-"
        measured = f"{m.mean:+.2f} ± {m.std:.2f}" if m.mean is not None else "-"
        first = [claim.package] if paper_column else []
        rows.append(first + [f"`{claim.id}`: {claim.text} ({claim.where})", claim.paper, compared,
                             seeds, measured, f"**{m.verdict}**"])  # fmt: skip
        if m.verdict in ("not reproduced", "partly"):
            listed = "; ".join(claim.checks) or "none named yet"
            checks.append(f"- `{claim.id}` ({m.verdict}): {listed}")
    header = (["paper"] if paper_column else []) + [
        "claim (where)", "paper's number", "comparison: expected mean difference",
        "per-seed differences", "mean ± std", "verdict",
    ]  # fmt: skip
    text = [markdown_table(header, rows), ""]
    if checks:
        text += ["What rules out an implementation error, for the claims not reproduced or "
                 "only partly (a test, or a run; a run not made yet says so):", "", *checks,
                 ""]  # fmt: skip
    return "\n".join(text)


def write_results_md(
    grouped,
    path: Path,
    figures: List[str],
    command: str,
    baseline: Optional[str] = None,
    protocol: Optional[str] = None,
    source: str = "benchmarks/results/",
) -> None:
    from cascade_zoo.utils.markdown import markdown_table

    runs = []
    for name, results in grouped.items():
        for r in sorted(results, key=lambda r: r["seed"]):
            runs.append([f"`{name}`", r["seed"], r["git_commit"][:7], r["device"],
                         r["max_iter"], r["train_s_per_iter"],
                         r["wall_time_s"] / 60.0 if r["wall_time_s"] else None,
                         r["finished"]])  # fmt: skip
    rel = [os.path.relpath(f, path.parent) for f in figures]
    subsets_header, subsets = subset_rows(grouped)
    variants = variant_rows(grouped)
    extra = []
    if subsets:
        extra += [
            "## AP by objects per image",
            "",
            "The final detections' box AP on the `shapes_val` images with 1-3, 4-7 and 8 or more "
            "objects (RGA + PRM's Fig. 2), by pycocotools restricted to those images; mean ± std "
            "over the seeds whose result holds it.",
            "",
            markdown_table(subsets_header, subsets),
            "",
        ]
    if variants:
        extra += [
            "## Evaluation variants",
            "",
            "The same final models evaluated under other test-time settings (no training): the "
            "evaluation variants each paper package registers in its `results.py`, e.g. R3-CNN's "
            "number of test loops L_e.",
            "",
            markdown_table(["model", "variant", "seeds"] + AP_COLUMNS, variants),
            "",
        ]
    gaps = stage_gap_table(grouped, baseline)
    if gaps:
        against = f", and minus `{baseline}` of the same seed" if baseline else ""
        extra += [
            "## The last stage against the stage before it",
            "",
            "FSCascade's Fig. 1 / 3 for each cascade: at each IoU, the last stage's AP minus the "
            f"stage before it{against}; mean ± std over the seeds of the per-seed differences "
            "(points).",
            "",
            gaps,
            "",
        ]
    claims = claims_table(grouped, registry.claims(), protocol, paper_column=True)
    if claims:
        under = f"the runs of `{protocol}`" if protocol else "the runs without a protocol file"
        extra += [
            "## Claims of the papers",
            "",
            "Each paper's headline claims (registered in its `results.py`), each tested by a "
            f"comparison of two runs ({under}): the metric of the method minus that of the "
            "baseline, paired by seed over the seeds both have; mean ± sample std of those "
            "differences, and the verdict by the rule of "
            "[benchmark_protocol.md](benchmark_protocol.md#claims-and-verdicts) (not measured: "
            "fewer than 2 shared seeds).",
            "",
            claims,
        ]
    shown = [f for f in registry.model_figures() if (path.parent / f.image).is_file()]
    if shown:
        extra += [
            "## Figures from the runs' models",
            "",
            "Made by the paper tools from the runs' `model_final.pth` (which runs, of which "
            "protocol, and the commands are in each paper's README), not from the result files "
            "above: a figure may come from the models of an archived protocol.",
            "",
        ]
        for img, cap, readme in shown:
            link = os.path.relpath(readme, path.parent)
            extra += [f"{cap} ([{readme.parent.name}]({link})):", "", f"![{cap}]({img})", ""]
    text = [
        "# Results",
        "",
        f"Generated by `{TOOL}` from the result files in `{source}` "
        "(one per run; never edited by hand). Box AP (%) on `shapes_val`, mean ± std over the "
        "seeds, at each IoU threshold; for cascades, one row per stage below the model's "
        "final output. The protocol (same pretrained backbone for every method, schedule, "
        "seeds) is in [benchmark_protocol.md](benchmark_protocol.md); results of earlier "
        "protocols are archived in [archive/](archive/), not mixed in.",
        "",
        f"Regenerate: `{command}`",
        "",
        markdown_table(["model", "seeds"] + AP_COLUMNS, summary_rows(grouped)),
        "",
        *[f"![{Path(f).stem}]({f})" for f in rel],
        "",
        *extra,
        "## Runs",
        "",
        "Wall time: training and the evaluations in it, on the device named (CPU runs shared a "
        "2-core machine with other work unless the protocol says otherwise; train s/iter is the "
        "median time of a training iteration).",
        "",
        markdown_table(
            [
                "model",
                "seed",
                "commit",
                "device",
                "iterations",
                "train s/iter",
                "wall (min)",
                "finished",
            ],
            runs,
        ),  # fmt: skip
        "",
    ]
    path.write_text("\n".join(text))


README_BLOCK = re.compile(r"(<!-- results: ([^>]*?) -->\n)(.*?)(<!-- /results -->)", re.S)
CLAIMS_BLOCK = re.compile(r"(<!-- claims -->\n)(.*?)(<!-- /claims -->)", re.S)


def claims_block(grouped, claims, protocol: Optional[str] = None) -> str:
    """The Markdown of a README's claims block: :func:`claims_table` of the README's paper."""
    table = claims_table(grouped, claims, protocol) or "No claims registered.\n"
    rule = "../../docs/benchmark_protocol.md#claims-and-verdicts"
    return (f"{table}\nVerdicts by the rule of [docs/benchmark_protocol.md]({rule}).\n\n"
            f"(Generated by `{TOOL} --report-only` from benchmarks/results/.)\n")  # fmt: skip


def results_block(grouped, names: List[str]) -> str:
    """The Markdown of a README's results block: the summary, by-object-count and variant rows
    of the named models (in that order; a model with no results yet is listed as such). The
    option ``+gaps`` among the names adds :func:`stage_gaps`' rows, against the first model;
    ``+gains`` adds :func:`gains_over` the first model."""
    from cascade_zoo.utils.markdown import markdown_table

    options = {n for n in names if n.startswith("+")}
    unknown = options - {"+gaps", "+gains"}
    if unknown:
        raise ValueError(
            f"results block: unknown option(s) {sorted(unknown)}; known: +gaps, +gains"
        )
    names = [n for n in names if n not in options]
    chosen = OrderedDict((n, grouped[n]) for n in names if n in grouped)
    missing = [n for n in names if n not in grouped]
    text = (
        [markdown_table(["model", "seeds"] + AP_COLUMNS, summary_rows(chosen)), ""]
        if chosen
        else []
    )
    header, subsets = subset_rows(chosen)
    if subsets:
        text += ["AP by objects per image:", "", markdown_table(header, subsets), ""]
    variants = variant_rows(chosen)
    if variants:
        table = markdown_table(["model", "variant", "seeds"] + AP_COLUMNS, variants)
        text += ["The same models under other test-time settings:", "", table, ""]
    gaps = stage_gap_table(chosen, names[0]) if "+gaps" in options else ""
    if gaps:
        text += ["The last stage against the stage before it and against the first model, "
                 "mean ± std of the per-seed differences (points):", "", gaps, ""]  # fmt: skip
    gains = gains_over(chosen, names[0]) if "+gains" in options else {}
    if gains:
        rows = [[label, len(d[0])] + [pm(v) for v in d] for label, d in gains.items()]
        text += ["Gains over the first model, mean ± std of the per-seed differences (points):",
                 "", markdown_table(["difference", "seeds"] + AP_COLUMNS, rows), ""]  # fmt: skip
    if missing:
        text += ["No results yet: " + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    text.append(f"(Generated by `{TOOL} --report-only` from benchmarks/results/.)")
    return "\n".join(text) + "\n"


def write_readme_blocks(
    grouped, paths: List[Path], readme_dir: Optional[Path] = None, protocol: Optional[str] = None
) -> List[Path]:
    """Regenerate every ``<!-- results: NAME ... -->`` ... ``<!-- /results -->`` block and every
    ``<!-- claims -->`` ... ``<!-- /claims -->`` block (the claims its package registers, under
    ``protocol``'s run names) of the given Markdown files from the results, leaving the text
    outside the blocks as it is: in place, or with ``readme_dir``, into
    ``readme_dir/<the file's path in the repository>``. Returns the files changed."""
    changed = []
    for path in paths:
        target = Path(path)
        if readme_dir is not None:
            try:
                target = Path(readme_dir) / Path(path).resolve().relative_to(identity.REPO)
            except ValueError:  # not in the repository
                target = Path(readme_dir) / Path(path).parent.name / Path(path).name
        text = Path(path).read_text()
        new = README_BLOCK.sub(
            lambda m: m.group(1) + results_block(grouped, m.group(2).split()) + m.group(4), text
        )
        block = claims_block(grouped, registry.claims_of_readme(path), protocol)
        new = CLAIMS_BLOCK.sub(lambda m, block=block: m.group(1) + block + m.group(3), new)
        if not target.is_file() or target.read_text() != new:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(new)
            changed.append(target)
    return changed


def _shipped(relative: str) -> bool:
    """Whether the repository ships the model-zoo file ``relative`` (benchmarks/model_zoo/)."""
    from cascade_zoo import model_zoo

    return (model_zoo.SHIPPED_DIR / relative).is_file()


def write_model_zoo_md(grouped, path: Path, results_from: str = "benchmarks/results/") -> None:
    from cascade_zoo.model_zoo import (
        CHECKPOINT_FILE,
        DETECTRON2_CHECKPOINTS,
        DETECTRON2_EQUIVALENTS,
        PREFIX,
        SHIPPED_DIR,
    )
    from cascade_zoo.utils.markdown import markdown_table

    rows, shipped = [], 0
    for name, results in grouped.items():
        for r in sorted(results, key=lambda r: r["seed"]):
            url = f"{PREFIX}{name}/seed{r['seed']}"
            model_id = (r.get("checkpoint_sha256") or "-")[:8]
            here = _shipped(f"{name}/seed{r['seed']}/{CHECKPOINT_FILE}")
            shipped += here
            rows.append([
                f"`{name}`", r["seed"], "yes" if here else "no", f"{r['max_iter']} iter",
                r["train_s_per_iter"], r["inference_s_per_image"], r.get("peak_rss_mb"),
                r["metrics"]["bbox"]["AP"], model_id,
                f"`{url}/{CHECKPOINT_FILE}` \\| `{url}/metrics.json`",
            ])  # fmt: skip
    files = []
    for weights, how in identity.PRETRAINED.items():
        relative = weights[len(PREFIX) :]
        here = _shipped(relative)
        source = identity.run_name(how.config, how.protocol)
        what = (
            f"{how.about}: `{how.prefix}*` of `{source}` seed {how.seed} "
            f"([docs/benchmark_protocol.md](docs/benchmark_protocol.md)); {how.used_by}"
        )
        where = f" (`{os.path.relpath(SHIPPED_DIR / relative, identity.REPO)}`)" if here else ""
        files.append([f"`{Path(relative).with_suffix('')}`", "yes" if here else "no", what,
                      f"`{weights}`{where}"])  # fmt: skip
    d2_rows = [
        [f"`configs/{k}`", f"`{v}`",
         "no: downloaded from Detectron2's model zoo on first use" if k in DETECTRON2_CHECKPOINTS
         else "no: Detectron2 publishes no checkpoint of it (the name resolves to the config only)"]
        for k, v in DETECTRON2_EQUIVALENTS.items()
    ]  # fmt: skip
    text = PREAMBLE_MODEL_ZOO.format(
        tool=TOOL,
        results_from=results_from,
        ships=SHIPS_NONE if not shipped else SHIPS_SOME.format(shipped=shipped, rows=len(rows)),
        files=markdown_table(["name", "in this repository", "what", "file"], files),
        table=markdown_table(
            ["name", "seed", "in this repository", "lr sched", "train time (s/iter)",
             "inference time (s/im)", "train mem (MB, CPU peak RSS)", "box AP", "model id",
             "download"], rows),
        d2_table=markdown_table(
            ["config of this project", "Detectron2 model zoo name", "in this repository"], d2_rows
        ),
    )  # fmt: skip
    path.write_text(text)


SHIPS_NONE = """The result files (figures, config, command, machine) of every row
below are in the repository; the trained checkpoints are **not** (column "in this repository":
no). The one model file it ships is the benchmark's pretrained backbone (next section), which
`make demo` and every benchmark config start from. A checkpoint below is found only in a model
zoo you point at it, or after you train and publish it."""

SHIPS_SOME = """The result files (figures, config, command, machine) of every row
below are in the repository, and so are the checkpoints of {shipped} of the {rows} rows (column
"in this repository": yes, under `benchmarks/model_zoo/<name>/seed<k>/`), besides the benchmark's
pretrained backbone (next section), which `make demo` and every benchmark config start from.
Any other checkpoint below is found only in a model zoo you point at it, or after you train and
publish it."""

PREAMBLE_MODEL_ZOO = """# cascade-zoo Model Zoo

Models trained by `{tool}`, in the format of Detectron2's MODEL_ZOO.md. The table
is generated from the result files in `{results_from}`; the figures are measured by the runs
(device and machine in each result file and in [docs/results.md](docs/results.md)). On a CPU the
train-memory column is the peak resident set size of the training process.

**What the repository ships.** {ships}

Checkpoints are named `cascade_zoo://<name>/seed<k>/model_final.pth`. The prefix resolves to
`$CASCADE_ZOO_MODEL_ZOO` (a directory or an `http(s)://` base URL), by default
`$CASCADE_ZOO_CACHE/model_zoo` (`.cache/model_zoo` in the repository), where the runner publishes
each finished run; a file it lacks is read from the repository's `benchmarks/model_zoo/` if that
holds it. Use them as in Detectron2:

```python
from cascade_zoo import ZooPredictor, model_zoo

cfg = model_zoo.get_config("shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml", trained=True)
model = model_zoo.get("shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml", trained=True)
outputs = ZooPredictor(cfg)(bgr_image)
```

A name `<protocol>/<config>` is a run of `configs/<config>.yaml` with
`configs/Protocols/<protocol>.yaml` merged over it (`model_zoo.get_config_file(name)` writes the
two as one flat file), so from the command line:
`python train_net.py --config-file configs/<config>.yaml --config-file
configs/Protocols/<protocol>.yaml --eval-only MODEL.WEIGHTS cascade_zoo://<name>/seed0/model_final.pth`.
When the checkpoint is not there, `get_checkpoint_url` / `get(..., trained=True)` stop with an
error naming the directories it looked in, the variable that moves the zoo, and the two commands
that make it, with the time the recorded run took, e.g. for the first row:

```bash
python train_net.py --config-file configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml \\
    --config-file configs/Protocols/shapes_v3.yaml --resume \\
    OUTPUT_DIR output/shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed0 \\
    SEED 0 MODEL.DEVICE cpu
python tools/publish_model.py output/shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed0 \\
    --name shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes --seed 0  # --ship: into the repo
```

`tools/publish_model.py` (`cascade_zoo.model_zoo.publish_model`) writes a model as Detectron2's
zoo holds one: `<zoo>/<name>/seed<k>/model_final.pth` (`{{"model": state_dict}}` and the weights'
sha256, checked when the project loads them: the weights only, no optimizer, scheduler or
iteration), `metrics.json` (the run's) and `SHA256SUMS` (`sha256sum -c SHA256SUMS`), after checking
that the checkpoint loads with `torch.load(weights_only=True)`, matches the checksums it was saved
with, and fits the config's model key for key. With `--ship` it writes into
`benchmarks/model_zoo/`, which every clone finds with no model-zoo directory (commit the three
files); with `CASCADE_ZOO_IGNORE_SHIPPED=1` the zoo serves only its own directory's files.

## Shipped in the repository

{files}

## Trained by the benchmark

{table}

## Detectron2's model zoo

Detectron2's own Faster/Mask/Cascade Mask R-CNN checkpoints load by name into this project's
configs of the same models: `model_zoo.get_checkpoint_url(config)` (and
`model_zoo.get(config, trained=True)`) gives the `detectron2://` file of the model in the right
column (downloaded by Detectron2's PathManager on first use). The box-cascade core configured as
Detectron2's `CascadeROIHeads` is `configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x_detectron2.yaml`:
it keeps Detectron2's parameter names, so a checkpoint of a Detectron2 cascade loads into it
with no missing or unexpected keys, e.g. `train_net.py --config-file
configs/CascadeRCNN/cascade_rcnn_R_50_FPN_1x_detectron2.yaml --eval-only MODEL.WEIGHTS
<checkpoint of configs/Baselines/cascade_rcnn_R_50_FPN_1x.yaml>`. For a Cascade *Mask* R-CNN
checkpoint, use the Baselines mask config with the core's keys of that file
(`MODEL.META_ARCHITECTURE BoxCascadeRCNN MODEL.ROI_HEADS.NAME BoxCascadeROIHeads` and its
three `MODEL.BOX_CASCADE.*` lines).
Detectron2's names in the right column work too: `model_zoo.get_config_file(
"Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")` is this project's config in the left column (every
Detectron2 key equal: `tests/test_model_zoo.py`), and `get_checkpoint_url` / `get(...,
trained=True)` of it give Detectron2's file; a Detectron2 name without an equivalent here is
refused with the list of those that have one.
`tests/box_cascade/test_core_equivalence.py` checks both (box and mask) with checkpoints made
from Detectron2's own heads; Detectron2's published files themselves were not downloaded here
(no network).

{d2_table}
"""


def results_source(results_dir: Path) -> str:
    """How the reports name ``results_dir``: relative to the repository when inside it (with a
    trailing slash), else the absolute path."""
    path = Path(results_dir).resolve()
    try:
        return f"{path.relative_to(identity.REPO).as_posix()}/"
    except ValueError:
        return f"{path.as_posix()}/"


def write_reports(
    results_dir: Path,
    *,
    results_md: Path,
    model_zoo_md: Path,
    figures_dir: Path,
    readme_dir: Optional[Path],
    baseline: Optional[str],
    command: str = f"python {TOOL} --report-only",
    protocol: Optional[str] = None,
) -> None:
    """docs/results.md (with its plots in ``figures_dir``) and MODEL_ZOO.md from the result files
    of ``results_dir``, and the registered READMEs' results and claims blocks into
    ``readme_dir`` (None: not written). The papers' claims are measured on the runs of
    ``protocol`` (a file relative to configs/; None: the runs made without one)."""
    grouped = load_results(results_dir)
    figures = plot_results(grouped, Path(figures_dir), baseline)
    source = results_source(results_dir)
    write_results_md(grouped, Path(results_md), figures, command, baseline, protocol, source)
    write_model_zoo_md(grouped, Path(model_zoo_md), source)
    readmes = "no README blocks"
    if readme_dir is not None:
        target = None if Path(readme_dir).resolve() == identity.REPO else Path(readme_dir)
        changed = write_readme_blocks(grouped, registry.readmes(), target, protocol)
        readmes = f"{len(changed)} README(s) under {readme_dir}"
    logger.info(f"Wrote {results_md}, {model_zoo_md}, {len(figures)} plots and {readmes}")
