"""Compression specs: the unit of work and the test id.

Grammar (one stage; stages join with ``+`` into a pipeline)::

    dense
    method                       nf4, int8
    method:ratio                 wanda:0.5          0 <= ratio < 1, written with a '.'
    method:N:M                   wanda:2:4          0 < N < M: prune N of every M weights
    method:bits                  rtn:4              integer 2..8
    method:SCHEME                gguf:Q4_K_M        starts with a letter
    ...[key=value,flag]          rtn:4[group=64,sym]

``str(Spec.parse(s))`` is canonical (options sorted, ratios as Python's repr) and
parses back to an equal Spec. Parsing checks the grammar only; whether a method
exists and accepts a level is the registry's job (``registry.validate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mpt_core.errors import SpecError

MIN_BITS, MAX_BITS = 2, 8
_METHOD = re.compile(r"[a-z][a-z0-9_]*\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_OPTION_KEY = re.compile(r"[a-z][a-z0-9_]*\Z")
_OPTION_VALUE = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_RATIO = re.compile(r"(\d*\.\d+|\d+\.\d*)(e[-+]?\d+)?\Z|\d+e-\d+\Z")
_INT = re.compile(r"\d+\Z")

OptionValue = str | bool


@dataclass(frozen=True)
class Stage:
    """One compression step: a method, at most one level, and options."""

    method: str
    ratio: float | None = None
    n: int | None = None
    m: int | None = None
    bits: int | None = None
    scheme: str | None = None
    options: tuple[tuple[str, OptionValue], ...] = ()

    @property
    def level_kind(self) -> str:
        """One of "none", "ratio", "nm", "bits", "scheme"."""
        if self.ratio is not None:
            return "ratio"
        if self.n is not None:
            return "nm"
        if self.bits is not None:
            return "bits"
        if self.scheme is not None:
            return "scheme"
        return "none"

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of an N:M level, else None."""
        return (self.n, self.m) if self.level_kind == "nm" else None

    @property
    def sparsity(self) -> float | None:
        """The fraction of weights this stage removes, for ratio and N:M levels."""
        if self.ratio is not None:
            return self.ratio
        if self.n is not None and self.m is not None:
            return self.n / self.m
        return None

    @property
    def level_order(self) -> tuple:
        """Sort key of a method's levels: ratios and bits by value, then N:M, then schemes."""
        rank = {"ratio": 0, "bits": 0, "nm": 1, "scheme": 2, "none": 3}[self.level_kind]
        value = self.ratio if self.ratio is not None else self.bits
        return (rank, value or 0.0, self.level_str())

    def option(self, key: str, default: OptionValue | None = None) -> OptionValue | None:
        return dict(self.options).get(key, default)

    def level_str(self) -> str:
        kind = self.level_kind
        if kind == "ratio":
            return repr(self.ratio)
        if kind == "nm":
            return f"{self.n}:{self.m}"
        if kind == "bits":
            return str(self.bits)
        if kind == "scheme":
            return str(self.scheme)
        return ""

    def __str__(self) -> str:
        text = self.method
        level = self.level_str()
        if level:
            text += ":" + level
        if self.options:
            parts = [key if value is True else f"{key}={value}" for key, value in self.options]
            text += "[" + ",".join(parts) + "]"
        return text


