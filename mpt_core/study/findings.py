"""The study's unstructured-pruning findings (Tables 2-3, Fig. 4), checked on baseline rows.

Three questions, answered from recorded points only (a point not recorded says so; it is
never guessed):

- ranking: at 50-70% sparsity, do SparseGPT and ADMM beat Wanda, and Wanda magnitude?
- pattern: at 50%, does each method's unstructured mask beat 4:8, and 4:8 beat 2:4?
- owl: at 70%, does OWL's outlier-weighted allocation beat its base method's uniform one?

"Beat" means a lower perplexity. The same questions run on the study's own tables
(``baselines/study/table2.csv``), which is how the test checks the checker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mpt_core import registry
from mpt_core.baselines import BaselineRow
from mpt_core.spec import Spec, Stage

RANKING_RATIOS = ("0.5", "0.6", "0.7")
RANKING_METHODS = ("magnitude", "wanda", "sparsegpt", "admm")
RANKING_PAIRS = (("sparsegpt", "wanda"), ("admm", "wanda"), ("wanda", "magnitude"))
PATTERN_LEVELS = ("0.5", "4:8", "2:4")
OWL_RATIO = "0.7"
OWL_BASES = ("wanda", "sparsegpt")

Points = dict[tuple[str, str], float]  # (method with options, level) -> PPL


@dataclass(frozen=True)
class Finding:
    """One row of a check: the values it compared and what they say."""

    label: str
    values: tuple[float | None, ...]
    verdict: str


def ppl_points(rows: Iterable[BaselineRow], dataset: str) -> Points:
    """The single-stage pruning points of one dataset; the first file to state one wins."""
    points: Points = {}
    for row in rows:
        if row.metric != "ppl" or row.dataset != dataset or not row.is_numeric:
            continue
        stages = Spec.parse(row.spec).stages
        if len(stages) == 1 and stages[0].sparsity is not None:
            points.setdefault((method_name(stages[0]), stages[0].level_str()), row.value)
    return points


def method_name(stage: Stage) -> str:
    """The stage without its level and its calibration set: the study's Table 3 writes
    ``wanda:0.5[calib=ptb]`` for the method the CPU tier (PTB-calibrated) writes ``wanda:0.5``."""
    options = tuple((key, value) for key, value in stage.options if key != "calib")
    return str(Stage(method=stage.method, options=options))


def ordered(points: Points, pairs: Iterable[tuple[tuple[str, str], tuple[str, str]]]) -> str:
    """'yes', 'no: ...' or 'not recorded: ...' for a chain of (better, worse) point pairs."""
    missing = sorted({key for pair in pairs for key in pair if key not in points})
    broken = [
        f"{_name(better)} {points[better]:.4g} >= {_name(worse)} {points[worse]:.4g}"
        for better, worse in pairs
        if better in points and worse in points and points[better] >= points[worse]
    ]
    if broken:
        return "no: " + "; ".join(broken)
    if missing:
        return "not recorded: " + ", ".join(_name(key) for key in missing)
    return "yes"


def ranking(points: Points) -> list[Finding]:
    """SparseGPT, ADMM < Wanda < magnitude at each ratio of RANKING_RATIOS."""
    return [
        Finding(
            ratio,
            tuple(points.get((method, ratio)) for method in RANKING_METHODS),
            ordered(points, [((b, ratio), (w, ratio)) for b, w in RANKING_PAIRS]),
        )
        for ratio in RANKING_RATIOS
    ]


def pattern(points: Points) -> list[Finding]:
    """Unstructured 50% < 4:8 < 2:4 for each N:M-capable method with any of those points."""
    methods = sorted(
        {method for method, level in points if level in PATTERN_LEVELS and takes_nm(method)}
    )
    return [
        Finding(
            method,
            tuple(points.get((method, level)) for level in PATTERN_LEVELS),
            ordered(
                points,
                [((method, a), (method, b)) for a, b in zip(PATTERN_LEVELS, PATTERN_LEVELS[1:])],
            ),
        )
        for method in methods
    ]


def takes_nm(method: str) -> bool:
    """Whether the method has N:M masks; a structured or low-rank method at 0.5 has none."""
    return "nm" in registry.get(method.split("[")[0]).levels


def owl(points: Points) -> list[Finding]:
    """OWL on each base method at OWL_RATIO against the base method alone."""
    findings = []
    for base in OWL_BASES:
        owl_key, base_key = (f"owl[base={base}]", OWL_RATIO), (base, OWL_RATIO)
        if owl_key in points or base_key in points:
            values = (points.get(base_key), points.get(owl_key))
            findings.append(Finding(base, values, ordered(points, [(owl_key, base_key)])))
    return findings


def _name(key: tuple[str, str]) -> str:
    method, level = key
    return f"{method}:{level}"
