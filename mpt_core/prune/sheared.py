"""Sheared LLaMA: targeted structured pruning (Xia et al., ICLR 2024, arXiv:2310.06694).

The model is pruned to a *target shape*: whole layers, attention heads, MLP intermediate
channels and dimensions of the hidden stream are each gated by a hard-concrete mask
z ∈ [0, 1] (L0 regularisation, Louizos et al., ICLR 2018). The masks' log α are learned
jointly with the model's weights on the language-modelling loss plus a Lagrangian term
per mask type, λ1 (ŝ − t) + λ2 (ŝ − t)², where ŝ is the expected sparsity of that type
(1 − E[number of units with z > 0] / units) and t the target's sparsity, ramped up from
0; the masks minimize it while the multipliers maximize it, so the expected architecture
is driven to the target. At the end the masks become deterministic (per layer, the
target's number of units with the largest log α stay, each scaled by
sigmoid(0.8 · log α / β)), those scales are folded into the weights, and the model is
physically cut to the target shape: a smaller LLaMA, described exactly by its config.

As the authors' ``llmshearing`` (princeton-nlp/LLM-Shearing: ``models/l0_module.py``,
``models/composer_llama.py``, ``scripts/pruning.sh``): masks over [layer, head,
intermediate, hidden]; β = 2/3, stretch (−0.1, 1.1), log α initialised at N(5, 0.01) and
clamped to [ln 0.01, ln 100] before every use; masks per row (layer) for heads and
intermediate channels, one row for layers and hidden dimensions; the attention output
of each head is gated before o_proj, the MLP's intermediate activations before
down_proj, both block outputs by the layer's z and every write to the stream by the
hidden z; the RMSNorms average only over hidden dimensions whose sampled z is non-zero,
as the pruned model's norms will; AdamW (β = 0.9, 0.95, no weight decay) with learning
rate 1e-4 for the weights and 1.0 for the masks and, ascending, the multipliers;
learning-rate warm-up over 10% of the steps then cosine decay to 10%, the target ramp
over 20%, gradient norm clipped to 1; the deterministic masks keep exactly the target
shape and are folded into v_proj (heads), up_proj (intermediate), o_proj/down_proj
(layer, hidden) and the embeddings and norms (hidden).

Where we differ, and why:
- The budget: the paper prunes for 3,200 steps of 32 × 4,096 tokens of RedPajama; here
  ``steps`` steps (default 100) of ``batch`` calibration windows (PTB validation by
  default). A step of one 512-token window on SmolLM2-135M costs about 7 s on one
  thread (forward and backward through every weight), so a CPU budget is a few hundred
  steps at most. The masks may not have converged; the final cut still yields the
  exact target shape.
- Continued pre-training (the paper's second stage: 48,000 steps of 1M tokens, 50B
  tokens of RedPajama) runs for ``recover_steps`` steps (default 0: none) of ``batch``
  windows of the same calibration text, with the reference's optimizer and schedule.
- Grouped-query attention: the reference handles multi-head attention only; here the
  head mask is over key/value groups (a key/value head with its query heads), which is
  the reference's head mask when each group has one query head.
- The reference folds the hidden z into the final norm *and* the LM head, applying it
  twice (a bug its code acknowledges); here it is applied once, so the pruned model
  computes what the masked one did (tested).

The target shape is derived from ``R``, the fraction of the decoder blocks' linear
parameters removed (the reference's prunable size, embeddings excluded): the layer
count stays (option ``layers`` to change it), the hidden size and the key/value heads
shrink by the same factor √((1 − R)·L/L') (the paper's targets scale all widths
alike), and the intermediate size takes up what is left, so the target's parameter
count is (1 − R) of the base's to within one intermediate channel per layer.

Keeps its own block loops: all blocks' gates train with the whole model, then each is cut.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.engine.training import batches, in_fp32, training_only
from mpt_core.errors import SpecError
from mpt_core.prune.blocks import remove_blocks
from mpt_core.registry import Option, nonnegative_int, positive_int, register
from mpt_core.storage import TensorStorage

STRETCH = (-0.1, 1.1)  # (γ, ζ): the hard concrete's stretch interval
TEMPERATURE = 2 / 3  # β
EPSILON = 1e-6
LOG_ALPHA_INIT, LOG_ALPHA_INIT_STD = 5.0, 1e-2
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))
DETERMINISTIC_SHARPNESS = 0.8  # the reference's "magical number"
WEIGHT_LR, MASK_LR = 1e-4, 1.0
BETAS = (0.9, 0.95)
LR_WARMUP, TARGET_WARMUP, LR_FLOOR = 0.1, 0.2, 0.1
RECOVERY_WARMUP = 0.03  # continue_pretrain.sh: 1,440 of 48,000 batches
CLIP_NORM = 1.0
MASK_TYPES = ("layer", "head", "intermediate", "hidden")


class HardConcrete(nn.Module):
    """Hard-concrete gates for rows of ``size`` units, of which ``target`` should stay, with
    log α on ``device``. Its random numbers (log α's initialisation, the noise u of every
    sample) come from ``generator`` where it draws, the host, and then move to ``device``:
    a seed gives the same gates on every device."""

    def __init__(
        self,
        shape: tuple[int, ...],
        target: int,
        generator: torch.Generator,
        device: torch.device | str,
    ):
        super().__init__()
        noise = torch.randn(shape, generator=generator, device=generator.device)
        init = LOG_ALPHA_INIT + LOG_ALPHA_INIT_STD * noise
        self.log_alpha = nn.Parameter(init.to(device))
        self.size, self.target = shape[-1], target

    def constrain(self) -> None:
        with torch.no_grad():
            self.log_alpha.clamp_(*LOG_ALPHA_RANGE)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """z = min(1, max(0, sigmoid((logit u + log α)/β)·(ζ − γ) + γ)), u ~ U(ε, 1 − ε)."""
        u = torch.rand(self.log_alpha.shape, generator=generator, device=generator.device)
        u = u.clamp(EPSILON, 1 - EPSILON).to(self.log_alpha.device)
        s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / TEMPERATURE)
        low, high = STRETCH
        return (s * (high - low) + low).clamp(0, 1)

    def probability_zero(self) -> torch.Tensor:
        """P(z = 0) = sigmoid(β·log(−γ/ζ) − log α), kept inside (ε, 1 − ε) as the reference."""
        low, high = STRETCH
        return torch.sigmoid(TEMPERATURE * math.log(-low / high) - self.log_alpha).clamp(
            EPSILON, 1 - EPSILON
        )

    def expected_score(self) -> torch.Tensor:
        """P(z > 0) per unit: its expected L0 norm."""
        return 1 - self.probability_zero()

    def expected_sparsity(self) -> torch.Tensor:
        """Per row, the expected fraction of units whose gate is zero."""
        return 1 - self.expected_score().sum(-1) / self.size

    @torch.no_grad()
    def deterministic(self) -> torch.Tensor:
        """Per row the ``target`` units of largest log α, each at sigmoid(0.8·log α/β); others 0."""
        soft = torch.sigmoid(self.log_alpha / TEMPERATURE * DETERMINISTIC_SHARPNESS)
        rows = soft.reshape(-1, self.size)
        dropped = rows.topk(self.size - self.target, dim=-1, largest=False).indices
        return rows.scatter(-1, dropped, 0.0).reshape(soft.shape)


@dataclass(frozen=True)
class Shape:
    """A LLaMA's prunable shape: what the four mask types cut."""

    layers: int
    hidden: int
    kv_heads: int
    intermediate: int
    group: int  # query heads per key/value head
    head_dim: int

    def block_parameters(self) -> int:
        """Linear weights of all blocks: q, k, v, o and the three MLP matrices."""
        attention = self.hidden * self.head_dim * (2 * self.group + 2) * self.kv_heads
        return self.layers * (attention + 3 * self.hidden * self.intermediate)


