"""Every class of bad input issue #23 found: one line, its exit code, no traceback.

``mpt`` refuses with ``mpt: error: ...`` and exit 2 (usage) or 3 (data: a file or model
that does not read); the pytest harness with pytest's ``ERROR: ...`` and exit 4 (its usage
error). Each case runs the real command in a
subprocess; the cases run two at a time, started together when the first needs its
result. All but two are refused before a model loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, cli_env, needs_data
from mpt_core.errors import DATA, USAGE

GRID = str(REPO / "fixtures" / "curves" / "grid.csv")
TINY_CSV = REPO / "baselines" / "cpu" / "tiny-llama" / "quant.csv"
TINY_RECORDS = REPO / "baselines" / "cpu" / "tiny-llama" / "quant.records.jsonl"


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Path], list[str]]  # after ``mpt`` or ``pytest``
    names: Callable[[Path], list[str]]  # fragments the error line must contain
    tool: str = "mpt"  # or "pytest": python -m pytest benchmarks ...
    env: Callable[[Path], dict] = field(default=lambda _tmp: {})
    exit: int | None = None  # None: the tool's usage error (EXIT)


def mpt(*args: str) -> Callable[[Path], list[str]]:
    return lambda _tmp: list(args)


def sweep(ratios: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [
        "sweep", "--model", "tiny-llama", "--method", "magnitude",
        "--ratios", ratios, "--out", str(tmp / "sweep.jsonl"),
    ]  # fmt: skip


def const(*fragments: str) -> Callable[[Path], list[str]]:
    return lambda _tmp: list(fragments)


def collect(folder: str) -> Callable[[Path], list[str]]:
    """pytest's arguments collecting the CPU tier of a baselines folder under the tmp dir."""
    return lambda tmp: ["--collect-only", "--mpt-tier", "cpu", "--mpt-baselines", str(tmp / folder)]


def csv_line(folder: str, line: int) -> Callable[[Path], list[str]]:
    """``file:line`` of the tiny tier's quant.csv copied under ``folder``."""
    return lambda tmp: [f"{tmp / folder / 'cpu' / 'tiny-llama' / 'quant.csv'}:{line}"]


TINY_LINES = TINY_CSV.read_text().splitlines()
ADDED = len(TINY_LINES) + 1  # the line a row appended to the tiny quant.csv lands on
FIRST_ROW = next(n for n, line in enumerate(TINY_LINES, 1) if line.startswith("tiny-llama,"))


RUN = ("run", "--model", "tiny-llama")
CASES = [
    # options validated as values (issue #23, item 4)
    Case(
        "ratios-7M-points",
        sweep("0.1:0.8:0.0000001"),
        const("'0.1:0.8:0.0000001'", "7,000,001 points", "1,000"),
    ),
    Case("ratios-zero-step", sweep("0.1:0.8:0"), const("'0.1:0.8:0'", "0 < step")),
    Case(
        "seqlen-past-the-context",
        mpt(*RUN, "--spec", "dense", "--seqlen", "100000"),
        const("--seqlen 100000", "context of 512", "--allow-long-context"),
    ),
    Case(
        "max-ppl-increase-without-percent",
        mpt("recommend", GRID, "--max-ppl-increase", "5"),
        const("--max-ppl-increase '5'", "+500%", "5%", "0.05"),
    ),
    Case(
        "windows-negative", mpt(*RUN, "--spec", "dense", "--windows", "-1"), const("--windows -1")
    ),
    Case(
        "spec-option-nan",
        mpt(*RUN, "--spec", "admm:0.5[rho=nan]"),
        const("rho=nan", "finite"),
    ),
    Case("unknown-method", mpt(*RUN, "--spec", "magnitud:0.5"), const("'magnitud'")),
    # data and records that do not read
    Case(
        "data-not-utf8",
        mpt(*RUN, "--spec", "dense", "--seqlen", "64", "--windows", "1"),
        lambda tmp: [str(tmp / "data" / "wikitext-2-raw" / "wiki.test.raw"), "not UTF-8"],
        env=lambda tmp: {"MPT_DATA_DIR": str(tmp / "data")},
        exit=DATA,
    ),
    Case(
        "fit-value-not-a-number",
        lambda tmp: ["fit", str(tmp / "high.jsonl")],
        lambda tmp: [f"{tmp / 'high.jsonl'}:1", "'high'"],
        exit=DATA,
    ),
    Case(
        "report-value-not-a-number",
        lambda tmp: ["report", str(tmp / "high.jsonl")],
        lambda tmp: [f"{tmp / 'high.jsonl'}:1", "'high'"],
        exit=DATA,
    ),
    Case(
        "resume-seqlen-not-a-number",
        lambda tmp: [
            "sweep",
            "--model",
            "tiny-llama",
            "--method",
            "rtn",
            "--bits",
            "8",
            "--out",
            str(tmp / "abc.jsonl"),
        ],  # fmt: skip
        lambda tmp: [f"{tmp / 'abc.jsonl'}:1", "'abc'"],
        exit=DATA,
    ),
    # the pytest harness
    Case(
        "mpt-windows-negative",
        const("--mpt-windows", "-1", "-x"),
        const("--mpt-windows -1"),
        "pytest",
    ),
    Case("mpt-rtol-nan", const("--mpt-rtol", "nan", "-x"), const("--mpt-rtol nan"), "pytest"),
    Case(
        "baseline-windows-two",
        lambda tmp: ["--collect-only", "--mpt-tier", "cpu", "--mpt-baselines", str(tmp / "bl")],
        lambda tmp: [str(tmp / "bl" / "cpu" / "tiny-llama" / "bad.csv"), "'two'"],
        "pytest",
    ),
    Case(
        "baseline-not-utf8",
        collect("bl-not-utf8"),
        lambda tmp: [str(tmp / "bl-not-utf8" / "cpu" / "tiny-llama" / "quant.csv"), "UTF-8"],
        "pytest",
    ),
    # rows no test would judge (issue #23, item 1)
    Case(
        "baseline-unknown-method",
        collect("bl-unknown"),
        lambda tmp: [*csv_line("bl-unknown", ADDED)(tmp), "unknown method 'foo'", "mpt methods"],
        "pytest",
    ),
    Case(
        "baseline-duplicate-row",
        collect("bl-duplicate"),
        lambda tmp: [
            *csv_line("bl-duplicate", ADDED)(tmp),
            f"duplicate of {csv_line('bl-duplicate', FIRST_ROW)(tmp)[0]}",
        ],
        "pytest",
    ),
    Case(
        "data-dir-missing",
        const("--collect-only", "--mpt-data-dir", "/nonexistent"),
        const("--mpt-data-dir /nonexistent"),
        "pytest",
    ),
]
BY_ID = {case.id: case for case in CASES}
EXIT = {"mpt": USAGE, "pytest": 4}
PREFIX = {"mpt": "mpt: error: ", "pytest": "ERROR: "}


