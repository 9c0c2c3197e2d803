"""What each paper package adds to the shapes benchmark's reports, declared by the package itself
(``projects/<package>/results.py``, imported by its ``__init__``): evaluations of a run's final
model under other test-time settings, figures its tools make from the runs' models, the paper's
headline claims (each a comparison of two runs that the report measures and gives a verdict),
and the README whose ``<!-- results: ... -->`` and ``<!-- claims -->`` blocks the runner
regenerates. A new paper registers here and touches no file of the runner.
"""

import importlib
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import identity

# What a claim expects of the paired difference method - baseline (docs/benchmark_protocol.md,
# "Claims"): above, below, or within ``size`` points of zero.
EXPECTATIONS = ("+", "-", "~")


class EvalVariant(NamedTuple):
    """An evaluation of a run's ``model_final.pth`` with config overrides (no training)."""

    name: str  # as reported, e.g. "L_e=3"
    opts: List[str]  # KEY VALUE ... overrides of the run's config


class ModelFigure(NamedTuple):
    """A figure a paper tool makes from the runs' published models (not from the result files),
    shown in docs/results.md when its image is there."""

    image: str  # relative to docs/, e.g. "images/fs_cascade_score_vs_iou.png"
    caption: str
    readme: Path  # the README with the commands that make it


# A run of a claim: a config relative to configs/ (``BASE.yaml+DELTA.yaml`` composes), named
# under the report's protocol as the runner names it; or protocol file (None: no protocol, as
# protocol v3's runs) -> config, for a method whose config differs between protocols.
Configs = Union[str, Dict[Optional[str], str]]


