"""``mpt run``: compress a model by one spec and measure it.

Perplexity on ``--dataset`` by default; with ``--task`` the accuracy of
zero-/few-shot tasks through lm-eval instead (``mpt_core.evaluate.zeroshot``).
"""

from __future__ import annotations

import argparse

from mpt_core.commands.common import add_model_arguments, check_out, describe, open_session
from mpt_core.commands.save_model import check_save_dir, saving
from mpt_core.errors import MptError
from mpt_core.evaluate.tasks import TASKS
from mpt_core.pipeline import plan
from mpt_core.records import append
from mpt_core.spec import Spec


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="measure one compression spec")
    add_model_arguments(parser)
    parser.add_argument(
        "--spec", required=True, help="e.g. dense, magnitude:0.5, 'rtn:4[group=64]'"
    )
    parser.add_argument(
        "--task",
        default=None,
        help=f"accuracy instead of perplexity: a comma list of {', '.join(TASKS)} "
        "(lm-eval, offline; pip install -e .[eval])",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="with --task: score only the first N questions of each task (of each MMLU subject)",
    )
    parser.add_argument("--json", action="store_true", help="print each record as one JSON line")
    parser.add_argument("--out", default=None, help="also append the records to this JSONL file")
    parser.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="also write the compressed model to this new folder (safetensors and config, "
        "reloads with transformers' from_pretrained); a spec ending with gguf also writes "
        "llama.cpp's quantized file, model-SCHEME.gguf; refused where a method changes the "
        "layers",
    )
    parser.set_defaults(func=run)


def task_list(text: str) -> list[str]:
    tasks = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise MptError(f"--task {text!r}: choose from {', '.join(TASKS)}")
    return tasks


def check_limit(args: argparse.Namespace) -> None:
    if args.limit is not None and args.task is None:
        raise MptError("--limit applies to --task; for perplexity use --windows")
    if args.limit is not None and args.limit < 1:
        raise MptError(f"--limit {args.limit}: use a positive number of questions")


def describe_score(record) -> str:
    """The human line for one accuracy record."""
    fp, protocol = record.footprint, record.fingerprint
    limit = protocol.get("limit")
    return (
        f"{record.model}  {record.spec}  {record.dataset}  {protocol['num_fewshot']}-shot "
        f"limit={limit if limit is not None else 'all'} ({record.windows} questions)  "
        f"{record.metric} {record.value:.4f} ± {record.stderr:.4f}  "
        f"size {fp['bytes'] / 1e6:.1f} MB ({100 * fp['relative_size']:.1f}% of fp16)  "
        f"{record.seconds['compress'] + record.seconds['evaluate']:.1f} s"
    )


def run(args: argparse.Namespace) -> int:
    spec = plan(Spec.parse(args.spec))  # validated and resolved once, before the model loads
    check_limit(args)
    check_out(args.out)
    check_save_dir(args.save)
    tasks = task_list(args.task) if args.task else None
    if tasks:
        from mpt_core.evaluate.zeroshot import require_lm_eval

        require_lm_eval()  # before the model loads: fail in a second, not a minute
    spec.check_model(args.model)
    session = open_session(args)
    with saving(args.save, spec.spec) as save:
        if tasks:
            records = session.measure_tasks(spec, dict.fromkeys(tasks, args.limit), save)
        else:
            records = [session.measure(spec, args.dataset, args.windows, save)]
    for record in records:
        if args.out:
            append(args.out, record)
        print(record.to_json() if args.json else (describe_score if tasks else describe)(record))
    return 0
