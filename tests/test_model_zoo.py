"""cascade_zoo.model_zoo: the cascade_zoo:// path handler and the detectron2.model_zoo-like API."""

import json

import pytest
import torch
import yaml
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


def test_checkpoint_url_needs_the_checkpoint_file(zoo, monkeypatch):
    """A result file alone is not a model: the error says where the zoo looked, how to point it
    elsewhere, and the command that trains the model with the time it took."""
    monkeypatch.setattr(model_zoo, "SHIPPED_DIR", zoo / "shipped")
    result = zoo / "results" / "Baselines" / "faster_rcnn_instant_test" / "seed2.json"
    result.parent.mkdir(parents=True)
    command = (
        "python train_net.py --config-file configs/Baselines/faster_rcnn_instant_test.yaml "
        "--resume OUTPUT_DIR /somewhere/else SEED 2 MODEL.DEVICE cpu"
    )
    result.write_text(
        json.dumps({"command": command, "wall_time_s": 754.6, "max_iter": 4, "device": "cpu"})
    )
    with pytest.raises(RuntimeError) as error:
        model_zoo.get_checkpoint_url(CONFIG, seed=2)
    message = str(error.value)
    name = "Baselines/faster_rcnn_instant_test/seed2/model_final.pth"
    assert f"looked for cascade_zoo://{name}" in message
    assert str(zoo / "zoo" / name) in message and str(zoo / "shipped" / name) in message
    assert "set CASCADE_ZOO_MODEL_ZOO" in message
    assert "12 min 35 s for 4 iterations" in message
    assert (
        "python train_net.py --config-file configs/Baselines/faster_rcnn_instant_test.yaml "
        "--resume OUTPUT_DIR output/Baselines/faster_rcnn_instant_test/seed2 SEED 2 "
        "MODEL.DEVICE cpu\n"
    ) in message
    assert (
        "python tools/publish_model.py output/Baselines/faster_rcnn_instant_test/seed2 "
        "--name Baselines/faster_rcnn_instant_test --seed 2"
    ) in message
    # without a result file: a plain train_net.py command, no time
    with pytest.raises(RuntimeError, match="no measured time") as error:
        model_zoo.get_checkpoint_url(CONFIG, seed=1)
    assert "OUTPUT_DIR output/Baselines/faster_rcnn_instant_test/seed1 SEED 1" in str(error.value)
    # the file is there: in the model-zoo directory, or shipped with the repository
    (zoo / "zoo" / name).parent.mkdir(parents=True)
    (zoo / "zoo" / name).write_bytes(b"")
    assert model_zoo.get_checkpoint_url(CONFIG, seed=2) == f"cascade_zoo://{name}"
    shipped = zoo / "shipped" / name.replace("seed2", "seed1")
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"")
    assert model_zoo.get_checkpoint_url(CONFIG, seed=1) == "cascade_zoo://" + name.replace(
        "seed2", "seed1"
    )
    # a URL base is not checked (it would take a download)
    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", "https://example.invalid/zoo")
    assert model_zoo.get_checkpoint_url(CONFIG, seed=5).endswith("seed5/model_final.pth")


