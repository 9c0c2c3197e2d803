#!/usr/bin/env python
"""Run a results matrix (configs x seeds) of the shapes benchmark, keep one small result file per
run in the repository, and regenerate docs/results.md, its plots, MODEL_ZOO.md and the paper
READMEs' results and claims blocks from those files (cascade_zoo.results).

    python tools/run_results.py --protocol Protocols/shapes_v3.yaml --seeds 0 1 2 --configs \\
        Baselines/faster_rcnn_R_18_FPN_shapes.yaml CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml
    python tools/run_results.py --report-only      # tables, plots, MODEL_ZOO.md from the files
    python tools/run_results.py --report-only --protocol Protocols/shapes_v4.yaml  # claims: v4
    python tools/run_results.py --configs \\
        CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+CascadeRCNN/ablations/integral_loss.yaml
    python tools/run_results.py --seeds 0 --configs A.yaml B.yaml -- SOLVER.MAX_ITER 500

KEY VALUE overrides of every run come last, after `--` (or after a flag of one value); every
config and the overrides are loaded before anything trains, and a bad one is refused.

Configs are named relative to configs/. BASE.yaml+DELTA.yaml (several + allowed) is a config and
deltas merged over it in order, named by the stems joined by + in the last file's directory
(CascadeRCNN/ablations/cascade_rcnn_R_18_FPN_shapes+integral_loss); its config hash is that of
the merged config. With --protocol, each is a method config and the run's config is it followed
by the protocol file; the run is named <protocol stem>/<config's name>. The report measures the
papers' claims on the runs of --protocol, by default on those of the current protocol
(cascade_zoo.results.CURRENT_PROTOCOL). Each run
trains with train_net.py (--resume) in <runs-dir>/<name>/seed<k> (its output in train_stdout.txt
there; a progress line every 45 s here), so a killed run continues from its last checkpoint; a
run whose result file <results-dir>/<name>/seed<k>.json is there, valid and of the same config is
skipped, one of another config or pretrained backbone is set aside and the run re-done
(docs/benchmark_protocol.md). Finished runs without KEY VALUE overrides publish their model
(weights only), metrics.json and SHA256SUMS under the model zoo (cascade_zoo://<name>/seed<k>/,
see cascade_zoo.model_zoo).
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
from cascade_zoo.model_zoo import REPO_ROOT, cache_dir
from cascade_zoo.results import (
    BASELINE_CONFIG,
    CURRENT_PROTOCOL,
    Run,
    results_source,
    run_matrix,
    run_name,
    write_reports,
)
from cascade_zoo.utils.env import default_device

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULTS_MD = REPO_ROOT / "docs" / "results.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add = parser.add_argument
    add("--configs", nargs="*", default=[],
        help="relative to configs/; BASE.yaml+DELTA.yaml merges deltas over a config")  # fmt: skip
    add("--protocol", help="a file relative to configs/ merged over every config; the report "
        "measures the papers' claims on that protocol's runs")  # fmt: skip
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--results-dir", default=str(RESULTS_DIR))
    add("--runs-dir", help="default: $CASCADE_ZOO_CACHE/benchmark_runs")
    add("--device", help="default: cuda if available, else cpu")
    add("--report-only", action="store_true", help="only regenerate the reports")
    add("--no-report", action="store_true")
    add("--fill-missing", action="store_true",
        help="add the by-object-count AP and the eval variants to finished results that lack "
        "them (re-training runs whose files are gone)")  # fmt: skip
    add("--prune-checkpoints", action="store_true",
        help="once a run is done, delete its periodic checkpoints but model_final.pth and the "
        "last one before the first learning-rate drop (where a longer schedule may start, "
        "dev/continue_run.py); also of runs done before, if their files are in "
        "--runs-dir")  # fmt: skip
    add("--seed-major", action="store_true", help="every config's seed 0 first, then seed 1, "
        "... (default: each config's seeds in turn)")  # fmt: skip
    add("--lanes", type=int, default=1,
        help="run the matrix in this many processes at once, each taking the next run no other "
        "holds, with cpu_count/lanes torch threads (OMP_NUM_THREADS) unless it is set; the "
        "reports are written once all have ended")  # fmt: skip
    add("--lane", type=int, help=argparse.SUPPRESS)  # set by --lanes in its child processes
    add("--results-md", default=str(RESULTS_MD))
    add("--model-zoo-md", default=str(REPO_ROOT / "MODEL_ZOO.md"))
    add("--figures-dir", default=str(REPO_ROOT / "docs" / "images"))
    readmes = parser.add_mutually_exclusive_group()
    readmes.add_argument("--readme-dir", help="write the paper READMEs with their results blocks "
                         "regenerated under this directory (default: in place in the repository "
                         "when --results-md is the default, else not at all)")  # fmt: skip
    readmes.add_argument("--no-readmes", action="store_true", help="leave the READMEs alone")
    add("--baseline", help="the plots' baseline run (default: Faster R-CNN under the protocol)")
    add("opts", nargs=argparse.REMAINDER, help="config overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.lanes < 1:
        parser.error(f"--lanes must be at least 1, got {args.lanes}")
    if args.opts[:1] == ["--"]:  # "... --configs A.yaml B.yaml -- KEY VALUE"
        args.opts = args.opts[1:]
    if not args.report_only:
        _check_matrix(parser, args)
    tag = "run_results" + (f" lane {args.lane}" if args.lane else "")
    logging.basicConfig(level=logging.INFO, format=f"[{tag}] %(message)s")
    # SIGTERM (kill) as an exception: the running training is stopped and its time recorded
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results_dir = Path(args.results_dir)
    failed, lane_status = [], 0
    if args.lanes > 1 and not args.report_only:
        lane_status = run_lanes(sys.argv[1:] if argv is None else list(argv), args.lanes)
    elif not args.report_only:
        failed = run_matrix(
            args.configs, args.seeds, results_dir=results_dir, protocol=args.protocol,
            runs_dir=Path(args.runs_dir or os.path.join(cache_dir(), "benchmark_runs")),
            device=args.device or default_device("cuda"), opts=args.opts,
            fill_missing=args.fill_missing, prune=args.prune_checkpoints,
            seed_major=args.seed_major,
        )  # fmt: skip
    if not args.no_report:
        protocol = args.protocol or CURRENT_PROTOCOL
        baseline = args.baseline or run_name(BASELINE_CONFIG, protocol)
        # the READMEs are rewritten in place only when the report goes to the repository
        readme_dir = args.readme_dir
        if readme_dir is None and not args.no_readmes:
            readme_dir = REPO_ROOT if Path(args.results_md).resolve() == RESULTS_MD else None
        # the report's "Regenerate" line: the flags that chose what it reports
        command = ["python", "tools/run_results.py", "--report-only"]
        if args.protocol:
            command += ["--protocol", args.protocol]
        if results_dir.resolve() != RESULTS_DIR.resolve():
            command += ["--results-dir", results_source(results_dir).rstrip("/")]
        write_reports(
            results_dir, results_md=Path(args.results_md), model_zoo_md=Path(args.model_zoo_md),
            figures_dir=Path(args.figures_dir), readme_dir=readme_dir and Path(readme_dir),
            baseline=baseline, protocol=protocol, command=" ".join(command),
        )  # fmt: skip
    for config, seed in failed:
        logging.error(f"not done: {config} seed {seed} (run the same command again to resume)")
    if lane_status:
        logging.error(f"a lane exited with {lane_status} (its lines above say which runs failed)")
    return 1 if failed or lane_status else 0


def _check_matrix(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before anything trains, a config that is not a file under configs/ or overrides
    that do not merge (each run's config is loaded and hashed as the runner will)."""
    for config in args.configs:
        try:
            Run(config, 0, Path(args.results_dir), Path("."), args.opts, protocol=args.protocol)
        except Exception as e:
            hint = ""
            if not config.endswith(".yaml"):
                hint = (" (KEY VALUE overrides go after `--` or after a one-value flag: "
                        "--configs A.yaml -- SOLVER.MAX_ITER 4)")  # fmt: skip
            parser.error(f"--configs {config}: {e}{hint}")


