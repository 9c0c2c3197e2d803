"""docs/notebooks/inference.ipynb runs top to bottom, headless, with its defaults; any cell error
fails the test. Its parameters come from environment variables: DEMO_DIR stands for `make demo`'s
output/demo (here a tiny trained model of the test suite, with CONFIG its config), and
CASCADE_ZOO_MODEL_ZOO for the model zoo a fresh clone would use."""

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image

from cascade_zoo import model_zoo

NOTEBOOK = ROOT / "docs" / "notebooks" / "inference.ipynb"
FLAGSHIP = "shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"


def _run(monkeypatch, **params):
    for key, value in params.items():
        monkeypatch.setenv(key, str(value))
    for key in ("CONFIG", "WEIGHTS", "COMPARE"):  # the defaults, unless given
        if key not in params:
            monkeypatch.delenv(key, raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError on any cell error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/markdown", "")) for o in outputs
    )
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    return text, pictures


@pytest.fixture
def image_from_disk(tmp_path):
    """An image from disk that is not one of the dataset's: a shapes image, cropped, as PNG."""
    from detectron2.data import DatasetCatalog

    from cascade_zoo.data import prepare_shapes

    prepare_shapes("shapes_tiny_val")
    source = DatasetCatalog.get("shapes_tiny_val")[2]["file_name"]
    Image.open(source).crop((10, 10, 150, 130)).save(tmp_path / "from_disk.png")
    return tmp_path / "from_disk.png"


def test_after_make_demo(trained_core, image_from_disk, monkeypatch):
    """`make demo`'s output directory holds a model: it is the one run, and compared (its
    stage-wise evaluation) with the benchmark's Faster R-CNN, from the repository's files."""
    core_dir, _ = trained_core
    config = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"
    text, pictures = _run(
        monkeypatch, DEMO_DIR=core_dir, CONFIG=config, DATASET="shapes_tiny_val",
        IMAGE=image_from_disk, SCORE_THRESHOLD="0.0",
    )  # fmt: skip
    assert f"weights: {core_dir / 'model_final.pth'}" in text
    # the per-stage cell drew each stage, the table has both models' curves
    assert "stage1, stage2, stage3, ensemble" in text
    assert "this model/stage1" in text and "Faster R-CNN (benchmark)" in text
    assert len(pictures) == 4  # shapes image, image from disk, stages, AP-vs-IoU curves
    assert f"{image_from_disk}: " in text  # the image from disk was the one drawn


def test_fresh_clone_uses_the_shipped_flagship(tmp_path, image_from_disk, monkeypatch):
    """No output/demo and an empty model-zoo directory, as on a fresh clone: the flagship Cascade
    R-CNN the repository ships is run, per stage, and compared through its result file."""
    shipped = model_zoo.SHIPPED_DIR / model_zoo.config_name(FLAGSHIP) / "seed0" / "model_final.pth"
    assert shipped.is_file(), f"the repository ships {shipped}"
    (tmp_path / "empty").mkdir()
    text, pictures = _run(
        monkeypatch, DEMO_DIR=tmp_path / "no_demo", CASCADE_ZOO_MODEL_ZOO=tmp_path / "empty",
        CASCADE_ZOO_IGNORE_SHIPPED="", DATASET="shapes_tiny_val", IMAGE=image_from_disk,
    )  # fmt: skip
    assert (
        "weights: cascade_zoo://shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed0/model_final.pth"
        in (text)
    )
    assert "this model/stage3" in text and "Faster R-CNN (benchmark)" in text
    assert len(pictures) == 4


def test_fresh_clone_uses_the_model_zoo(tmp_path, image_from_disk, monkeypatch):
    """No output/demo, and the shipped files ignored: the model zoo's flagship Cascade R-CNN
    (here a random one, published into a model-zoo directory of the test's own) is run and
    compared through its result file."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    monkeypatch.setenv("CASCADE_ZOO_IGNORE_SHIPPED", "1")
    cfg = model_zoo.get_config(FLAGSHIP)
    cfg.MODEL.DEVICE = "cpu"
    (tmp_path / "run").mkdir()
    DetectionCheckpointer(build_model(cfg), str(tmp_path / "run")).save("model_final")
    model_zoo.publish_model(
        str(tmp_path / "run" / "model_final.pth"), FLAGSHIP, zoo_dir=str(tmp_path / "zoo")
    )
    params = dict(DATASET="shapes_tiny_val", IMAGE=image_from_disk, SCORE_THRESHOLD="0.0")
    text, pictures = _run(
        monkeypatch, DEMO_DIR=tmp_path / "no_demo", CASCADE_ZOO_MODEL_ZOO=tmp_path / "zoo", **params
    )
    assert (
        "weights: cascade_zoo://shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed0/model_final.pth"
        in (text)
    )
    assert "this model/stage3" in text and "Faster R-CNN (benchmark)" in text
    assert len(pictures) == 4

    # and with no model at all, the cell that picks it says how to get one
    with pytest.raises(CellExecutionError) as error:
        _run(
            monkeypatch, DEMO_DIR=tmp_path / "no_demo", CASCADE_ZOO_MODEL_ZOO=tmp_path / "empty",
            **params,
        )  # fmt: skip
    message = str(error.value)
    assert "No model to run" in message and "`make demo` trains it" in message
    assert "CASCADE_ZOO_MODEL_ZOO" in message and "tools/publish_model.py" in message
