"""The spec grammar: canonical printing, round trips, and one clear SpecError per mistake."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpt_core.errors import MptError, SpecError
from mpt_core.spec import MAX_BITS, MIN_BITS, Spec, Stage

# ---------------------------------------------------------------- strategies

method_names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda name: name != "dense"
)
option_keys = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
option_values = st.one_of(st.just(True), st.from_regex(r"[A-Za-z0-9_.\-]{1,6}", fullmatch=True))
ratios = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False).filter(
    lambda r: math.copysign(1.0, r) > 0
)


@st.composite
def nm_levels(draw) -> dict:
    m = draw(st.integers(min_value=2, max_value=64))
    return {"n": draw(st.integers(min_value=1, max_value=m - 1)), "m": m}


levels = st.one_of(
    st.just({}),
    ratios.map(lambda r: {"ratio": r}),
    nm_levels(),
    st.integers(MIN_BITS, MAX_BITS).map(lambda b: {"bits": b}),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True).map(lambda s: {"scheme": s}),
)


@st.composite
def stages(draw) -> Stage:
    options = draw(st.dictionaries(option_keys, option_values, max_size=4))
    return Stage(method=draw(method_names), options=tuple(sorted(options.items())), **draw(levels))


specs = st.lists(stages(), min_size=0, max_size=4).map(lambda s: Spec(tuple(s)))


def scrambled(spec: Spec, draw) -> str:
    """A non-canonical but valid way to write ``spec``: options reordered, spaces, ratios
    with trailing zeros, integers with leading zeros."""
    if spec.is_dense:
        return draw(st.sampled_from(["dense", " dense", "dense  "]))
    parts = []
    for stage in spec.stages:
        text = stage.method
        kind = stage.level_kind
        if kind == "ratio":
            level = repr(stage.ratio)
            if "e" not in level:
                level += "0" * draw(st.integers(0, 3))
                if level.startswith("0.") and draw(st.booleans()):
                    level = level[1:]  # ".5"
            text += ":" + level
        elif kind == "nm":
            text += f":{'0' * draw(st.integers(0, 1))}{stage.n}:{stage.m}"
        elif kind == "bits":
            text += f":{'0' * draw(st.integers(0, 2))}{stage.bits}"
        elif kind == "scheme":
            text += ":" + stage.scheme
        if stage.options:
            items = [k if v is True else f"{k} = {v}" for k, v in stage.options]
            items = draw(st.permutations(items))
            text += "[" + ",".join(items) + "]"
        parts.append(draw(st.sampled_from(["", " "])) + text + draw(st.sampled_from(["", " "])))
    return "+".join(parts)


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(specs)
def test_str_is_canonical_and_round_trips(spec):
    text = str(spec)
    parsed = Spec.parse(text)
    assert parsed == spec
    assert str(parsed) == text
    assert str(Spec.parse(str(parsed))) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_valid_writing_parses_to_the_same_canonical_spec(data):
    spec = data.draw(specs)
    text = scrambled(spec, data.draw)
    parsed = Spec.parse(text)
    assert parsed == spec, text
    assert str(parsed) == str(spec)
    assert Spec.parse(str(parsed)) == parsed


@settings(max_examples=200, deadline=None)
@given(ratios)
def test_every_legal_ratio_round_trips(ratio):
    """0 <= ratio < 1 is legal however small; its canonical form must parse back to it."""
    spec = Spec.parse(f"magnitude:{ratio:.30f}")  # plain decimal notation, always parseable
    assert spec.stages[0].ratio == float(f"{ratio:.30f}")
    assert Spec.parse(str(spec)) == spec


# -------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("dense", "dense"),
        ("  dense ", "dense"),
        ("nf4", "nf4"),
        ("wanda:0.5", "wanda:0.5"),
        ("wanda:.5", "wanda:0.5"),
        ("wanda:0.50", "wanda:0.5"),
        ("wanda:0.", "wanda:0.0"),
        ("wanda:2:4", "wanda:2:4"),
        ("rtn:4", "rtn:4"),
        ("rtn:04", "rtn:4"),
        ("gguf:Q4_K_M", "gguf:Q4_K_M"),
        ("rtn:4[group=64,sym]", "rtn:4[group=64,sym]"),
        ("rtn:4[sym,group=64]", "rtn:4[group=64,sym]"),
        ("rtn:4[ sym , group = 64 ]", "rtn:4[group=64,sym]"),
        ("wanda:0.5 + rtn:4[group=128]", "wanda:0.5+rtn:4[group=128]"),
        ("magnitude:0.1+magnitude:0.2", "magnitude:0.1+magnitude:0.2"),
    ],
)
def test_examples_parse_to_their_canonical_form(text, canonical):
    spec = Spec.parse(text)
    assert str(spec) == canonical
    assert Spec.parse(canonical) == spec


@pytest.mark.parametrize("text", ["x:0.00001", "x:0.0000001", "x:0.00005+y:4"])
def test_small_ratios_round_trip(text):
    """repr() writes small floats with an exponent (1e-05): canonical text must still parse."""
    spec = Spec.parse(text)
    assert Spec.parse(str(spec)) == spec
    assert str(Spec.parse(str(spec))) == str(spec)


def test_stage_fields_and_derived_properties():
    spec = Spec.parse("wanda:2:4[calib=ptb,nsamples=8]+rtn:3[group=64,sym]")
    wanda, rtn = spec.stages
    assert spec.methods == ("wanda", "rtn")
    assert (wanda.n, wanda.m, wanda.level_kind, wanda.sparsity) == (2, 4, "nm", 0.5)
    assert wanda.options == (("calib", "ptb"), ("nsamples", "8"))
    assert (rtn.bits, rtn.level_kind, rtn.sparsity) == (3, "bits", None)
    assert rtn.option("sym") is True and rtn.option("group") == "64"
    assert rtn.option("missing", "d") == "d"
    assert Spec.parse("magnitude:0.25").stages[0].sparsity == 0.25
    assert Spec.parse("nf4").stages[0].level_kind == "none"
    assert Spec.parse("gguf:Q8_0").stages[0].scheme == "Q8_0"
    assert Spec.parse("dense").is_dense and Spec.parse("dense") == Spec()
    assert not Spec.parse("rtn:4").is_dense


def test_boundary_levels_are_accepted():
    assert Spec.parse("x:0.0").stages[0].ratio == 0.0
    assert Spec.parse("x:0.999").stages[0].ratio == 0.999
    assert Spec.parse("x:1:2").stages[0].m == 2
    assert Spec.parse(f"x:{MIN_BITS}").stages[0].bits == MIN_BITS
    assert Spec.parse(f"x:{MAX_BITS}").stages[0].bits == MAX_BITS


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "empty spec"),
        ("   ", "empty spec"),
        ("magnitude:", "magnitude:"),  # a ':' needs a level after it
        ("x:[a]", "x:[a]"),
        ("x:0.5[", "x:0.5["),
        ("x:4]", "x:4]"),
        ("x:4[a=1]y", "x:4[a=1]y"),
        ("x:4[[a]]", "x:4[[a]]"),
        ("x:4[]", "''"),
        ("x:4[,a]", "''"),
        ("x:4[A=1]", "'A'"),
        ("x:4[a=b c]", "'b c'"),
        ("x:4[a=]", "'a'"),
        ("x:4[a=1,a=2]", "'a' given twice"),
        ("Wanda:0.5", "'Wanda'"),
        ("1x:0.5", "'1x'"),
        ("x y:0.5", "'x y'"),
        (":0.5", "''"),
        ("dense+rtn:4", "'dense'"),
        ("a:0.5+", "empty pipeline stage"),
        ("+a:0.5", "empty pipeline stage"),
        ("a:0.5++b:4", "empty pipeline stage"),
        ("x:1.0", "1.0"),
        ("x:1.5", "1.5"),
        ("x:-0.5", "'-0.5'"),
        ("x:0.5e", "'0.5e'"),
        ("x:4:2", "4:2"),
        ("x:2:2", "2:2"),
        ("x:0:4", "0:4"),
        ("x:a:4", "'a:4'"),
        ("x:2:4:8", "'2:4:8'"),
        ("x::4", "':4'"),
        ("x:1", "bits 1"),
        ("x:9", "bits 9"),
        ("x:0", "bits 0"),
        ("x:Q4 K", "'Q4 K'"),
        ("x:4_a", "'4_a'"),
    ],
)
def test_grammar_errors_are_spec_errors_naming_the_bad_part(text, names):
    with pytest.raises(SpecError) as caught:
        Spec.parse(text)
    message = str(caught.value)
    assert names in message, message
    assert "\n" not in message
    assert isinstance(caught.value, MptError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", [None, 4, b"rtn:4"])
def test_non_string_spec_is_a_spec_error(value):
    with pytest.raises(SpecError, match="empty spec"):
        Spec.parse(value)


@given(st.lists(stages(), min_size=2, max_size=8))
def test_level_order_puts_numbers_by_value_before_nm_before_schemes(drawn):
    ordered = sorted(drawn, key=lambda stage: stage.level_order)
    rank = {"ratio": 0, "bits": 0, "nm": 1, "scheme": 2, "none": 3}
    assert [rank[s.level_kind] for s in ordered] == sorted(rank[s.level_kind] for s in drawn)
    ratios_in_order = [s.ratio for s in ordered if s.level_kind == "ratio"]
    assert ratios_in_order == sorted(ratios_in_order)