# Seconds between the starts of two lanes, so that they take the matrix's runs in its order.
LANE_STAGGER_S = 5.0


def run_lanes(argv: List[str], lanes: int, stagger: float = LANE_STAGGER_S) -> int:
    """Run this tool's matrix in ``lanes`` child processes at once (the same arguments, with
    --lane k and --no-report); the runs' locks (cascade_zoo.results.runner.run_lock) give each
    run to one of them. A lane's torch threads: OMP_NUM_THREADS if set, else cpu_count / lanes.
    Returns 0, or the first non-zero exit status of a lane."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // lanes)))
    base = [a for a in _without_lanes(argv) if a != "--no-report"]
    procs = []
    try:
        for k in range(1, lanes + 1):
            if procs:
                time.sleep(stagger)
            args = [sys.executable, str(Path(__file__).resolve()), "--lane", str(k),
                    "--no-report", *base]  # fmt: skip
            threads = env["OMP_NUM_THREADS"]
            logging.info(f"lane {k}: {' '.join(args[1:])} (OMP_NUM_THREADS={threads})")
            procs.append(subprocess.Popen(args, env=env))
        codes = [proc.wait() for proc in procs]
    except BaseException:  # killed: stop the lanes too (each records its training's time)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        raise
    return next((c for c in codes if c), 0)


def _without_lanes(argv: List[str]) -> List[str]:
    """``argv`` less --lanes N / --lanes=N and --lane N (the overrides after the flags are kept)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--lanes", "--lane"):
            skip = True
        elif not a.startswith(("--lanes=", "--lane=")):
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
