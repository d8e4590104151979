"""Zero-shot and few-shot accuracy through lm-evaluation-harness (EleutherAI), offline.

ARC-Easy and ARC-Challenge (0-shot; acc and acc_norm) and MMLU (5-shot from
each subject's dev split; acc averaged over all questions, as lm-eval's
``mmlu`` group does). The model in memory, compressed or not, is wrapped as
``HFLM(pretrained=model, tokenizer=tokenizer)``; prompts, log-likelihood
scoring, metrics and their standard errors are lm-eval's own. Only the data
source differs from lm-eval's stock tasks (``mpt_core.evaluate.tasks``).

``limit`` is lm-eval's: the first N questions of each task, i.e. of each MMLU
subject (so MMLU scores up to 57*N questions).

lm-eval is an optional dependency: ``pip install -e .[eval]``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from mpt_core.errors import MptError
from mpt_core.evaluate.tasks import MMLU_SHOTS, TASKS, local_task

INSTALL_HINT = "zero-shot tasks need lm-eval: pip install -e .[eval]"
METRICS = {"arc_easy": ("acc", "acc_norm"), "arc_challenge": ("acc", "acc_norm"), "mmlu": ("acc",)}
SHOTS = {"arc_easy": 0, "arc_challenge": 0, "mmlu": MMLU_SHOTS}


@dataclass(frozen=True)
class TaskScore:
    """One metric of one task as lm-eval reports it."""

    task: str
    metric: str
    value: float
    stderr: float
    samples: int  # questions scored (after limit)
    num_fewshot: int
    max_length: int  # tokens of context the wrapper keeps (longer prompts lose their left end)


def lm_eval_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def require_lm_eval() -> None:
    if not lm_eval_available():
        raise MptError(INSTALL_HINT)


def check_tasks(tasks: list[str]) -> None:
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise MptError(f"unknown task {unknown[0]!r}: choose from {', '.join(TASKS)}")


class DropCustomDatasetHint(logging.Filter):
    """lm-eval warns once per task loaded through ``custom_dataset`` (57 times for MMLU)
    about a ``--metadata`` option the local tasks do not use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(DropCustomDatasetHint())


def wrap(model, tokenizer, batch_size: int = 1):
    """The in-memory model as an lm-eval LM (HFLM takes its device from the model)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def run_tasks(lm, tasks: list[str], limit: int | None) -> dict:
    """``lm_eval.simple_evaluate`` on the local tasks; its whole results dict.

    The task manager indexes nothing (``include_defaults=False``): the local tasks
    are passed as configs, and indexing lm-eval's ~15,000 stock YAML files costs
    about ten seconds per call.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=lm,
        tasks=[local_task(task) for task in tasks],
        limit=limit,
        task_manager=TaskManager(include_defaults=False),
        log_samples=False,
    )


def stderr(cell) -> float:
    """lm-eval's standard error; it writes "N/A" where one question cannot give one."""
    return math.nan if cell == "N/A" else float(cell)


def scores(results: dict, tasks: list[str], max_length: int) -> list[TaskScore]:
    """The metrics of ``tasks`` out of lm-eval's results (a group's numbers for MMLU)."""
    found = []
    for task in tasks:
        table = (
            results["groups"][task]
            if task in results.get("groups", {})
            else results["results"][task]
        )
        for metric in METRICS[task]:
            found.append(
                TaskScore(
                    task=task,
                    metric=metric,
                    value=float(table[f"{metric},none"]),
                    stderr=stderr(table[f"{metric}_stderr,none"]),
                    samples=int(table["sample_len"]),
                    num_fewshot=SHOTS[task],
                    max_length=max_length,
                )
            )
    return found


def evaluate(
    model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 1
) -> list[TaskScore]:
    """Score the model on each task (see the module docstring for the protocol)."""
    require_lm_eval()
    check_tasks(tasks)
    lm = wrap(model, tokenizer, batch_size)
    return scores(run_tasks(lm, tasks, limit), tasks, lm.max_length)


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")
