"""Bad input through the real CLI: one line ``mpt: error: ...``, no traceback, and the
exit code of its kind: 2 for usage (an option or spec), 3 for data (a data set, model or
results file that is missing or does not read); each ``MptError`` class states its own.

Every case runs ``python -m mpt_core.cli`` in a subprocess. The subprocesses of the
selected cases are started together (as many at a time as there are CPUs) when the
first case needs its result, so the module costs about one process start per CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import cli_env, needs_data, run_cli
from mpt_core import cli, registry
from mpt_core.errors import (
    DATA,
    USAGE,
    BackendError,
    BaselineError,
    DataError,
    FitError,
    ModelError,
    MptError,
    ResultsError,
    SpecError,
)
from mpt_core.records import Record

TINY = ["--model", "tiny-llama", "--dataset", "ptb", "--seqlen", "64", "--windows", "1"]


def run_spec(spec: str) -> Callable[[Path], list[str]]:
    return lambda _tmp: ["run", *TINY, "--spec", spec]


def sweep_out(name: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [
        "sweep",
        *TINY,
        "--method",
        "magnitude",
        "--ratios",
        "0.5",
        "--out",
        str(tmp / name),
    ]


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Path], list[str]]
    names: Callable[[Path], list[str]]  # fragments the error line must contain
    env: Callable[[Path], dict] = field(default=lambda _tmp: {})
    loads_model: bool = False
    code: int = USAGE


CASES = [
    # the spec grammar
    Case("trailing-colon", run_spec("wanda:"), lambda _: ["'wanda:'"]),
    Case("unclosed-bracket", run_spec("x:0.5["), lambda _: ["x:0.5["]),
    Case("uppercase-method", run_spec("Wanda:0.5"), lambda _: ["'Wanda'"]),
    # the registry
    Case("unknown-method", run_spec("magnitud:0.5"), lambda _: ["did you mean 'magnitude'"]),
    Case("ratio-one", run_spec("magnitude:1.0"), lambda _: ["1.0", "ratio < 1"]),
    Case("n-not-below-m", run_spec("magnitude:4:2"), lambda _: ["4:2", "N < M"]),
    Case("bits-1", run_spec("rtn:1"), lambda _: ["bits 1", "2-8"]),
    Case("bits-9", run_spec("rtn:9"), lambda _: ["bits 9", "2-8"]),
    Case("unknown-option", run_spec("rtn:4[bogus=1]"), lambda _: ["'bogus'", "group"]),
    Case(
        "group-not-dividing",
        run_spec("rtn:4[group=100]"),
        lambda _: ["group=100", "64"],
        loads_model=True,
    ),
    # the protocol
    Case(
        "seqlen-too-short",
        lambda _: ["run", "--model", "tiny-llama", "--spec", "dense", "--seqlen", "1"],
        lambda _: ["--seqlen 1"],
    ),
    Case(
        "seqlen-longer-than-the-data",
        lambda _: (
            ["run", "--model", "tiny-llama", "--dataset", "ptb", "--spec", "dense"]
            + ["--seqlen", "500000", "--allow-long-context"]
        ),
        lambda _: ["500000"],
        loads_model=True,
        code=DATA,  # the data set is shorter than one window
    ),
    # models and devices
    Case(
        "unknown-model",
        lambda _: ["run", "--model", "no-such-model-xyz", "--spec", "dense"],
        lambda _: ["no-such-model-xyz"],
        env=lambda _: {"HF_HUB_OFFLINE": "1"},
        loads_model=True,
        code=DATA,
    ),
    Case(
        "directory-not-a-model",
        lambda tmp: ["run", *TINY[2:], "--model", str(tmp / "not-a-model"), "--spec", "dense"],
        lambda tmp: [str(tmp / "not-a-model")],
        loads_model=True,
        code=DATA,
    ),
    Case(
        "device-not-present",
        lambda _: ["run", *TINY, "--spec", "dense", "--device", "cuda:7"],
        lambda _: ["cuda:7"],
        loads_model=True,
    ),
    # data and results files
    Case(
        "data-missing-offline",
        lambda _: ["run", "--model", "tiny-llama", "--spec", "dense", "--seqlen", "64"],
        lambda tmp: ["MPT_DATA_DIR", str(tmp / "empty"), "wiki.test.raw"],
        env=lambda tmp: {"MPT_DATA_DIR": str(tmp / "empty")},
        loads_model=True,
        code=DATA,
    ),
    Case(
        "results-bad-middle-line",
        sweep_out("bad.jsonl"),
        lambda tmp: [f"{tmp / 'bad.jsonl'}:2"],
        code=DATA,
    ),
    Case(
        "results-not-text",
        sweep_out("binary.jsonl"),
        lambda tmp: [str(tmp / "binary.jsonl")],
        code=DATA,
    ),
]
# one thread per subprocess: the cases run side by side on few CPUs
QUIET = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CASE_IDS = [case.id for case in CASES]
BY_ID = {case.id: case for case in CASES}


def make_inputs(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    (tmp / "not-a-model").mkdir()
    (tmp / "not-a-model" / "config.json").write_text("{}")
    fields = dict.fromkeys(Record.__dataclass_fields__, "")
    fields |= {"model": "tiny-llama", "spec": "magnitude:0.1", "seqlen": 64, "windows": 1}
    fields |= {"metric": "ppl", "value": 1.0, "stderr": 0.0, "footprint": {}, "seconds": {}}
    fields |= {"fingerprint": {}, "settings": [], "versions": {}, "window_losses": []}
    fields |= {"memory": {}, "evaluation": "windowed"}
    record = Record(**fields).to_json()
    (tmp / "bad.jsonl").write_text(record + "\nthis is not json\n" + record + "\n")
    (tmp / "binary.jsonl").write_bytes(b"\x81\xfe\x00PK\x03\x04\xff\n\x00\x9c\n")


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, tuple[Path, Future]]:
    """Start the selected cases' subprocesses, slowest first, a CPU's worth at a time."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    make_inputs(tmp)
    wanted = {
        item.callspec.params["case_id"]
        for item in request.session.items
        if item.module is request.module
        and "case_id" in getattr(getattr(item, "callspec", None), "params", {})
    }
    cases = sorted((BY_ID[i] for i in wanted), key=lambda case: not case.loads_model)
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    futures = {
        case.id: pool.submit(run_cli, *case.args(tmp), env=cli_env(**QUIET, **case.env(tmp)))
        for case in cases
    }
    yield {case_id: (tmp, future) for case_id, future in futures.items()}
    pool.shutdown(wait=True, cancel_futures=True)


