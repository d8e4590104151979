"""The cost table `--mpt-plan` and `--mpt-shard` read, measured from the CPU tier's records.

Usage: MPT_DATA_DIR=../shared/data python scripts/cost_table.py [RECORDS.jsonl ...]
Without files: baselines/cpu/smollm2-135m/*.records.jsonl. Writes
mpt_core/harness/cost_table.json (``--out`` elsewhere), keeping its ``gpu`` section.

``python scripts/cost_table.py --gpu RESULTS.jsonl ...`` (a GPU run's records, e.g. the
study tier's ``--mpt-results``) writes only the ``gpu`` section, the same rates from the
records a CUDA device timed; ``--mpt-plan`` then prices the study tier at them
(``mpt_core/harness/costs.py``).

What it measures, from each record's ``seconds`` and footprint:
- parameters of each recorded model: ``footprint.fp16_bytes / 2`` (every unique parameter
  at 16 bits), for the models given and for tiny-llama's records;
- compression: seconds per billion parameters of each single-stage spec, its fastest run
  (a point's records on several datasets share one compression), then per method and
  options (``wanda``, ``llm_pruner[recover=lora]``) the median over its levels, and what the
  method's first record in time paid beyond that (ASVD's sensitivity search runs once per
  session: its first level took 2010 s, the others 3-9 s);
- perplexity evaluation: the median over records of seconds per billion parameters per token
  evaluated (windows x seqlen);
- zero-shot tasks: per task, the median seconds per billion parameters per question scored;
- what a whole evaluation holds: the test split's tokens under the recorded model's tokenizer
  (the study's tokenizers differ from it), and each task's questions and subtasks in
  ``$MPT_DATA_DIR``.

Only SmolLM2-135M's records by default: tiny-llama's seconds are mostly fixed overhead, which
scaled by parameter count says nothing about a 7B model.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from mpt_core.analysis.curves import without_level
from mpt_core.baselines import DOWNSTREAM_METRICS
from mpt_core.data import data_dir, load_text, tokenize
from mpt_core.evaluate.tasks import ARC_FILES, arc_rows, local_file, mmlu_rows
from mpt_core.models import load_model
from mpt_core.records import Record, device_kind, read
from mpt_core.spec import Spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECORDS = "baselines/cpu/smollm2-135m/*.records.jsonl"
PARAMS_RECORDS = (DEFAULT_RECORDS, "baselines/cpu/tiny-llama/*.records.jsonl")
OUT = ROOT / "mpt_core" / "harness" / "cost_table.json"
PPL_DATASETS = ("wikitext2", "ptb")


def parameters(record: Record) -> float:
    """The model's parameter count: its dense fp16 size over two bytes."""
    return record.footprint["fp16_bytes"] / 2


def compress_rates(records: list[Record]) -> dict[str, dict[str, float]]:
    """Method (with options) -> ``point``: the median over its levels of each level's fastest
    seconds per billion parameters; ``first``: what the method's earliest record paid beyond
    that median (a statistic computed once per session, as ASVD's sensitivity search)."""
    fastest: dict[str, dict[str, float]] = defaultdict(dict)
    earliest: dict[str, tuple[str, float]] = {}
    for record in records:
        stages = Spec.parse(record.spec).stages
        if len(stages) != 1:
            continue  # dense costs nothing; a pipeline's later stages ran on a cached first
        key, level = without_level(stages[0]), str(stages[0])
        rate = record.seconds["compress"] / (parameters(record) / 1e9)
        fastest[key][level] = min(rate, fastest[key].get(level, rate))
        earliest[key] = min(earliest.get(key, (record.created, rate)), (record.created, rate))
    table = {}
    for key, levels in sorted(fastest.items()):
        point = statistics.median(levels.values())
        table[key] = {"point": point, "first": max(0.0, earliest[key][1] - point)}
    return table


def ppl_rate(records: list[Record]) -> float | None:
    """Median seconds per billion parameters per token evaluated (None: no perplexity)."""
    rates = [
        r.seconds["evaluate"] / (parameters(r) / 1e9) / (r.windows * r.seqlen)
        for r in records
        if r.metric == "ppl"
    ]
    return statistics.median(rates) if rates else None


