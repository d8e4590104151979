"""Baseline rows no test would judge rightly: each is one line naming ``file:line``.

Read silently, a row naming a method nobody knows, or one whose family no benchmarks module
collects, would vanish; a row repeating another of its file would become a second test
of the same point against another baseline. These are errors that stop collection
(``errors``). One point in two CPU-tier files under one protocol with values farther apart
than its tolerance is a warning (``conflicts``): each file is a table with its own
references (a combined table keeps its single-method points), so both rows are tests, and
one measurement would fail the other. Closer values are two measurements of the point (a
method whose result moves with the library versions or the BLAS threads), and pass.
Two study tables printing one point differently are the study's two measurements: kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from mpt_core import baselines, registry
from mpt_core.baselines import BaselineRow
from mpt_core.families import ROW_FAMILIES
from mpt_core.harness import policy
from mpt_core.protocols import protocol_for
from mpt_core.spec import Spec

MAX_LINES = 20  # errors listed before "... and N more": a screenful


def errors(rows: list[BaselineRow]) -> list[str]:
    """One line per row that cannot be a test: unknown method, uncollected family,
    duplicate in its file; at most ``MAX_LINES`` and a count of the rest."""
    found = [*_unknown_or_uncollected(rows), *_duplicates(rows)]
    if len(found) > MAX_LINES:
        found = [*found[:MAX_LINES], f"... and {len(found) - MAX_LINES} more rows like these"]
    return found


def _unknown_or_uncollected(rows: list[BaselineRow]) -> Iterator[str]:
    # the study's methods not implemented yet are known: their rows skip, saying so
    known = set(registry.names()) | set(baselines.METHOD_FAMILIES)
    for row in rows:
        unknown = [method for method in Spec.parse(row.spec).methods if method not in known]
        if unknown:
            yield f"{row.where}: unknown method {unknown[0]!r} (mpt methods lists them)"
        elif row.family not in ROW_FAMILIES:
            yield (
                f"{row.where}: family {row.family!r}: no benchmarks module collects it "
                f"(their MPT_FAMILIES: {', '.join(ROW_FAMILIES)}; a method's family is in "
                "mpt_core.baselines.METHOD_FAMILIES)"
            )


def _duplicates(rows: list[BaselineRow]) -> Iterator[str]:
    first: dict[tuple, BaselineRow] = {}
    for row in rows:
        key = (row.file, row.model, row.dataset, row.spec, row.metric, row.limit, row.seqlen)
        if key in first:
            yield (
                f"{row.where}: duplicate of {first[key].where} ({row.test_id} {row.metric}): "
                "one point, one row"
            )
        first.setdefault(key, row)


def conflicts(rows: list[BaselineRow]) -> list[tuple[BaselineRow, str]]:
    """(the later row, one line) per CPU-tier point two files give two values under one
    protocol."""
    first: dict[tuple, BaselineRow] = {}
    found = []
    for row in rows:
        if row.tier != "cpu" or not row.has_value:
            continue
        key = (row.model, row.dataset, row.spec, row.metric, row.limit, protocol_for(row))
        other = first.setdefault(key, row)
        if other.file != row.file and not _agree(other, row):
            found.append((row, (
                f"{row.test_id} {row.metric} is {row.raw_value} here and {other.raw_value} in "
                f"{other.where}, under one protocol, beyond its tolerance: one would fail the "
                "other; record both files again (mpt baselines record) or drop one row"
            )))  # fmt: skip
    return found


def _agree(first: BaselineRow, second: BaselineRow) -> bool:
    """Whether two baselines of one point are within the point's tolerance of each other
    (both collapsed counts as agreeing)."""
    a, b = first.value, second.value
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b or (math.isnan(a) and math.isnan(b))
    return abs(a - b) <= policy.tolerance(first, None) * abs(a)