def test_flagship_model_is_found_where_the_repository_would_ship_it(zoo, monkeypatch):
    """publish_model(..., zoo_dir=SHIPPED_DIR) writes what a fresh clone finds: a model-only
    checkpoint, metrics.json and SHA256SUMS under benchmarks/model_zoo/<name>/seed0/, which
    model_zoo.get(name, trained=True) loads with no model-zoo directory at all."""
    import hashlib

    from detectron2.modeling import build_model

    from cascade_zoo.engine.checkpoint import CorruptCheckpointError, ZooCheckpointer

    shipped = zoo / "shipped"
    monkeypatch.setattr(model_zoo, "SHIPPED_DIR", shipped)
    flagship = "shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"
    cfg = model_zoo.get_config(flagship)
    cfg.MODEL.DEVICE = "cpu"
    trained = build_model(cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    run = zoo / "run"
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    ZooCheckpointer(trained, str(run), optimizer=optimizer).save("model_final", iteration=999)
    (run / "metrics.json").write_text('{"iteration": 999, "bbox/AP": 47.7}\n')

    target = model_zoo.publish_model(
        str(run / "model_final.pth"), flagship, 0, metrics=str(run / "metrics.json"),
        zoo_dir=str(shipped),
    )  # fmt: skip
    assert target == shipped / "shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes" / "seed0"
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "metrics.json",
                                                        "model_final.pth"]  # fmt: skip
    published = torch.load(target / "model_final.pth", weights_only=True)
    assert sorted(published) == ["checksum", "model"]  # no optimizer, scheduler, iteration
    assert list(published["checksum"]) == ["model"]
    for line in (target / "SHA256SUMS").read_text().splitlines():
        digest, fname = line.split("  ")
        assert hashlib.sha256((target / fname).read_bytes()).hexdigest() == digest
    assert (target / "metrics.json").read_text() == (run / "metrics.json").read_text()

    assert not (zoo / "zoo").exists()  # the model-zoo directory is empty: the shipped copy serves
    model = model_zoo.get(flagship, trained=True, device="cpu")
    expected = trained.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name

    with pytest.raises(FileExistsError):
        model_zoo.publish_model(str(run / "model_final.pth"), flagship, 0, zoo_dir=str(shipped))
    # a training checkpoint whose tensors no longer match its saved checksums is not published
    corrupt = torch.load(run / "model_final.pth", weights_only=True)
    first = next(iter(corrupt["model"]))
    corrupt["model"][first] = corrupt["model"][first] + 1.0
    torch.save(corrupt, run / "model_corrupt.pth")
    with pytest.raises(CorruptCheckpointError, match="model_corrupt.pth.*'model' entry"):
        model_zoo.publish_model(
            str(run / "model_corrupt.pth"), flagship, 1, zoo_dir=str(shipped)
        )  # fmt: skip
    assert not (shipped / "shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes" / "seed1").exists()
    # and a published model that was altered afterwards is refused when loaded
    altered = torch.load(target / "model_final.pth", weights_only=True)
    altered["model"][first] = altered["model"][first] * 2.0
    torch.save(altered, target / "model_final.pth")
    with pytest.raises(Exception, match="corrupt"):
        model_zoo.get(flagship, trained=True, device="cpu")
    with pytest.raises(ValueError, match="is not a model of configs/Baselines"):
        model_zoo.publish_model(str(run / "model_final.pth"), CONFIG, 0, zoo_dir=str(shipped))


