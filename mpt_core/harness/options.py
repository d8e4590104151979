"""The plugin's command-line options (``pytest --help``, group ``mpt``)."""

from __future__ import annotations

import math

import pytest

from mpt_core.verdict import DEFAULT_RTOL

DEFAULT_PTP_TOL = 0.05


def add_options(parser) -> None:
    """The ``--mpt-*`` command-line options, in the ``mpt`` group of ``pytest --help``."""
    group = parser.getgroup("mpt", "mpt regression harness")
    group.addoption(
        "--mpt-tier",
        choices=("cpu", "gpu", "all"),
        default=None,
        help="which baseline tier to collect (default: the machine's: gpu with CUDA, else cpu; "
        "both when -m names gpu or cpu)",
    )
    group.addoption(
        "--mpt-model",
        default="smollm2-135m,tiny-llama",
        help="the CPU tier's models, comma-separated (default: smollm2-135m,tiny-llama)",
    )
    group.addoption("--mpt-data-dir", default=None, help="offline data (sets MPT_DATA_DIR)")
    group.addoption(
        "--mpt-windows",
        type=int,
        default=None,
        help="evaluation windows (default: the baseline file's)",
    )
    group.addoption(
        "--mpt-seqlen",
        type=int,
        default=None,
        help="evaluate (and calibrate) every row at this seqlen instead of its protocol's; "
        "recorded, and judged as a protocol difference",
    )
    group.addoption(
        "--mpt-dtype",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help="load every model in this dtype instead of the protocol's (study: float16; "
        "CPU tier: float32); recorded",
    )
    group.addoption(
        "--mpt-calib-nsamples",
        type=int,
        default=None,
        help="calibration windows of every calibrated stage whose spec states none; recorded "
        "in the record's settings",
    )
    group.addoption(
        "--mpt-rtol",
        type=float,
        default=None,
        help=f"relative tolerance before the collapse (default {DEFAULT_RTOL})",
    )
    group.addoption("--mpt-baselines", default=None, help="baselines folder (default: ./baselines)")
    group.addoption("--mpt-results", default=None, help="append every record to this JSONL")
    group.addoption("--mpt-report", default=None, help="write the markdown report here")
    group.addoption(
        "--mpt-ptp-tol",
        type=float,
        default=DEFAULT_PTP_TOL,
        help=f"largest PTP shift a curve test accepts (default {DEFAULT_PTP_TOL})",
    )
    group.addoption("--mpt-history", default=None, help="write this run's records into DIR")
    group.addoption(
        "--mpt-smoke",
        action="store_true",
        help="keep only a few CPU-tier points per family (what CI runs)",
    )
    group.addoption(
        "--mpt-shard",
        default=None,
        metavar="I/N",
        help="keep shard I of N (1-based) of the collected tests, shards balanced by estimated "
        "cost with each point's tests in one shard: a CI matrix's share",
    )
    group.addoption(
        "--mpt-plan",
        action="store_true",
        help="print the selection's distinct points, rows, models to download and estimated "
        "hours, and run nothing (as --collect-only)",
    )
    group.addoption(
        "--mpt-plan-json",
        default=None,
        metavar="FILE",
        help="write the plan as JSON to FILE (and run nothing, as --mpt-plan)",
    )
    group.addoption(
        "--mpt-device-map",
        default=None,
        choices=("auto",),
        help="spread each model over every visible GPU (accelerate): models past one GPU",
    )
    group.addoption(
        "--mpt-rehearse",
        default=None,
        metavar="MODEL",
        help="rehearse the study tier on MODEL (tiny-llama, smollm2-135m, a local checkpoint): "
        "every study row's code path, no GPU needed; rows end 'rehearsed', not judged",
    )
    group.addoption(
        "--mpt-no-progress",
        action="store_true",
        help="no progress bars for the evaluation windows (drawn only when the terminal is a TTY)",
    )
    group.addoption(
        "--mpt-update-baselines",
        action="store_true",
        help="rewrite the CPU-tier CSVs from this run (never the study's)",
    )


def check(config) -> None:
    """Refuse option values that would run a weaker gate or fail deep in a measurement:
    one ``ERROR:`` line and exit 4 (pytest's usage error), never a traceback per test."""
    for option in ("--mpt-windows", "--mpt-seqlen", "--mpt-calib-nsamples"):
        value = config.getoption(option)
        if value is not None and value < 1:
            raise pytest.UsageError(f"{option} {value}: use a positive number")
    for option in ("--mpt-rtol", "--mpt-ptp-tol"):
        value = config.getoption(option)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise pytest.UsageError(f"{option} {value}: use a finite tolerance, zero or more")
