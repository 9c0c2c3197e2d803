"""Ablation deltas (configs/<Paper>/ablations/<name>.yaml): a delta has no _BASE_, its header says
what it changes, where in the paper, and the train_net.py commands that apply it over its
configs; each of those compositions loads, and tools/compose_config.py writes it as one file
that loads to the same config. Every ablation is a delta, and no two configs have the same body
apart from _BASE_, but the instant tests."""

import importlib.util
import re
from collections import defaultdict

import pytest
import yaml
from conftest import ROOT

from cascade_zoo import setup_cfg
from cascade_zoo.config import documented_compositions, flat_dump

CONFIGS = ROOT / "configs"
ABLATION_FILES = sorted(CONFIGS.glob("*/ablations/*.yaml"))
DELTAS = [p for p in ABLATION_FILES if documented_compositions(p)]
COMPOSITIONS = [files for p in DELTAS for files in documented_compositions(p)]

spec = importlib.util.spec_from_file_location("compose_config", ROOT / "tools/compose_config.py")
compose_config = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compose_config)


def _rel(path):
    return path.relative_to(CONFIGS).as_posix()


def _base(path):
    return (yaml.safe_load(path.read_text()) or {}).get("_BASE_")


def _body(path):
    return [line for line in path.read_text().splitlines() if not line.startswith("_BASE_")]


def test_there_are_deltas_over_coco_and_shapes_configs():
    assert len(DELTAS) >= 50
    for delta in DELTAS:
        bases = [files[0] for files in documented_compositions(delta)]
        assert any(b.endswith("_shapes.yaml") for b in bases), delta
        assert any(not b.endswith("_shapes.yaml") for b in bases), delta


@pytest.mark.parametrize("path", ABLATION_FILES, ids=_rel)
def test_every_ablation_is_a_delta(path):
    assert path in DELTAS


@pytest.mark.parametrize("delta", DELTAS, ids=_rel)
def test_delta_has_no_base_and_a_header_naming_the_paper_and_its_commands(delta):
    assert "_BASE_" not in (yaml.safe_load(delta.read_text()) or {})
    header = []
    for line in delta.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert re.search(r"Table|Fig\.|Sec\.|not in the paper|not the paper's", header[0], re.I)
    for files in documented_compositions(delta):
        assert files[-1] == _rel(delta) and len(files) == 2, files
        base = CONFIGS / files[0]
        assert base.is_file() and base not in DELTAS and _base(base), files[0]
        command = f"python train_net.py --config-file configs/{files[0]} --config-file configs/"
        assert any(line.startswith(f"#   {command}") for line in header)


@pytest.mark.parametrize("files", COMPOSITIONS, ids="+".join)
def test_composition_equals_the_file_compose_config_writes(files, tmp_path):
    paths = [str(CONFIGS / f) for f in files]
    out = tmp_path / "composed.yaml"
    assert compose_config.main([*paths, "-o", str(out)]) == 0
    text = out.read_text()
    assert "_BASE_" not in text and "&id" not in text  # flat: every value written out
    composed = setup_cfg(paths)
    assert flat_dump(setup_cfg(str(out))) == flat_dump(composed)
    # the delta changed its base
    assert flat_dump(composed) != flat_dump(setup_cfg(paths[0]))


def test_no_two_configs_have_the_same_body_but_instant_tests():
    groups = defaultdict(list)
    for path in sorted(CONFIGS.rglob("*.yaml")):
        if path.parent.name not in ("Pretrain", "Protocols"):
            groups["\n".join(_body(path))].append(path)
    for paths in groups.values():
        assert len(paths) == 1 or all(p.name.endswith("_instant_test.yaml") for p in paths), paths


def test_a_protocol_is_one_file_over_any_method_config():
    """Protocols/ holds one file per protocol (no per-method copies), without _BASE_; merged over
    a method config it sets the protocol's keys and leaves the method's model alone."""
    protocols = sorted((CONFIGS / "Protocols").glob("*.yaml"))
    assert [p.stem for p in protocols] == ["shapes_v3", "shapes_v4"]
    method = CONFIGS / "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"
    alone = setup_cfg(str(method))
    for protocol in protocols:
        assert "_BASE_" not in (yaml.safe_load(protocol.read_text()) or {})
        merged = setup_cfg([str(method), str(protocol)])
        assert merged.MODEL.ROI_HEADS == alone.MODEL.ROI_HEADS
        assert merged.MODEL.ROI_BOX_CASCADE_HEAD == alone.MODEL.ROI_BOX_CASCADE_HEAD
        assert merged.MODEL.WEIGHTS.startswith("cascade_zoo://Benchmark/shapes_backbone_R_18")
        assert merged.SOLVER.MAX_ITER != alone.SOLVER.MAX_ITER