@dataclass(frozen=True)
class Spec:
    """A pipeline of stages; no stage at all is the dense (uncompressed) model."""

    stages: tuple[Stage, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Spec:
        if not isinstance(text, str) or not text.strip():
            raise SpecError("empty spec: write e.g. 'dense', 'wanda:0.5' or 'rtn:4[group=64]'")
        text = text.strip()
        if text == "dense":
            return cls()
        parts = text.split("+")
        if any(not part.strip() for part in parts):
            raise SpecError(
                f"spec {text!r} has an empty pipeline stage: join stages as 'a:0.5+b:4'"
            )
        stages = tuple(parse_stage(part.strip()) for part in parts)
        return cls(stages)

    @property
    def is_dense(self) -> bool:
        return not self.stages

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(stage.method for stage in self.stages)

    def __str__(self) -> str:
        return "+".join(str(stage) for stage in self.stages) if self.stages else "dense"


def parse_stage(text: str) -> Stage:
    """Parse one stage such as ``rtn:4[group=64,sym]``."""
    body, options = _split_options(text)
    method, colon, level = body.partition(":")
    if colon and not level:
        raise SpecError(f"missing level after ':' in {text!r}: write e.g. 'wanda:0.5' or 'rtn:4'")
    if method == "dense":
        raise SpecError(f"'dense' cannot be a pipeline stage (in {text!r}): use it alone")
    if not _METHOD.match(method):
        raise SpecError(
            f"bad method name {method!r} in {text!r}: use lowercase letters, digits and '_'"
        )
    fields = _parse_level(level, text) if level else {}
    return Stage(method=method, options=options, **fields)


def _split_options(text: str) -> tuple[str, tuple[tuple[str, OptionValue], ...]]:
    if "[" not in text:
        if "]" in text:
            raise SpecError(f"unbalanced ']' in {text!r}: options go in brackets, 'x:4[group=64]'")
        return text, ()
    body, _, rest = text.partition("[")
    if not rest.endswith("]") or "[" in rest or "]" in rest[:-1]:
        raise SpecError(f"bad options in {text!r}: write them once, at the end, 'x:4[a=1,b]'")
    return body, _parse_options(rest[:-1], text)


def _parse_options(inner: str, text: str) -> tuple[tuple[str, OptionValue], ...]:
    options: dict[str, OptionValue] = {}
    for item in inner.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not _OPTION_KEY.match(key):
            raise SpecError(f"bad option name {key!r} in {text!r}: use lowercase 'key=value'")
        if eq and not _OPTION_VALUE.match(value):
            raise SpecError(
                f"bad value {value!r} for option {key!r} in {text!r}: use letters, digits, '_.-'"
            )
        if key in options:
            raise SpecError(f"option {key!r} given twice in {text!r}")
        options[key] = value if eq else True
    return tuple(sorted(options.items()))


def _parse_level(level: str, text: str) -> dict:
    if ":" in level:
        return _parse_nm(level, text)
    if _RATIO.match(level):
        return {"ratio": _parse_ratio(level, text)}
    if _INT.match(level):
        return {"bits": _parse_bits(level, text)}
    if _SCHEME.match(level):
        return {"scheme": level}
    raise SpecError(
        f"bad level {level!r} in {text!r}: expected a ratio like 0.5, N:M like 2:4, "
        f"bits {MIN_BITS}-{MAX_BITS}, or a scheme name like Q4_K_M"
    )


def _parse_ratio(level: str, text: str) -> float:
    ratio = float(level)
    if not 0.0 <= ratio < 1.0:
        raise SpecError(f"ratio {level} in {text!r} is impossible: it must satisfy 0 <= ratio < 1")
    return ratio


def _parse_bits(level: str, text: str) -> int:
    bits = int(level)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise SpecError(
            f"bits {bits} in {text!r} out of range: use an integer {MIN_BITS}-{MAX_BITS}"
            " (a ratio needs a decimal point, e.g. 0.0)"
        )
    return bits


def _parse_nm(level: str, text: str) -> dict:
    n_text, _, m_text = level.partition(":")
    if not (_INT.match(n_text) and _INT.match(m_text)):
        raise SpecError(f"bad N:M {level!r} in {text!r}: both must be integers, e.g. 2:4")
    n, m = int(n_text), int(m_text)
    if not 0 < n < m:
        raise SpecError(f"N:M {level} in {text!r} is impossible: it needs 0 < N < M, e.g. 2:4")
    return {"n": n, "m": m}
