"""The fast sampling paths of the layers against the formula written out by hand (float64).

The `example` noise is computed as one per-example matmul with the sampled weight
``Ω_i = A + sqrt(α_i) (|A| ⊙ E_i)``, and 1x1 convolutions use a batched matmul instead of a
grouped convolution; both must give ``A x + sqrt(α_i) (|A| ⊙ E_i) x`` with the same E_i.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import balora
import balora.layers as layers_module
from tests.conftest import Holder

SEED = 5


def _project(layer, x, weight, groups=1):
    base = layer.base_layer
    if isinstance(base, nn.Conv1d | nn.Conv2d):
        conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
        return conv(x, weight, None, base.stride, base.padding, base.dilation, groups)
    return x @ weight.T


def _reference(layer, x, alpha, chunk):
    """``s B (A x + sqrt(α_i) (|A| ⊙ E_i) x)`` example by example, E drawn as the layer does."""
    g = torch.Generator().manual_seed(SEED)
    a = layer.lora_A
    noise = []
    for start in range(0, x.shape[0], chunk):
        e = torch.randn((min(chunk, x.shape[0] - start), *a.shape), generator=g, dtype=a.dtype)
        for i in range(e.shape[0]):
            xi = x[start + i : start + i + 1]
            n = _project(layer, xi, a.abs() * e[i])
            k = alpha.shape[1]
            s = alpha[start + i].sqrt().view(1, *([1] * (n.dim() - 2)), k)
            if n.dim() > 2 and isinstance(layer.base_layer, nn.Conv1d | nn.Conv2d):
                s = alpha[start + i].sqrt().view(1, k, *([1] * (n.dim() - 2)))
            noise.append(s * n)
    h = torch.cat(noise)
    if not layer.merged:
        h = _project(layer, x, a) + h
    if isinstance(layer.base_layer, nn.Conv1d | nn.Conv2d):
        b = layer.lora_B.view(*layer.lora_B.shape, *([1] * (x.dim() - 2)))
        conv = F.conv1d if isinstance(layer.base_layer, nn.Conv1d) else F.conv2d
        return layer.scaling * conv(h, b)
    return layer.scaling * h @ layer.lora_B.T


CASES = [
    ("linear-3d", lambda: nn.Linear(6, 5), (4, 7, 6)),
    ("linear-2d", lambda: nn.Linear(6, 5), (4, 6)),
    ("gpt2-conv1d", lambda: Conv1D(5, 6), (4, 7, 6)),
    ("conv1d-k3", lambda: nn.Conv1d(3, 4, 3, padding=1), (4, 3, 9)),
    ("conv2d-k3-s2", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (4, 3, 8, 8)),
    ("conv2d-1x1", lambda: nn.Conv2d(3, 4, 1), (4, 3, 5, 6)),
    ("conv2d-1x1-s2", lambda: nn.Conv2d(3, 4, 1, stride=2), (4, 3, 7, 6)),
    ("conv1d-1x1-s3", lambda: nn.Conv1d(3, 4, 1, stride=3), (4, 3, 10)),
]


@pytest.mark.parametrize("per_rank", [False, True], ids=["alpha-layer", "alpha-per-rank"])
@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("small_chunks", [False, True], ids=["one-draw", "chunked"])
@pytest.mark.parametrize(("name", "factory", "shape"), CASES, ids=[c[0] for c in CASES])
def test_example_noise_matches_the_written_out_formula(
    name, factory, shape, per_rank, merged, small_chunks, monkeypatch
):
    torch.manual_seed(0)
    model = Holder(factory()).double()
    config = balora.BaLoRAConfig(r=3, lora_alpha=6, target_modules=["layer"])
    balora.apply(model, config.replace(alpha_per_rank=per_rank))
    layer = model.layer
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.alpha_module.linear.weight.normal_(0, 0.3)  # α varies across examples
    chunk = 4
    if small_chunks:  # two examples per draw
        monkeypatch.setattr(layers_module, "MAX_NOISE_ELEMENTS", 2 * layer.lora_A.numel())
        chunk = 2
    x = torch.randn(shape, dtype=torch.float64)
    model.eval()
    if merged:
        balora.merge(model)
    with torch.no_grad(), balora.sampling(model, seed=SEED):
        y = model(x)
        alpha = layer.last_alpha
    base = layer.base_layer(x)  # merged: W0 + s B A, so the reference adds the noise alone
    assert alpha.std() > 0
    expected = _reference(layer, x, alpha, chunk)
    torch.testing.assert_close(y, base + expected, rtol=0, atol=1e-10)


def test_example_noise_gradients_match_the_written_out_formula():
    torch.manual_seed(0)
    model = Holder(nn.Linear(6, 5)).double()
    balora.apply(model, balora.BaLoRAConfig(r=3, lora_alpha=6, target_modules=["layer"]))
    layer = model.layer
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.alpha_module.linear.weight.normal_(0, 0.3)
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    params = [layer.lora_A, layer.lora_B, *layer.alpha_module.parameters()]
    layer.state.reseed(SEED)
    model.train()
    fast = torch.autograd.grad(model(x).square().sum(), params)

    layer.state.reseed(SEED)
    e = layer.state.randn((4, *layer.lora_A.shape), layer.lora_A)
    z = layer.alpha_module(x.mean(dim=1))
    alpha = balora.alpha.to_alpha(z, layer.config)[0]
    h = x @ layer.lora_A.T + alpha.sqrt().unsqueeze(1) * torch.einsum(
        "btd,brd->btr", x, layer.lora_A.abs() * e
    )
    y = layer.base_layer(x) + layer.scaling * h @ layer.lora_B.T
    slow = torch.autograd.grad(y.square().sum(), params)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