@needs_data
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_one_clean_error(outcomes, case_id):
    tmp, future = outcomes[case_id]
    result = future.result()
    case = BY_ID[case_id]
    stderr_lines = [line for line in result.stderr.splitlines() if line.strip()]
    last = result.stderr.strip().splitlines()[-1:] or [""]
    assert "Traceback" not in result.stderr, f"traceback ending in: {last[0]}"
    assert result.returncode == case.code, (result.returncode, last[0])
    assert len(stderr_lines) == 1, result.stderr
    line = stderr_lines[0]
    assert line.startswith("mpt: error: "), line
    for fragment in case.names(tmp):
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert result.stdout.strip() == "", result.stdout


def test_at_least_twelve_bad_inputs_are_covered():
    assert len(set(CASE_IDS)) == len(CASES) >= 12


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("{tmp}", "is a folder: name a .jsonl file in it"),
        ("{tmp}/missing/r.jsonl", "does not exist: create it first"),
    ],
)
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_bad_out_is_refused_before_anything_is_measured(tmp_path, out, fragment, command):
    path = out.format(tmp=tmp_path)
    levels = {
        "run": ["--spec", "magnitude:0.5"],
        "sweep": ["--method", "magnitude", "--ratios", "0.5"],
    }
    result = run_cli(command, "--model", "tiny-llama", *levels[command], "--out", path)
    assert result.returncode == USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mpt: error: --out {path}")
    assert fragment in lines[0]
    assert "PPL" not in result.stdout  # refused before anything was measured


# The exit code each kind of error means; a new MptError class is added here on purpose.
STATED = {
    MptError: USAGE,
    SpecError: USAGE,
    DataError: DATA,
    ModelError: DATA,
    BaselineError: DATA,
    ResultsError: DATA,
    BackendError: DATA,
    FitError: DATA,
}


def _error_classes() -> list[type]:
    """MptError and every subclass, once the CLI's commands and the methods are imported."""
    cli.build_parser()
    registry.names()
    found, todo = set(), [MptError]
    while todo:
        error = todo.pop()
        found.add(error)
        todo += error.__subclasses__()
    return sorted(found, key=lambda error: error.__name__)


@pytest.mark.parametrize("error", _error_classes(), ids=lambda error: error.__name__)
def test_every_error_states_its_exit_code_and_mpt_exits_with_it(error, monkeypatch, capsys):
    assert error in STATED, f"{error.__name__}: state its exit code in STATED"
    assert vars(error).get("exit_code") == STATED[error], "stated on the class itself"

    def fail(_args):
        raise error("what went wrong")

    parser = SimpleNamespace(parse_args=lambda _argv: SimpleNamespace(func=fail))
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == STATED[error]
    assert capsys.readouterr().err == "mpt: error: what went wrong\n"
