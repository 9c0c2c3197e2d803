"""What each paper package adds to the shapes benchmark's reports, declared by the package itself
(``projects/<package>/results.py``, imported by its ``__init__``): evaluations of a run's final
model under other test-time settings, figures its tools make from the runs' models, and the
README whose ``<!-- results: ... -->`` blocks the runner regenerates. A new paper registers here
and touches no file of the runner.
"""

import importlib
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple


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


class PaperResults(NamedTuple):
    package: str
    readme: Optional[Path]
    eval_variants: Dict[str, List[EvalVariant]]  # run name -> its variants
    figures: Tuple[ModelFigure, ...]


_PAPERS: Dict[str, PaperResults] = {}


def register_results(
    package: str,
    *,
    readme: Optional[Path] = None,
    eval_variants: Optional[Dict[str, Sequence[Tuple[str, Sequence[str]]]]] = None,
    figures: Sequence[Tuple[str, str]] = (),
) -> None:
    """Declare a package's part of the reports (a second call of the same package replaces the
    first).

    Args:
        package: the package's name, e.g. "r3_cnn".
        readme: its README.md, whose results blocks the runner regenerates.
        eval_variants: run name (e.g. "Benchmark/r3_cnn_R_18_FPN_shapes") -> [(variant name,
            [KEY, VALUE, ...])], evaluated after the run trains and stored in its result file.
        figures: (image relative to docs/, caption) of the figures its tools make, documented in
            ``readme``.

    Raises:
        ValueError: a run's variants are declared by another package already.
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
    _PAPERS[package] = PaperResults(package, readme, variants, shown)


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
    return eval_variants().get(name, [])


def model_figures() -> List[ModelFigure]:
    return [figure for paper in _papers() for figure in paper.figures]


def readmes() -> List[Path]:
    """The READMEs with results blocks."""
    return [paper.readme for paper in _papers() if paper.readme is not None]
