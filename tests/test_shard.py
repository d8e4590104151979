"""``--mpt-shard i/n`` partitions the suite exactly: every test in one shard, none twice;
the shards carry equal estimated cost and a point's row tests stay in one shard (#22).

The central tests collect the study tier (``benchmarks -m gpu``, what the GPU workflow
shards over its matrix) unsharded and as three or four shards, in-process, and compare.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from mpt_core.errors import MptError
from mpt_core.harness import collection, plan, policy
from mpt_core.harness.scaleout import balance, in_shard, parse_shard

SHARDS = 3


class Collected:
    """A pytest plugin that keeps the items a run collected."""

    def __init__(self):
        self.items: list = []

    def pytest_collection_finish(self, session) -> None:
        self.items = list(session.items)


def collect_items(*args: str) -> list:
    collected = Collected()
    quiet = ["--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(["benchmarks", "-m", "gpu", *quiet, *args], plugins=[collected])
    assert code == 0, f"collection failed: {args}"
    return collected.items


def collect(*args: str) -> list[str]:
    return [item.nodeid for item in collect_items(*args)]


def test_the_union_of_the_shards_is_the_unsharded_suite_with_no_duplicates(one_thread):
    everything = collect()
    shards = [collect("--mpt-shard", f"{i}/{SHARDS}") for i in range(1, SHARDS + 1)]
    assert len(everything) > 500  # the study tier: Tables 1-10
    merged = [nodeid for shard in shards for nodeid in shard]
    assert len(merged) == len(set(merged)), "a test ran in two shards"
    assert set(merged) == set(everything)
    assert all(len(shard) > len(everything) / (2 * SHARDS) for shard in shards)


def estimated_seconds(items: list, planned: dict) -> float:
    """What a shard's tests cost: each distinct point of its row tests once, and each curve
    test its points' compression and its rows' evaluation."""
    points, seconds = set(), 0.0
    for item in items:
        rows = collection.item_rows(item)
        if collection.is_curve(item):
            for row in rows:
                point = planned[policy.row_point(row, None)]
                seconds += point.stage_seconds + point.evaluations[(row.dataset, row.limit)]
        elif rows:
            points.add(policy.row_point(rows[0], None))
    return seconds + sum(
        planned[p].stage_seconds + planned[p].evaluate_seconds for p in points if p in planned
    )


def test_four_shards_of_the_study_tier_carry_equal_cost_and_never_split_a_point(one_thread):
    everything = collect_items()
    planned = {p.key: p for p in plan.build(collection.selected_rows(everything)).points}
    shards = [collect_items("--mpt-shard", f"{i}/4") for i in range(1, 5)]
    ids = [item.nodeid for shard in shards for item in shard]
    assert len(ids) == len(set(ids)) and set(ids) == {item.nodeid for item in everything}
    home: dict[tuple, int] = {}
    for number, shard in enumerate(shards):
        for item in shard:
            rows = collection.item_rows(item)
            if len(rows) == 1:
                point = policy.row_point(rows[0], None)
                assert home.setdefault(point, number) == number, f"{point} split over shards"
    loads = [estimated_seconds(shard, planned) for shard in shards]
    mean = sum(loads) / len(loads)
    assert (max(loads) - min(loads)) / mean <= 0.10, loads


def test_balance_puts_the_costliest_unit_first_on_the_least_loaded_shard():
    chosen = balance({"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 1.0}, 2)
    assert chosen == {"a": 1, "b": 2, "c": 2, "d": 1, "e": 2}
    assert balance({"x": 1.0, "y": 1.0}, 2) == balance({"y": 1.0, "x": 1.0}, 2)


def test_a_test_with_no_estimated_cost_is_sharded_by_the_hash_of_its_id():
    ids = [f"benchmarks/test_quant.py::test_ppl[llama2-7b-wikitext2-rtn:{b}]" for b in range(99)]
    first = [[i for i in ids if in_shard(i, k, 4)] for k in range(1, 5)]
    again = [[i for i in reversed(ids[:50]) if in_shard(i, k, 4)] for k in range(1, 5)]
    assert sorted(len(part) for part in first) != [0, 0, 0, 99]
    assert [set(part) & set(ids[:50]) for part in first] == [set(part) for part in again]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "1", "a/b", "-1/3"])
def test_a_bad_shard_is_an_error_that_shows_the_form(text):
    with pytest.raises(MptError, match=r"write i/n with 1 <= i <= n"):
        parse_shard(text)


def test_parse_shard_reads_index_and_count():
    assert parse_shard(" 2/5 ") == (2, 5)
