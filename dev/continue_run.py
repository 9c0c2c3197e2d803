#!/usr/bin/env python
r"""Start a run with a longer schedule from a shorter run's checkpoint (the convergence runs'
1.5x runs; cascade_zoo.results.continuation).

    python dev/continue_run.py --protocol Protocols/shapes_v4.yaml \
        --config Baselines/faster_rcnn_R_18_FPN_shapes.yaml --seed 0 --iteration 9000 \
        --source-runs-dir output/runs --runs-dir output/runs-1.5x \
        SOLVER.MAX_ITER 18000 SOLVER.STEPS "(13500, 16200)"

The source is the run of --config (and --protocol) without the overrides, in --source-runs-dir
(or with --source-opts, e.g. a run made under an earlier schedule of the protocol:
--source-opts "SOLVER.MAX_ITER 12000 SOLVER.STEPS (9000,10800)"); the target the same with the
overrides, in --runs-dir. Both must be the same run up to
--iteration (only MAX_ITER and STEPS differ, no drop before it). Then run tools/run_results.py
with the target's --runs-dir and overrides: it resumes from the copied checkpoint.
"""

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
from cascade_zoo.results import Run, RunBusy
from cascade_zoo.results.continuation import continue_from


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--config", required=True, help="method config, relative to configs/")
    parser.add_argument("--protocol", help="protocol file, relative to configs/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iteration", type=int, required=True, help="start from this checkpoint")
    parser.add_argument("--source-runs-dir", required=True)
    parser.add_argument(
        "--source-opts",
        default="",
        help="the source run's KEY VALUE overrides, in one string (default: none)",
    )
    parser.add_argument("--runs-dir", required=True, help="the longer run's --runs-dir")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="the longer run's KEY VALUE")
    args = parser.parse_args(argv)
    unused = Path(tempfile.gettempdir())  # result files are not read or written here
    source_opts = shlex.split(args.source_opts)
    if len(source_opts) % 2:
        sys.exit(f"error: --source-opts needs KEY VALUE pairs, got {source_opts}")
    source = Run(args.config, args.seed, unused, Path(args.source_runs_dir), source_opts,
                 protocol=args.protocol)  # fmt: skip
    target = Run(args.config, args.seed, unused, Path(args.runs_dir), args.opts,
                 protocol=args.protocol)  # fmt: skip
    try:
        record = continue_from(source, target, args.iteration)
    except (ValueError, FileNotFoundError, RunBusy) as e:
        sys.exit(f"error: {e}")
    print(f"{target.output_dir}: starts from {record['run_dir']}/{record['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
