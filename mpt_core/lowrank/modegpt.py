"""MoDeGPT: modular decomposition (Lin, Gao, Smith, Patel, Tuli, Shen, Jin and Hsu, "MoDeGPT:
Modular Decomposition for Large Language Model Compression", ICLR 2025, arXiv:2408.09632).

Instead of factorizing each matrix into two thin ones, MoDeGPT takes consecutive matrix pairs
of a block as modules and shrinks the dimension the pair shares, choosing the new matrices to
reconstruct the module's output on calibration data. Every compressed matrix is a smaller
dense matrix; nothing is added. The paper's three algorithms:

- Type I, the MLP ``(σ(X W_G) ⊙ X W_U) W_D``, by Nyström approximation (Algorithm 1): with
  C_σ = Σ hᵀh over the intermediate activations h, keep the k channels of largest ridge
  leverage score s_i = [C_σ (C_σ + λI)⁻¹]_ii (selection S_k), slice W_G and W_U to them and
  refit W_D ← (S_kᵀ C_σ S_k)⁺ S_kᵀ C_σ W_D, the least-squares W_D for the kept channels.
- Type II, key-query ``X W_Q W_Kᵀ Xᵀ``, by CR decomposition (Algorithm 2): keep the head
  dimensions of largest ‖C_q^{1/2}[:, i]‖ · ‖C_k^{1/2}[:, i]‖ (C_q, C_k the correlations of
  the head's queries and keys), the same dimensions in W_Q and W_K. As
  ‖C^{1/2}[:, i]‖² = C_ii, only the diagonals are accumulated.
- Type III, value-output ``X W_V W_O``, by SVD (Algorithm 3): with C = XᵀX and
  C^{1/2} W_V W_O = U Σ Vᵀ, W_V ← C^{-1/2} U_k and W_O ← Σ_k V_kᵀ; exact at k = head dim.

Layer sparsities (the paper's global allocation): the block influence s_l = 1 − E cos(x_l,
x_{l+1}) of the dense model, and φ = L·φ_avg·softmax(−s/ε), the maximiser of
Σ_l s_l (1 − φ_l) + ε H(φ) with mean φ = φ_avg; layer l's three modules all keep 1 − φ_l.
The paper states φ_l ≤ 1; sparsities above ``max_sparsity`` are clipped and the excess
shared among the other layers in proportion to their softmax weights (the constrained
maximiser), so every module keeps some width.

The paper's equations leave two LLaMA details open; here they are derived, not copied:
RoPE rotates head dimension j together with j + d_h/2, so query-key dimensions are kept in
those pairs, scored by the CR bound of a two-column block, ‖C_q^{1/2}[:, J]‖_F‖C_k^{1/2}[:, J]‖_F
(invariant under the rotation), and the compressed heads apply the kept pairs' frequencies.
Under grouped-query attention a key head serves g query heads: the pairs are shared and
scored by the sum of the g heads' scores; a value head serves g output heads: the SVD is
of C^{1/2} W_V [W_O,1 … W_O,g], all g heads' outputs reconstructed at once (still exact at
full rank). The authors published no code; ``cbacary/MoDeGPT`` is a third-party
reimplementation consulted for orientation only.

Statistics are accumulated in float64 (the paper: "correlation computations in FP64") over
the calibration windows, block by block on the outputs of the already compressed blocks
(the engine's sequential order); the block influence comes from one dense pass first.
λ is relative to the mean eigenvalue of C_σ, so one default fits every model. ``R`` is the
fraction of the block linears' parameters removed: every module of layer l keeps 1 − φ_l
of its parameters up to rounding, and the φ_l average R.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpt_core.engine.layerwise import (
    collect_stats,
    decoder_layers,
    iterate_blocks,
    linear_layers,
    weight_name,
)
from mpt_core.engine.signals import block_influence
from mpt_core.errors import SpecError
from mpt_core.lowrank.factorized import check_ratio
from mpt_core.registry import Option, float_in, positive_float, register
from mpt_core.storage import TensorStorage

# eigenvalue floor of C^{1/2} for the value-output SVD, relative to the mean eigenvalue: it
# only keeps C^{-1/2} finite when the calibration tokens do not span the hidden space
VO_RIDGE = 1e-6
# which statistics each linear's role needs: (input Gram, per-channel output energy)
ROLES = {
    "self_attn.q_proj": (True, True),
    "self_attn.k_proj": (False, True),
    "mlp.down_proj": (True, False),
}


# ------------------------------------------------------------------------ the three modules


def ridge_leverage_scores(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """s_i = [C (C + λI)⁻¹]_ii with λ = ridge · mean eigenvalue of C."""
    C = C.double()
    lam = ridge * C.diagonal().mean()
    eigenvalues, eigenvectors = torch.linalg.eigh(C)
    shrink = eigenvalues.clamp(min=0) / (eigenvalues.clamp(min=0) + lam)
    return (eigenvectors.square() * shrink).sum(dim=1)


def nystrom_mlp(
    W_gate: torch.Tensor,
    W_up: torch.Tensor,
    W_down: torch.Tensor,
    C: torch.Tensor,
    k: int,
    ridge: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Type I: (W_G S_k, W_U S_k, (S_kᵀ C S_k)⁺ S_kᵀ C W_D) in torch's (out, in) layout.

    ``C`` is the intermediate correlation C_σ; the kept channels are the k of largest ridge
    leverage, in their original order.
    """
    keep = ridge_leverage_scores(C, ridge).topk(k).indices.sort().values
    C = C.double()
    # W_D is (d, D) here, so the paper's (S_kᵀCS_k)⁺ S_kᵀ C W_D is transposed
    down = W_down.double() @ C[:, keep] @ torch.linalg.pinv(C[keep][:, keep], hermitian=True)
    return W_gate[keep], W_up[keep], down


