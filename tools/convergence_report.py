#!/usr/bin/env python
"""Regenerate the convergence blocks of a Markdown file from result files.

    python tools/convergence_report.py [--doc docs/benchmark_protocol.md] [--check]

A block is `<!-- convergence: FILE[=LONGER] ... -->` ... `<!-- /convergence -->`, FILE a result
file of tools/run_results.py relative to the repository (LONGER: the same run 1.5x as long). The
block gets each run's AP-vs-iteration curve and protocol v4's two criteria
(cascade_zoo.results.convergence): AP rises by less than 1.0 between the last two evaluations
before the first learning-rate drop that are at least 20% of the schedule apart, and the longer
run ends less than 0.5 AP higher. --check: exit 1 if the file is not up to date, writing nothing.
"""

import argparse
import sys
from pathlib import Path

import cascade_zoo  # noqa: F401  (first: it quiets the dependencies' import-time warnings)

# isort: split
from cascade_zoo.results import convergence

DEFAULT_DOC = convergence.REPO / "docs" / "benchmark_protocol.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--doc", default=str(DEFAULT_DOC), help="the Markdown file (in place)")
    parser.add_argument("--check", action="store_true", help="only check that it is up to date")
    args = parser.parse_args(argv)
    doc = Path(args.doc)
    if not doc.is_file():
        sys.exit(f"error: {doc} does not exist")
    text = doc.read_text()
    try:
        new = convergence.regenerated(text)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {doc}: {e}")
    if args.check:
        if new != text:
            print(f"{doc}: convergence blocks out of date (run {convergence.TOOL})")
            return 1
        return 0
    if new != text:
        doc.write_text(new)
        print(f"Wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
