"""The loss makes a window's fp32 logits a chunk of positions at a time and gives per-token
losses bit-identical to the whole batch's fp32 logits, on each study architecture (and a
soft-capped Gemma-3, and GPT-2), at chunk sizes that leave a ragged last chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_SHAPE, tiny_gemma3_multimodal
from mpt_core.evaluate import loss
from mpt_core.evaluate.loss import next_token_nll

VOCAB = 320
SHAPE = TINY_SHAPE


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, **SHAPE))


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, tie_word_embeddings=True, **SHAPE))


def gemma3(softcap: float | None = None):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=VOCAB, sliding_window=16, final_logit_softcapping=softcap, **SHAPE
    )
    return Gemma3ForCausalLM(config)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=4))


BUILDERS = {
    "llama": llama,
    "qwen2": qwen2,
    "gemma3": gemma3,
    "gemma3-multimodal": lambda: tiny_gemma3_multimodal(VOCAB),
    "gemma3-softcapped": lambda: gemma3(softcap=5.0),
    "gpt2": gpt2,
}


def whole_batch_nll(model, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(inputs, use_cache=False).logits.float()
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), inputs[:, 1:].reshape(-1), reduction="none"
    )
    return per_token.view(len(inputs), -1)


@pytest.fixture(params=list(BUILDERS), ids=list(BUILDERS))
def model(request):
    torch.manual_seed(0)
    built = BUILDERS[request.param]().eval()
    # the softcap test needs logits large enough for the cap to bite
    if request.param == "gemma3-softcapped":
        built.lm_head.weight.data *= 50
    return built


@pytest.mark.parametrize("positions_per_chunk", [5, 64])
def test_per_token_losses_equal_the_whole_batchs_bit_for_bit(
    model, monkeypatch, positions_per_chunk
):
    monkeypatch.setattr(loss, "LOSS_CHUNK_ELEMENTS", positions_per_chunk * VOCAB)
    inputs = torch.randint(0, VOCAB - 1, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = next_token_nll(model, inputs, inputs[:, 1:])
    assert torch.equal(got, whole_batch_nll(model, inputs))


def test_the_second_half_scores_only_positions_from_first():
    torch.manual_seed(0)
    model = llama().eval()
    inputs = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        half = next_token_nll(model, inputs, inputs[:, 17:], first=16)
    assert torch.equal(half, whole_batch_nll(model, inputs)[:, 16:])