def pair_scores(query_energy: torch.Tensor, key_energy: torch.Tensor) -> torch.Tensor:
    """Type II scores of the RoPE pairs (j, j + d_h/2) of one key head and its query heads.

    ``query_energy`` is (g, d_h): diag C_q of each query head sharing the key head;
    ``key_energy`` is (d_h,): diag C_k. A pair J's CR bound is ‖C_q^{1/2}[:, J]‖_F ·
    ‖C_k^{1/2}[:, J]‖_F = √(Σ_J diag C_q · Σ_J diag C_k); the g heads' bounds add up.
    """
    half = key_energy.shape[-1] // 2
    query_pairs = query_energy[..., :half] + query_energy[..., half:]
    key_pairs = key_energy[:half] + key_energy[half:]
    return (query_pairs * key_pairs).sqrt().sum(dim=0)


def rope_dimensions(scores: torch.Tensor, pairs: int) -> torch.Tensor:
    """Head dimensions of the ``pairs`` best RoPE pairs: [j…, j + d_h/2…], j ascending."""
    kept = scores.topk(pairs).indices.sort().values
    return torch.cat([kept, kept + len(scores)])


def symmetric_sqrt(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C^{1/2}, C^{-1/2}) of a symmetric PSD matrix, eigenvalues floored at VO_RIDGE·mean."""
    C = C.double()
    eigenvalues, eigenvectors = torch.linalg.eigh(C)
    floor = VO_RIDGE * eigenvalues.clamp(min=0).mean()
    root = eigenvalues.clamp(min=0).add(floor).sqrt()
    return (eigenvectors * root) @ eigenvectors.T, (eigenvectors / root) @ eigenvectors.T


def value_output_svd(
    W_value: torch.Tensor, W_outputs: list[torch.Tensor], C: torch.Tensor, k: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Type III for one value head (d_h, d) and the (d, d_h) output blocks of its heads.

    Returns the new value rows (k, d) = (C^{-1/2} U_k)ᵀ and each head's output block
    (d, k) = (Σ_k V_kᵀ)ᵀ, from the SVD of C^{1/2} W_V [W_O,1 … W_O,g] (math layout).
    """
    root, inverse_root = symmetric_sqrt(C)
    stacked = torch.cat([W_o.double().T for W_o in W_outputs], dim=1)  # (d_h, g·d)
    U, sigma, Vt = torch.linalg.svd(root @ W_value.double().T @ stacked, full_matrices=False)
    value = (inverse_root @ U[:, :k]).T
    outputs = (sigma[:k, None] * Vt[:k]).split(W_outputs[0].shape[0], dim=1)
    return value, [block.T for block in outputs]


# --------------------------------------------------------------------- sparsity allocation


