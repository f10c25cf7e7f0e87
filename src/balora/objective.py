"""The training objective: closed-form KL of the last forward pass and the minibatch ELBO.

For a minibatch of b examples out of N training examples (one posterior sample per example):

    loss = (1/b) Σ_i NLL(y_i | x_i, Ω^(i))  +  β_t · (1/N) · (1/b) Σ_i Σ_l KL_l(α_l(x_i))

with β_t = kl_weight · min(1, t / warmup_steps) (β_t = kl_weight without warm-up). The KL is
per input because α depends on x; with ``kl_reduction="element"`` each layer's term is summed
over the r·d_in elements of A, with ``"layer"`` it is one term per layer. Its minimum is not
zero (1 / (2 α_p) per term), so log the NLL and the KL separately.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from balora.inject import get_adapter


def kl_divergence(model: nn.Module) -> Tensor:
    """KL of the last forward pass: per example, summed over layers, averaged over the batch.

    Raises `RuntimeError` when the last forward drew no posterior sample (eval mode outside
    `balora.sampling`). With ``noise="none"`` (plain LoRA) it is zero.
    """
    adapter = get_adapter(model)
    layers = list(adapter.layers.values())
    weight = layers[0].lora_A
    if adapter.config.noise == "none":
        return torch.zeros((), device=weight.device, dtype=weight.dtype)
    kls = [layer.last_kl.mean() for layer in layers if layer.last_kl is not None]
    if not kls:
        raise RuntimeError(
            "no KL was recorded: the last forward pass drew no posterior sample (call "
            "kl_divergence after a forward pass in train mode or inside balora.sampling)"
        )
    return torch.stack(kls).sum()


def kl_weight_at(step: int, kl_weight: float = 1.0, warmup_steps: int = 0) -> float:
    """β at optimisation step `step` (0-based) with a linear warm-up over `warmup_steps`."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return kl_weight
    return kl_weight * min(1.0, step / warmup_steps)


def elbo_loss(
    nll: Tensor,
    model: nn.Module,
    num_train: int,
    kl_weight: float = 1.0,
    *,
    warmup_steps: int = 0,
    step: int | None = None,
) -> Tensor:
    """Negative minibatch ELBO: ``nll + β · kl_divergence(model) / num_train``.

    `nll` is the mean negative log-likelihood over the minibatch (e.g. ``F.cross_entropy``).
    With ``warmup_steps > 0`` pass the current `step`; β then grows linearly from 0 to
    `kl_weight` over the first `warmup_steps` steps.
    """
    if not isinstance(nll, Tensor) or nll.dim() != 0:
        raise ValueError(f"nll must be a scalar tensor (the minibatch mean), got {nll!r:.60}")
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train <= 0:
        raise ValueError(f"num_train must be a positive integer, got {num_train!r}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight!r}")
    if warmup_steps and step is None:
        raise ValueError("warmup_steps > 0 needs the current step")
    beta = kl_weight_at(step or 0, kl_weight, warmup_steps)
    if beta == 0:
        return nll
    return nll + beta * kl_divergence(model).to(nll.dtype) / num_train
