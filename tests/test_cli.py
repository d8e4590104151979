"""``mpt run``: the JSON line and the human line, through the real CLI."""

from __future__ import annotations

import json
import math
import re

import pytest

from conftest import needs_data
from mpt_core.records import read

ARGS = ["--model", "tiny-llama", "--dataset", "ptb", "--seqlen", "64", "--windows", "2"]
SPEC_AS_TYPED, CANONICAL = "rtn:4[sym, group=64]", "rtn:4[group=64,sym]"

pytestmark = needs_data


@pytest.fixture(scope="module")
def json_run(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("cli") / "run.jsonl"
    return cli("run", *ARGS, "--spec", SPEC_AS_TYPED, "--json", "--out", str(out)), out


def test_json_prints_exactly_one_json_line(json_run):
    result, _ = json_run
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    record = json.loads(lines[0])
    assert record["model"] == "tiny-llama"
    assert record["spec"] == CANONICAL
    assert record["dataset"] == "ptb"
    assert (record["seqlen"], record["windows"], record["metric"]) == (64, 2, "ppl")
    assert math.isfinite(record["value"]) and 1 < record["value"] < 1000
    assert record["stderr"] > 0
    footprint = record["footprint"]
    assert footprint["bits_per_weight"] == 4 + 16 / 64
    assert 0 < footprint["relative_size"] < 1
    assert footprint["relative_size"] == pytest.approx(footprint["bytes"] / footprint["fp16_bytes"])
    assert set(record["seconds"]) == {"compress", "evaluate"}
    assert record["settings"] == [{"stage": CANONICAL, "group": 64, "sym": True}]
    assert record["fingerprint"]["source"] == "file:ptb/ptb.test.txt"
    assert len(record["weights_hash"]) == 64


def test_out_appends_the_same_record(json_run):
    result, out = json_run
    assert result.returncode == 0, result.stderr[-2000:]
    records = read(out)
    assert len(records) == 1
    assert json.loads(records[0].to_json()) == json.loads(result.stdout)


def test_human_line_has_model_spec_dataset_ppl_size_and_seconds(json_run, cli):
    record = json.loads(json_run[0].stdout)
    result = cli("run", *ARGS, "--spec", SPEC_AS_TYPED)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    line = lines[0]
    for part in ("tiny-llama", CANONICAL, "ptb", "seqlen=64", "windows=2", "size"):
        assert part in line, (part, line)
    # the same deterministic measurement as the JSON run
    assert f"PPL {record['value']:.4f} ± {record['stderr']:.4f}" in line
    assert "4.25 bits/w" in line
    assert re.search(r"size \d+\.\d MB \(\d+\.\d% of fp16", line), line
    assert re.search(r"  \d+\.\d s$", line), line


def test_no_progress_bar_when_stderr_is_not_a_terminal(json_run):
    result, _ = json_run  # stderr is a pipe here
    assert "window/s" not in result.stderr and "perplexity:" not in result.stderr
