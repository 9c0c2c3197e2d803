"""Installs the cascade-zoo packages under projects/ (pip install -e .)."""

from setuptools import find_packages, setup

setup(
    name="cascade-zoo",
    version="0.1.0",
    description="Five high-quality two-stage detectors on one box-cascade core, for Detectron2",
    python_requires=">=3.8",
    package_dir={"": "projects"},
    packages=find_packages(where="projects"),
    # torch, torchvision and detectron2 are installed by dev/setup_env.sh (see README).
    install_requires=["fvcore", "pycocotools", "matplotlib", "tabulate"],
)
