"""Shared fixtures: tiny models built from configs (random init, no downloads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class Holder(nn.Module):
    """One base layer under the name ``layer``, so that target_modules=["layer"] wraps it."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class MLP(nn.Module):
    """A small classifier/regressor: two hidden layers and a head."""

    def __init__(self, d_in: int = 6, hidden: int = 16, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def tiny_bert(num_labels: int = 2, seed: int = 0):
    """A 2-layer BERT sequence classifier with random weights."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def bert_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}