def model_shape(model: nn.Module) -> Shape:
    config, attention = model.config, decoder_layers(model)[0].self_attn
    return Shape(
        layers=len(decoder_layers(model)),
        hidden=config.hidden_size,
        kv_heads=config.num_key_value_heads,
        intermediate=config.intermediate_size,
        group=attention.num_key_value_groups,
        head_dim=attention.head_dim,
    )


def target_shape(base: Shape, ratio: float, layers: int | None = None) -> Shape:
    """The shape keeping (1 − ratio) of the block parameters: widths scaled alike, the
    intermediate size solved for the rest."""
    layers = layers or base.layers
    kept = (1 - ratio) * base.block_parameters()
    scale = math.sqrt(kept / (base.block_parameters() * layers / base.layers))
    hidden = min(base.hidden, max(1, round(scale * base.hidden)))
    kv_heads = min(base.kv_heads, max(1, round(scale * base.kv_heads)))
    attention = hidden * base.head_dim * (2 * base.group + 2) * kv_heads
    intermediate = round((kept / layers - attention) / (3 * hidden))
    if layers > base.layers or not 1 <= intermediate <= base.intermediate:
        raise SpecError(
            f"sheared:{ratio} with {layers} of {base.layers} layers has no target shape "
            f"(intermediate size {intermediate} of {base.intermediate}); choose layers so "
            "that the ratio removes width, not more than it has"
        )
    return replace(base, layers=layers, hidden=hidden, kv_heads=kv_heads, intermediate=intermediate)


