"""The shapes benchmark's accuracy runs ("results"; speed is cascade_zoo.benchmark): a matrix of
configs x seeds trained under docs/benchmark_protocol.md, one result file per run, and the
reports made from them. ``tools/run_results.py`` is its command line.

- :mod:`.identity`: a run's config files (one, or ``BASE.yaml+DELTA.yaml`` composed), name,
  config hash and project-made pretrained files (:class:`Run`).
- :mod:`.records`: result files: read, checked, set aside, written, loaded for a report.
- :mod:`.runner`: the run loop (train_net.py in a child process, resume, progress, publishing).
- :mod:`.report`: statistics over seeds, tables and plots.
- :mod:`.documents`: docs/results.md, MODEL_ZOO.md and the README results blocks.
- :mod:`.registry`: what each paper package adds (eval variants, figures, claims, its README).
"""

from .documents import (
    claims_table,
    results_block,
    results_source,
    write_model_zoo_md,
    write_readme_blocks,
    write_reports,
    write_results_md,
)
from .identity import (
    BASELINE_CONFIG,
    CURRENT_PROTOCOL,
    IGNORED_KEYS,
    PRETRAINED,
    Pretraining,
    Run,
    config_diff,
    config_hash,
    config_parts,
    run_name,
    weights_sha256,
)
from .records import AP_COLUMNS, SUBSET_BINS, collect_result, load_results, read_result
from .registry import (
    Claim,
    Comparison,
    EvalVariant,
    ModelFigure,
    claims,
    eval_variants,
    model_figures,
    readmes,
    register_results,
    unregister_results,
)
from .report import (
    claim_verdict,
    gains_over,
    many_lines,
    measure_claim,
    plot_results,
    stage_gaps,
    subset_rows,
    summary_rows,
    variant_rows,
)
from .runner import (
    RunBusy,
    execute,
    extract_weights,
    progress_line,
    publish,
    run_matrix,
    subprocess_trainer,
)

__all__ = [
    "AP_COLUMNS",
    "Claim",
    "Comparison",
    "EvalVariant",
    "IGNORED_KEYS",
    "ModelFigure",
    "PRETRAINED",
    "BASELINE_CONFIG",
    "CURRENT_PROTOCOL",
    "Pretraining",
    "Run",
    "SUBSET_BINS",
    "claim_verdict",
    "claims",
    "claims_table",
    "collect_result",
    "config_diff",
    "config_hash",
    "config_parts",
    "eval_variants",
    "execute",
    "extract_weights",
    "gains_over",
    "load_results",
    "many_lines",
    "measure_claim",
    "model_figures",
    "plot_results",
    "progress_line",
    "publish",
    "read_result",
    "readmes",
    "register_results",
    "results_block",
    "results_source",
    "run_matrix",
    "RunBusy",
    "run_name",
    "stage_gaps",
    "subprocess_trainer",
    "subset_rows",
    "summary_rows",
    "unregister_results",
    "variant_rows",
    "weights_sha256",
    "write_model_zoo_md",
    "write_readme_blocks",
    "write_reports",
    "write_results_md",
]
