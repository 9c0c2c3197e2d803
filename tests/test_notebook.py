"""docs/notebooks/inference.ipynb runs top to bottom, headless, on the tiny trained models of the
test suite (its parameters come from environment variables); any cell error fails the test."""

import nbformat
from conftest import ROOT
from nbclient import NotebookClient
from PIL import Image


def test_inference_notebook_runs(trained_core, trained_cascade, tmp_path, monkeypatch):
    core_dir, _ = trained_core
    # an image from disk that is not one of the dataset's: a shapes image, cropped, as PNG
    from detectron2.data import DatasetCatalog

    from cascade_zoo.data import prepare_shapes

    prepare_shapes("shapes_tiny_val")
    source = DatasetCatalog.get("shapes_tiny_val")[2]["file_name"]
    Image.open(source).crop((10, 10, 150, 130)).save(tmp_path / "from_disk.png")
    stagewise = next(core_dir.glob("inference/*/stagewise_results.json"))
    params = {
        "CONFIG": str(ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"),
        "WEIGHTS": str(core_dir / "model_final.pth"),
        "DATASET": "shapes_tiny_val",
        "IMAGE": str(tmp_path / "from_disk.png"),
        "COMPARE": f"{stagewise}:core,{trained_cascade / 'metrics.json'}:detectron2",
        "SCORE_THRESHOLD": "0.0",
    }
    for key, value in params.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(ROOT / "docs" / "notebooks" / "inference.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()  # raises CellExecutionError on any cell error

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/markdown", "")) for o in outputs
    )
    # the per-stage cell drew each stage, the table has both models' curves
    assert "stage1, stage2, stage3, ensemble" in text
    assert "core/stage1" in text and "detectron2" in text
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 4  # shapes image, image from disk, stages, AP-vs-IoU curves
    assert f"{tmp_path / 'from_disk.png'}: " in text  # the image from disk was the one drawn
