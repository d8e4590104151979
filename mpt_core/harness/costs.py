"""What a point costs to compress and a row to evaluate, estimated from the CPU tier.

The rates come from ``cost_table.json``, which ``scripts/cost_table.py`` measures from the
CPU tier's committed records (SmolLM2-135M): compression seconds per billion parameters for
each method (with options), the extra its first point in a session paid, evaluation seconds
per billion parameters per token (perplexity) or per question (zero-shot tasks). A model's
cost is its rate times its parameter count (``models.STUDY_PARAMS`` for the study's models,
the table's measured counts for the CPU tier's): linear in parameters, blind to the seqlen
and calibration size a protocol uses and to the superlinear parts of a method (SparseGPT's
Hessian inverse grows with the square of a layer's width).

The study tier runs on GPUs, where nothing was measured yet: its seconds are divided by
``CPU_TO_H100_SPEEDUP``, an assumption stated below, not a measurement.
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
# does the work of about 4500 CPU seconds. No GPU run has been timed yet: replace this by the
# ratio of a recorded GPU run's seconds to the CPU tier's when one exists.
CPU_GEMM_FLOPS = 219e9
H100_BF16_FLOPS = 989e12
CPU_TO_H100_SPEEDUP = H100_BF16_FLOPS / CPU_GEMM_FLOPS
ESTIMATE_NOTE = (
    "estimate: seconds measured on the CPU tier (SmolLM2-135M, scripts/cost_table.py), scaled "
    "linearly by parameter count; study tier divided by CPU_TO_H100_SPEEDUP = "
    f"{CPU_TO_H100_SPEEDUP:.0f} (assumed from peak FLOP rates, not measured on a GPU)"
)
BYTES_PER_PARAM = 2  # the study's checkpoints download as bf16/fp16 safetensors


@dataclass(frozen=True)
class StageRate:
    """A stage's compression rate (seconds per billion parameters) and where it came from."""

    asked: str  # the stage's method and options, as the table keys them
    key: str  # the table entry used: ``asked``, or a median standing in for it
    point: float
    first: float  # paid once per model and method in a session (a cached statistic)
    measured: bool  # False: no record of this method and options; ``key`` says what stood in


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


def speedup(row: BaselineRow) -> float:
    """How much faster the row's tier runs than the CPU the rates were measured on."""
    return CPU_TO_H100_SPEEDUP if row.tier == "study" else 1.0


def stage_rate(stage: Stage) -> StageRate:
    """The rate of ``stage``: its method and options (the calibration set left out: it changes
    the data, not the work) as measured, else the median over the method's measured options,
    else the median over every method."""
    rates = table()["compress_seconds_per_bparam"]
    options = tuple(option for option in stage.options if option[0] != "calib")
    asked = without_level(Stage(method=stage.method, options=options))
    if asked in rates:
        return StageRate(asked, asked, rates[asked]["point"], rates[asked]["first"], True)
    same = [rate for name, rate in rates.items() if name.split("[")[0] == stage.method]
    chosen = same or list(rates.values())
    return StageRate(
        asked,
        f"{stage.method} (median of its options)" if same else "every method (median)",
        statistics.median(rate["point"] for rate in chosen),
        statistics.median(rate["first"] for rate in chosen),
        False,
    )


def evaluate_seconds(row: BaselineRow, seqlen: int, windows: int | None) -> float:
    """CPU seconds of evaluating the row's dataset or task once on its model."""
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
        return data["ppl_seconds_per_bparam_per_token"] * billions * count * seqlen
    size = data["tasks"].get(row.dataset)
    rate = data["task_seconds_per_bparam_per_question"].get(row.dataset)
    if size is None or rate is None:
        raise MptError(f"task {row.dataset}: not in the cost table; rerun scripts/cost_table.py")
    questions = size["questions"]
    if row.limit is not None:
        questions = min(questions, row.limit * size["subtasks"])
    return rate * billions * questions
