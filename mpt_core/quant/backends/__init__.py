"""Library backends: the real quantization libraries doing a method's work.

A method selects one with ``backend=NAME`` (``gptq:4[group=64,backend=gptqmodel]``,
``nf4[backend=bitsandbytes]``); ``mpt`` is the in-tree reference. Each backend is
a module here with ``apply(method, model, stage, settings, calibration)``; a
library that is not installed raises a one-line SpecError naming where it runs.

- ``bitsandbytes`` (nf4, fp4, int8): installs next to mpt; CPU-capable since 0.45.
- ``gptqmodel`` (gptq), ``llmcompressor`` (gptq, awq): their pins conflict with mpt's
  transformers, so each runs from a virtual environment of its own
  (``.venv-gptqmodel``, ``.venv-llmcompressor``, made by
  ``scripts/setup_backend_venv.sh NAME``), driven across environments by ``venv``.
- ``auto-gptq``: cannot be imported under transformers 5 (it imports
  ``no_init_weights`` from ``transformers.modeling_utils``); gptqmodel replaces it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from mpt_core.errors import SpecError

IN_TREE = "mpt"

BACKENDS = {
    "gptq": ("gptqmodel", "llmcompressor", "auto-gptq"),
    "awq": ("llmcompressor",),
    "smoothquant": ("llmcompressor",),
    "int8": ("bitsandbytes",),
    "nf4": ("bitsandbytes",),
    "fp4": ("bitsandbytes",),
}

DEAD = {
    "auto-gptq": (
        "backend auto-gptq cannot work: auto-gptq 0.7.1 fails to import under transformers 5 "
        "(cannot import name 'no_init_weights' from 'transformers.modeling_utils'); "
        "use backend=gptqmodel, its maintained successor"
    ),
}


def parser(method: str) -> Callable[[str], str]:
    """Option parser for ``backend=``: the in-tree reference or a library ``method`` knows."""
    allowed = (IN_TREE, *BACKENDS[method])

    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def run(method: str, model, stage, settings: dict, calibration) -> dict:
    """Apply ``method`` through the library ``settings['backend']``."""
    name = settings["backend"]
    if name in DEAD:
        raise SpecError(DEAD[name])
    module = importlib.import_module(f"mpt_core.quant.backends.{name}")
    return module.apply(method, model, stage, settings, calibration)


VENV_LIBRARIES = ("gptqmodel", "llmcompressor")


def library_version(name: str) -> str:
    """``"NAME VERSION"`` of a library a stage ran, as a record stores it; ``NAME unknown``
    where its metadata cannot be found. Venv backends are read from their own venv."""
    from importlib.metadata import PackageNotFoundError, distributions, version

    try:
        if name in VENV_LIBRARIES:
            from mpt_core.quant.backends.venv import venv_site_packages

            found = distributions(path=[str(venv_site_packages(name))])
            return next(f"{name} {d.version}" for d in found if d.metadata["Name"].lower() == name)
        return f"{name} {version(name)}"
    except (PackageNotFoundError, StopIteration, SpecError):
        return f"{name} unknown"


def require(package: str) -> None:
    """Raise a one-line SpecError unless ``package`` can be imported next to mpt."""
    if importlib.util.find_spec(package) is None:
        raise SpecError(f"backend {package} not installed: install it with: pip install {package}")
