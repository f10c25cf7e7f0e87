"""Shared fixtures: tiny models built from configs (random init, no downloads)."""

from __future__ import annotations

import re
from pathlib import Path

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


# -- tiny causal LMs saved as Hugging Face directories (the multiple-choice recipe) -----------

MC_FIXTURES = Path(__file__).parent / "fixtures" / "multiple_choice"


def _word_tokenizer():
    """A word-level tokenizer over every fixture prompt: "Answer: A" -> [Answer, :, A]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from balora.tasks.multiple_choice import format_prompt, load_multiple_choice, option_letters

    words: set[str] = set()
    for path in MC_FIXTURES.glob("*.jsonl"):
        for example in load_multiple_choice(path.stem.removesuffix("_original"), path=path):
            words.update(re.findall(r"\w+|[^\w\s]+", format_prompt(example)))
    letters = option_letters(26)
    tokens = ["[UNK]", "[PAD]", "</s>", *letters, *sorted(words - set(letters))]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>"
    )


def _tiny_lm(kind: str, vocab_size: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
        )
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512)
        model = GPT2LMHeadModel(config)
    # larger weights than the 0.02 default, so the letters' logits differ visibly
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    tokenizer = _word_tokenizer()
    dirs = {}
    for kind in ("llama", "gpt2"):
        path = tmp_path_factory.mktemp(kind)
        _tiny_lm(kind, len(tokenizer)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[kind] = str(path)
    return dirs
