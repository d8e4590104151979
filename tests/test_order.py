"""Row tests run grouped by model, then shared first stage, then point, whatever order
pytest-randomly or -k leaves (issue #22): a model's session and a pipeline's first stage are
each used in one stretch. The study tier is collected in-process under two shuffles."""

from __future__ import annotations

import contextlib
import io
import random
from dataclasses import dataclass, field

import pytest

from conftest import table2_row
from mpt_core.harness import collection, policy
from mpt_core.spec import Spec


class Collected:
    """A pytest plugin that keeps the items a run collected, in their final order."""

    def __init__(self):
        self.items: list = []

    def pytest_collection_finish(self, session) -> None:
        self.items = list(session.items)


def collect(*args: str) -> list:
    collected = Collected()
    quiet = ["--collect-only", "-q", "-p", "no:cacheprovider"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(["benchmarks", "-m", "gpu", *quiet, *args], plugins=[collected])
    assert code == 0, f"collection failed: {args}"
    return collected.items


def runs(keys: list) -> int:
    """How many stretches of equal neighbours ``keys`` has."""
    return sum(1 for i, key in enumerate(keys) if i == 0 or key != keys[i - 1])


def row_points(items) -> list[tuple]:
    """The point of each row test, in order (curve tests left out)."""
    rows = [collection.item_rows(item) for item in items]
    return [policy.row_point(found[0], None) for found in rows if len(found) == 1]


def first_stage(point: tuple) -> str:
    stages = Spec.parse(point[2]).stages
    return str(stages[0]) if stages else "dense"


@pytest.mark.parametrize("seed", [1, 2])
def test_a_shuffled_study_tier_runs_each_model_point_and_first_stage_in_one_stretch(seed):
    shuffled = collect("-p", "randomly", f"--randomly-seed={seed}")
    plain = collect("-p", "no:randomly")
    assert [item.nodeid for item in shuffled] != [item.nodeid for item in plain]
    points = row_points(shuffled)
    models = [point[:2] for point in points]
    assert runs(models) == len(set(models)) > 10
    assert runs(points) == len(set(points))
    stages = [(*point[:2], first_stage(point)) for point in points]
    assert runs(stages) == len(set(stages))


def test_the_order_holds_under_k():
    points = row_points(collect("-p", "randomly", "--randomly-seed=3", "-k", "gguf or wanda"))
    models = [point[:2] for point in points]
    assert runs(models) == len(set(models)) > 1


@dataclass
class FakeCallSpec:
    params: dict = field(default_factory=dict)


@dataclass
class FakeItem:
    nodeid: str
    callspec: FakeCallSpec


class FakeConfig:
    def getoption(self, name):
        assert name == "--mpt-windows"
        return None


def test_order_groups_rows_and_leaves_other_tests_in_their_places():
    rows = [
        table2_row(spec, dataset, model)
        for model in ("llama2-7b", "qwen2.5-7b")
        for spec in ("dense", "wanda:0.5", "wanda:0.5+gguf:Q4_K_M", "rtn:4", "wanda:0.5+rtn:8")
        for dataset in ("wikitext2", "ptb")
    ]
    items = [FakeItem(f"row{i}", FakeCallSpec({"mpt_row": row})) for i, row in enumerate(rows)]
    others = [FakeItem(f"other{i}", FakeCallSpec()) for i in range(5)]
    mixed = items + others
    random.Random(0).shuffle(mixed)
    places = {item.nodeid: i for i, item in enumerate(mixed) if item in others}
    collection.order(FakeConfig(), mixed)
    assert {item.nodeid: i for i, item in enumerate(mixed) if item in others} == places
    points = row_points(mixed)
    assert runs([point[0] for point in points]) == 2
    assert runs(points) == len(set(points)) == 10
    for model in ("meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-7B"):
        wanda = [i for i, p in enumerate(points) if p[0] == model and first_stage(p) == "wanda:0.5"]
        assert wanda == list(range(wanda[0], wanda[0] + 6))  # alone and 2 pipelines, 2 datasets
