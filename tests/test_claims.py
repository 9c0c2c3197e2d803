"""The papers' claims (cascade_zoo.results.registry.Claim) measured by the report: the paired
differences over the seeds both runs have, the verdict rule of docs/benchmark_protocol.md, the
claims table of docs/results.md and the README ``<!-- claims -->`` blocks. The result files
are written by hand here (the dict that records.load_results returns), with numbers chosen so
that the expected differences are exact."""

import math
from pathlib import Path

import pytest

from cascade_zoo import results as rb
from cascade_zoo.results import registry
from cascade_zoo.results.records import AP_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _result(seed, ap, ap50, ap90, stages=None):
    """A result file's content: the AP table with AP, AP50 and AP90 given, every other column
    0; ``stages``: stage name -> its AP."""
    table = dict.fromkeys(AP_COLUMNS, 0.0)
    table.update(AP=ap, AP50=ap50, AP90=ap90)
    return {
        "seed": seed,
        **dict(
            git_commit="0" * 40,
            device="cpu",
            max_iter=10,
            train_s_per_iter=0.1,
            wall_time_s=60.0,
            finished="today",
        ),
        "metrics": {
            "bbox": table,
            "stages": {s: {**table, "AP": v} for s, v in (stages or {}).items()},
        },
    }


# method: seeds 0, 1, 2; baseline: seeds 0, 1, 3 (seed 2 and 3 have nothing to pair with)
GROUPED = {
    "Test/method": [
        _result(0, 12.0, 60.0, 9.0, {"stage1": 10.5}),
        _result(1, 13.5, 61.0, 7.0, {"stage1": 11.0}),
        _result(2, 50.0, 90.0, 50.0, {"stage1": 1.0}),
    ],
    "Test/baseline": [
        _result(0, 10.0, 59.0, 4.0),
        _result(1, 11.0, 58.0, 5.0),
        _result(3, 0.0, 0.0, 0.0),
    ],
}


def _claim(**compare):
    return registry.Claim(
        "c",
        "the method is above the baseline",
        "Table 9",
        "+1 AP",
        registry.Comparison(
            compare.pop("method", "Test/method.yaml"),
            compare.pop("baseline", "Test/baseline.yaml"),
            **compare,
        ),
        ("tests/x.py::test_equation", "run: Test/method.yaml+Test/delta.yaml"),
        package="test_paper",
    )


def test_paired_differences_over_the_shared_seeds_with_sample_std():
    """AP: seed 0 12.0 - 10.0 = 2.0, seed 1 13.5 - 11.0 = 2.5; mean 2.25, sample std
    sqrt((0.25^2 + 0.25^2) / 1) = 0.353553."""
    m = rb.measure_claim(GROUPED, _claim())
    assert (m.method, m.baseline) == ("Test/method", "Test/baseline")
    assert dict(m.differences) == {0: pytest.approx(2.0), 1: pytest.approx(2.5)}
    assert m.mean == pytest.approx(2.25) and m.std == pytest.approx(0.353553, abs=1e-6)
    assert m.verdict == "reproduced"


def test_a_difference_of_two_columns_and_a_stage_table():
    """AP90-AP50: seed 0 (9 - 60) - (4 - 59) = 4, seed 1 (7 - 61) - (5 - 58) = -1. The method's
    stage1 against the baseline's final AP: 10.5 - 10 = 0.5 and 11.0 - 11.0 = 0.0."""
    m = rb.measure_claim(GROUPED, _claim(metric="AP90-AP50"))
    assert list(m.differences.values()) == pytest.approx([4.0, -1.0])
    assert m.mean == pytest.approx(1.5) and m.verdict == "partly"
    m = rb.measure_claim(GROUPED, _claim(stage="stage1"))
    assert list(m.differences.values()) == pytest.approx([0.5, 0.0])
    assert m.verdict == "partly"  # seed 1's difference is 0: not of the expected sign
    # two stages of one run: the final AP minus stage1 of the same seed: 1.5, 2.5, 49.0
    m = rb.measure_claim(GROUPED, _claim(baseline="Test/method.yaml", baseline_stage="stage1"))
    assert list(m.differences.values()) == pytest.approx([1.5, 2.5, 49.0])
    with pytest.raises(ValueError, match="AP91"):
        rb.measure_claim(GROUPED, _claim(metric="AP91"))