def test_publish_model_tool(zoo, monkeypatch, capsys):
    import importlib.util

    from conftest import ROOT
    from detectron2.modeling import build_model

    spec = importlib.util.spec_from_file_location("publish", ROOT / "tools" / "publish_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = model_zoo.get_config(CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    run = zoo / "run"
    run.mkdir()
    DetectionCheckpointer(build_model(cfg), save_dir=str(run)).save("model_final")
    assert tool.main([str(run), "--name", CONFIG[: -len(".yaml")], "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert (
        "published as cascade_zoo://Baselines/faster_rcnn_instant_test/seed3/model_final.pth" in out
    )
    # no metrics.json in the run: the weights and the manifest only
    published = zoo / "zoo" / "Baselines" / "faster_rcnn_instant_test" / "seed3"
    assert sorted(p.name for p in published.iterdir()) == ["SHA256SUMS", "model_final.pth"]
    assert model_zoo.get_checkpoint_url(CONFIG, seed=3).endswith("seed3/model_final.pth")
    with pytest.raises(SystemExit, match="exists"):
        tool.main([str(run), "--name", CONFIG, "--seed", "3"])


V4_CASCADE = "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+Protocols/shapes_v4.yaml"


def test_a_protocol_composition_is_named_and_resolved_as_the_runner_names_its_run(zoo):
    from cascade_zoo import setup_cfg
    from cascade_zoo.config import flat_dump
    from cascade_zoo.results import Run

    run = Run(
        V4_CASCADE.split("+")[0], 0, zoo / "r", zoo / "o", protocol="Protocols/shapes_v4.yaml"
    )
    assert model_zoo.config_name(V4_CASCADE) == run.name
    assert run.name == "shapes_v4/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes"
    files = [str(model_zoo.CONFIGS_DIR / f) for f in run.configs]
    by_hand = setup_cfg(files, freeze=False)
    protocol = yaml.safe_load((model_zoo.CONFIGS_DIR / "Protocols/shapes_v4.yaml").read_text())
    method = setup_cfg([str(model_zoo.CONFIGS_DIR / V4_CASCADE.split("+")[0])], freeze=False)
    assert method.SOLVER.BASE_LR != protocol["SOLVER"]["BASE_LR"]  # so the check below can fail
    assert by_hand.SOLVER.BASE_LR == protocol["SOLVER"]["BASE_LR"] and by_hand.MODEL.ROI_HEADS.NAME
    for spelled in (V4_CASCADE, "shapes_v4/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"):
        assert flat_dump(model_zoo.get_config(spelled)) == flat_dump(by_hand)
        assert model_zoo.result_file(spelled, 1) == zoo / "results" / run.name / "seed1.json"
    # an ablation's delta and the protocol: named like the runner's run too
    delta = "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+CascadeRCNN/ablations/integral_loss.yaml"
    run = Run(delta, 0, zoo / "r", zoo / "o", protocol="Protocols/shapes_v4.yaml")
    assert model_zoo.config_name(delta + "+Protocols/shapes_v4.yaml") == run.name


def test_a_composition_trains_and_publishes_with_its_files_in_order(zoo, monkeypatch):
    monkeypatch.setenv("CASCADE_ZOO_IGNORE_SHIPPED", "1")
    with pytest.raises(RuntimeError) as error:
        model_zoo.get_checkpoint_url(V4_CASCADE, seed=2)
    message = str(error.value)
    assert "cascade_zoo://shapes_v4/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed2/" in message
    assert (
        "python train_net.py --config-file configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml "
        "--config-file configs/Protocols/shapes_v4.yaml --resume OUTPUT_DIR "
        "output/shapes_v4/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed2 SEED 2"
    ) in message
    assert f'--name "{V4_CASCADE}" --seed 2' in message


@pytest.mark.parametrize(
    "spelled, error",
    [
        ("Protocols/shapes_v4.yaml+CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml", "merged last"),
        (V4_CASCADE + "+Protocols/shapes_v4.yaml", "merged last"),
        ("CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+Protocols/no_such.yaml", "no_such.yaml"),
        ("shapes_v4/CascadeRCNN/no_such_config.yaml", "CascadeRCNN/no_such_config.yaml"),
        ("CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+CascadeRCNN/ablations", "FILE.yaml"),
    ],
)
def test_bad_compositions_name_what_is_wrong(spelled, error):
    with pytest.raises((ValueError, RuntimeError), match=error):
        model_zoo.get_config(spelled)


def test_the_flat_file_of_a_composition_trains_the_same_model(zoo, monkeypatch):
    """get_config_file gives a composition as one file (train_net.py --config-file takes it)."""
    from cascade_zoo import setup_cfg
    from cascade_zoo.config import flat_dump

    monkeypatch.setenv("CASCADE_ZOO_CACHE", str(zoo / "cache"))
    flat = model_zoo.get_config_file(V4_CASCADE)
    assert flat == str(zoo / "cache/composed_configs/shapes_v4/CascadeRCNN/"
                       "cascade_rcnn_R_18_FPN_shapes.yaml")  # fmt: skip
    text = open(flat).read()
    assert "_BASE_" not in text and "&id" not in text
    parts = [str(model_zoo.CONFIGS_DIR / f) for f in V4_CASCADE.split("+")]
    assert flat_dump(setup_cfg(flat, freeze=False)) == flat_dump(setup_cfg(parts, freeze=False))


@pytest.mark.parametrize(
    "old, new",
    [
        ("Benchmark/cascade_rcnn_R_18_FPN_shapes.yaml", V4_CASCADE.replace("v4", "v3")),
        ("CascadeRCNN/ablations/cascade_rcnn_R_50_FPN_1x_2_stages.yaml",
         "CascadeRCNN/cascade_rcnn_R_50_FPN_1x.yaml+CascadeRCNN/ablations/2_stages.yaml"),
        ("Benchmark/pretrain_faster_rcnn_R_18_FPN_shapes.yaml",
         "Pretrain/shapes_backbone_R_18_w32_1x.yaml"),
    ],
)  # fmt: skip
def test_a_config_name_that_became_a_composition_still_resolves_with_a_warning(old, new):
    from cascade_zoo.config import flat_dump

    with pytest.warns(FutureWarning, match="is now"):
        assert model_zoo.resolve_config_path(old) == new
    with pytest.warns(FutureWarning):
        assert model_zoo.config_name(model_zoo.resolve_config_path(old)) == model_zoo.config_name(
            new
        )
        old_cfg = model_zoo.get_config(old)
    assert flat_dump(old_cfg) == flat_dump(model_zoo.get_config(new))


def test_detectron2_equivalents_resolve_to_detectron2_files():
    # Detectron2's model-zoo URL of its Cascade Mask R-CNN R50-FPN 1x (MODEL_ZOO.md of Detectron2)
    assert model_zoo.get_checkpoint_url("Baselines/cascade_mask_rcnn_R_50_FPN_1x.yaml") == (
        "https://dl.fbaipublicfiles.com/detectron2/Misc/cascade_mask_rcnn_R_50_FPN_1x/138602847/"
        "model_final_e9d89b.pkl"
    )
    for config in model_zoo.DETECTRON2_CHECKPOINTS:
        model_zoo.get_config_file(config)  # every mapped config exists
    # Detectron2's own name of the model gives the same file
    assert model_zoo.get_checkpoint_url("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml") == (
        model_zoo.get_checkpoint_url("Baselines/cascade_mask_rcnn_R_50_FPN_1x.yaml")
    )


@pytest.mark.parametrize("ours,theirs", sorted(model_zoo.DETECTRON2_EQUIVALENTS.items()))
def test_detectron2_names_resolve_to_the_same_config_of_this_project(ours, theirs):
    """Detectron2's config name gives this project's config, whose every Detectron2 key has
    Detectron2's value."""
    from detectron2 import model_zoo as d2_model_zoo
    from detectron2.config import get_cfg

    assert model_zoo.get_config_file(theirs) == model_zoo.get_config_file(ours)
    cfg = model_zoo.get_config(theirs)
    reference = get_cfg()
    reference.merge_from_file(d2_model_zoo.get_config_file(theirs))
    from conftest import flat_config

    own, expected = flat_config(cfg), flat_config(reference)
    expected.pop("MODEL.DEVICE")  # setup_cfg picks the CPU without CUDA
    assert {k: own[k] for k in expected if own[k] != expected[k]} == {}


def test_detectron2_names_without_an_equivalent_are_refused_with_the_list():
    with pytest.raises(RuntimeError, match="no equivalent of") as error:
        model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    assert "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml -> configs/Baselines/" in str(error.value)
    with pytest.raises(RuntimeError, match="not available in the cascade-zoo configs"):
        model_zoo.get_checkpoint_url("Nothing/like_this.yaml")


def test_model_zoo_md_says_which_models_the_repository_ships():
    """Every row of MODEL_ZOO.md's table says whether its checkpoint is in benchmarks/model_zoo/,
    and says it truly."""
    import re

    from conftest import ROOT

    lines = (ROOT / "MODEL_ZOO.md").read_text().splitlines()
    rows = [line.split("|") for line in lines if line.startswith(("| `Benchmark/", "| `shapes_v"))]
    backbone = [cells for cells in rows if "shapes_backbone" in cells[1]]
    assert backbone and backbone[0][2].strip() == "yes"
    assert (model_zoo.SHIPPED_DIR / "Benchmark" / "shapes_backbone_R_18_w32.pth").is_file()
    rows = [cells for cells in rows if cells[2].strip().isdigit()]  # the trained models' table
    assert rows and any(cells[3].strip().startswith("yes") for cells in rows)  # the flagship
    for cells in rows:
        name, seed = cells[1].strip().strip("`"), cells[2].strip()
        shipped = (model_zoo.SHIPPED_DIR / name / f"seed{seed}" / "model_final.pth").is_file()
        said = re.search(r"\b(yes|no)\b", cells[3])
        assert said and said.group(1) == ("yes" if shipped else "no"), cells


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


@pytest.mark.parametrize(
    "files, weights",
    [
        # make demo's config: protocol v3's backbone
        (["CascadeRCNN/" + DEMO_CONFIG], "cascade_zoo://Benchmark/shapes_backbone_R_18_w32.pth"),
        # protocol v4's runs: its backbone, under frozen batch norm and a frozen stem
        (["CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml", "Protocols/shapes_v4.yaml"],
         "cascade_zoo://Benchmark/shapes_backbone_R_18_w32_v4.pth"),
    ],
)  # fmt: skip
def test_a_shipped_backbone_loads_into_the_config_that_names_it(files, weights, monkeypatch):
    """The shipped file is found on a fresh clone (an empty model-zoo directory), and every ResNet
    weight of the built model comes from it."""
    from detectron2.modeling import build_model

    from cascade_zoo import setup_cfg

    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", "/nonexistent/zoo")
    monkeypatch.delenv("CASCADE_ZOO_IGNORE_SHIPPED", raising=False)
    cfg = setup_cfg([str(model_zoo.CONFIGS_DIR / f) for f in files], ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.WEIGHTS == weights
    local = PathManager.get_local_path(weights)
    assert local.startswith(str(model_zoo.SHIPPED_DIR))
    shipped = torch.load(local, weights_only=False)["model"]
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    own = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.bottom_up.")}
    assert own and set(own) <= set(shipped)
    for name, value in own.items():
        assert torch.equal(value, shipped[name].to(value.dtype)), name


FLAGSHIP = "shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"


def _box_iou(a, b):
    """IoU of two [x0, y0, x1, y1] lists, written out."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_the_shipped_flagship_loads_and_finds_the_objects(tmp_path, monkeypatch):
    """On a fresh clone (an empty model-zoo directory) model_zoo.get(flagship, trained=True)
    loads the model the repository ships (its checksums checked), and that model finds most
    objects of images it never saw: ground-truth boxes matched at IoU >= 0.5 by a detection of
    the same class (at the config's test score threshold; the model's AP50 is about 67)."""
    import cv2
    from detectron2.data import DatasetCatalog

    from cascade_zoo import ZooPredictor
    from cascade_zoo.data import prepare_shapes

    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "empty"))
    monkeypatch.delenv("CASCADE_ZOO_IGNORE_SHIPPED", raising=False)
    model = model_zoo.get(FLAGSHIP, trained=True, device="cpu")  # checks the checksum
    shipped = torch.load(
        model_zoo.SHIPPED_DIR
        / "shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed0/model_final.pth",
        weights_only=True,
    )["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, shipped[name]), name

    cfg = model_zoo.get_config(FLAGSHIP, trained=True)
    cfg.MODEL.DEVICE = "cpu"
    predictor = ZooPredictor(cfg)
    prepare_shapes("shapes_tiny_val")
    found = total = 0
    for record in DatasetCatalog.get("shapes_tiny_val"):
        out = predictor(cv2.imread(record["file_name"]))["instances"]
        dets = [(b.tolist(), int(c)) for b, c in zip(out.pred_boxes.tensor, out.pred_classes)]
        for ann in record["annotations"]:
            x, y, w, h = ann["bbox"]  # XYWH_ABS in the shapes dataset
            gt = [x, y, x + w, y + h]
            total += 1
            found += any(c == ann["category_id"] and _box_iou(b, gt) >= 0.5 for b, c in dets)
    assert total > 20
    assert found / total >= 0.75, f"{found} of {total} objects found"


def test_the_model_zoo_eval_only_line_runs_on_the_shipped_flagship(tmp_path, monkeypatch):
    """MODEL_ZOO.md's `train_net.py --config-file configs/<config>.yaml --config-file
    configs/Protocols/<protocol>.yaml --eval-only MODEL.WEIGHTS cascade_zoo://<name>/seed0/...`
    for the name <protocol>/<config>, on a fresh clone (empty model-zoo directory),
    here on the 8 images of shapes_tiny_val."""
    from conftest import run_train_net

    monkeypatch.setenv("CASCADE_ZOO_MODEL_ZOO", str(tmp_path / "empty"))
    monkeypatch.delenv("CASCADE_ZOO_IGNORE_SHIPPED", raising=False)
    proc = run_train_net(
        "--config-file", "configs/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml",
        "--config-file", "configs/Protocols/shapes_v3.yaml", "--eval-only",
        "MODEL.WEIGHTS", "cascade_zoo://shapes_v3/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes/seed0/model_final.pth",
        "DATASETS.TEST", "('shapes_tiny_val',)", "MODEL.DEVICE", "cpu",
        "OUTPUT_DIR", tmp_path / "out",
    )  # fmt: skip
    assert "copypaste: AP,AP50" in proc.stdout, proc.stdout[-3000:]
    line = proc.stdout.split("copypaste: AP,AP50")[1].splitlines()[1]
    ap = float(line.split("copypaste:")[1].split(",")[0])
    assert ap > 30.0, proc.stdout[-3000:]
