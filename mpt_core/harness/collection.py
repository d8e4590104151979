"""Baseline rows become test parameters: which rows, their marks and ids, smoke and shards.

Rows are read once per session (``rows``) and every other lookup uses that list.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from mpt_core import baselines
from mpt_core.baselines import BaselineRow
from mpt_core.harness import rehearsal
from mpt_core.harness.curve_rows import BaselineCurve, baseline_curves
from mpt_core.harness.scaleout import in_shard, parse_shard

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


def baselines_dir(config) -> Path:
    option = config.getoption("--mpt-baselines")
    return Path(option) if option else Path(config.rootpath) / "baselines"


def rows(config) -> list[BaselineRow]:
    """Every numeric baseline row of the selected tiers, read from disk once per session."""
    if _ROWS not in config.stash:
        config.stash[_ROWS] = _read_rows(config)
    return config.stash[_ROWS]


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
    return [row for row in found if row.is_numeric]


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
            sample = rehearsal.sample(items)
            _deselect(
                config, items, lambda item: item.nodeid in sample or not rehearsal.study_rows(item)
            )
    if config.getoption("--mpt-shard"):
        index, count = parse_shard(config.getoption("--mpt-shard"))
        _deselect(config, items, lambda item: in_shard(item.nodeid, index, count))


def _deselect(config, items, keep_if) -> None:
    keep, drop = [], []
    for item in items:
        (keep if keep_if(item) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def selected_rows(items) -> list[BaselineRow]:
    """The baseline rows the selected tests will measure (a curve's rows included)."""
    found = []
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        if isinstance(params.get("mpt_row"), BaselineRow):
            found.append(params["mpt_row"])
        if isinstance(params.get("mpt_curve"), BaselineCurve):
            found += params["mpt_curve"].rows
    return found


def in_smoke(item) -> bool:
    """Everything but the CPU tier's curves and its points outside SMOKE_SPECS; the tiny
    tier whole."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    row, curve = params.get("mpt_row"), params.get("mpt_curve")
    if curve is not None:
        return curve.rows[0].tier != "cpu" or curve.rows[0].model in TINY_MODELS
    return (
        row is None
        or row.tier != "cpu"
        or row.model in TINY_MODELS
        or (row.spec in SMOKE_SPECS and row.dataset == SMOKE_DATASET)
    )
