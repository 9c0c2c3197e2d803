"""Make PyPI's pb1-detectron2 0.6 sdist installable without its C++/CUDA sources.

Usage: python dev/prepare_detectron2_sdist.py <unpacked sdist dir>

The sdist ships Detectron2 v0.6's Python code but not ``detectron2/layers/csrc``, so:
  1. its setup.py must not build the ``detectron2._C`` extension;
  2. its setup.py collects the model-zoo configs from a top-level ``configs/`` that the sdist
     lacks (they sit in ``detectron2/model_zoo/configs``), so they are copied there;
  3. ``detectron2/_C.py`` becomes dev/detectron2_C_stub.py, which imports and raises a clear
     error when a compiled op is called.
"""

import shutil
import sys
from pathlib import Path


def main(src: Path) -> None:
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    old = "ext_modules=get_extensions(),"
    if text.count(old) != 1:
        sys.exit(f"{setup_py}: expected one '{old}', found {text.count(old)}: not the 0.6 sdist?")
    setup_py.write_text(text.replace(old, "ext_modules=[],"))

    zoo_configs = src / "detectron2" / "model_zoo" / "configs"
    if not (src / "configs").exists():
        if not zoo_configs.is_dir():
            sys.exit(f"{zoo_configs} is missing: cannot install the model-zoo configs")
        shutil.copytree(zoo_configs, src / "configs")

    stub = Path(__file__).with_name("detectron2_C_stub.py")
    shutil.copyfile(stub, src / "detectron2" / "_C.py")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