def allocate_sparsity(
    influence: list[float], mean_sparsity: float, epsilon: float, highest: float
) -> list[float]:
    """φ = L·φ_avg·softmax(−s/ε), clipped at ``highest`` with the excess shared among the
    unclipped layers in proportion to their softmax weights."""
    if mean_sparsity > highest:
        raise SpecError(f"modegpt:{mean_sparsity} exceeds max_sparsity={highest}")
    # a handful of numbers per layer, worked out in host memory and returned as floats
    scores = torch.tensor(influence, dtype=torch.float64, device="cpu")
    weights = torch.softmax(-scores / epsilon, dim=0)
    sparsity = len(influence) * mean_sparsity * weights
    clipped = torch.zeros(len(influence), dtype=torch.bool, device="cpu")
    while (sparsity > highest + 1e-12).any():
        clipped |= sparsity > highest
        excess = (sparsity[clipped] - highest).sum()
        sparsity[clipped] = highest
        free = ~clipped
        sparsity[free] += excess * weights[free] / weights[free].sum()
    return sparsity.tolist()


# ------------------------------------------------------------------------- the new attention


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class DecomposedAttention(nn.Module):
    """LLaMA attention whose query/key heads keep ``rope_dims`` of the original head
    dimensions (one row per key head) and whose value/output heads have ``vo_dim``.

    The score keeps the original 1/√d_h scaling: the compressed q·k approximates the full one.
    """

    def __init__(self, attention: nn.Module, linears: dict[str, nn.Linear], rope_dims, vo_dim):
        super().__init__()
        self.config, self.layer_idx = attention.config, attention.layer_idx
        self.num_key_value_groups = attention.num_key_value_groups
        self.scaling, self.attention_dropout = attention.scaling, attention.attention_dropout
        self.is_causal = True
        self.q_proj, self.k_proj = linears["q_proj"], linears["k_proj"]
        self.v_proj, self.o_proj = linears["v_proj"], linears["o_proj"]
        self.qk_dim, self.vo_dim = rope_dims.shape[1], vo_dim
        self.register_buffer("rope_dims", rope_dims)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        from transformers.models.llama.modeling_llama import (
            ALL_ATTENTION_FUNCTIONS,
            eager_attention_forward,
        )

        shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*shape, -1, self.qk_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(*shape, -1, self.qk_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(*shape, -1, self.vo_dim).transpose(1, 2)
        cos, sin = (table[..., self.rope_dims].transpose(1, 2) for table in position_embeddings)
        key = key * cos + _rotate_half(key) * sin
        groups = self.num_key_value_groups
        cos, sin = cos.repeat_interleave(groups, 1), sin.repeat_interleave(groups, 1)
        query = query * cos + _rotate_half(query) * sin
        cache = kwargs.pop("cache", None) or kwargs.pop("past_key_values", None)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        dropout = self.attention_dropout if self.training else 0.0
        output, weights = attend(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(output.reshape(*shape, -1).contiguous()), weights


# ---------------------------------------------------------------------------- one block


class ModuleStats:
    """A linear's statistics for its role (ROLES): input Gram Σ xᵀx and/or Σ y² per output
    channel, float32 products accumulated in float64, on the weights' device, where the
    activations are."""

    def __init__(self, name: str, linear: nn.Linear):
        gram, energy = ROLES.get(name, (False, False))
        n, m = linear.in_features, linear.out_features
        like = {"dtype": torch.float64, "device": linear.weight.device}
        self.gram = torch.zeros(n, n, **like) if gram else None
        self.energy = torch.zeros(m, **like) if energy else None

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        if self.gram is not None:
            X = inp.reshape(-1, inp.shape[-1]).float()
            self.gram += (X.T @ X).double()
        if self.energy is not None:
            self.energy += out.reshape(-1, out.shape[-1]).float().square().sum(0).double()


def _linear(weight: torch.Tensor, like: nn.Linear) -> nn.Linear:
    out_features, in_features = weight.shape
    linear = nn.Linear(
        in_features, out_features, bias=False, device=like.weight.device, dtype=like.weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


def widths(block: nn.Module, keep: float) -> dict[str, int]:
    """Kept MLP channels, RoPE pairs per query-key head and value-output head dimensions."""
    attention, head_dim = block.self_attn, block.self_attn.head_dim
    return {
        "mlp": max(1, round(keep * block.mlp.gate_proj.out_features)),
        "qk_pairs": max(1, round(keep * head_dim / 2)),
        "vo": max(1, round(keep * head_dim)),
        "heads": attention.q_proj.out_features // head_dim,
        "kv_heads": attention.k_proj.out_features // head_dim,
        "head_dim": head_dim,
    }


def compress_mlp(block: nn.Module, stats: dict, width: int, ridge: float) -> None:
    mlp = block.mlp
    gate, up, down = nystrom_mlp(
        mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
        stats["mlp.down_proj"].gram, width, ridge,
    )  # fmt: skip
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = (
        _linear(gate, mlp.gate_proj), _linear(up, mlp.up_proj), _linear(down, mlp.down_proj)
    )  # fmt: skip


def compress_attention(block: nn.Module, stats: dict, width: dict) -> None:
    attention = block.self_attn
    head_dim, groups = attention.head_dim, width["heads"] // width["kv_heads"]
    query_energy = stats["self_attn.q_proj"].energy.view(width["heads"], head_dim)
    key_energy = stats["self_attn.k_proj"].energy.view(width["kv_heads"], head_dim)
    C = stats["self_attn.q_proj"].gram
    W_q = attention.q_proj.weight.view(width["heads"], head_dim, -1)
    W_k = attention.k_proj.weight.view(width["kv_heads"], head_dim, -1)
    W_v = attention.v_proj.weight.view(width["kv_heads"], head_dim, -1)
    W_o = attention.o_proj.weight.view(-1, width["heads"], head_dim)
    rope, queries, keys, values, outputs = [], [], [], [], []
    for group in range(width["kv_heads"]):
        heads = range(group * groups, (group + 1) * groups)
        dims = rope_dimensions(
            pair_scores(query_energy[heads.start : heads.stop], key_energy[group]),
            width["qk_pairs"],
        )
        rope.append(dims)
        queries += [W_q[head, dims] for head in heads]
        keys.append(W_k[group, dims])
        value, blocks = value_output_svd(W_v[group], [W_o[:, h] for h in heads], C, width["vo"])
        values.append(value)
        outputs += blocks
    linears = {
        "q_proj": _linear(torch.cat(queries), attention.q_proj),
        "k_proj": _linear(torch.cat(keys), attention.k_proj),
        "v_proj": _linear(torch.cat(values), attention.v_proj),
        "o_proj": _linear(torch.cat(outputs, dim=1), attention.o_proj),
    }
    device = attention.q_proj.weight.device
    block.self_attn = DecomposedAttention(
        attention, linears, torch.stack(rope).to(device), width["vo"]
    )


def check_architecture(model: nn.Module) -> None:
    block = decoder_layers(model)[0]
    attention, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    if not all(hasattr(attention, name) for name in names) or not hasattr(mlp, "gate_proj"):
        raise SpecError("modegpt needs LLaMA-style blocks (q/k/v/o_proj, gate/up/down_proj)")
    if any(linear.bias is not None for linear in linear_layers(block).values()):
        raise SpecError("modegpt supports bias-free linears only (LLaMA layout)")


def _storage(index: int, block: nn.Module, width: dict) -> dict[str, TensorStorage]:
    """Every new weight is a plain smaller matrix; the kept RoPE pairs cost an index each."""
    pair_bits = math.ceil(math.log2(width["head_dim"] // 2))
    index_bits = width["kv_heads"] * width["qk_pairs"] * pair_bits
    storage = {weight_name(index, name): TensorStorage() for name in linear_layers(block)}
    storage[weight_name(index, "self_attn.k_proj")] = TensorStorage(extra_bits=index_bits)
    return storage


@register(
    "modegpt",
    family="lowrank",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "epsilon": Option(positive_float, 0.1, "entropy weight ε of the sparsity allocation"),
        "ridge": Option(positive_float, 1e-2, "Nyström ridge λ, relative to mean eigenvalue"),
        "max_sparsity": Option(
            float_in(0, 1, low_open=True, high_open=True),
            0.8,
            "highest sparsity any layer may take",
        ),
    },
)
@torch.no_grad()
def modegpt(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    check_ratio(stage.ratio, "modegpt", highest=settings["max_sparsity"])
    if stage.ratio == 0:
        return {}
    check_architecture(model)
    windows = calibration.windows(settings)
    sparsity = allocate_sparsity(
        block_influence(model, windows), stage.ratio, settings["epsilon"],
        settings["max_sparsity"],
    )  # fmt: skip
    storage, layout = {}, []
    for index, block, inputs in iterate_blocks(model, windows):
        stats = collect_stats(
            block, inputs, lambda site, linear: ModuleStats(site.name, linear), index
        )
        width = widths(block, 1 - sparsity[index])
        compress_mlp(block, stats, width["mlp"], settings["ridge"])
        compress_attention(block, stats, width)
        storage |= _storage(index, block, width)
        layout.append({"sparsity": sparsity[index], **width})
    model.config.modegpt_layout = layout
    return storage
