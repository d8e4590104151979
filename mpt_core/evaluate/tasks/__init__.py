"""lm-eval's stock ARC and MMLU tasks, pointed at the offline files under ``$MPT_DATA_DIR``.

The stock task YAML that ships inside lm-eval is loaded as it is (prompt,
choices, target, metrics, few-shot sampler) and only its data source is
replaced: lm-eval's ``custom_dataset`` hook reads the local files and converts
each row to the hub row the stock prompt expects. A later lm-eval that changes
a prompt changes ours with it.

Local layouts (``shared/data/PROVENANCE.md``):
- ``arc/ARC-{Easy,Challenge}-Test.jsonl``: the official ARC-V1-Feb2018 rows
  ``{"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``;
  the hub's ``allenai/ai2_arc`` rows are ``{"id", "question", "choices": {"text",
  "label"}, "answerKey"}``.
- ``mmlu/{test,dev}/<subject>_{test,dev}.csv``: ``question,choice0..choice3,answer``
  with ``answer`` an index 0-3; the hub's ``cais/mmlu`` rows are ``{"question",
  "subject", "choices", "answer"}``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from mpt_core.data import data_dir
from mpt_core.errors import DataError

TASKS = ("arc_easy", "arc_challenge", "mmlu")
ARC_FILES = {"arc_easy": "arc/ARC-Easy-Test.jsonl", "arc_challenge": "arc/ARC-Challenge-Test.jsonl"}
MMLU_SHOTS = 5  # PROTOCOLS.md: 5-shot, the first five of the subject's dev split
MMLU_COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


def stock_dir() -> Path:
    """Where lm-eval keeps its task YAML."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def stock_config(relative: str) -> dict:
    """A stock task YAML with its includes merged and its ``!function`` entries resolved."""
    from lm_eval.tasks._yaml_loader import load_yaml

    config = dict(load_yaml(stock_dir() / relative, resolve_func=True))
    config.pop("tag", None)  # tags index tasks in lm-eval's registry, which we bypass
    return config


def local_file(relative: str) -> Path:
    root = data_dir()
    if root is None:
        raise DataError(
            "zero-shot tasks read local files: set MPT_DATA_DIR to a folder laid out like "
            "shared/data (arc/, mmlu/)"
        )
    path = root / relative
    if not path.is_file():
        raise DataError(f"{path} not found: MPT_DATA_DIR={root} must hold {relative}")
    return path


def arc_rows(path: Path) -> list[dict]:
    """Official ARC rows -> the hub's ``allenai/ai2_arc`` rows (what the stock prompt reads)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        choices = doc["question"]["choices"]
        rows.append(
            {
                "id": doc["id"],
                "question": doc["question"]["stem"],
                "choices": {
                    "text": [choice["text"] for choice in choices],
                    "label": [choice["label"] for choice in choices],
                },
                "answerKey": doc["answerKey"],
            }
        )
    return rows


def mmlu_rows(path: Path) -> list[dict]:
    """Local MMLU rows (``choice0..3``, index answer) -> the hub's ``cais/mmlu`` rows. Read
    as text: pandas' guesses would turn a choice "10" into "10.0" and "None" into a NaN."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MMLU_COLUMNS:
            raise DataError(f"{path}: header must be {','.join(MMLU_COLUMNS)}")
        return [
            {
                "question": row["question"],
                "subject": path.stem.rsplit("_", 1)[0],
                "choices": [row[f"choice{i}"] for i in range(4)],
                "answer": int(row["answer"]),
            }
            for row in reader
        ]


def load_splits(data_files: dict[str, str], **_metadata):
    """lm-eval's ``custom_dataset`` hook: each split's local file, converted once (a
    ``process_docs`` would convert again every time lm-eval asks for the documents)."""
    import datasets

    convert = {".jsonl": arc_rows, ".csv": mmlu_rows}
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(convert[Path(file).suffix](Path(file)))
            for split, file in data_files.items()
        }
    )


def local_source(config: dict, data_files: dict[str, Path]) -> dict:
    """``config`` reading ``data_files`` instead of the hub."""
    config.update(
        dataset_path=None,
        dataset_name=None,
        custom_dataset=load_splits,
        dataset_kwargs={"data_files": {split: str(path) for split, path in data_files.items()}},
    )
    return config


def arc_config(task: str) -> dict:
    config = stock_config(f"arc/{task}.yaml")
    # the local copy holds the test split only
    config.update(training_split=None, validation_split=None, test_split="test")
    return local_source(config, {"test": local_file(ARC_FILES[task])})


def mmlu_subjects() -> list[str]:
    """The 57 subjects, named as lm-eval's stock MMLU tasks name them."""
    stock = (stock_dir() / "mmlu" / "default").glob("mmlu_*.yaml")
    return sorted(path.stem.removeprefix("mmlu_") for path in stock)


def mmlu_config(subject: str) -> dict:
    config = stock_config(f"mmlu/default/mmlu_{subject}.yaml")
    config["num_fewshot"] = MMLU_SHOTS
    files = {split: local_file(f"mmlu/{split}/{subject}_{split}.csv") for split in ("test", "dev")}
    return local_source(config, files)


def mmlu_group():
    """The 57 subjects under one group that averages acc over all questions, as lm-eval's
    ``mmlu`` group does (``weight_by_size``; its stem/humanities/... level in between
    does not change the micro-average)."""
    from lm_eval.api.group import Group
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.config.group import GroupConfig

    group = Group.from_config(
        GroupConfig(
            group="mmlu",
            aggregate_metric_list=[{"metric": "acc", "weight_by_size": True}],
            metadata={"version": 2},
        )
    )
    for subject in mmlu_subjects():
        group.add(ConfigurableTask(config=mmlu_config(subject)))
    return group


def local_task(name: str):
    """What ``lm_eval.simple_evaluate(tasks=[...])`` takes for one of TASKS: a task config
    dict (ARC) or a Group of task objects (MMLU)."""
    if name in ARC_FILES:
        return arc_config(name)
    if name == "mmlu":
        return mmlu_group()
    raise DataError(f"unknown task {name!r}: choose from {', '.join(TASKS)}")


def fingerprint(name: str) -> dict[str, str]:
    """Source and sha256 of the local files a task reads (all subjects' for MMLU)."""
    if name in ARC_FILES:
        files = [ARC_FILES[name]]
    else:
        files = [
            f"mmlu/{split}/{s}_{split}.csv" for s in mmlu_subjects() for split in ("test", "dev")
        ]
    digest = hashlib.sha256()
    for relative in files:
        digest.update(relative.encode() + b"\0" + local_file(relative).read_bytes())
    source = files[0] if len(files) == 1 else "mmlu/{test,dev}/*.csv"
    return {
        "dataset": name,
        "split": "test",
        "source": f"file:{source}",
        "sha256": digest.hexdigest(),
    }
