"""balora: Bayesian low-rank adaptation (BaLoRA) for PyTorch models.

The public API, and nothing else::

    config = balora.BaLoRAConfig(r=8, target_modules=["query", "value"])
    model = balora.apply(model, config)              # wrap, freeze the rest
    loss = balora.elbo_loss(nll, model, num_train)   # train
    pred = balora.predict(model, inputs, num_samples=32)
    balora.save(model, "adapter/")
"""

from balora._version import __version__
from balora.config import BaLoRAConfig
from balora.diagnostics import NoiseDiagnostics, noise_diagnostics
from balora.inject import (
    apply,
    disable_adapters,
    last_alpha,
    merge,
    merge_and_unload,
    trainable_parameters,
    unload,
    unmerge,
)
from balora.io import load, save
from balora.layers import BaLoRALayer
from balora.objective import elbo_loss, kl_divergence
from balora.predict import Prediction, predict, sampling

__all__ = [
    "BaLoRAConfig",
    "BaLoRALayer",
    "NoiseDiagnostics",
    "Prediction",
    "__version__",
    "apply",
    "disable_adapters",
    "elbo_loss",
    "kl_divergence",
    "last_alpha",
    "load",
    "merge",
    "merge_and_unload",
    "noise_diagnostics",
    "predict",
    "sampling",
    "save",
    "trainable_parameters",
    "unload",
    "unmerge",
]