def _with_variant(result, name, ap):
    """``result`` with an eval variant whose AP table on the whole test set has AP ``ap`` (and
    the other columns of the run's own table)."""
    table = {**result["metrics"]["bbox"], "AP": ap}
    variants = {name: {"opts": ["K", "V"], "metrics": {"all": table, "[1,3]": {"AP": -1.0}}}}
    return {**result, "variants": variants}


def test_a_stage_difference_and_an_eval_variant():
    """stage3-stage2 of a run is stage3's table minus stage2's. An eval variant's AP is its
    "all" table's (not the by-object-count subsets'), and a run without it is left out."""
    grouped = {
        "Test/method": [
            _result(s, 0.0, 0.0, 0.0, {"stage2": 20.0 + s, "stage3": 19.0 + 2 * s}) for s in (0, 1)
        ],
        "Test/baseline": [
            _result(s, 0.0, 0.0, 0.0, {"stage2": 30.0, "stage3": 27.0 - s}) for s in (0, 1)
        ],
    }
    # method: 19 - 20 = -1, 21 - 21 = 0; baseline: -3, -4; differences 2, 4
    m = rb.measure_claim(grouped, _claim(stage="stage3-stage2", baseline_stage="stage3-stage2"))
    assert list(m.differences.values()) == pytest.approx([2.0, 4.0])
    with pytest.raises(ValueError, match="STAGE-STAGE"):
        rb.measure_claim(grouped, _claim(stage="stage3-stage2-stage1"))
    # the variant of the same run against its own evaluation: seed 0 12.0 - 9.5, seed 1 13.5 - 14
    grouped = {"Test/method": [_with_variant(GROUPED["Test/method"][0], "no X", 9.5),
                               _with_variant(GROUPED["Test/method"][1], "no X", 14.0),
                               GROUPED["Test/method"][2]]}  # fmt: skip
    m = rb.measure_claim(grouped, _claim(baseline="Test/method.yaml", baseline_variant="no X"))
    assert dict(m.differences) == {0: pytest.approx(2.5), 1: pytest.approx(-0.5)}
    m = rb.measure_claim(grouped, _claim(baseline="Test/method.yaml", variant="no X"))
    assert list(m.differences.values()) == pytest.approx([-2.5, 0.5])
    m = rb.measure_claim(grouped, _claim(baseline="Test/method.yaml", baseline_variant="other"))
    assert not m.differences and m.verdict == "not measured"
    with pytest.raises(ValueError, match="no stage tables"):
        rb.measure_claim(grouped, _claim(variant="no X", stage="stage1"))
    row = rb.claims_table(grouped, [_claim(baseline="Test/method.yaml", baseline_variant="no X")])
    assert "`Test/method` - `Test/method` (no X), AP: > 0" in row


@pytest.mark.parametrize(
    "differences, expect, size, verdict",
    [
        ([1.0, 2.0, 0.5], "+", None, "reproduced"),
        ([1.0, 2.0, -0.5], "+", None, "partly"),  # mean 0.83 > 0, one seed below
        ([1.0, 2.0, 0.5], "+", 1.5, "partly"),  # mean 1.17 short of 1.5
        ([1.0, 2.0, 1.5], "+", 1.5, "reproduced"),  # mean exactly 1.5
        ([1.0, -2.0, 0.5], "+", None, "not reproduced"),  # mean -0.17
        ([1.0, -1.0], "+", None, "not reproduced"),  # mean 0
        ([-1.0, -2.0], "-", None, "reproduced"),
        ([-1.0, 0.5], "-", None, "partly"),
        ([-1.0, -2.0], "-", 2.0, "partly"),  # mean -1.5 short of -2
        ([1.0, 2.0], "-", None, "not reproduced"),
        ([0.5, -0.9], "~", 1.0, "reproduced"),
        ([0.5, 1.3], "~", 1.0, "partly"),  # mean 0.9 within 1, seed 1 not
        ([1.5, 1.3], "~", 1.0, "not reproduced"),
        ([2.0], "+", None, "not measured"),
        ([], "~", 1.0, "not measured"),
    ],
)
def test_verdict_rule(differences, expect, size, verdict):
    assert rb.claim_verdict(differences, expect, size) == verdict


