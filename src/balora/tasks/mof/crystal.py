"""What the CHGNet and CGCNN wrappers share: masks over padded rows, the Gaussian output and
the regressor base class (frozen batch norm, a Hugging Face style config, hidden states for
the ``backbone`` α source)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from balora.layers import BaLoRALayer


@dataclass
class CrystalOutput:
    """`output_hidden_states=True` answer: logits (b, 2) and the crystal feature (b, F) as the
    last hidden state (what the ``backbone`` α source pools)."""

    logits: Tensor
    hidden_states: tuple[Tensor, ...]


def mask_of(counts: Tensor, width: int) -> Tensor:
    """(b,) counts -> (b, width) bool, True on real rows."""
    return torch.arange(width, device=counts.device) < counts[:, None]


def fill_padding(x: Tensor, mask: Tensor) -> Tensor:
    """Set the padded rows of x (b, *positions, d) to the crystal's mean over its real rows
    (mask (b, *positions)), so that a mean over all positions equals the masked mean."""
    b, d = x.shape[0], x.shape[-1]
    m = mask.reshape(b, 1, -1).to(x.dtype)  # (b, 1, L)
    mean = torch.bmm(m, x.reshape(b, -1, d)) / m.sum(-1, keepdim=True).clamp(min=1)  # (b, 1, d)
    return torch.where(mask.unsqueeze(-1), x, mean.view(b, *([1] * (x.dim() - 2)), d))


def padded_linear(layer: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """Apply a linear layer; an adapted one gets the padding filled first (its α pools over
    positions). Plain layers skip the fill: their padded rows are never used."""
    return layer(fill_padding(x, mask)) if isinstance(layer, BaLoRALayer) else layer(x)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(b, L, d) -> (b, d), the mean over real rows."""
    m = mask.unsqueeze(1).to(x.dtype)  # (b, 1, L)
    return torch.bmm(m, x).squeeze(1) / m.sum(-1).clamp(min=1)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """Rows of x (b, L, d) at index (b, K) of each crystal -> (b, K, d)."""
    b, length, d = x.shape
    offsets = torch.arange(b, device=x.device).unsqueeze(1) * length
    rows = x.reshape(b * length, d).index_select(0, (index + offsets).flatten())
    return rows.view(b, index.shape[1], d)


class GaussianOutput(nn.Module):
    """Standardised (z_mean, z_log_var) -> (mean, log σ²) in eV: mean = shift + scale z."""

    def __init__(self, shift: float, scale: float) -> None:
        super().__init__()
        self.shift, self.scale = shift, scale

    def forward(self, z_mean: Tensor, z_log_var: Tensor) -> Tensor:
        mean = self.shift + self.scale * z_mean
        return torch.stack([mean, z_log_var + 2 * math.log(self.scale)], dim=-1)


class CrystalRegressor(nn.Module):
    """Base of the two wrappers: batch-norm frozen in training, the HF-style config and the
    ``output_hidden_states`` answer (for the ``backbone`` α source)."""

    feature_dim: int

    def __init__(self, feature_dim: int, initial_noise_std: float) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.initial_noise_std = initial_noise_std
        self.config = SimpleNamespace(hidden_size=feature_dim)

    def train(self, mode: bool = True) -> CrystalRegressor:
        super().train(mode)
        for module in self.modules():  # pretrained statistics; padded rows must not enter them
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def reset_head(self) -> None:
        """Re-initialise the new output layers (from the global RNG)."""
        raise NotImplementedError

    def _answer(
        self, out: Tensor, features: Tensor, output_hidden_states: bool, return_dict: bool
    ) -> Tensor | CrystalOutput:
        if output_hidden_states or return_dict:
            return CrystalOutput(logits=out, hidden_states=(features,))
        return out