class Comparison(NamedTuple):
    """A claim as data: ``metric`` of ``method`` minus ``metric`` of ``baseline``, paired by seed.

    ``metric`` is an AP column ("AP", "AP90") or a difference of two ("AP90-AP50": how much more
    the method gains at 0.9 than at 0.5). ``stage`` / ``baseline_stage`` pick a stage's AP table
    ("stage3") instead of the final output, or the difference of two stages' ("stage3-stage2":
    how far the last stage is above the one before); the two runs may be the same run (two
    stages of one model). ``variant`` / ``baseline_variant`` pick the run's eval variant of that
    name (its AP table on the whole test set; ``registry`` eval variants, e.g. "no EFO") instead
    of its own evaluation. ``expect``: "+" (the method above), "-" (below) or "~" (within
    ``size`` points); ``size``: for "+" / "-" the smallest mean difference that counts as the
    paper's (None: any), for "~" the tolerance (required)."""

    method: Configs
    baseline: Configs
    metric: str = "AP"
    stage: Optional[str] = None
    baseline_stage: Optional[str] = None
    expect: str = "+"
    size: Optional[float] = None
    variant: Optional[str] = None
    baseline_variant: Optional[str] = None

    def run_names(self, protocol: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
        """The (method, baseline) run names under ``protocol`` (a file relative to configs/, or
        None); None for a run the claim names no config of under that protocol."""

        def name(configs: Configs) -> Optional[str]:
            config = configs.get(protocol) if isinstance(configs, dict) else configs
            return identity.run_name(config, protocol) if config else None

        return name(self.method), name(self.baseline)


class Claim(NamedTuple):
    """A headline claim of a paper and the comparison that tests it on shapes."""

    id: str  # short, unique in the package, e.g. "cascade-beats-faster"
    text: str  # the claim in words
    where: str  # where the paper says it, e.g. "Table 2"
    paper: str  # the paper's number, e.g. "+1.5 AP on COCO test-dev"
    compare: Comparison
    # what rules out an implementation error if it is not reproduced: a test's node id
    # (tests/...py::test_name) or a run (a config, or a delta over one, with what it shows)
    checks: Tuple[str, ...] = ()
    package: str = ""  # set by register_results


class PaperResults(NamedTuple):
    package: str
    readme: Optional[Path]
    eval_variants: Dict[str, List[EvalVariant]]  # run name -> its variants
    figures: Tuple[ModelFigure, ...]
    claims: Tuple[Claim, ...] = ()


_PAPERS: Dict[str, PaperResults] = {}


def register_results(
    package: str,
    *,
    readme: Optional[Path] = None,
    eval_variants: Optional[Dict[str, Sequence[Tuple[str, Sequence[str]]]]] = None,
    figures: Sequence[Tuple[str, str]] = (),
    claims: Sequence[Claim] = (),
) -> None:
    """Declare a package's part of the reports (a second call of the same package replaces the
    first).

    Args:
        package: the package's name, e.g. "r3_cnn".
        readme: its README.md, whose results blocks the runner regenerates.
        eval_variants: run name (e.g. "R3CNN/r3_cnn_R_18_FPN_shapes", which a protocol's run of
            that config gets too) -> [(variant name, [KEY, VALUE, ...])], evaluated after the
            run trains and stored in its result file.
        figures: (image relative to docs/, caption) of the figures its tools make, documented in
            ``readme``.
        claims: the paper's headline claims (:class:`Claim`), measured by the report and shown
            in docs/results.md and in the README's ``<!-- claims -->`` block.

    Raises:
        ValueError: a run's variants are declared by another package already; a claim's id is
            repeated, its expectation unknown, or "~" without a tolerance.
    """
    variants = {
        name: [EvalVariant(v, list(opts)) for v, opts in rows]
        for name, rows in (eval_variants or {}).items()
    }
    for other in _PAPERS.values():
        taken = set(variants) & set(other.eval_variants) if other.package != package else set()
        if taken:
            raise ValueError(
                f"{package}: the eval variants of {sorted(taken)} are {other.package}'s"
            )
    readme = Path(readme) if readme else None
    shown = tuple(ModelFigure(image, caption, readme) for image, caption in figures)
    if shown and readme is None:
        raise ValueError(f"{package}: figures need the README that documents their commands")
    ids = [c.id for c in claims]
    for claim in claims:
        if ids.count(claim.id) > 1:
            raise ValueError(f"{package}: claim id {claim.id!r} is used twice")
        if claim.compare.expect not in EXPECTATIONS:
            raise ValueError(f"{package}: claim {claim.id}: expect one of {EXPECTATIONS}")
        if claim.compare.expect == "~" and claim.compare.size is None:
            raise ValueError(f"{package}: claim {claim.id}: expect '~' needs a size (tolerance)")
    kept = tuple(c._replace(package=package, checks=tuple(c.checks)) for c in claims)
    _PAPERS[package] = PaperResults(package, readme, variants, shown, kept)


def unregister_results(package: str) -> None:
    """Forget a package's declarations (tests)."""
    _PAPERS.pop(package, None)


def _papers() -> List[PaperResults]:
    """The registered packages, every project package imported first, in the order of
    ``cascade_zoo.config.PROJECT_PACKAGES`` (others after them, by name)."""
    from cascade_zoo.config import PROJECT_PACKAGES

    for name in PROJECT_PACKAGES:
        importlib.import_module(name)
    order = {name: i for i, name in enumerate(PROJECT_PACKAGES)}
    return sorted(_PAPERS.values(), key=lambda p: (order.get(p.package, len(order)), p.package))


def eval_variants() -> Dict[str, List[EvalVariant]]:
    """Run name -> its evaluation variants, of every package."""
    return {name: rows for paper in _papers() for name, rows in paper.eval_variants.items()}


def variants_of_run(name: str) -> List[EvalVariant]:
    """The variants of a run: those registered under its name, or under its method config's
    name for a protocol run (``"shapes_v4/R3CNN/r3_cnn_R_18_FPN_shapes"`` ->
    ``"R3CNN/r3_cnn_R_18_FPN_shapes"``), so that every protocol's run gets them."""
    from cascade_zoo.model_zoo import CONFIGS_DIR, PROTOCOLS

    variants = eval_variants()
    if name in variants:
        return variants[name]
    first, _, method = name.partition("/")
    protocol_run = method and (CONFIGS_DIR / PROTOCOLS / f"{first}.yaml").is_file()
    return variants.get(method, []) if protocol_run else []


def model_figures() -> List[ModelFigure]:
    return [figure for paper in _papers() for figure in paper.figures]


def readmes() -> List[Path]:
    """The READMEs with results blocks."""
    return [paper.readme for paper in _papers() if paper.readme is not None]


def claims() -> List[Claim]:
    """Every package's claims, in the packages' order."""
    return [claim for paper in _papers() for claim in paper.claims]


def claims_of_readme(path: Path) -> List[Claim]:
    """The claims of the package whose README is ``path``."""
    path = Path(path).resolve()
    return [c for p in _papers() if p.readme and p.readme.resolve() == path for c in p.claims]