def test_missing_runs_and_a_single_shared_seed_are_not_measured():
    m = rb.measure_claim(GROUPED, _claim(method="Test/never_run.yaml"))
    assert m.method == "Test/never_run" and not m.differences and m.verdict == "not measured"
    assert m.mean is None and m.std is None
    one = {"Test/method": GROUPED["Test/method"], "Test/baseline": GROUPED["Test/baseline"][:1]}
    m = rb.measure_claim(one, _claim())
    assert dict(m.differences) == {0: pytest.approx(2.0)} and m.verdict == "not measured"
    table = rb.claims_table({}, [_claim()])
    assert "**not measured**" in table and "tests/x.py::test_equation" not in table


def test_run_names_follow_the_protocol():
    """A config is named as the runner names it under the report's protocol; a mapping gives a
    config per protocol, and a protocol it lacks leaves the claim unmeasured."""
    v3, v4 = "Protocols/shapes_v3.yaml", "Protocols/shapes_v4.yaml"
    stages = "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml+CascadeRCNN/ablations/2_stages.yaml"
    compare = registry.Comparison(
        {v3: stages, v4: "CascadeRCNN/cascade_rcnn_R_18_FPN_shapes.yaml"},
        "Baselines/faster_rcnn_R_18_FPN_shapes.yaml",
    )  # fmt: skip
    assert compare.run_names(v3) == (
        "shapes_v3/CascadeRCNN/ablations/cascade_rcnn_R_18_FPN_shapes+2_stages",
        "shapes_v3/Baselines/faster_rcnn_R_18_FPN_shapes",
    )
    assert compare.run_names(v4) == (
        "shapes_v4/CascadeRCNN/cascade_rcnn_R_18_FPN_shapes",
        "shapes_v4/Baselines/faster_rcnn_R_18_FPN_shapes",
    )
    assert compare.run_names() == (None, "Baselines/faster_rcnn_R_18_FPN_shapes")
    assert compare.run_names("Protocols/other.yaml")[0] is None
    grouped = {"shapes_v4/Test/method": GROUPED["Test/method"],
               "shapes_v4/Test/baseline": GROUPED["Test/baseline"]}  # fmt: skip
    assert rb.measure_claim(grouped, _claim()).verdict == "not measured"
    assert rb.measure_claim(grouped, _claim(), v4).verdict == "reproduced"


def test_table_rows_and_the_checks_of_a_claim_not_reproduced():
    std = math.sqrt((0.25**2 + 0.25**2) / 1)
    table = rb.claims_table(GROUPED, [_claim()])
    assert (
        "| `c`: the method is above the baseline (Table 9) | +1 AP | `Test/method` - "
        f"`Test/baseline`, AP: > 0 | s0 +2.00, s1 +2.50 | +2.25 ± {std:.2f} | **reproduced** |"
    ) in table
    assert "test_equation" not in table  # reproduced: no checks listed
    below = rb.claims_table(GROUPED, [_claim(expect="-", size=1.0)])
    assert "AP: <= -1 |" in below and "**not reproduced**" in below
    assert "- `c` (not reproduced): tests/x.py::test_equation; run: Test/method.yaml+" in below
    partly = rb.claims_table(GROUPED, [_claim(metric="AP90-AP50")])
    assert "- `c` (partly): tests/x.py::test_equation" in partly
    assert rb.claims_table(GROUPED, []) == ""


