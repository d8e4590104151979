"""``--mpt-shard i/n`` partitions the suite exactly: every test in one shard, none twice.

The central test collects the study tier (``benchmarks -m gpu``, what the GPU workflow
shards over its matrix) unsharded and as three shards, in-process, and compares.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from mpt_core.errors import MptError
from mpt_core.harness.scaleout import in_shard, parse_shard

SHARDS = 3


class Collected:
    """A pytest plugin that keeps the node ids a run collected."""

    def __init__(self):
        self.ids: list[str] = []

    def pytest_collection_finish(self, session) -> None:
        self.ids = [item.nodeid for item in session.items]


def collect(*args: str) -> list[str]:
    collected = Collected()
    quiet = ["--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(["benchmarks", "-m", "gpu", *quiet, *args], plugins=[collected])
    assert code == 0, f"collection failed: {args}"
    return collected.ids


def test_the_union_of_the_shards_is_the_unsharded_suite_with_no_duplicates(one_thread):
    everything = collect()
    shards = [collect("--mpt-shard", f"{i}/{SHARDS}") for i in range(1, SHARDS + 1)]
    assert len(everything) > 500  # the study tier: Tables 1-10
    merged = [nodeid for shard in shards for nodeid in shard]
    assert len(merged) == len(set(merged)), "a test ran in two shards"
    assert set(merged) == set(everything)
    assert all(len(shard) > len(everything) / (2 * SHARDS) for shard in shards)


def test_shard_membership_depends_on_the_test_id_alone():
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
