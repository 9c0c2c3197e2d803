"""dev/gpu_check.sh, the one-command GPU check, where no GPU is needed: the script parses, says how
to use it, its Python helpers compile and report the machine, and without a GPU it stops saying
so. `bash dev/gpu_check.sh --dry-run` runs every step on the CPU at a tiny size, in about a
minute on 2 cores: too slow for the suite, run it after changing the script."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "dev" / "gpu_check.sh"


def _helpers_source():
    text = SCRIPT.read_text()
    start = text.index("<<'PY'\n") + len("<<'PY'\n")
    return text[start : text.index("\nPY\n", start)] + "\n"


def test_script_parses_and_says_how_to_use_it():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert (
        usage.returncode == 0
        and "--dry-run" in usage.stdout
        and "ONE summary table" in (usage.stdout)
    )
    wrong = subprocess.run(["bash", str(SCRIPT), "--bad"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "unknown argument '--bad'" in wrong.stderr


def test_helpers_compile_and_describe_the_machine(tmp_path):
    helpers = tmp_path / "gpu_check_helpers.py"
    helpers.write_text(_helpers_source())
    compile(helpers.read_text(), str(helpers), "exec")
    run = [sys.executable, str(helpers)]
    described = subprocess.run([*run, "machine"], capture_output=True, text=True, cwd=ROOT)
    assert described.returncode == 0 and f"torch {torch.__version__}" in described.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_without_a_gpu_the_check_stops_at_once(tmp_path):
    env = {**os.environ, "CASCADE_ZOO_VENV": str(ROOT / ".venv")}
    if not (ROOT / ".venv" / "bin" / "python").exists():
        env["CASCADE_ZOO_VENV"] = str(tmp_path / "venv")
        (tmp_path / "venv" / "bin").mkdir(parents=True)
        (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--no-setup", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "no GPU" in proc.stderr
    assert "this check needs a GPU (--dry-run runs it on the CPU)" in proc.stderr