@pytest.fixture
def paper():
    yield registry.register_results
    registry.unregister_results("test_paper")


def test_registration_refuses_bad_claims(paper):
    with pytest.raises(ValueError, match="used twice"):
        paper("test_paper", claims=[_claim(), _claim()])
    with pytest.raises(ValueError, match="expect one of"):
        paper("test_paper", claims=[_claim(expect=">")])
    with pytest.raises(ValueError, match="tolerance"):
        paper("test_paper", claims=[_claim(expect="~")])


def test_readme_claims_block_is_rewritten_in_place_and_the_rest_kept(paper, tmp_path):
    readme = tmp_path / "README.md"
    before = "# Paper\n\nintro <!-- claims --> in a line is no block\n\n"
    after = "\n\nafter <!-- /claims -->\n<!-- results: Test/baseline -->\nold\n<!-- /results -->\n"
    readme.write_text(before + "<!-- claims -->\nold claims\n<!-- /claims -->" + after)
    paper("test_paper", readme=readme, claims=[_claim()])
    assert [c.id for c in registry.claims_of_readme(readme)] == ["c"]
    assert rb.write_readme_blocks(GROUPED, [readme]) == [readme]
    text = readme.read_text()
    assert text.startswith(before + "<!-- claims -->\n| claim (where) |")
    rest = text[text.index("<!-- /claims -->") :]
    assert rest.startswith("<!-- /claims -->\n\nafter <!-- /claims -->\n<!-- results: Test/")
    assert rest.endswith("<!-- /results -->\n") and "\nold\n" not in rest  # regenerated too
    assert "old claims" not in text and "| +2.25 ± 0.35 | **reproduced** |" in text
    assert rb.write_readme_blocks(GROUPED, [readme]) == []  # unchanged the second time
    paper("test_paper", readme=readme, claims=[_claim(method="Test/gone.yaml")])
    rb.write_readme_blocks(GROUPED, [readme])
    assert "`Test/gone` - `Test/baseline`" in readme.read_text()
    assert "**not measured**" in readme.read_text()


def test_results_md_gains_a_claims_section_with_every_registered_claim(paper, tmp_path):
    paper("test_paper", claims=[_claim()])
    md = tmp_path / "results.md"
    rb.write_results_md(GROUPED, md, [], "cmd")
    text = md.read_text()
    section = text[text.index("## Claims of the papers") : text.index("## Runs")]
    assert "| test_paper | `c`: the method is above the baseline (Table 9) | +1 AP |" in section
    assert "| s0 +2.00, s1 +2.50 | +2.25 ± 0.35 | **reproduced** |" in section
    assert section.count("| box_cascade |") == len(
        [c for c in rb.claims() if c.package == "box_cascade"]
    )


def test_every_registered_claim_names_existing_configs_and_tests():
    """A typo in a claim's config would leave it "not measured" for ever, and a check naming a
    test that does not exist checks nothing."""
    import re

    assert {c.package for c in rb.claims()} >= {
        "box_cascade", "rga_prm", "r3_cnn", "fs_cascade", "iou_uniform"
    }  # fmt: skip
    for claim in rb.claims():
        assert claim.checks, claim.id
        c = claim.compare
        for configs, variant in ((c.method, c.variant), (c.baseline, c.baseline_variant)):
            for config in configs.values() if isinstance(configs, dict) else [configs]:
                for part in rb.config_parts(config):
                    assert (ROOT / "configs" / part).is_file(), (claim.id, part)
                if variant:  # an eval variant that the runner makes for that run
                    made = registry.variants_of_run(rb.run_name(config, "Protocols/shapes_v4.yaml"))
                    assert variant in [v.name for v in made], (claim.id, config, variant)
        for check in claim.checks:
            found = re.fullmatch(r"(tests/\S+\.py)::(\w+)", check)
            if found:
                source = (ROOT / found.group(1)).read_text()
                assert f"def {found.group(2)}(" in source, check
            else:
                assert check.startswith("run"), check