def make_inputs(tmp: Path) -> None:
    """A data folder with a broken WikiText-2, baselines folders each with one broken CSV
    (a header, a byte, a row naming no method, a row twice), and committed records with
    one field made wrong."""
    data = tmp / "data"
    shutil.copytree(Path(os.environ["MPT_DATA_DIR"]) / "ptb", data / "ptb")
    (data / "wikitext-2-raw").mkdir()
    (data / "wikitext-2-raw" / "wiki.test.raw").write_bytes(b" = Valkyria \xff\xfe Chronicles\n")
    bad_csv = tmp / "bl" / "cpu" / "tiny-llama" / "bad.csv"
    bad_csv.parent.mkdir(parents=True)
    header = TINY_CSV.read_text()
    assert "\n# windows: 4\n" in header
    bad_csv.write_text(header.replace("\n# windows: 4\n", "\n# windows: two\n"))
    tiny = TINY_CSV.read_text()
    for folder, text in [
        ("bl-unknown", tiny + "tiny-llama,wikitext2,foo:0.5,ppl,300.0,,,,64,added\n"),
        ("bl-duplicate", tiny + TINY_LINES[FIRST_ROW - 1] + "\n"),
        ("bl-not-utf8", tiny.replace("tiny-llama,wikitext2,dense", "tiny-llama,wiki\udcfftext2,d")),
    ]:
        path = tmp / folder / "cpu" / "tiny-llama" / "quant.csv"
        path.parent.mkdir(parents=True)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    record = json.loads(TINY_RECORDS.read_text().splitlines()[0])
    (tmp / "high.jsonl").write_text(json.dumps(record | {"value": "high"}) + "\n")
    (tmp / "abc.jsonl").write_text(json.dumps(record | {"seqlen": "abc"}) + "\n")


TOOLS = {
    "mpt": [sys.executable, "-m", "mpt_core.cli"],
    "pytest": [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:randomly"],
}


def run_case(case: Case, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TOOLS[case.tool], *case.args(tmp)],
        capture_output=True,
        text=True,
        env=cli_env(TOKENIZERS_PARALLELISM="false", **case.env(tmp)),
        cwd=REPO,
        timeout=300,
    )


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, tuple[Path, Future]]:
    """Start the selected cases' subprocesses, two at a time (CI runners have two CPUs)."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    make_inputs(tmp)
    wanted = [
        item.callspec.params["case_id"]
        for item in request.session.items
        if item.module is request.module
        and "case_id" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    pool = ThreadPoolExecutor(max_workers=2)
    yield {case_id: (tmp, pool.submit(run_case, BY_ID[case_id], tmp)) for case_id in wanted}
    pool.shutdown(wait=True, cancel_futures=True)


@needs_data
@pytest.mark.parametrize("case_id", list(BY_ID))
def test_a_bad_input_is_refused_in_one_line(outcomes, case_id):
    tmp, future = outcomes[case_id]
    case, result = BY_ID[case_id], future.result()
    last = (result.stderr.strip().splitlines() or [""])[-1]
    assert "Traceback" not in result.stdout + result.stderr, f"traceback ending in: {last}"
    assert result.returncode == (case.exit or EXIT[case.tool]), (result.returncode, last)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX[case.tool]), lines[0]
    for fragment in case.names(tmp):
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def test_the_ratio_limit_counts_comma_lists_and_allows_exactly_the_limit():
    from mpt_core.commands.sweep import MAX_POINTS, parse_ratios
    from mpt_core.errors import MptError

    assert len(parse_ratios("0:0.999:0.001")) == MAX_POINTS
    with pytest.raises(MptError, match="1,001 points"):
        parse_ratios(",".join(["0.5"] * (MAX_POINTS + 1)))


@pytest.mark.parametrize(
    ("text", "budget"), [("5%", 0.05), ("0.05", 0.05), ("0.99", 0.99), ("150%", 1.5), ("0", 0.0)]
)
def test_a_budget_is_a_percentage_or_a_fraction_below_one(text, budget):
    from mpt_core.commands.recommend import parse_budget

    assert parse_budget(text) == pytest.approx(budget)


@pytest.mark.parametrize("text", ["1", "5", "inf", "nan%"])
def test_a_bare_budget_of_one_or_more_or_not_finite_is_refused(text):
    from mpt_core.commands.recommend import parse_budget
    from mpt_core.errors import MptError

    with pytest.raises(MptError, match="--max-ppl-increase") as refused:
        parse_budget(text)
    assert refused.value.exit_code == USAGE  # an option, not the grid it is applied to
