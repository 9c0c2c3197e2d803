"""cascade_zoo.model_zoo: the cascade_zoo:// path handler and the detectron2.model_zoo-like API."""

import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from cascade_zoo import model_zoo

CONFIG = "Baselines/faster_rcnn_instant_test.yaml"
DEMO_CONFIG = "cascade_rcnn_R_18_FPN_finetune_shapes.yaml"


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A model-zoo directory and a results directory of their own."""
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "zoo"))
    monkeypatch.setattr(model_zoo, "RESULTS_DIR", tmp_path / "results")
    return tmp_path


def test_handler_maps_the_prefix_to_the_configured_directory(zoo):
    target = zoo / "zoo" / "A" / "b.txt"
    target.parent.mkdir(parents=True)
    target.write_text("hello")
    assert PathManager.get_local_path("cascade_zoo://A/b.txt") == str(target)
    assert PathManager.exists("cascade_zoo://A/b.txt")
    assert not PathManager.exists("cascade_zoo://A/missing.txt")
    with PathManager.open("cascade_zoo://A/b.txt") as f:
        assert f.read() == "hello"
    assert PathManager.ls("cascade_zoo://A") == ["b.txt"]
    src = zoo / "local.bin"
    src.write_bytes(b"xyz")
    PathManager.copy_from_local(str(src), "cascade_zoo://C/d/e.bin")
    assert (zoo / "zoo" / "C" / "d" / "e.bin").read_bytes() == b"xyz"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        PathManager.get_local_path("cascade_zoo://../escape.pth")


def test_a_file_the_zoo_lacks_is_read_from_the_shipped_copy(zoo, monkeypatch):
    shipped = zoo / "shipped"
    monkeypatch.setattr(model_zoo, "SHIPPED_DIR", shipped)
    (shipped / "B").mkdir(parents=True)
    (shipped / "B" / "w.pth").write_text("shipped")
    assert PathManager.get_local_path("cascade_zoo://B/w.pth") == str(shipped / "B" / "w.pth")
    assert PathManager.isfile("cascade_zoo://B/w.pth")
    with PathManager.open("cascade_zoo://B/w.pth") as f:
        assert f.read() == "shipped"
    assert not PathManager.exists("cascade_zoo://B/other.pth")
    # a file of the model-zoo directory comes first; writes never touch the shipped copy
    PathManager.mkdirs("cascade_zoo://B")
    with PathManager.open("cascade_zoo://B/w.pth", "w") as f:
        f.write("zoo")
    assert (zoo / "zoo" / "B" / "w.pth").read_text() == "zoo"
    assert (shipped / "B" / "w.pth").read_text() == "shipped"
    assert PathManager.get_local_path("cascade_zoo://B/w.pth") == str(zoo / "zoo" / "B" / "w.pth")
    # a URL base: the shipped copy is read without downloading
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", "https://example.invalid/zoo")
    assert PathManager.get_local_path("cascade_zoo://B/w.pth") == str(shipped / "B" / "w.pth")


def test_handler_joins_a_url_base(monkeypatch):
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", "https://example.org/zoo/")
    assert model_zoo.CascadeZooHandler().resolve("cascade_zoo://X/y.pth") == (
        "https://example.org/zoo/X/y.pth"
    )


def test_default_base_follows_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CASCADE_ZOO_MODEL_ZOO", raising=False)
    monkeypatch.setenv("CASCADE_ZOO_CACHE", str(tmp_path))
    assert PathManager.get_local_path("cascade_zoo://m.pth") == str(tmp_path / "model_zoo/m.pth")


def test_config_file_and_config():
    path = model_zoo.get_config_file(CONFIG)
    assert path.endswith("configs/Baselines/faster_rcnn_instant_test.yaml")
    with pytest.raises(RuntimeError, match="not available"):
        model_zoo.get_config_file("Baselines/no_such_config.yaml")
    cfg = model_zoo.get_config(CONFIG)
    assert cfg.SOLVER.MAX_ITER == 4 and not cfg.is_frozen()


def test_checkpoint_url_needs_a_trained_model(zoo):
    with pytest.raises(RuntimeError, match="no trained model"):
        model_zoo.get_checkpoint_url(CONFIG)
    result = zoo / "results" / "Baselines" / "faster_rcnn_instant_test" / "seed2.json"
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    assert model_zoo.get_checkpoint_url(CONFIG, seed=2) == (
        "cascade_zoo://Baselines/faster_rcnn_instant_test/seed2/model_final.pth"
    )


def test_detectron2_equivalents_resolve_to_detectron2_files():
    # Detectron2's model-zoo URL of its Cascade Mask R-CNN R50-FPN 1x (MODEL_ZOO.md of Detectron2)
    assert model_zoo.get_checkpoint_url("Baselines/cascade_mask_rcnn_R_50_FPN_1x.yaml") == (
        "https://dl.fbaipublicfiles.com/detectron2/Misc/cascade_mask_rcnn_R_50_FPN_1x/138602847/"
        "model_final_e9d89b.pkl"
    )
    for config in model_zoo.DETECTRON2_CHECKPOINTS:
        model_zoo.get_config_file(config)  # every mapped config exists


def test_get_trained_loads_the_published_weights(zoo):
    cfg = model_zoo.get_config(CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    from detectron2.modeling import build_model

    trained = build_model(cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.5)
    target = zoo / "zoo" / "Baselines" / "faster_rcnn_instant_test" / "seed0"
    target.mkdir(parents=True)
    DetectionCheckpointer(trained, save_dir=str(target)).save("model_final")
    result = zoo / "results" / "Baselines" / "faster_rcnn_instant_test" / "seed0.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({}))

    model = model_zoo.get(CONFIG, trained=True, device="cpu")
    expected = trained.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    untrained = model_zoo.get(CONFIG, trained=False, device="cpu")
    name = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(untrained.state_dict()[name], expected[name])


def test_the_shipped_backbone_loads_into_the_demo_config():
    """make demo's config names cascade_zoo://Benchmark/shapes_backbone_R_18_w32.pth: the shipped
    file is found and every ResNet weight of the built model comes from it."""
    from detectron2.modeling import build_model

    from cascade_zoo.config import get_zoo_cfg

    cfg = get_zoo_cfg()
    cfg.merge_from_file(str(model_zoo.CONFIGS_DIR / "CascadeRCNN" / DEMO_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    shipped = torch.load(PathManager.get_local_path(cfg.MODEL.WEIGHTS), weights_only=False)["model"]
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.bottom_up.")}
    assert own and sorted(own) == sorted(shipped)
    for name, value in own.items():
        assert torch.equal(value, shipped[name]), name
