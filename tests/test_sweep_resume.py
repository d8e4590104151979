"""A sweep killed with SIGKILL and restarted records every point exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

from conftest import REPO, cli_env, needs_data, run_cli
from mpt_core.records import read

RATIOS = [round(0.1 * i, 10) for i in range(1, 9)]
SPECS = {f"magnitude:{ratio!r}" for ratio in RATIOS}


def sweep_args(out) -> list[str]:
    return [
        "sweep",
        "--model",
        "tiny-llama",
        "--method",
        "magnitude",
        "--ratios",
        "0.1:0.8:0.1",
        "--dataset",
        "ptb",
        "--seqlen",
        "64",
        "--windows",
        "8",  # enough work per point that the kill lands mid-sweep
        "--out",
        str(out),
    ]


def complete_lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start_and_kill_after_first_record(out) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "mpt_core.cli", *sweep_args(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 240
        while complete_lines(out) == 0:
            assert process.poll() is None, "the sweep ended before recording anything"
            assert time.monotonic() < deadline, "no record within 240 s"
            time.sleep(0.005)
        still_running = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert still_running, "the sweep finished before it could be killed"
    assert process.returncode == -signal.SIGKILL
    return complete_lines(out)


@needs_data
def test_killed_sweep_resumes_to_every_point_exactly_once(tmp_path):
    out = tmp_path / "sweep.jsonl"
    recorded = start_and_kill_after_first_record(out)
    assert 1 <= recorded < len(SPECS)
    before = read(out)
    assert len(before) == recorded

    # as if the kill had also torn a write in half
    with out.open("ab") as handle:
        handle.write(before[0].to_json().encode()[:57])

    resumed = run_cli(*sweep_args(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {recorded} of {len(SPECS)} points already in" in resumed.stdout

    records = read(out)
    counts = Counter(record.spec for record in records)
    assert set(counts) == SPECS
    assert all(count == 1 for count in counts.values()), counts
    assert len(records) == len(SPECS) == 8
    # the file is clean: every line a whole record, nothing torn left behind
    lines = out.read_text().split("\n")
    assert lines[-1] == "" and all(json.loads(line) for line in lines[:-1])
    assert len(lines) - 1 == 8
    # the records made before the kill are kept as they were
    assert [r.to_json() for r in records[:recorded]] == [r.to_json() for r in before]
    # sparsity achieved equals each point's ratio
    for record in records:
        ratio = float(record.spec.split(":")[1])
        assert abs(record.footprint["sparsity"] - ratio) < 1e-3

    # a second complete run adds nothing
    content = out.read_bytes()
    again = run_cli(*sweep_args(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming: 8 of 8 points already in" in again.stdout
    assert out.read_bytes() == content


def one_point_sweep(out, *extra: str) -> list[str]:
    return [
        *["sweep", "--model", "tiny-llama", "--method", "magnitude", "--ratios", "0.5"],
        *["--dataset", "ptb", "--seqlen", "64", "--windows", "2", "--out", str(out), *extra],
    ]


@needs_data
def test_a_resume_in_another_dtype_measures_the_points_again(tmp_path):
    """The resume key is the point's whole identity (#23): an fp32 file does not hold the
    bfloat16 points; a second bfloat16 run then finds them and measures nothing."""
    out = tmp_path / "sweep.jsonl"
    first = run_cli(*one_point_sweep(out))
    assert first.returncode == 0, first.stderr[-2000:]
    other = run_cli(*one_point_sweep(out, "--dtype", "bfloat16"))
    assert other.returncode == 0, other.stderr[-2000:]
    assert "resuming" not in other.stdout
    assert [(r.spec, r.dtype) for r in read(out)] == [
        ("magnitude:0.5", "float32"),
        ("magnitude:0.5", "bfloat16"),
    ]
    content = out.read_bytes()
    again = run_cli(*one_point_sweep(out, "--dtype", "bfloat16"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming: 1 of 1 points already in" in again.stdout
    assert out.read_bytes() == content
