"""Renamed config keys (cascade_zoo.config.RENAMED_KEYS): the old name still loads, from a config
file at any level of its _BASE_ chain and from KEY VALUE overrides, with a FutureWarning, and sets
the new key; a results' config hash is the same under either name, so the results recorded before
a rename stay valid."""

import json

import pytest
import yaml
from conftest import ROOT

from cascade_zoo import setup_cfg
from cascade_zoo.results import config_diff, config_hash

OLD, NEW = "MODEL.BOX_CASCADE.HEAD_LR_RESCALE", "MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE"
CORE = ROOT / "configs" / "CascadeRCNN" / "cascade_rcnn_instant_test.yaml"
R3_RESULTS = ROOT / "benchmarks" / "results" / "shapes_v3" / "R3CNN" / "r3_cnn_R_18_FPN_shapes"


def _config(path, base, key, value):
    """A config file with ``_BASE_`` ``base`` that sets the dotted ``key`` to ``value``."""
    body = {"_BASE_": str(base)}
    node = body
    *parents, leaf = key.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value
    path.write_text(yaml.safe_dump(body))
    return path


def _rule(cfg):
    return cfg.MODEL.BOX_CASCADE.HEAD_GRADIENT_RESCALE


def test_the_old_name_in_a_config_file_sets_the_new_key_with_a_warning(tmp_path):
    assert _rule(setup_cfg(CORE)) is True  # the default, which the old name changes
    path = _config(tmp_path / "old.yaml", CORE, OLD, False)
    with pytest.warns(FutureWarning, match=rf"{OLD} \(in .*old\.yaml\).*renamed {NEW}"):
        cfg = setup_cfg(path)
    assert _rule(cfg) is False
    assert "HEAD_LR_RESCALE" not in cfg.MODEL.BOX_CASCADE


def test_the_old_name_on_the_command_line_sets_the_new_key_with_a_warning():
    with pytest.warns(FutureWarning, match=rf"{OLD} .*renamed {NEW}"):
        cfg = setup_cfg(CORE, [OLD, "False"])
    assert _rule(cfg) is False


def test_the_later_setting_wins_whichever_name_each_uses(tmp_path):
    old_base = _config(tmp_path / "old_base.yaml", CORE, OLD, False)
    new_base = _config(tmp_path / "new_base.yaml", CORE, NEW, False)
    with pytest.warns(FutureWarning):
        # a file over its base
        assert _rule(setup_cfg(_config(tmp_path / "a.yaml", old_base, NEW, True))) is True
        assert _rule(setup_cfg(_config(tmp_path / "b.yaml", new_base, OLD, True))) is True
        # files merged in order, then the overrides
        assert _rule(setup_cfg([new_base, _config(tmp_path / "c.yaml", CORE, OLD, True)])) is True
        assert _rule(setup_cfg([old_base, _config(tmp_path / "d.yaml", CORE, NEW, True)])) is True
        assert _rule(setup_cfg(old_base, [NEW, "True"])) is True
        assert _rule(setup_cfg(new_base, [OLD, "True"])) is True
        assert _rule(setup_cfg(CORE, [NEW, "False", OLD, "True"])) is True


def test_a_renamed_key_hashes_under_its_first_name():
    assert config_hash({NEW: False, "SEED": 1}) == config_hash({OLD: False, "SEED": 1})
    assert config_hash({NEW: False}) != config_hash({NEW: True})


def test_the_recorded_r3_cnn_results_keep_their_config_hash():
    """The R3-CNN benchmark row sets the renamed key through its base config, and its results were
    recorded under the old name: the hash computed now is the one they record."""
    results = sorted(R3_RESULTS.glob("seed*.json"))
    assert results, f"no recorded results in {R3_RESULTS}"
    for path in results:
        data = json.loads(path.read_text())
        assert data["config_diff"][OLD] is False  # recorded before the rename
        diff = config_diff([str(ROOT / f) for f in data["config_files"]])
        assert diff[NEW] is False and OLD not in diff
        assert config_hash(diff) == data["config_hash"], path
