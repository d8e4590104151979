"""llama.cpp's perplexity protocol in mpt: each ctx-token chunk starts with BOS and only its
second half is scored, as tools/perplexity/perplexity.cpp does; a row whose protocol says
llama-perplexity is measured with it, and a record measured otherwise is a protocol
difference, never a verdict."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import REPO, needs_data
from mpt_core import baselines
from mpt_core.evaluate.perplexity import llama_perplexity
from mpt_core.harness import policy
from mpt_core.measure import Session, added_bos
from mpt_core.models import tiny_llama
from mpt_core.spec import Spec
from mpt_core.verdict import protocol_changes, protocol_of

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_loop(model, tokens: list[int], n_ctx: int, bos: int | None) -> float:
    """perplexity.cpp's ``perplexity()`` transcribed token by token: n_chunk = size / n_ctx,
    BOS written over each chunk's first token, logits from position n_ctx/2 on predict the
    next token of the original stream; ppl = exp(nll / count)."""
    first, nll, count = n_ctx // 2, 0.0, 0
    for chunk in range(len(tokens) // n_ctx):
        start = chunk * n_ctx
        batch = tokens[start : start + n_ctx]
        if bos is not None:
            batch = [bos] + batch[1:]
        with torch.no_grad():
            logits = model(torch.tensor([batch])).logits[0].double()
        for j in range(first, n_ctx - 1):
            nll += -torch.log_softmax(logits[j], dim=-1)[tokens[start + j + 1]].item()
            count += 1
    return math.exp(nll / count)


@pytest.mark.parametrize("bos", [None, 0])
def test_mpt_scores_what_llama_perplexity_scores(bos):
    model, _ = tiny_llama()
    tokens = torch.randint(2, 258, (1, 3 * 64 + 17), generator=torch.Generator().manual_seed(1))
    measured = llama_perplexity(model, tokens, 64, bos, batch_size=2)
    assert measured.windows == 3
    assert measured.ppl == pytest.approx(reference_loop(model, tokens[0].tolist(), 64, bos), 1e-6)


def test_the_bos_llama_cpp_adds_is_the_one_the_tokenizer_puts_first():
    _, tokenizer = tiny_llama()
    assert added_bos(tokenizer) is None  # the byte tokenizer adds no BOS
    tokenizer.add_bos_token = True
    tokenizer.update_post_processor()
    assert added_bos(tokenizer) == tokenizer.bos_token_id


@needs_data
def test_a_record_says_how_it_was_evaluated_and_what_memory_it_took(tiny):
    session = Session(tiny, seqlen=64)
    record = session.measure_datasets(Spec.parse("dense"), ["wikitext2"], 2, "llama-perplexity")[0]
    windowed = session.measure_datasets(Spec.parse("dense"), ["wikitext2"], 2)[0]
    assert (record.evaluation, windowed.evaluation) == ("llama-perplexity", "windowed")
    assert record.value != windowed.value and record.memory["host_rss_bytes"] > 0
    assert protocol_changes(protocol_of(windowed), protocol_of(record)) == (
        "evaluation windowed vs llama-perplexity",
    )


def test_tables_5_6_and_10_are_measured_with_llama_perplexity():
    rows = baselines.load_dir(REPO / "baselines" / "study", "study")
    ppl = [row for row in rows if row.metric == "ppl" and row.is_numeric]
    llama_tables = [row for row in ppl if row.table in ("table5", "table6", "table10")]
    points = {policy.measured_point(row, None, None).evaluation for row in llama_tables}
    assert points == {"llama-perplexity"}
    table6 = next(row for row in ppl if row.table == "table6")
    assert policy.baseline_protocol(table6)["evaluation"] == "llama-perplexity"
