"""What a point costs to compress and a row to evaluate, estimated from the CPU tier.

The rates come from ``cost_table.json``, which ``scripts/cost_table.py`` measures from the
CPU tier's committed records (SmolLM2-135M): compression seconds per billion parameters for
each method (with options), the extra its first point in a session paid, evaluation seconds
per billion parameters per token (perplexity) or per question (zero-shot tasks). A model's
cost is its rate times its parameter count (``models.STUDY_PARAMS`` for the study's models,
the table's measured counts for the CPU tier's): linear in parameters, blind to the seqlen
and calibration size a protocol uses and to the superlinear parts of a method (SparseGPT's
Hessian inverse grows with the square of a layer's width).

The study tier runs on GPUs. Once a GPU run's records are in the table (its ``gpu`` section,
``scripts/cost_table.py --gpu RECORDS``), what that run timed is priced at its own rates,
and the rest at the CPU rate divided by the speed-up measured between the two (the median
CPU/GPU ratio over every rate both sections hold); until then, divided by
``CPU_TO_H100_SPEEDUP``, an assumption stated below, not a measurement. Every rate here is in
seconds on the tier's own device.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mpt_core.analysis.curves import without_level
from mpt_core.baselines import BaselineRow
from mpt_core.errors import MptError
from mpt_core.models import STUDY_PARAMS
from mpt_core.spec import Stage

TABLE = Path(__file__).with_name("cost_table.json")
# A 2048x2048 fp32 matmul runs at 219 GFLOP/s with 2 threads on this project's 2-core Xeon
# machines, where the CPU tier was recorded (torch.randn(2048, 2048) @ itself, 5 runs, after
# one warm-up); an H100 SXM's dense bf16 tensor-core peak is 989 TFLOP/s (NVIDIA's datasheet).
# Assuming compression and evaluation reach the same fraction of peak on both, one H100 second
# does the work of about 4500 CPU seconds. No GPU run has been timed yet; once one is in the
# table (scripts/cost_table.py --gpu), gpu_speedup measures the ratio instead.
CPU_GEMM_FLOPS = 219e9
H100_BF16_FLOPS = 989e12
CPU_TO_H100_SPEEDUP = H100_BF16_FLOPS / CPU_GEMM_FLOPS
CPU_NOTE = (
    "estimate: seconds measured on the CPU tier (SmolLM2-135M, scripts/cost_table.py), scaled "
    "linearly by parameter count; "
)
BYTES_PER_PARAM = 2  # the study's checkpoints download as bf16/fp16 safetensors


@dataclass(frozen=True)
class StageRate:
    """A stage's compression rate (seconds per billion parameters) and where it came from."""

    asked: str  # the stage's method and options, as the table keys them
    key: str  # the table entry used: ``asked``, or a median standing in for it
    point: float  # seconds per billion parameters on the tier's device
    first: float  # paid once per model and method in a session (a cached statistic)
    measured: bool  # False: no record of this method and options; ``key`` says what stood in
    on_gpu: bool = False  # timed by a GPU run (else the CPU rate, divided for the study tier)


@cache
def table() -> dict:
    return json.loads(TABLE.read_text(encoding="utf-8"))


def params(model: str) -> float:
    """A baseline row's model's parameter count."""
    found = STUDY_PARAMS.get(model) or table()["params"].get(model)
    if found is None:
        raise MptError(
            f"model {model}: no parameter count; add it to STUDY_PARAMS in mpt_core/models.py"
        )
    return found


def gpu_rates() -> dict:
    """The rates a GPU run timed (``scripts/cost_table.py --gpu``); empty while none has."""
    return table().get("gpu", {})


def cpu_and_gpu_pairs() -> list[tuple[float, float]]:
    """(CPU rate, GPU rate) of every rate both sections hold: compression per method and
    options, perplexity per token, each task per question."""
    cpu, gpu = table(), gpu_rates()
    if not gpu:
        return []
    compress = gpu["compress_seconds_per_bparam"]
    pairs = [
        (rate["point"], compress[name]["point"])
        for name, rate in cpu["compress_seconds_per_bparam"].items()
        if name in compress
    ]
    if gpu["ppl_seconds_per_bparam_per_token"] is not None:  # the run measured perplexity
        pairs.append(
            (cpu["ppl_seconds_per_bparam_per_token"], gpu["ppl_seconds_per_bparam_per_token"])
        )
    tasks = gpu["task_seconds_per_bparam_per_question"]
    cpu_tasks = cpu["task_seconds_per_bparam_per_question"]
    pairs += [(cpu_tasks[task], tasks[task]) for task in cpu_tasks if task in tasks]
    return [(slow, fast) for slow, fast in pairs if fast > 0]


