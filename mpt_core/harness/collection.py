"""Baseline rows become test parameters: which rows, their marks and ids, smoke, shards, order.

Rows are read once per session (``rows``) and every other lookup uses that list.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import pytest

from mpt_core import baselines
from mpt_core.baselines import BaselineRow
from mpt_core.errors import BaselineError, MptError
from mpt_core.harness import plan, policy, rehearsal, row_checks
from mpt_core.harness.curve_rows import BaselineCurve, baseline_curves
from mpt_core.harness.scaleout import balance, in_shard, parse_shard
from mpt_core.spec import Spec

# What --mpt-smoke keeps of the CPU tier: a few points per implemented family, on WikiText-2
# (GGUF through llama.cpp, which CI installs with scripts/setup_gguf.sh, and one pipeline).
SMOKE_SPECS = {
    "dense",
    "rtn:4[group=64]",
    "rtn:2[group=64]",
    "magnitude:0.5",
    "magnitude:2:4",
    "shortgpt:0.2",
    "gguf:Q4_K_M",
    "wanda:0.5+gguf:Q4_K_M",
}
SMOKE_DATASET = "wikitext2"
# The tiny tier: every registered method on tiny-llama, seconds a point; --mpt-smoke keeps
# all of it (scripts/record_tiny_tier.sh records it).
TINY_MODELS = ("tiny-llama",)
_ROWS = pytest.StashKey[list]()
_READ_ERROR = pytest.StashKey[str]()
_EMPTY_CELLS = pytest.StashKey[int]()


def baselines_dir(config) -> Path:
    option = config.getoption("--mpt-baselines")
    return Path(option) if option else Path(config.rootpath) / "baselines"


def rows(config) -> list[BaselineRow]:
    """Every baseline row of the selected tiers that has a value (finite or collapsed; not
    the study's empty cells), read from disk and checked (``row_checks``) once per session."""
    if _ROWS not in config.stash:
        try:
            config.stash[_ROWS] = _read_rows(config)
        except MptError as error:
            config.stash[_READ_ERROR] = str(error)  # the plugin stops the session with it
            raise
    return config.stash[_ROWS]


def read_error(config) -> str | None:
    """The error of baseline files that did not read or check, one line per bad row."""
    return config.stash.get(_READ_ERROR, None)


def empty_cells(config) -> int:
    """How many rows of the selected tiers are cells the study left empty ('-')."""
    return config.stash.get(_EMPTY_CELLS, 0)


def tier(config) -> str:
    """--mpt-tier; without it the tier follows the machine (CUDA: the study tier, else the
    CPU tier), unless -m names a tier's marker: then both are collected and -m selects."""
    chosen = config.getoption("--mpt-tier")
    if chosen:
        return chosen
    if rehearsal.rehearsal_model(config):
        return "gpu"
    if re.search(r"\b(gpu|cpu)\b", config.getoption("markexpr") or ""):
        return "all"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _read_rows(config) -> list[BaselineRow]:
    root, tier_name = baselines_dir(config), tier(config)
    found = []
    if tier_name in ("gpu", "all") and (root / "study").is_dir():
        found += baselines.load_dir(root / "study", "study")
    for model in filter(None, config.getoption("--mpt-model").split(",")):
        cpu_dir = root / "cpu" / model.strip()
        if tier_name in ("cpu", "all") and cpu_dir.is_dir():
            found += baselines.load_dir(cpu_dir, "cpu")
    problems = row_checks.errors(found)
    if problems:
        raise BaselineError("\n".join(problems))
    for row, conflict in row_checks.conflicts(found):  # shown where the row is
        warnings.warn_explicit(conflict, MptBaselineWarning, row.file, row.line)
    config.stash[_EMPTY_CELLS] = sum(not row.has_value for row in found)
    return [row for row in found if row.has_value]


class MptBaselineWarning(pytest.PytestWarning):
    """Baseline rows that are all tests but cannot all be right (``row_checks.conflicts``)."""


def parametrize(metafunc) -> None:
    """One test per row of the module's families (``mpt_row``) or per curve (``mpt_curve``)."""
    if "mpt_row" in metafunc.fixturenames:
        families = getattr(metafunc.module, "MPT_FAMILIES", ())
        chosen = [row for row in rows(metafunc.config) if row.family in families]
        metafunc.parametrize("mpt_row", [_row_param(row) for row in chosen], ids=_row_ids(chosen))
    if "mpt_curve" in metafunc.fixturenames:
        found = baseline_curves(rows(metafunc.config))
        params = [pytest.param(curve, marks=_curve_marks(curve)) for curve in found]
        metafunc.parametrize("mpt_curve", params, ids=_curve_ids(found))


def _tier_mark(tier: str):
    return pytest.mark.gpu if tier == "study" else pytest.mark.cpu


def _row_param(row: BaselineRow):
    marks = [_tier_mark(row.tier), getattr(pytest.mark, row.family)]
    if row.family == "semi":
        marks.append(pytest.mark.unstructured)
    return pytest.param(row, marks=marks)


def _row_ids(chosen: list[BaselineRow]) -> list[str]:
    counts = Counter(row.test_id for row in chosen)
    return [
        row.test_id if counts[row.test_id] == 1 else f"{row.test_id}-{row.table}" for row in chosen
    ]


def _curve_marks(curve: BaselineCurve) -> list:
    return [
        pytest.mark.curve,
        _tier_mark(curve.rows[0].tier),
        getattr(pytest.mark, curve.rows[-1].family),
    ]


def _curve_ids(found: list[BaselineCurve]) -> list[str]:
    counts = Counter(curve.test_id for curve in found)
    return [
        c.test_id if counts[c.test_id] == 1 else f"{c.test_id}-{c.rows[0].table}" for c in found
    ]


def select(config, items) -> None:
    """Keep the smoke subset (of a rehearsal: its sample) and this runner's shard,
    deselecting (and reporting) the rest."""
    if config.getoption("--mpt-smoke"):
        _deselect(config, items, in_smoke)
        if rehearsal.rehearsal_model(config):
            sample = rehearsal.sample(
                items, item_rows, lambda row: policy.skip_reason(row, rehearsing=True) is None
            )
            _deselect(config, items, lambda item: item.nodeid in sample or not _has_study_row(item))
    if config.getoption("--mpt-shard"):
        index, count = parse_shard(config.getoption("--mpt-shard"))
        shards = shard_by_cost(items, count, config.getoption("--mpt-windows"))
        _deselect(config, items, lambda item: shards[item.nodeid] == index)


def shard_by_cost(items, count: int, windows_option: int | None) -> dict[str, int]:
    """Each test's shard (1-based) of ``count``, balancing estimated seconds
    (``scaleout.balance``). The row tests of one point are one unit, so a point compresses in
    one shard; a curve test is a unit of its own, costed as measuring its points where none
    of them ran (it measures again those that ran in another shard: joining them would chain
    a model's whole grid into one unit). Tests with no estimated cost go by a hash of their id.
    The partition depends on the whole selection: adding tests may move others."""
    planned = {p.key: p for p in plan.build(selected_rows(items), windows_option).points}
    unit_of: dict[str, str] = {}
    units: dict[str, float] = {}
    for item in items:
        rows = item_rows(item)
        if not rows:
            continue
        if is_curve(item):
            unit = f"curve {item.nodeid}"
            units[unit] = sum(_row_alone(planned, row, windows_option) for row in rows)
        else:
            key = policy.row_point(rows[0], windows_option)
            point, unit = planned.get(key), f"point {key}"
            units[unit] = point.stage_seconds + point.evaluate_seconds if point else 0.0
        unit_of[item.nodeid] = unit
    chosen = balance({unit: cost for unit, cost in units.items() if cost > 0}, count)
    return {
        item.nodeid: chosen.get(unit_of.get(item.nodeid, "")) or _hash_shard(item.nodeid, count)
        for item in items
    }


def _row_alone(planned: dict, row: BaselineRow, windows_option: int | None) -> float:
    """Seconds of compressing a row's point and evaluating the row, nothing shared."""
    point = planned.get(policy.row_point(row, windows_option))
    return point.stage_seconds + point.evaluations[(row.dataset, row.limit)] if point else 0.0


def _hash_shard(nodeid: str, count: int) -> int:
    return next(shard for shard in range(1, count + 1) if in_shard(nodeid, shard, count))


def order(config, items) -> None:
    """Run the row tests grouped by (model, seqlen), within that pipelines sharing a first
    stage next to each other, within that a point's rows together (a curve after its
    model's rows): whatever order pytest-randomly or -k left, a model's session and a
    pipeline's first stage are each used in one stretch. Groups keep the order they first
    appear in; other tests keep their places."""
    windows = config.getoption("--mpt-windows")
    slots = [i for i, item in enumerate(items) if item_rows(item)]
    seen: dict[tuple, int] = {}
    keys = {}
    for i in slots:
        rows = item_rows(items[i])
        model, seqlen, spec, windows_used = policy.row_point(rows[0], windows)
        group = _rank(seen, ("model", model, seqlen))
        if is_curve(items[i]):
            keys[i] = (group, 1, 0, 0)
            continue
        stages = Spec.parse(spec).stages
        first = _rank(seen, ("first", model, seqlen, str(stages[0]) if stages else "dense"))
        keys[i] = (group, 0, first, _rank(seen, ("point", model, seqlen, spec, windows_used)))
    moved = [items[i] for i in sorted(slots, key=keys.__getitem__)]
    for slot, item in zip(slots, moved):
        items[slot] = item


def _rank(seen: dict, key: tuple) -> int:
    """The order in which ``key`` first appeared."""
    return seen.setdefault(key, len(seen))


def _deselect(config, items, keep_if) -> None:
    keep, drop = [], []
    for item in items:
        (keep if keep_if(item) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def selected_rows(items) -> list[BaselineRow]:
    """The baseline rows the selected tests will measure (a curve's rows included)."""
    return [row for item in items for row in item_rows(item)]


def item_rows(item) -> list[BaselineRow]:
    """The baseline rows one test measures: its row, or its curve's rows; none for others."""
    params = _params(item)
    if isinstance(params.get("mpt_row"), BaselineRow):
        return [params["mpt_row"]]
    if isinstance(params.get("mpt_curve"), BaselineCurve):
        return list(params["mpt_curve"].rows)
    return []


def _has_study_row(item) -> bool:
    return any(row.tier == "study" for row in item_rows(item))


def is_curve(item) -> bool:
    return isinstance(_params(item).get("mpt_curve"), BaselineCurve)


def _params(item) -> dict:
    return item.callspec.params if hasattr(item, "callspec") else {}


def in_smoke(item) -> bool:
    """Everything but the CPU tier's curves and its points outside SMOKE_SPECS; the tiny
    tier whole."""
    params = _params(item)
    row, curve = params.get("mpt_row"), params.get("mpt_curve")
    if curve is not None:
        return curve.rows[0].tier != "cpu" or curve.rows[0].model in TINY_MODELS
    return (
        row is None
        or row.tier != "cpu"
        or row.model in TINY_MODELS
        or (row.spec in SMOKE_SPECS and row.dataset == SMOKE_DATASET)
    )
