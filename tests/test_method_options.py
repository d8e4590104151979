"""Every numeric option of every method is parsed as a value: a number option refuses
nan and ±inf (issue #23: ``owl[m=nan]`` and ``ria[alpha=inf]`` ran and recorded nonsense)."""

from __future__ import annotations

import pytest

from mpt_core import registry
from mpt_core.errors import SpecError
from mpt_core.spec import Spec


def number_options() -> list[tuple[str, str]]:
    """(method, option) for every option whose parser takes a plain number like 0.25."""
    found = []
    for name in registry.names():
        for key, option in registry.get(name).options.items():
            try:
                option.parse("0.25")
            except (ValueError, TypeError):
                continue
            found.append((name, key))
    return found


NUMBER_OPTIONS = number_options()


def test_the_number_options_include_the_ones_that_once_took_nan():
    assert {("owl", "m"), ("owl", "lam"), ("ria", "alpha"), ("admm", "rho")} <= set(NUMBER_OPTIONS)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("method", "key"), NUMBER_OPTIONS, ids=[f"{m}-{k}" for m, k in NUMBER_OPTIONS]
)
def test_a_number_option_refuses_non_finite_values(method, key, value):
    level = "4" if "bits" in registry.get(method).levels else "0.5"
    spec = Spec.parse(f"{method}:{level}[{key}={value}]")
    with pytest.raises(SpecError, match=f"option {key}={value} of"):
        registry.get(method).settings(spec.stages[0])
