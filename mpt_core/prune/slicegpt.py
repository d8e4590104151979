"""SliceGPT: delete rows and columns by computational invariance (Ashkboos et al., ICLR 2024,
arXiv:2401.15024).

RMSNorm(x) only divides x by its norm, and ‖Qx‖ = ‖x‖ for an orthogonal Q, so once
each norm's scale is folded into the linears that read it, the residual stream can
be expressed in any orthonormal basis without changing the network's function
(the paper's Theorem 1). SliceGPT picks, at every point of the stream, the PCA basis
of the calibration signal there (eigenvectors of Σ XᵀX, largest first), rotates the
weights into it and deletes the trailing R fraction of directions: embeddings keep
their first d' columns, every linear that reads the stream keeps d' input columns and
every linear that writes it keeps d' output rows. The model really becomes narrower.

Because each block has its own basis, the residual connection carries a shortcut
matrix Q_iᵀ Q_{i+1} (sliced), as the authors' ``CompressedLlamaDecoderLayer``. As
their ``rotate_and_slice_sequential``: the basis between attention and MLP comes
from the signal entering the MLP norm, PCA with a damping of 1% of the mean
eigenvalue, d' = ⌊(1 − R)·d⌋ rounded down to a multiple of ``round`` (8), the tied
LM head is untied and keeps its full width (their default: the head is not sliced,
so the last block writes the full d), and the norms become scale-free RMSNorms that
still divide by the original d. One deliberate difference: their ``fuse_modules``
subtracts the mean from the embeddings for every model, which for an RMSNorm model
(LLaMA) changes its function; we follow the paper, whose invariance needs no mean
subtraction there.

``R`` is the fraction of the embedding dimension removed (the paper's "slicing"); the
parameter saving is smaller than R because the shortcut matrices and the untied head
are stored too, as in the paper's own parameter counts.

Keeps its own block loop: each block is rotated into its own PCA basis, the next reads it.
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import (
    LayerInputs,
    capture_layer0_inputs,
    decoder_layers,
    module_name,
    run_block,
)
from mpt_core.engine.modules import forward_hooks
from mpt_core.errors import SpecError
from mpt_core.registry import Option, positive_int, register
from mpt_core.storage import TensorStorage

PCA_DAMPING = 0.01


class RMSN(nn.Module):
    """RMSNorm without its scale (folded into the next linears), dividing by the original
    width ``mean_dim``, so that a sliced stream is normalized as the full one was."""

    def __init__(self, mean_dim: int, eps: float):
        super().__init__()
        self.mean_dim, self.eps = mean_dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        variance = x.pow(2).sum(-1, keepdim=True) / self.mean_dim
        return (x * torch.rsqrt(variance + self.eps)).to(dtype)


class SlicedDecoderLayer(nn.Module):
    """A LLaMA block whose residual connections go through shortcut matrices.

    ``attn_shortcut`` maps the block's input basis to the basis between attention and
    MLP, ``mlp_shortcut`` that one to the next block's; each is a bias-free Linear.
    Built from a folded block they are identities: the block computes what it did.
    """

    def __init__(self, block: nn.Module, width: int, eps: float):
        super().__init__()
        like = block.self_attn.q_proj.weight
        self.self_attn, self.mlp = block.self_attn, block.mlp
        self.input_layernorm = RMSN(width, eps)
        self.post_attention_layernorm = RMSN(width, eps)
        self.attn_shortcut = _matrix_linear(_identity(width, like), like)
        self.mlp_shortcut = _matrix_linear(_identity(width, like), like)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        hidden_states = self.attn_shortcut(hidden_states) + attended
        return self.mlp_shortcut(hidden_states) + self.mlp(
            self.post_attention_layernorm(hidden_states)
        )


def _identity(width: int, like: torch.Tensor) -> torch.Tensor:
    """The float64 identity on the device of ``like`` (the weights'), as the rotations are."""
    return torch.eye(width, dtype=torch.float64, device=like.device)


def _matrix_linear(M: torch.Tensor, like: torch.Tensor) -> nn.Linear:
    """A bias-free Linear computing x @ M (weight Mᵀ), in the dtype/device of ``like``."""
    linear = nn.Linear(M.shape[0], M.shape[1], bias=False, device=like.device, dtype=like.dtype)
    linear.weight = nn.Parameter(M.T.to(like.device, like.dtype).contiguous())
    return linear


def sliced_dimension(hidden_size: int, ratio: float, multiple: int) -> int:
    """d' = ⌊(1 − R)·d⌋ rounded down to a multiple of ``multiple`` (the authors' rule)."""
    dimension = int((1 - ratio) * hidden_size)
    dimension -= dimension % multiple
    if dimension < 1:
        raise SpecError(
            f"slicegpt:{ratio} leaves no dimension of {hidden_size} (rounded to multiples of "
            f"{multiple}); use a smaller ratio or round=1"
        )
    return dimension


@torch.no_grad()
def principal_directions(X: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of Σ XᵀX (damped by 1% of its mean diagonal), largest eigenvalue first,
    on the device of ``X``; in float64, as the authors' ``pca_calc``."""
    flat = X.reshape(-1, X.shape[-1])
    H = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64, device=flat.device)
    for chunk in flat.split(4096):
        chunk = chunk.double()
        H += chunk.T @ chunk
    H.diagonal().add_(PCA_DAMPING * H.diagonal().mean())
    eigenvalues, eigenvectors = torch.linalg.eigh(H)
    return eigenvectors[:, eigenvalues.argsort(descending=True)]


def _set_weight(linear: nn.Linear, W: torch.Tensor) -> None:
    """Replace a Linear's weight (computed in float64) and keep its shape fields true."""
    old = linear.weight
    linear.weight = nn.Parameter(W.to(old.device, old.dtype).contiguous())
    linear.out_features, linear.in_features = W.shape


def rotate_inputs(linear: nn.Linear, Q: torch.Tensor, dimension: int) -> None:
    """A linear reading the stream: W ← (W Q)[:, :d']."""
    _set_weight(linear, (linear.weight.double() @ Q.to(linear.weight.device))[:, :dimension])


def rotate_outputs(linear: nn.Linear, Q: torch.Tensor, dimension: int) -> None:
    """A linear writing the stream: W ← (Qᵀ W)[:d'], and its bias likewise."""
    Q = Q.to(linear.weight.device)
    _set_weight(linear, (Q.T @ linear.weight.double())[:dimension])
    if linear.bias is not None:
        bias = (Q.T @ linear.bias.double())[:dimension]
        linear.bias = nn.Parameter(bias.to(linear.weight.dtype))


def fold_norms(model: nn.Module) -> None:
    """Fold every RMSNorm scale into the linears after it; blocks become SlicedDecoderLayers.

    The LM head is untied from the embeddings first: the two get different bases.
    """
    config, width = model.config, model.config.hidden_size
    layers = decoder_layers(model)
    for index, block in enumerate(layers):
        attention, mlp = block.self_attn, block.mlp
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
            _set_weight(linear, linear.weight.double() * block.input_layernorm.weight.double())
        for linear in (mlp.gate_proj, mlp.up_proj):
            _set_weight(
                linear, linear.weight.double() * block.post_attention_layernorm.weight.double()
            )
        sliced = SlicedDecoderLayer(block, width, config.rms_norm_eps)
        layers[index] = sliced.to(block.self_attn.q_proj.weight.device)
    head = model.lm_head
    head.weight = nn.Parameter(head.weight.detach().clone())
    _set_weight(head, head.weight.double() * model.model.norm.weight.double())
    model.model.norm = RMSN(width, config.rms_norm_eps)
    config.tie_word_embeddings = False


@torch.no_grad()
def mlp_norm_inputs(block: SlicedDecoderLayer, inputs: LayerInputs) -> torch.Tensor:
    """What the block's MLP norm receives: the stream between attention and MLP."""
    caught = []
    norm = {"post_attention_layernorm": block.post_attention_layernorm}
    with forward_hooks(norm, lambda _name: lambda _module, args, _out: caught.append(args[0])):
        run_block(block, inputs)
    return torch.cat(caught)


def _in_basis(X: torch.Tensor, Q: torch.Tensor, dimension: int) -> torch.Tensor:
    """The signal X (original basis) as the sliced model carries it: (X Q)[..., :d']."""
    return (X.double() @ Q[:, :dimension].to(X.device)).to(X.dtype)


@torch.no_grad()
def rotate_and_slice_block(
    block: SlicedDecoderLayer, Q: torch.Tensor, inputs: LayerInputs, dimension: int, out_dim: int
) -> tuple[LayerInputs, torch.Tensor]:
    """Rotate/slice one block whose input basis is Q; return its outputs (original basis,
    full width) and the PCA basis Q of those outputs, which the next block reads."""
    attention, mlp = block.self_attn, block.mlp
    like, width = attention.q_proj.weight, Q.shape[0]
    for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
        rotate_inputs(linear, Q, dimension)
    # until o_proj and the MLP are rotated, the rest of the block works in the original
    # basis: the attention shortcut maps back with Qᵀ, the MLP shortcut is the identity
    block.attn_shortcut = _matrix_linear(Q.T[:dimension], like)
    block.mlp_shortcut = _matrix_linear(_identity(width, like), like)
    sliced = LayerInputs(_in_basis(inputs.hidden, Q, dimension), inputs.kwargs)
    Q_mid = principal_directions(mlp_norm_inputs(block, sliced))

    block.attn_shortcut = _matrix_linear(Q.T[:dimension] @ Q_mid[:, :dimension], like)
    rotate_outputs(attention.o_proj, Q_mid, dimension)
    block.mlp_shortcut = _matrix_linear(Q_mid.T[:dimension], like)
    for linear in (mlp.gate_proj, mlp.up_proj):
        rotate_inputs(linear, Q_mid, dimension)
    outputs = run_block(block, sliced)

    Q_out = principal_directions(outputs)
    block.mlp_shortcut = _matrix_linear(Q_mid.T[:dimension] @ Q_out[:, :out_dim], like)
    rotate_outputs(mlp.down_proj, Q_out, out_dim)
    return LayerInputs(outputs, inputs.kwargs), Q_out


@torch.no_grad()
def rotate_and_slice(model: nn.Module, windows: torch.Tensor, dimension: int) -> None:
    """SliceGPT on a model whose norms are folded: embeddings, every block, the head."""
    width = model.config.hidden_size
    inputs = capture_layer0_inputs(model, windows)
    Q = principal_directions(inputs.hidden)
    embed = model.model.embed_tokens
    embed.weight = nn.Parameter(
        (embed.weight.double() @ Q.to(embed.weight.device))[:, :dimension].to(embed.weight.dtype)
    )
    embed.embedding_dim = dimension
    layers = decoder_layers(model)
    for index, block in enumerate(layers):
        out_dim = width if index == len(layers) - 1 else dimension
        inputs, Q = rotate_and_slice_block(block, Q, inputs, dimension, out_dim)
    head = model.lm_head
    _set_weight(head, head.weight.double() @ Q.to(head.weight.device))


@register(
    "slicegpt",
    family="structured",
    levels={"ratio"},
    needs_calibration=True,
    options={"round": Option(positive_int, 8, "d' rounded down to a multiple of this")},
)
def slicegpt(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    dimension = sliced_dimension(model.config.hidden_size, stage.ratio, settings["round"])
    fold_norms(model)
    rotate_and_slice(model, calibration.windows(settings), dimension)
    model.config.sliced_hidden_size = dimension
    storage = {
        module_name(index, name): TensorStorage()
        for index, block in enumerate(decoder_layers(model))
        for name, _ in block.named_parameters()
    }
    return storage | {
        "model.embed_tokens.weight": TensorStorage(),
        "lm_head.weight": TensorStorage(),
    }
