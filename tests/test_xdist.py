"""pytest-xdist workers measure what a serial run measures, and write no file twice.

The central test runs a few CPU-tier points of the tiny model through the real plugin
twice, serially and with two workers (``-n 2``), and compares the records: same points,
same values; the workers' part files are merged into ``--mpt-results`` and removed, and
the controller's report holds every point. The rest pin the helpers: worker GPU
pinning, part files and their merge, and the ``device_map="auto"`` loading path.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO, cli_env, needs_data
from mpt_core.harness.scaleout import gpu_for_worker, merge_parts, part_path, worker_number
from mpt_core.records import Record, append, read

HAS_XDIST = importlib.util.find_spec("xdist") is not None
SPECS = ("dense", "rtn:8[group=16]", "rtn:4[group=16]", "rtn:2[group=16]")
CSV = (
    "# windows: 2\n"
    "model,dataset,spec,metric,value,stderr,size,size_unit,seqlen,source\n"
    + "".join(f"tiny-llama,wikitext2,{spec},ppl,300,,,,64,test\n" for spec in SPECS)
)


def run_points(tmp_path, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, list]:
    """The tiny model's CPU-tier quant points through the plugin; (process, records)."""
    baselines = tmp_path / "baselines"
    (baselines / "cpu" / "tiny-llama").mkdir(parents=True, exist_ok=True)
    (baselines / "cpu" / "tiny-llama" / "quant.csv").write_text(CSV, encoding="utf-8")
    results, report = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.md"
    args = [
        sys.executable, "-m", "pytest", "benchmarks/test_quant.py", "-q", "-p", "no:randomly",
        "-p", "no:cacheprovider", "--mpt-tier", "cpu", "--mpt-model", "tiny-llama",
        "--mpt-baselines", str(baselines), "--mpt-rtol", "1e9", "--mpt-results", str(results),
        "--mpt-report", str(report), *extra,
    ]  # fmt: skip
    done = subprocess.run(
        args, capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=600
    )
    return done, read(results)


def values(records: list[Record]) -> dict[tuple, float]:
    return {record.key: record.value for record in records}


@needs_data
@pytest.mark.skipif(not HAS_XDIST, reason="needs pytest-xdist: pip install -e .[test]")
def test_two_workers_record_what_a_serial_run_records(tmp_path):
    serial, serial_records = run_points(tmp_path, "serial")
    assert serial.returncode == 0, serial.stdout[-3000:]
    parallel, parallel_records = run_points(tmp_path, "xdist", "-n", "2")
    assert parallel.returncode == 0, parallel.stdout[-3000:]
    assert "bringing up nodes" in parallel.stdout  # xdist really ran
    assert len(serial_records) == len(SPECS)
    # each point once, though both workers measured dense (the reference of their checks)
    assert len(parallel_records) == len(SPECS)
    assert values(parallel_records) == values(serial_records)
    assert not list(tmp_path.glob("xdist.gw*.jsonl")), "a worker part was left behind"
    report = (tmp_path / "xdist.md").read_text(encoding="utf-8")
    assert all(f"{record.value:.4f}" in report for record in serial_records)
    assert "4 passed" in report


def record(spec: str, value: float) -> Record:
    return Record(
        model="tiny-llama", weights_hash="0" * 64, spec=spec, dataset="wikitext2", seqlen=64,
        windows=2, metric="ppl", value=value, stderr=0.1, footprint={}, seconds={},
        device="cpu", dtype="float32",
    )  # fmt: skip


def test_parts_merge_into_the_results_in_worker_order_once_each_and_disappear(tmp_path):
    results = tmp_path / "results.jsonl"
    append(results, record("dense", 1.0))  # an earlier run's record stays first
    for worker, spec in (("gw10", "rtn:2"), ("gw2", "rtn:4"), ("gw0", "rtn:8"), ("gw2", "rtn:8")):
        append(part_path(results, worker), record(spec, 2.0))
    (tmp_path / "results.gwx.jsonl").write_text("not a part\n")
    assert part_path(results, "gw2").name == "results.gw2.jsonl"
    assert merge_parts(results) == 3
    assert [r.spec for r in read(results)] == ["dense", "rtn:8", "rtn:4", "rtn:2"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "results.gwx.jsonl",
        "results.jsonl",
    ]
    assert merge_parts(results) == 0


def test_each_worker_takes_its_own_gpu_round_robin():
    assert worker_number("gw0") == 0 and worker_number("gw13") == 13
    assert worker_number(None) is None and worker_number("master") is None
    visible = ["4", "5", "7"]  # CUDA_VISIBLE_DEVICES=4,5,7
    assert [gpu_for_worker(n, visible) for n in range(4)] == [
        (0, "4"),
        (1, "5"),
        (2, "7"),
        (0, "4"),
    ]


def test_device_map_auto_loads_and_restores_weights(tmp_path, fresh_tiny):
    import torch

    from mpt_core.errors import ModelError
    from mpt_core.models import load_model, state_dict_hash
    from mpt_core.snapshot import Snapshot

    fresh_tiny.model.save_pretrained(tmp_path)
    fresh_tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", device_map="auto")
    assert loaded.weights_hash == fresh_tiny.weights_hash
    # one CPU gives accelerate nothing to spread; a GPU machine sets the map like this
    loaded.model.hf_device_map = {"model.layers.0": 0, "model.layers.1": 1}
    snapshot = Snapshot(loaded.model)
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.up_proj.weight.mul_(0)
    snapshot.restore(loaded.model)
    assert state_dict_hash(loaded.model) == loaded.weights_hash
    del loaded.model.model.layers[1]  # a structural change cannot be undone from weights
    with pytest.raises(ModelError, match="device_map='auto' keeps only its weights"):
        snapshot.restore(loaded.model)