def task_rates(records: list[Record]) -> dict[str, float]:
    """Task -> median seconds per billion parameters per question scored (one lm-eval run
    gives a task's metrics: each run counted once)."""
    runs = {
        (r.spec, r.dataset): r.seconds["evaluate"] / (parameters(r) / 1e9) / r.windows
        for r in records
        if r.metric in DOWNSTREAM_METRICS
    }
    by_task: dict[str, list[float]] = defaultdict(list)
    for (_, task), rate in runs.items():
        by_task[task].append(rate)
    return {task: statistics.median(rates) for task, rates in sorted(by_task.items())}


def eval_tokens(model: str) -> dict[str, int]:
    """Tokens of each perplexity dataset's test split under ``model``'s tokenizer."""
    tokenizer = load_model(model, device="cpu").tokenizer
    return {name: int(tokenize(tokenizer, load_text(name)).numel()) for name in PPL_DATASETS}


def task_sizes() -> dict[str, dict[str, int]]:
    """Task -> its questions and subtasks (lm-eval's limit counts per subtask)."""
    sizes = {
        task: {"questions": len(arc_rows(local_file(path))), "subtasks": 1}
        for task, path in ARC_FILES.items()
    }
    subjects = sorted((data_dir() / "mmlu" / "test").glob("*_test.csv"))
    questions = sum(len(mmlu_rows(path)) for path in subjects)
    sizes["mmlu"] = {"questions": questions, "subtasks": len(subjects)}
    return sizes


def expand(patterns: list[str]) -> list[str]:
    return sorted(path for pattern in patterns for path in glob.glob(str(ROOT / pattern)))


def table(paths: list[str]) -> dict:
    records = [record for path in paths for record in read(path)]
    model = records[0].model
    params = {r.model: parameters(r) for r in (x for p in expand(PARAMS_RECORDS) for x in read(p))}
    return {
        "command": "MPT_DATA_DIR=../shared/data python scripts/cost_table.py",
        "records": sorted(os.path.relpath(path, ROOT) for path in paths),
        "recorded_on": sorted({record.device for record in records}),
        "params": params,
        "compress_seconds_per_bparam": compress_rates(records),
        "ppl_seconds_per_bparam_per_token": ppl_rate(records),
        "task_seconds_per_bparam_per_question": task_rates(records),
        "eval_tokens": {"tokenizer": model, **eval_tokens(model)},
        "tasks": task_sizes(),
    }


def gpu_section(paths: list[str]) -> dict | None:
    """The rates of the records a CUDA device timed (None: there are none)."""
    records = [r for path in paths for r in read(path) if device_kind(r.device) == "cuda"]
    if not records:
        return None
    return {
        "records": sorted(os.path.relpath(path, ROOT) for path in paths),
        "recorded_on": sorted({record.device for record in records}),
        "compress_seconds_per_bparam": compress_rates(records),
        "ppl_seconds_per_bparam_per_token": ppl_rate(records),
        "task_seconds_per_bparam_per_question": task_rates(records),
    }


def existing(out: Path) -> dict:
    return json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="*", help=f"default: {DEFAULT_RECORDS}")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--gpu", action="store_true", help="the records are a GPU run's")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.gpu:
        gpu = gpu_section([str(Path(p).resolve()) for p in args.records])
        if gpu is None:
            print("--gpu: no record in these files was timed on a cuda device", file=sys.stderr)
            return 1
        written = {**existing(out), "gpu": gpu}
    elif data_dir() is None:
        print("set MPT_DATA_DIR to the offline data (shared/data)", file=sys.stderr)
        return 1
    else:
        paths = [str(Path(p).resolve()) for p in args.records] or expand([DEFAULT_RECORDS])
        kept = {key: value for key, value in existing(out).items() if key == "gpu"}
        written = {**table(paths), **kept}
    out.write_text(json.dumps(written, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
