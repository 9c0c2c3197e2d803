"""The installed Detectron2 does what the project needs; in the Python-only fallback, compiled
ops fail only when called, with an error naming the op."""

import os
from pathlib import Path

import pytest
from detectron2 import model_zoo

from cascade_zoo.utils.env import compiled_ops_available, default_device


def test_model_zoo_configs_are_installed():
    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
    assert model_zoo.get_config("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml").MODEL.MASK_ON


def test_layers_import_and_compiled_ops_fail_only_when_called():
    import detectron2.layers  # imports deform_conv, rotated boxes: they import _C
    from detectron2 import _C

    assert hasattr(detectron2.layers, "ROIAlign")
    if compiled_ops_available():
        pytest.skip("official Detectron2 with compiled ops is installed")
    with pytest.raises(RuntimeError, match=r"_C\.nms_rotated is a compiled Detectron2 op"):
        _C.nms_rotated()
    import torch
    from detectron2.layers import nms_rotated  # a torch op the extension would register

    with pytest.raises(RuntimeError, match=r"_C\.nms_rotated is a compiled Detectron2 op"):
        nms_rotated(torch.zeros(1, 5), torch.ones(1), 0.5)


def test_collect_env_works_without_compiled_ops():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_device_falls_back_to_cpu_without_cuda():
    import torch

    assert default_device("cpu") == "cpu"
    assert default_device("cuda") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_setup_uses_the_detectron2_of_a_virtualenv_given_as_python(tmp_path):
    """$PYTHON is a virtualenv holding torch + Detectron2 (here: a throwaway venv that sees this
    project's venv, the "user environment"). Set-up must build a venv that imports that
    Detectron2 and torch, and install neither the fallback, nor torch, nor the v0.6 pins."""
    import subprocess
    import sys
    import sysconfig

    import detectron2
    import torch
    from conftest import ROOT

    user_env = tmp_path / "user-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", user_env], check=True)
    user_site = subprocess.check_output(
        [
            user_env / "bin" / "python",
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        text=True,
    ).strip()
    own_site = sysconfig.get_path("purelib")
    (Path(user_site) / "user-packages.pth").write_text(
        f"import site; site.addsitedir({own_site!r})\n"
    )

    venv = tmp_path / "project-venv"
    env = {**os.environ, "PYTHON": str(user_env / "bin" / "python"), "CASCADE_ZOO_VENV": str(venv)}
    proc = subprocess.run(
        ["bash", ROOT / "dev" / "setup_env.sh"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "using the Detectron2 and torch importable from" in proc.stdout
    assert "installing pb1-detectron2" not in proc.stdout and "installing torch" not in proc.stdout

    seen = subprocess.check_output(
        [venv / "bin" / "python", "-c", "import detectron2, torch, cascade_zoo, numpy; "
         "print(detectron2.__file__); print(torch.__file__); print(numpy.__file__)"],
        text=True, cwd=tmp_path,
    ).split()  # fmt: skip
    assert seen[:2] == [detectron2.__file__, torch.__file__]
    assert seen[2].startswith(own_site)  # the environment's numpy, not a pinned one
    venv_site = Path(
        subprocess.check_output(
            [
                venv / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            text=True,
        ).strip()
    )
    installed = {p.name.split("-")[0].lower() for p in venv_site.glob("*.dist-info")}
    assert not installed & {
        "pb1_detectron2",
        "detectron2",
        "torch",
        "numpy",
        "pillow",
        "setuptools",
        "pip",
    }, installed

    again = subprocess.run(
        ["bash", ROOT / "dev" / "setup_env.sh"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert again.returncode == 0 and "is up to date" in again.stdout

    # `make setup` without PYTHON= keeps the mode the venv was made in (it once rebuilt it in
    # the fallback mode, since python3 has no Detectron2)
    def setup(**changes):
        run_env = {k: v for k, v in env.items() if k != "PYTHON"}
        run_env.update(changes)
        return subprocess.run(
            ["bash", ROOT / "dev" / "setup_env.sh"], env=run_env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
        )  # fmt: skip

    kept = setup()
    assert kept.returncode == 0, kept.stdout[-4000:]
    assert f"keeping the mode {venv} was made in: python-env" in kept.stdout
    assert "is up to date" in kept.stdout and "rebuilding" not in kept.stdout
    # asking for python-env with an interpreter without Detectron2: an error, nothing rebuilt
    no_d2 = setup(PYTHON=str(user_env / "no-d2-python"), CASCADE_ZOO_SETUP_MODE="python-env")
    assert no_d2.returncode == 1 and "CASCADE_ZOO_SETUP_MODE=python-env, but" in no_d2.stdout
    # the recorded interpreter is gone: an error saying how to go on, not a silent fallback
    mode_file = venv / ".cascade-zoo-mode"
    recorded = mode_file.read_text()
    mode_file.write_text(f"python-env {tmp_path / 'gone' / 'python'}\n")
    gone = setup()
    assert gone.returncode == 1 and "CASCADE_ZOO_SETUP_MODE=fallback" in gone.stdout, gone.stdout
    assert (venv / "bin" / "python").exists()
    mode_file.write_text(recorded)
    assert setup(CASCADE_ZOO_SETUP_MODE="other").returncode == 1