class ShearingMasks(nn.Module):
    """The four mask types of a base shape toward a target, with their Lagrange multipliers,
    on ``device`` (the model's)."""

    def __init__(
        self, base: Shape, target: Shape, generator: torch.Generator, device: torch.device | str
    ):
        super().__init__()
        shapes = {
            "layer": ((base.layers,), target.layers),
            "head": ((base.layers, base.kv_heads), target.kv_heads),
            "intermediate": ((base.layers, base.intermediate), target.intermediate),
            "hidden": ((base.hidden,), target.hidden),
        }
        self.masks = nn.ModuleDict(
            {
                name: HardConcrete(shape, kept, generator, device)
                for name, (shape, kept) in shapes.items()
            }
        )
        self.lambdas = nn.ParameterDict(
            {
                f"{name}_{i}": nn.Parameter(torch.zeros((), device=device))
                for name in MASK_TYPES
                for i in (1, 2)
            }
        )
        self.base, self.target = base, target

    def constrain(self) -> None:
        for mask in self.masks.values():
            mask.constrain()

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {name: mask.sample(generator) for name, mask in self.masks.items()}

    def deterministic(self) -> dict[str, torch.Tensor]:
        return {name: mask.deterministic() for name, mask in self.masks.items()}

    def target_sparsity(self, name: str, progress: float) -> float:
        """The target's sparsity of a mask type, ramped linearly from 0 over the warm-up."""
        mask = self.masks[name]
        return (1 - mask.target / mask.size) * min(1.0, progress / TARGET_WARMUP)

    def lagrangian(self, progress: float) -> torch.Tensor:
        """Σ over mask types of mean over rows of λ1 (ŝ − t) + λ2 (ŝ − t)²."""
        loss = 0
        for name, mask in self.masks.items():
            gap = mask.expected_sparsity() - self.target_sparsity(name, progress)
            term = self.lambdas[f"{name}_1"] * gap + self.lambdas[f"{name}_2"] * gap**2
            loss = loss + term.mean()
        return loss

    def expected_block_parameters(self) -> torch.Tensor:
        """E[block parameters] under the masks (the reference's expected model size)."""
        score = {name: mask.expected_score() for name, mask in self.masks.items()}
        base = self.base
        per_group = base.head_dim * (2 * base.group + 2)
        heads = (score["layer"][:, None] * score["head"]).sum() * per_group
        channels = (score["layer"][:, None] * score["intermediate"]).sum() * 3
        return score["hidden"].sum() * (heads + channels)


class MaskedRMSNorm(nn.Module):
    """An RMSNorm that averages only over hidden dimensions whose gate is non-zero (as the
    pruned norm will) and gates its output."""

    def __init__(self, norm: nn.Module, gates: dict):
        super().__init__()
        self.norm, self.gates = norm, gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gates["hidden"]
        kept = x.index_select(-1, (z != 0).nonzero().squeeze(-1))
        variance = kept.float().pow(2).mean(-1, keepdim=True)
        normed = (x.float() * torch.rsqrt(variance + self.norm.variance_epsilon)).to(x.dtype)
        return self.norm.weight * normed * z.to(x.dtype)


def _scale_output(gates: dict, index: int):
    def hook(_module, _args, out):
        return out * (gates["layer"][index] * gates["hidden"]).to(out.dtype)

    return hook


def _gate_heads(gates: dict, index: int, channels: int):
    def hook(_module, args):
        z = gates["head"][index].repeat_interleave(channels)
        return (args[0] * z.to(args[0].dtype),)

    return hook


def _gate_channels(gates: dict, index: int):
    def hook(_module, args):
        return (args[0] * gates["intermediate"][index].to(args[0].dtype),)

    return hook


@contextlib.contextmanager
def masked(model: nn.Module, gates: dict):
    """Run ``model`` with the gates in ``gates`` (read at every forward, so the caller may
    replace them between steps); everything is put back on exit."""
    handles, norms = [], []
    embed = model.model.embed_tokens
    handles.append(
        embed.register_forward_hook(lambda _m, _a, out: out * gates["hidden"].to(out.dtype))
    )
    for index, block in enumerate(decoder_layers(model)):
        attention, mlp = block.self_attn, block.mlp
        channels = attention.num_key_value_groups * attention.head_dim
        handles += [
            attention.o_proj.register_forward_pre_hook(_gate_heads(gates, index, channels)),
            attention.o_proj.register_forward_hook(_scale_output(gates, index)),
            mlp.down_proj.register_forward_pre_hook(_gate_channels(gates, index)),
            mlp.down_proj.register_forward_hook(_scale_output(gates, index)),
        ]
        norms += [(block, "input_layernorm"), (block, "post_attention_layernorm")]
    norms.append((model.model, "norm"))
    originals = [getattr(owner, name) for owner, name in norms]
    for (owner, name), norm in zip(norms, originals):
        setattr(owner, name, MaskedRMSNorm(norm, gates))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for (owner, name), norm in zip(norms, originals):
            setattr(owner, name, norm)


