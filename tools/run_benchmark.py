#!/usr/bin/env python
"""Deprecated: the former name of tools/run_results.py, kept so that recorded commands still
work. It says so on one line and runs tools/run_results.py with the same arguments."""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    print("tools/run_benchmark.py is deprecated: use tools/run_results.py", file=sys.stderr)
    sys.argv[0] = str(Path(__file__).with_name("run_results.py"))
    runpy.run_path(sys.argv[0], run_name="__main__")
