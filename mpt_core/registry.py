"""The method registry: name -> compressor, with the levels and options each accepts.

Methods register themselves with ``@register``. The first lookup imports every module of
the method packages (``METHOD_PACKAGES``), so a new method file needs no edit anywhere else.
Method modules import this one; this one imports them only at lookup time, never at import.
"""

from __future__ import annotations

import difflib
import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from mpt_core.data import DATASETS
from mpt_core.errors import SpecError
from mpt_core.families import METHOD_FAMILIES
from mpt_core.spec import Spec, Stage

METHOD_PACKAGES = ("mpt_core.prune", "mpt_core.quant", "mpt_core.lowrank")


@dataclass(frozen=True)
class Option:
    """An option a method accepts: its parser (str -> value) and default."""

    parse: Callable[[str], object]
    default: object
    help: str = ""


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    levels: frozenset[str]
    apply: Callable
    options: dict[str, Option] = field(default_factory=dict)
    needs_calibration: bool = False
    library: str | None = None  # the library that does the work whatever the options
    missing: Callable[[], str | None] | None = None  # why it cannot run here (setup hint)
    # why it cannot compress a model of this class (read from its config), else None
    refuses: Callable[[str], str | None] | None = None
    # raises SpecError for a stage no model can run (a scheme llama.cpp lacks, a ratio out of
    # the method's reach), so a spec is refused when it is planned, before any model loads
    check: Callable[[Stage, dict], None] | None = None

    def refusal(self, architecture: str) -> str | None:
        """Why this method cannot compress a model of class ``architecture``; else None."""
        return self.refuses(architecture) if self.refuses else None

    def unavailable(self) -> str | None:
        """How to install what this method needs, where it is missing; else None."""
        return self.missing() if self.missing else None

    def settings(self, stage: Stage) -> dict[str, object]:
        """The stage's options parsed and completed with defaults."""
        values = {key: option.default for key, option in self.options.items()}
        for key, raw in stage.options:
            option = self.options[key]
            try:
                values[key] = True if raw is True else option.parse(raw)
            except ValueError as error:
                raise SpecError(f"option {key}={raw} of {stage}: {error}") from None
        return values


_METHODS: dict[str, Method] = {}


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _bounded(number, at_least, strictly: bool, message: str):
    if number < at_least or (strictly and number == at_least):
        raise ValueError(message)
    return number


def positive_int(value: str) -> int:
    """Option parser: an integer above zero."""
    return _bounded(int(value), 0, True, "must be a positive integer")


def nonnegative_int(value: str) -> int:
    """Option parser: an integer, 0 or more."""
    return _bounded(int(value), 0, False, "must be 0 or more")


def positive_float(value: str) -> float:
    """Option parser: a finite number above zero."""
    return _bounded(_finite(value), 0, True, "must be above 0")


def nonnegative_float(value: str) -> float:
    """Option parser: a finite number, 0 or more."""
    return _bounded(_finite(value), 0, False, "must be 0 or more")


def float_in(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False, what: str = ""
):
    """Option parser factory: a finite number in the interval, e.g. ``float_in(0, 1,
    high_open=True)`` for [0, 1); ``what`` names the quantity in the message."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(value: str) -> float:
        number = _finite(value)
        below = number <= low if low_open else number < low
        above = number >= high if high_open else number > high
        if below or above:
            raise ValueError(f"{what + ' ' if what else ''}must be in {interval}")
        return number

    return parse


def one_of(choices, what: str = "") -> Callable[[str], str]:
    """Option parser factory: one of ``choices``; ``what`` names the option in the message."""

    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{what + ' ' if what else ''}must be one of {', '.join(choices)}")
        return value

    return parse


def flag(value: str) -> bool:
    """Option parser for a boolean written as a bare word or ``key=true|false``."""
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise ValueError("must be true or false")
    return lowered in ("true", "1")


def register(
    name: str,
    family: str,
    levels: set[str],
    options: dict[str, Option] | None = None,
    needs_calibration: bool = False,
    library: str | None = None,
    missing: Callable[[], str | None] | None = None,
    refuses: Callable[[str], str | None] | None = None,
    check: Callable[[Stage, dict], None] | None = None,
) -> Callable:
    """Decorate ``apply(model, stage, settings, calibration) -> list[TensorCost]``."""
    if family not in METHOD_FAMILIES:
        raise ValueError(f"family {family!r} not in {METHOD_FAMILIES}")

    all_options = dict(CALIBRATION_OPTIONS if needs_calibration else {}) | dict(options or {})

    def decorate(apply: Callable) -> Callable:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = Method(
            name,
            family,
            frozenset(levels),
            apply,
            all_options,
            needs_calibration,
            library,
            missing,
            refuses,
            check,
        )
        return apply

    return decorate


def calibration_set(value: str) -> str:
    """Option parser: a data set calibration windows can be drawn from."""
    if value not in DATASETS:
        raise ValueError(f"must be one of {', '.join(DATASETS)}")
    return value


CALIBRATION_OPTIONS = {
    "calib": Option(calibration_set, None, "calibration data (default: ptb offline, c4 online)"),
    "nsamples": Option(positive_int, 32, "calibration windows"),
    "seed": Option(int, 0, "seed of the calibration sampler"),
}


def family_of(stage: Stage, method: Method | None = None) -> str:
    """A stage's family; an N:M level makes any pruning method semi-structured. ``method``
    saves the lookup where the caller holds it."""
    return "semi" if stage.level_kind == "nm" else (method or get(stage.method)).family


_loaded = False


def _load_methods() -> None:
    """Import every module of the method packages (each registers itself), once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in METHOD_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package_name}.{module.name}")


def names() -> list[str]:
    _load_methods()
    return sorted(_METHODS)


def get(name: str) -> Method:
    _load_methods()
    if name in _METHODS:
        return _METHODS[name]
    close = difflib.get_close_matches(name, _METHODS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SpecError(f"unknown method {name!r}{hint} Known methods: {', '.join(names())}")


def resolve(stage: Stage) -> tuple[Method, dict[str, object]]:
    """The stage's method and its options parsed with defaults; SpecError names the bad part
    (an unknown method, a level or option it does not take, a bad value)."""
    method = get(stage.method)
    if stage.level_kind not in method.levels:
        allowed = ", ".join(sorted(method.levels))
        raise SpecError(
            f"{stage.method} does not take a {stage.level_kind!r} level (in {stage}); "
            f"it takes: {allowed}"
        )
    unknown = [key for key, _ in stage.options if key not in method.options]
    if unknown:
        allowed = ", ".join(sorted(method.options)) or "none"
        raise SpecError(
            f"unknown option {unknown[0]!r} for {stage.method} (in {stage}); its options: {allowed}"
        )
    settings = method.settings(stage)
    if method.check is not None:
        method.check(stage, settings)
    return method, settings


def validate(spec: Spec) -> None:
    """Raise SpecError unless every stage names a known method at a level and options it takes."""
    for stage in spec.stages:
        resolve(stage)