def gpu_speedup() -> float:
    """CPU seconds per GPU second for work no GPU run timed: measured once a GPU run is in
    the table, else ``CPU_TO_H100_SPEEDUP``."""
    pairs = cpu_and_gpu_pairs()
    if not pairs:
        return CPU_TO_H100_SPEEDUP
    return statistics.median(slow / fast for slow, fast in pairs)


def estimate_note() -> str:
    """How the plan's seconds were estimated (printed under the plan)."""
    gpu = gpu_rates()
    if not gpu:
        return CPU_NOTE + (
            f"study tier divided by CPU_TO_H100_SPEEDUP = {CPU_TO_H100_SPEEDUP:.0f} "
            "(assumed from peak FLOP rates, not measured on a GPU)"
        )
    timed = len(gpu["compress_seconds_per_bparam"])
    timed += len(gpu["task_seconds_per_bparam_per_question"])
    timed += gpu["ppl_seconds_per_bparam_per_token"] is not None
    return CPU_NOTE + (
        f"study tier at the {timed} rates a GPU run timed ({', '.join(gpu['recorded_on'])}), "
        f"the rest divided by the measured speed-up {gpu_speedup():.0f} (median over "
        f"{len(cpu_and_gpu_pairs())} rates timed on both)"
    )


def stage_rate(stage: Stage, tier: str = "cpu") -> StageRate:
    """The rate of ``stage`` on ``tier``'s device: its method and options (the calibration
    set left out: it changes the data, not the work) as a GPU run timed them (study tier),
    else as the CPU tier measured them, else the median over the method's measured options,
    else the median over every method; a CPU rate is divided by ``gpu_speedup`` for the
    study tier."""
    options = tuple(option for option in stage.options if option[0] != "calib")
    asked = without_level(Stage(method=stage.method, options=options))
    on_gpu = gpu_rates().get("compress_seconds_per_bparam", {}) if tier == "study" else {}
    if asked in on_gpu:
        return StageRate(asked, asked, on_gpu[asked]["point"], on_gpu[asked]["first"], True, True)
    scale = 1.0 / gpu_speedup() if tier == "study" else 1.0
    rates = table()["compress_seconds_per_bparam"]
    if asked in rates:
        rate = rates[asked]
        return StageRate(asked, asked, rate["point"] * scale, rate["first"] * scale, True)
    same = [rate for name, rate in rates.items() if name.split("[")[0] == stage.method]
    chosen = same or list(rates.values())
    return StageRate(
        asked,
        f"{stage.method} (median of its options)" if same else "every method (median)",
        statistics.median(rate["point"] for rate in chosen) * scale,
        statistics.median(rate["first"] for rate in chosen) * scale,
        False,
    )


def evaluate_seconds(row: BaselineRow, seqlen: int, windows: int | None) -> float:
    """Seconds of evaluating the row's dataset or task once on its model, on its tier's
    device."""
    billions = params(row.model) / 1e9
    data = table()
    if row.metric == "ppl":
        tokens = data["eval_tokens"].get(row.dataset)
        if tokens is None:
            raise MptError(
                f"dataset {row.dataset}: not in the cost table; add it to "
                "PPL_DATASETS in scripts/cost_table.py and rerun it"
            )
        count = tokens // seqlen if windows is None else min(windows, tokens // seqlen)
        return _rate(row, "ppl_seconds_per_bparam_per_token") * billions * count * seqlen
    size = data["tasks"].get(row.dataset)
    if size is None or row.dataset not in data["task_seconds_per_bparam_per_question"]:
        raise MptError(f"task {row.dataset}: not in the cost table; rerun scripts/cost_table.py")
    questions = size["questions"]
    if row.limit is not None:
        questions = min(questions, row.limit * size["subtasks"])
    return _rate(row, "task_seconds_per_bparam_per_question") * billions * questions


def _rate(row: BaselineRow, name: str) -> float:
    """An evaluation rate on the row's tier's device: the GPU run's for the study tier where
    it timed one, else the CPU tier's (divided by ``gpu_speedup`` for the study tier)."""
    cpu, gpu = table()[name], gpu_rates().get(name)
    if name.startswith("task"):
        cpu, gpu = cpu[row.dataset], (gpu or {}).get(row.dataset)
    if row.tier != "study":
        return cpu
    return gpu if gpu is not None else cpu / gpu_speedup()
