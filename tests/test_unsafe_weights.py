"""A checkpoint whose unpickling would run code is refused by every documented way of loading
weights (README, tools/, the notebook's ZooPredictor, the model zoo): the code never runs.

The malicious files (a ``.pkl`` as Detectron2's model zoo uses, a ``.pth`` as torch.save writes)
would create a marker file when unpickled; a control loads them with unsafe pickling allowed and
sees the marker appear, so the payload is real."""

import builtins
import importlib.util
import pickle

import pytest
import torch
from conftest import ROOT, run_train_net
from torch import nn

from cascade_zoo import ZooPredictor, model_zoo, setup_cfg
from cascade_zoo.engine.checkpoint import UnsafeCheckpointError, ZooCheckpointer

CONFIG = str(ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml")


class _CreatesMarker:
    """Unpickling this runs ``open(marker, "w")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def _tool(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=[".pkl", ".pth"])
def evil(request, tmp_path):
    """(malicious checkpoint, marker path that its unpickling would create)."""
    marker = tmp_path / "marker"
    path = tmp_path / f"evil{request.param}"
    payload = {"model": {}, "__author__": "someone", "extra": _CreatesMarker(marker)}
    if request.param == ".pkl":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    return path, marker


def test_the_payload_is_real(evil):
    path, marker = evil
    ZooCheckpointer(nn.Linear(1, 1), allow_unsafe_pickle=True).load(str(path))
    assert marker.exists()


def test_zoo_predictor_refuses_it(evil):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match="ALLOW_UNSAFE_PICKLE"):
        ZooPredictor(setup_cfg(CONFIG, ["MODEL.WEIGHTS", str(path)]))
    assert not marker.exists()


def test_model_zoo_refuses_it(evil, tmp_path, monkeypatch):
    """A cascade_zoo:// model that is a malicious file (model_zoo.get), and publishing one."""
    path, marker = evil
    zoo = tmp_path / "zoo"
    target = zoo / "CascadeRCNN" / "cascade_rcnn_instant_test" / "seed0" / "model_final.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())  # a .pkl's bytes under a .pth name: torch.load's path
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(zoo))
    # (UnsafeCheckpointError is an UnpicklingError; a plain pickle read as a .pth fails earlier)
    with pytest.raises(pickle.UnpicklingError):
        model_zoo.get("CascadeRCNN/cascade_rcnn_instant_test.yaml", trained=True, device="cpu")
    with pytest.raises(pickle.UnpicklingError):
        model_zoo.publish_model(str(path), "CascadeRCNN/cascade_rcnn_instant_test.yaml", 1)
    assert not marker.exists()


@pytest.mark.parametrize("tool", ["demo.py", "visualize.py", "deploy/export_model.py"])
def test_tools_refuse_it(evil, tool, tmp_path):
    from detectron2.data import DatasetCatalog

    from cascade_zoo.data import prepare_shapes

    path, marker = evil
    prepare_shapes("shapes_tiny_val")
    image = DatasetCatalog.get("shapes_tiny_val")[0]["file_name"]
    args = {
        "demo.py": ["--input", image, "--output", str(tmp_path / "out")],
        "visualize.py": ["--dataset", "shapes_tiny_val", "--output", str(tmp_path / "p.png")],
        "deploy/export_model.py": ["--output", str(tmp_path / "exported")],
    }[tool]
    main = _tool(ROOT / "tools" / tool).main
    with pytest.raises(SystemExit) as stopped:
        main(["--config-file", CONFIG, *args, "--opts", "MODEL.WEIGHTS", str(path)])
    assert "Refusing to load" in str(stopped.value.code)
    assert not marker.exists()


def test_train_net_eval_only_refuses_it(evil, tmp_path):
    path, marker = evil
    proc = run_train_net(
        "--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", path,
        "OUTPUT_DIR", tmp_path / "out", check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Refusing to load" in proc.stdout, proc.stdout[-3000:]
    assert not marker.exists()