def lr_factor(step: int, steps: int, warmup_fraction: float = LR_WARMUP) -> float:
    """Linear warm-up over a fraction of the steps (10% when pruning), then cosine decay
    to 10% (composer's cosine_with_warmup with alpha_f = 0.1, as the reference's runs)."""
    warmup = max(1, round(warmup_fraction * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: nn.Module, masks: ShearingMasks) -> torch.optim.Optimizer:
    groups = [
        {"params": list(model.parameters()), "lr": WEIGHT_LR},
        {"params": [m.log_alpha for m in masks.masks.values()], "lr": MASK_LR},
        {"params": list(masks.lambdas.values()), "lr": MASK_LR},
    ]
    return torch.optim.AdamW(groups, betas=BETAS, eps=1e-8, weight_decay=0.0, foreach=True)


def language_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def window_batches(windows: torch.Tensor, steps: int, batch: int, generator: torch.Generator):
    """``steps`` batches of ``batch`` windows, cycling through one shuffled order."""
    order = torch.randperm(len(windows), generator=generator, device=generator.device)
    shuffled = windows[order.to(windows.device)]
    for step in range(steps):
        yield batches(shuffled, batch, step)


def train_masks(
    model: nn.Module, masks: ShearingMasks, windows: torch.Tensor, steps: int, batch: int, seed: int
) -> None:
    """Jointly learn weights and masks: LM loss + Lagrangian, multipliers by ascent."""
    generator = torch.Generator(device="cpu").manual_seed(seed)  # host draws: see HardConcrete
    device = next(model.parameters()).device
    gates: dict = {}
    with training_only(model, list(model.parameters())), masked(model, gates):
        optimizer = _optimizer(model, masks)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps))
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
        batches = window_batches(windows, steps, batch, generator)
        for step, ids in enumerate(batches):
            masks.constrain()
            gates.update(masks.sample(generator))
            loss = language_loss(model, ids.to(device))
            loss = loss + masks.lagrangian(step / steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for multiplier in masks.lambdas.values():
                multiplier.grad.neg_()  # the multipliers ascend: a min-max game
            torch.nn.utils.clip_grad_norm_(trainable, CLIP_NORM)
            optimizer.step()
            schedule.step()
        optimizer.zero_grad(set_to_none=True)
    masks.constrain()


def continue_pretraining(
    model: nn.Module, windows: torch.Tensor, steps: int, batch: int, seed: int
):
    """The paper's second stage, on the cut model: every weight trains on the LM loss with
    AdamW (β = 0.9, 0.95, lr 1e-4, no weight decay), warm-up over 3% of the steps then
    cosine decay to 10%, gradient norm clipped to 1 (the reference's continue_pretrain.sh).
    Its dynamic batch loading reweights data domains by their loss above a scaling-law
    target; calibration text is one domain, so there is nothing to reweight here."""
    # a fresh order, not the pruning's; drawn on the host, as the pruning's
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    device = next(model.parameters()).device
    weights = list(model.parameters())
    with training_only(model, weights):
        optimizer = torch.optim.AdamW(
            weights, lr=WEIGHT_LR, betas=BETAS, eps=1e-8, weight_decay=0.0, foreach=True
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, steps, RECOVERY_WARMUP)
        )
        for ids in window_batches(windows, steps, batch, generator):
            loss = language_loss(model, ids.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(weights, CLIP_NORM)
            optimizer.step()
            schedule.step()
        optimizer.zero_grad(set_to_none=True)


def _keep(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None):
    """Keep the given output rows / input columns of a bias-free linear."""
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[rows.to(weight.device)]
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    linear.weight = nn.Parameter(weight.clone())
    linear.out_features, linear.in_features = weight.shape


def _scale_rows(linear: nn.Linear, z: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.mul_(z.to(linear.weight)[:, None])


def _hidden(norm: nn.Module, z: torch.Tensor | None, kept: torch.Tensor) -> None:
    """Cut an RMSNorm to the kept hidden dimensions, folding the gate in when given."""
    weight = norm.weight.detach()
    weight = weight * z.to(weight) if z is not None else weight
    norm.weight = nn.Parameter(weight[kept.to(weight.device)].clone())


def prune_block(block: nn.Module, gates: dict, index: int, kept_hidden: torch.Tensor) -> None:
    """Fold the block's deterministic gates into its weights and cut what they zeroed."""
    attention, mlp = block.self_attn, block.mlp
    hd, group = attention.head_dim, attention.num_key_value_groups
    heads, channels = gates["head"][index], gates["intermediate"][index]
    outputs = gates["layer"][index] * gates["hidden"]
    _scale_rows(attention.v_proj, heads.repeat_interleave(hd))
    _scale_rows(mlp.up_proj, channels)
    _scale_rows(attention.o_proj, outputs)
    _scale_rows(mlp.down_proj, outputs)

    q_rows = (heads != 0).repeat_interleave(group * hd)
    kv_rows = (heads != 0).repeat_interleave(hd)
    kept_channels = channels != 0
    _keep(attention.q_proj, rows=q_rows, cols=kept_hidden)
    _keep(attention.k_proj, rows=kv_rows, cols=kept_hidden)
    _keep(attention.v_proj, rows=kv_rows, cols=kept_hidden)
    _keep(attention.o_proj, rows=kept_hidden, cols=q_rows)
    _keep(mlp.gate_proj, rows=kept_channels, cols=kept_hidden)
    _keep(mlp.up_proj, rows=kept_channels, cols=kept_hidden)
    _keep(mlp.down_proj, rows=kept_hidden, cols=kept_channels)
    _hidden(block.input_layernorm, gates["hidden"], kept_hidden)
    _hidden(block.post_attention_layernorm, gates["hidden"], kept_hidden)
    mlp.hidden_size = block.hidden_size = int(kept_hidden.sum())
    mlp.intermediate_size = int(kept_channels.sum())


def prune_embeddings(model: nn.Module, z: torch.Tensor, kept: torch.Tensor) -> None:
    """Gate and cut the embeddings, the final norm and the LM head to the kept dimensions.

    The masked model gates the embedding output and the final norm's output once each.
    With a tied head the gated embedding matrix already carries z into the logits, so the
    final norm takes no gate then."""
    embed, head = model.model.embed_tokens, model.lm_head
    tied = head.weight is embed.weight
    weight = embed.weight.detach() * z.to(embed.weight)
    embed.weight = nn.Parameter(weight[:, kept.to(weight.device)].clone())
    embed.embedding_dim = embed.weight.shape[1]
    _hidden(model.model.norm, None if tied else z, kept)
    if tied:
        head.weight = embed.weight
        head.in_features = embed.embedding_dim
    else:
        _keep(head, cols=kept)


def prune_to_gates(model: nn.Module, gates: dict, target: Shape) -> None:
    """Make the model the target shape from deterministic gates, and its config say so."""
    kept_hidden = gates["hidden"] != 0
    for index, block in enumerate(decoder_layers(model)):
        prune_block(block, gates, index, kept_hidden)
    prune_embeddings(model, gates["hidden"], kept_hidden)
    remove_blocks(model, (gates["layer"] == 0).nonzero().flatten().tolist())
    config = model.config
    config.head_dim = target.head_dim
    config.hidden_size = target.hidden
    config.num_key_value_heads = target.kv_heads
    config.num_attention_heads = target.kv_heads * target.group
    config.intermediate_size = target.intermediate


@register(
    "sheared",
    family="structured",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "steps": Option(positive_int, 100, "pruning steps (the paper: 3,200 of 128k tokens)"),
        "batch": Option(positive_int, 1, "calibration windows per step"),
        "layers": Option(positive_int, None, "target layer count (default: all stay)"),
        "recover_steps": Option(
            nonnegative_int, 0, "continued pre-training steps after the cut (the paper: 48,000)"
        ),
    },
)
def sheared(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    base = model_shape(model)
    target = target_shape(base, stage.ratio, settings["layers"])
    generator = torch.Generator(device="cpu").manual_seed(settings["seed"])  # see HardConcrete
    masks = ShearingMasks(base, target, generator, next(model.parameters()).device)
    windows = calibration.windows(settings)
    with in_fp32(model):
        train_masks(model, masks, windows, settings["steps"], settings["batch"], settings["seed"])
        prune_to_gates(model, masks.deterministic(), target)
        if settings["recover_steps"]:
            continue_pretraining(
                model, windows, settings["recover_steps"], settings["batch"], settings["seed"]
            )
    return {name: TensorStorage() for name, _ in model.named_parameters()}
