"""tools/demo.py on images, globs, directories with unreadable files, and a video."""

import importlib.util
import logging
import shutil

import cv2
import numpy as np
import pytest
from conftest import ROOT
from detectron2.data import DatasetCatalog
from PIL import Image

from cascade_zoo.data import prepare_shapes

spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)

# A randomly initialised core cascade: what is drawn does not matter here, only what is read,
# written and reported. Threshold 0 so that every picture has detections drawn.
ARGS = ["--config-file", str(ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml")]
ARGS += ["--confidence-threshold", "0.0"]


@pytest.fixture
def demo_log():
    """The demo's log lines, as a list that grows while the test runs."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    demo.logger.addHandler(handler)
    yield lines
    demo.logger.removeHandler(handler)


@pytest.fixture(scope="module")
def shapes_images():
    prepare_shapes("shapes_tiny_val")
    return [r["file_name"] for r in DatasetCatalog.get("shapes_tiny_val")[:3]]


def test_directory_with_unreadable_files(tmp_path, shapes_images, demo_log):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(shapes_images[0], inputs / "a.jpg")
    Image.open(shapes_images[1]).save(inputs / "b.png")
    (inputs / "broken.jpg").write_bytes(b"not an image at all")
    (inputs / "truncated.png").write_bytes((inputs / "b.png").read_bytes()[:200])
    (inputs / "notes.txt").write_text("not an input")
    deep = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(deep).save(inputs / "sixteen_bits.png")  # a 16-bit grayscale PNG
    out = tmp_path / "out"
    rc = demo.main(
        [*ARGS, "--input", str(inputs), str(tmp_path / "nothing*.jpg"), "--output", str(out)]
    )
    log = "\n".join(demo_log)
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png"]
    for name in ("broken.jpg", "truncated.png", "sixteen_bits.png"):
        assert f"{inputs / name}: cannot read image" in log
    assert "sixteen_bits.png' has more than 8 bits per pixel" in log
    assert "nothing*.jpg: no such file, directory or matching files" in log
    assert "4 input(s) failed; 2 image(s) processed" in log
    assert Image.open(out / "a.jpg").size == Image.open(shapes_images[0]).size


def test_glob_to_one_file_with_stages(tmp_path, shapes_images):
    shutil.copy(shapes_images[2], tmp_path / "one.jpg")
    out = tmp_path / "drawn.png"
    assert (
        demo.main([*ARGS, "--input", str(tmp_path / "*.jpg"), "--output", str(out), "--stages"])
        == 0
    )
    width, height = Image.open(shapes_images[2]).size
    drawn = Image.open(out)
    # three stages and the ensemble side by side, each with a caption band
    assert drawn.size[0] == 4 * width and drawn.size[1] > height


def test_video(tmp_path, shapes_images, demo_log):
    frames = [cv2.resize(cv2.imread(p), (160, 128)) for p in shapes_images]
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (160, 128))
    for frame in frames:
        writer.write(frame)
    writer.release()
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)

    assert demo.main([*ARGS, "--video-input", path, "--output", str(tmp_path / "out")]) == 0
    result = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    written = []
    ok, frame = result.read()
    while ok:
        written.append(frame)
        ok, frame = result.read()
    assert len(written) == 3 and written[0].shape == (128, 160, 3)
    assert np.abs(written[0].astype(int) - frames[0]).mean() > 1  # predictions drawn on it

    assert demo.main([*ARGS, "--video-input", str(tmp_path / "bad.mp4")]) == 1
    assert "bad.mp4: cannot read video" in "\n".join(demo_log)


@pytest.mark.parametrize("form", ["--opts", "after --input", "trailing"])
def test_config_overrides_in_every_form(form, tmp_path, shapes_images):
    """Detectron2's --opts KEY VALUE, and the older trailing KEY VALUE, also right after --input's
    files (which once took them as inputs): the override reaches the config."""
    missing = str(tmp_path / "missing.pth")
    inputs = ["--input", shapes_images[0]]
    argv = {
        "--opts": [*ARGS, *inputs, "--opts", "MODEL.WEIGHTS", missing],
        "after --input": [*ARGS, *inputs, "MODEL.WEIGHTS", missing],
        "trailing": [*ARGS, *inputs, "--output", str(tmp_path), "MODEL.WEIGHTS", missing],
    }[form]
    with pytest.raises(SystemExit, match=f"MODEL.WEIGHTS '{missing}' does not exist"):
        demo.main(argv)


def test_a_model_zoo_name_the_zoo_lacks_says_where_it_looked(tmp_path, shapes_images, monkeypatch):
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "zoo"))
    argv = [*ARGS, "--input", shapes_images[0], "--opts", "MODEL.WEIGHTS", "cascade_zoo://A/b.pth"]
    with pytest.raises(SystemExit) as stopped:
        demo.main(argv)
    assert f"looked for cascade_zoo://A/b.pth at:\n    {tmp_path / 'zoo' / 'A' / 'b.pth'}" in str(
        stopped.value.code
    )
    assert "CASCADE_ZOO_MODEL_ZOO" in str(stopped.value.code)


def test_config_overrides_of_every_form_are_collected_in_order():
    import argparse

    from cascade_zoo.predictor import add_config_arguments, config_overrides

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    parser.add_argument("--input", nargs="+", default=[])
    parser.add_argument("--output")
    argv = ["--config-file", "c.yaml", "--input", "a.png", "MODEL.WEIGHTS", "w.pth"]
    argv += ["--output", "o", "SEED", "3", "--opts", "TEST.X", "1"]
    args = parser.parse_args(argv)
    assert config_overrides(parser, args, "input") == [
        "MODEL.WEIGHTS", "w.pth", "SEED", "3", "TEST.X", "1"
    ]  # fmt: skip
    assert args.input == ["a.png"] and args.output == "o"
    args = parser.parse_args(["--config-file", "c.yaml", "SEED", "3", "--input", "a.png"])
    with pytest.raises(SystemExit):  # an option after the overrides: an error saying so
        config_overrides(parser, args, "input")
