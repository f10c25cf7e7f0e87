"""Prediction: posterior sampling and the one typed result, `Prediction`, for every task.

S posterior samples are drawn by repeating the batch S times along the batch dimension (in
chunks of `chunk_size` samples) and running one forward pass per chunk, so sampling costs the
arithmetic of S LoRA forwards and nothing else. Row ``s * b + i`` of a chunk is sample ``s`` of
example ``i``. The ``backbone`` α is computed once per batch and reused by every sample. With
``cache_prefix=True`` the frozen prefix before the first adapted layer runs once per batch and its
output is repeated for the samples (`balora.prefix`), instead of running S times.

Uncertainty from S samples (METHOD.md):

    classification  p̄ = mean_s p_s;  total = H[p̄];  aleatoric = mean_s H[p_s];
                    epistemic = total − aleatoric (the mutual information)
    regression      mean = mean_s μ_s;  epistemic = var_s μ_s;  aleatoric = mean_s σ²_s
                    (Gaussian heads, ``gaussian=True``: the last output dimension holds
                    (μ, log σ²); otherwise 0);  total = epistemic + aleatoric
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from balora.dataset import Data, Inputs, TaskKind
from balora.inject import backbone_alpha_preactivations, get_adapter, has_adapter
from balora.prefix import record_prefix, replay_prefix

# Default bound on (samples per chunk) x (batch size) rows of one forward pass.
DEFAULT_MAX_ROWS = 1024


@dataclass(frozen=True)
class Prediction:
    """Predictive distribution summary for a batch of b inputs.

    classification: `mean` (b, C) class probabilities; `total`, `aleatoric`, `epistemic` (b,)
    in nats. regression: `mean` (b, ...) predictive mean; `total`, `aleatoric`, `epistemic`
    variances of the same shape. `samples` (S, b, ...) holds the per-sample class probabilities
    or raw regression outputs when ``keep_samples=True``. ``num_samples == 0`` is the posterior
    mean (one deterministic pass, zero epistemic uncertainty).
    """

    task: TaskKind
    mean: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    num_samples: int
    samples: Tensor | None = None

    def __len__(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def cat(cls, parts: Sequence[Prediction]) -> Prediction:
        """Predictions of consecutive batches joined into one (their samples dropped)."""
        if not parts:
            raise ValueError("cat needs at least one prediction")
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(
            task=first.task,
            mean=torch.cat([p.mean for p in parts]),
            total=torch.cat([p.total for p in parts]),
            aleatoric=torch.cat([p.aleatoric for p in parts]),
            epistemic=torch.cat([p.epistemic for p in parts]),
            num_samples=first.num_samples,
        )


@contextmanager
def sampling(model: nn.Module, seed: int | None = None) -> Iterator[nn.Module]:
    """Within the block every forward pass draws a posterior sample (also in eval mode).

    With a `seed`, the noise comes from generators seeded with it (one per device), so the
    result does not depend on the global RNG; without one, from the global RNG.
    """
    state = get_adapter(model).state
    previous = (state.sampling, state.seed)
    state.sampling = True
    state.reseed(seed)
    try:
        yield model
    finally:
        state.sampling = previous[0]
        state.reseed(previous[1])


def _batch_size(inputs: Inputs) -> int:
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0:
            raise ValueError("inputs must have a batch dimension, got a scalar tensor")
        return inputs.shape[0]
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a tensor or a dict of tensors, got {type(inputs)}")
    sizes = {k: v.shape[0] for k, v in inputs.items() if isinstance(v, Tensor) and v.dim() > 0}
    if not sizes:
        raise ValueError("inputs hold no tensor with a batch dimension")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inputs disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def _repeat(inputs: Inputs, times: int) -> Inputs:
    def rep(v: Any) -> Any:
        if isinstance(v, Tensor) and v.dim() > 0:
            return v.repeat(times, *([1] * (v.dim() - 1)))
        return v

    if isinstance(inputs, Tensor):
        return rep(inputs)
    return {k: rep(v) for k, v in inputs.items()}


def model_output(model: nn.Module, inputs: Inputs) -> Tensor:
    """Call the model on a tensor (positional) or a dict (keyword arguments); return the
    output tensor, or its ``.logits``."""
    out = model(inputs) if isinstance(inputs, Tensor) else model(**inputs)
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"the model returned {type(out).__name__}; expected a tensor or an object with .logits"
    )


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)


def summarize(
    outputs: Tensor,
    task: TaskKind,
    num_samples: int,
    *,
    gaussian: bool = False,
    keep_samples: bool = False,
) -> Prediction:
    """Turn raw outputs of S forward passes, (S, b, ...), into a `Prediction`."""
    if task == "classification":
        # at least float32: half-precision logits give poor entropies
        probs = outputs.to(torch.promote_types(outputs.dtype, torch.float32)).softmax(dim=-1)
        mean = probs.mean(0)
        total = _entropy(mean)
        aleatoric = _entropy(probs).mean(0)
        epistemic = (total - aleatoric).clamp_min(0.0)
        samples = probs
    else:
        if gaussian:
            if outputs.shape[-1] != 2:
                raise ValueError(
                    "gaussian=True needs the last output dimension to hold (mean, log-variance), "
                    f"got output shape {tuple(outputs.shape[1:])}"
                )
            mu, var = outputs[..., 0], outputs[..., 1].exp()
            aleatoric = var.mean(0)
        else:
            mu = outputs
            aleatoric = torch.zeros_like(mu[0])
        mean = mu.mean(0)
        epistemic = mu.var(0, correction=0)
        total = epistemic + aleatoric
        samples = outputs
    return Prediction(
        task=task,
        mean=mean,
        total=total,
        aleatoric=aleatoric,
        epistemic=epistemic,
        num_samples=num_samples,
        samples=samples if keep_samples else None,
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    inputs: Inputs,
    num_samples: int = 32,
    task: TaskKind = "classification",
    seed: int | None = None,
    chunk_size: int | None = None,
    keep_samples: bool = False,
    *,
    gaussian: bool = False,
    cache_prefix: bool = False,
    warn_without_adapter: bool = True,
) -> Prediction:
    """Predict with S posterior samples (``num_samples=0``: the posterior mean only).

    `inputs` is a tensor (passed positionally) or a dict of tensors (passed as keyword
    arguments, Hugging Face style); outputs may be tensors or objects with ``.logits``.
    `chunk_size` is the number of samples per forward pass (default: as many as fit in
    1024 rows). The model is put in eval mode for the call and restored afterwards. Works on
    models without adapters too (e.g. full fine-tuning): their samples are identical unless
    the model is stochastic in eval mode. ``cache_prefix=True`` runs the modules that finish
    before the first adapted layer once on the b inputs and repeats their outputs for the
    samples (`balora.prefix`; for models whose rows are independent in eval mode), which pays
    off when the adapters sit in the later layers. A model without adapters gets a warning
    (``warn_without_adapter=False`` silences it, e.g. for a full fine-tuning baseline).
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if gaussian and task != "regression":
        raise ValueError("gaussian=True is for task='regression'")
    b = _batch_size(inputs)
    if b == 0:
        raise ValueError("inputs hold no examples (a batch of size 0)")
    if num_samples > 0 and not has_adapter(model) and warn_without_adapter:
        warnings.warn(
            "the model has no BaLoRA adapters: its posterior samples are all the same unless "
            "it is stochastic in eval mode, so the epistemic uncertainty will be 0 (call "
            "balora.apply and train it, or pass num_samples=0)",
            stacklevel=3,
        )
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if num_samples == 0:
            out = model_output(model, inputs).unsqueeze(0)
            return summarize(out, task, 0, gaussian=gaussian, keep_samples=keep_samples)
        chunk = chunk_size or max(1, min(num_samples, DEFAULT_MAX_ROWS // b))
        with ExitStack() as stack:
            z = None
            prefix = None
            if has_adapter(model) and cache_prefix:
                prefix = record_prefix(model, inputs)  # before sampling: the mean pass
            if has_adapter(model):
                adapter = get_adapter(model)
                stack.enter_context(sampling(model, seed))
                if adapter.config.alpha_source == "backbone" and adapter.config.noise != "none":
                    args, kwargs = ((inputs,), {}) if isinstance(inputs, Tensor) else ((), inputs)
                    z = backbone_alpha_preactivations(model, args, dict(kwargs))
                    stack.enter_context(_fixed_backbone_alpha(adapter.state))
            else:
                stack.enter_context(torch.random.fork_rng(devices=[]))
                if seed is not None:
                    torch.manual_seed(seed)
            outs = []
            for start in range(0, num_samples, chunk):
                n = min(chunk, num_samples - start)
                if z is not None:
                    adapter.state.backbone_z = z.repeat(n, 1, 1)
                with replay_prefix(prefix, n) if prefix is not None else nullcontext():
                    out = model_output(model, _repeat(inputs, n))
                outs.append(out.reshape(n, b, *out.shape[1:]))
        return summarize(
            torch.cat(outs), task, num_samples, gaussian=gaussian, keep_samples=keep_samples
        )
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _fixed_backbone_alpha(state: Any) -> Iterator[None]:
    state.backbone_fixed = True
    try:
        yield
    finally:
        state.backbone_fixed = False
        state.backbone_z = None


class Predictor(Protocol):
    """Anything that predicts a batch with S posterior samples (every method does)."""

    def predict(self, inputs: Inputs, num_samples: int, seed: int | None) -> Prediction: ...


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A distinct, reproducible sampling seed per (run seed, data stream, batch)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def predict_batched(
    predictor: Predictor,
    data: Data,
    num_samples: int,
    *,
    seed: int,
    batch_size: int,
    stream: int = 0,
) -> Prediction:
    """``predictor.predict`` over `data` in batches of `batch_size`, each batch with its own
    seed (`stream_seed`), joined into one `Prediction`."""
    return Prediction.cat(
        [
            predictor.predict(batch.inputs, num_samples, seed=stream_seed(seed, stream, i))
            for i, batch in enumerate(data.batches(batch_size))
        ]
    )
