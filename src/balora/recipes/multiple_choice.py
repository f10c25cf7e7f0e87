"""The multiple-choice recipe: a causal LM answers by the next-token logits of the option letters.

This is the commonsense-reasoning protocol (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e/c,
OBQA): the prompt lists the options under letters and ends with ``"Answer:"``; the class scores
are the LM's next-token logits at the letter tokens, and the adapters sit on the attention and
MLP projections. No new head: the LM head is reused, so ``modules_to_save`` is empty.

    MultipleChoiceTaskConfig ──load_multiple_choice_task──▶ MultipleChoiceTask
        train / val / test   Data(inputs, answers (N,))
                             inputs: input_ids, attention_mask, position_ids (N, T), LEFT-padded;
                                     option_mask (N, K), K = the dataset's most options
        base_model           LetterScorer(lm, letter_ids (K,))

    LetterScorer.forward(input_ids, attention_mask, position_ids, option_mask)
        lm(...) next-token logits of the last position    (B, V)   (only that position's logits
            ──index_select(letter_ids)──▶                 (B, K)    are computed)
            ──+ MASKED_LOGIT where option_mask is 0──▶    (B, K)   the class logits

Because the scorer returns plain ``(B, K)`` logits, every method in `balora.methods` trains it
with cross-entropy and `balora.predict` gives class probabilities over the options. Asked for
``output_hidden_states`` it returns an object with ``.logits`` and ``.hidden_states`` and
exposes the LM's ``config``, so the ``backbone`` α source's default features (the mean of the
last hidden state over non-padding positions) work through it unchanged.

Where the data comes from (`MultipleChoiceTaskConfig`):

* local files (``train_file``, optionally ``validation_file`` / ``test_file``, in the dataset's
  released row format; see `balora.tasks.multiple_choice.load_multiple_choice`): a split without
  a file is carved out of the training file, ``holdout_fraction`` of its rows, drawn with
  ``split_seed``. Nothing is downloaded.
* the Hugging Face hub (no files; needs ``datasets`` and a network): ARC-e, ARC-c and OBQA have
  labelled test splits and use train / validation / test as released. BoolQ, PIQA, SIQA,
  HellaSwag and WinoGrande hide (or lack) test labels, so, as is usual for these benchmarks,
  their official validation split is the test set and the validation set is carved out of the
  training split (``holdout_fraction``, ``split_seed``).

The carving happens before the ``max_train`` / ``max_eval`` subsets, so the splits never
overlap whatever the subset sizes.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balora.methods import Data
from balora.tasks.multiple_choice import (
    DATASETS,
    MultipleChoiceExample,
    collate_multiple_choice,
    letter_token_ids,
    load_causal_lm,
    load_multiple_choice,
    option_letters,
)

__all__ = [
    "MASKED_LOGIT",
    "MAX_OPTIONS",
    "TARGETS_BY_MODEL_TYPE",
    "LetterScorer",
    "LetterScores",
    "MultipleChoiceTask",
    "MultipleChoiceTaskConfig",
    "canonical_dataset",
    "default_targets",
    "encode_examples",
    "load_letter_scorer",
    "load_multiple_choice_examples",
    "load_multiple_choice_task",
]

DatasetName = Literal[
    "boolq",
    "piqa",
    "siqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
]

MAX_OPTIONS: dict[str, int] = {
    "boolq": 2,
    "piqa": 2,
    "siqa": 3,
    "hellaswag": 4,
    "winogrande": 2,
    "arc_easy": 5,
    "arc_challenge": 5,
    "openbookqa": 4,
}
"""K, the number of letters scored, per dataset (ARC has 3 to 5 options, most have 4). Fixed
per dataset rather than read off the loaded rows, so a run's label names do not depend on the
subset it trained on; a file with more options than this raises K for that run."""

# Hub splits that serve as the test set: the released test split where its labels are public.
_HUB_TEST_SPLIT: dict[str, str] = {
    "arc_easy": "test",
    "arc_challenge": "test",
    "openbookqa": "test",
}

MASKED_LOGIT = -1.0e4
"""Added to the logit of an option a row does not have. Its softmax probability is exactly 0 in
float32 and float64 (``exp(-1e4)`` underflows), yet the output stays finite and keeps its
Jacobian, which laplace-torch's GLM predictive needs (``-inf`` or a masked fill would give a
singular output covariance)."""

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

TARGETS_BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),  # "c_proj" is both the attention and the MLP output
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}
"""The attention and MLP projections of each causal-LM family (``config.model_type``), matched
as suffixes of the scorer's module names (``lm.model.layers.0.self_attn.q_proj``). Other model
types get the Llama names; `balora.apply` lists the model's modules if they match nothing."""


def canonical_dataset(name: str) -> str:
    """The canonical name of a dataset or one of its aliases (``"ARC-e"`` -> ``"arc_easy"``)."""
    if not isinstance(name, str):
        raise ValueError(f"dataset must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    for canonical, spec in DATASETS.items():
        if key == canonical or key in {a.replace("-", "_") for a in spec.aliases}:
            return canonical
    raise ValueError(f"dataset must be one of {sorted(DATASETS)} (or an alias), got {name!r}")


def _optional_positive_int(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass
class MultipleChoiceTaskConfig:
    """Which multiple-choice dataset, where its rows come from, and which causal LM scores it."""

    dataset: DatasetName = "arc_easy"
    """The benchmark (aliases such as arc-e or obqa are accepted in Python); files must hold
    its released row format."""
    train_file: str | None = None
    """Training rows in the dataset's released format (JSONL, CSV or Parquet). Unset: the
    Hugging Face hub (needs a network)."""
    validation_file: str | None = None
    """Validation rows (needs train_file). Unset: carved out of the training rows."""
    test_file: str | None = None
    """Test rows (needs train_file). Unset: carved out of the training rows (local files) or
    the hub's labelled test split, else its validation split (BoolQ, PIQA, SIQA, HellaSwag,
    WinoGrande)."""
    model: str | None = None
    """Causal LM: a .gguf file, a Hugging Face directory or hub id (default: the offline
    SmolLM2-135M-Instruct, dequantised to float32 and cached)."""
    max_length: int = 256
    """Prompt tokens kept (a longer prompt loses its beginning; the options and the answer cue
    stay)."""
    max_train: int | None = None
    """Use at most this many training examples (a seeded subset)."""
    max_eval: int | None = None
    """Use at most this many validation and test examples each (a seeded subset)."""
    split_seed: int = 0
    """Seed of the carved splits and of the subsets."""
    holdout_fraction: float = 0.1
    """Fraction of the training rows carved out for each missing split (at least one row)."""

    def __post_init__(self) -> None:
        self.dataset = canonical_dataset(self.dataset)  # type: ignore[assignment]
        for name in ("train_file", "validation_file", "test_file", "model"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if self.train_file is None:
            given = [n for n in ("validation_file", "test_file") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} needs train_file as well (local files are used for "
                    "every split or for none; without train_file all splits come from the hub)"
                )
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            raise ValueError(f"max_length must be an integer, got {self.max_length!r}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        _optional_positive_int("max_train", self.max_train)
        _optional_positive_int("max_eval", self.max_eval)
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise ValueError(f"split_seed must be an integer, got {self.split_seed!r}")
        fraction = self.holdout_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ValueError(f"holdout_fraction must be a number, got {fraction!r}")
        if not 0.0 < fraction < 0.5:
            raise ValueError(f"holdout_fraction must be in (0, 0.5), got {fraction!r}")


# --------------------------------------------------------------------------------------------
# The scorer: (B, K) letter logits from a causal LM
# --------------------------------------------------------------------------------------------


@dataclass
class LetterScores:
    """`LetterScorer`'s output when hidden states or a return object are asked for.

    ``logits`` ``(B, K)``; ``hidden_states``: the LM's hidden states, each ``(B, T, H)`` over
    the input's full length, zero at padding positions (None unless asked for).
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class LetterScorer(nn.Module):
    """A causal LM as a K-way classifier: the next-token logits of the option letters.

    The inputs must be LEFT-padded (every row's last position is a real token, checked), so
    position ``T - 1`` is the next-token position of every row. Columns that are padding in
    every row are cut off before the LM runs (the explicit position ids keep the result
    unchanged), and the LM computes logits for the last position only where it supports
    ``logits_to_keep``: a (B, T, V) logit tensor over a 49k vocabulary would cost more than the
    rest of a small LM's forward.
    """

    def __init__(self, lm: nn.Module, letter_ids: Sequence[int]) -> None:
        super().__init__()
        ids = [int(i) for i in letter_ids]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise ValueError(f"letter_ids must hold at least two distinct token ids, got {ids}")
        self.lm = lm
        self.register_buffer("letter_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        accepted = inspect.signature(lm.forward).parameters
        self._lm_kwargs: dict[str, Any] = {}
        if "logits_to_keep" in accepted:
            self._lm_kwargs["logits_to_keep"] = 1
        if "use_cache" in accepted:
            self._lm_kwargs["use_cache"] = False  # no KV cache: one forward per batch

    @property
    def config(self) -> Any:
        """The LM's Hugging Face config (used by `balora.alpha` to find the hidden width)."""
        return getattr(self.lm, "config", None)

    @property
    def num_options(self) -> int:
        """K, the number of letters scored."""
        return self.letter_ids.numel()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        option_mask: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
    ) -> Tensor | LetterScores:
        """``(B, K)`` letter logits, `MASKED_LOGIT` added where `option_mask` is 0; a
        `LetterScores` instead when `output_hidden_states` or `return_dict` is set."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match input_ids "
                f"{tuple(input_ids.shape)}"
            )
        used = attention_mask.bool()
        if not bool(used[:, -1].all()):
            raise ValueError(
                "inputs must be left-padded: the last position of every row must be a real "
                "token (use balora.tasks.multiple_choice.collate_multiple_choice)"
            )
        if position_ids is None:
            position_ids = (used.long().cumsum(-1) - 1).clamp(min=0)
        # leading columns that are padding in every row carry nothing: cut them off
        start = int(used.any(dim=0).to(torch.int8).argmax())
        out = self.lm(
            input_ids=input_ids[:, start:],
            attention_mask=attention_mask[:, start:],
            position_ids=position_ids[:, start:],
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **self._lm_kwargs,
        )
        next_token = out.logits[:, -1, :]  # (B, V)
        scores = next_token.index_select(-1, self.letter_ids)  # (B, K)
        if option_mask is not None:
            if option_mask.shape != scores.shape:
                raise ValueError(
                    f"option_mask must be (B, K) = {tuple(scores.shape)}, got "
                    f"{tuple(option_mask.shape)}"
                )
            # additive, not masked_fill: the output keeps its Jacobian (see MASKED_LOGIT)
            scores = scores + (~option_mask.bool()).to(scores.dtype) * MASKED_LOGIT
        if not output_hidden_states and not return_dict:
            return scores
        hidden = None
        if output_hidden_states:
            pad = ~used[:, start:, None]
            # back to the input's length, zero at padding (so masked means are exact)
            hidden = tuple(
                F.pad(h.masked_fill(pad, 0.0), (0, 0, start, 0)) for h in out.hidden_states
            )
        return LetterScores(logits=scores, hidden_states=hidden)


def default_targets(lm: nn.Module) -> tuple[str, ...]:
    """The attention and MLP projections of `lm` (see `TARGETS_BY_MODEL_TYPE`)."""
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    return TARGETS_BY_MODEL_TYPE.get(model_type, _LLAMA_LIKE)


def load_letter_scorer(
    model: str | None, num_options: int
) -> tuple[LetterScorer, Any, tuple[str, ...]]:
    """``(scorer, tokenizer, default target_modules)`` for the causal LM `model`."""
    lm, tokenizer = load_causal_lm(model)
    scorer = LetterScorer(lm, letter_token_ids(tokenizer, num_options)).eval()
    return scorer, tokenizer, default_targets(lm)


# --------------------------------------------------------------------------------------------
# Data: splits, carving, encoding
# --------------------------------------------------------------------------------------------


def _permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def _carve(
    examples: list[MultipleChoiceExample], fraction: float, seed: int, what: str
) -> tuple[list[MultipleChoiceExample], list[MultipleChoiceExample]]:
    """``(rest, held out)``: `fraction` of `examples` (at least one), drawn with `seed`."""
    n = len(examples)
    held = max(1, round(fraction * n))
    if n - held < 1:
        raise ValueError(
            f"cannot carve a {what} split out of {n} training example(s): give it a file"
        )
    order = _permutation(n, seed)
    held_idx, rest_idx = sorted(order[:held]), sorted(order[held:])
    return [examples[i] for i in rest_idx], [examples[i] for i in held_idx]


def _subset(
    examples: list[MultipleChoiceExample], limit: int | None, seed: int
) -> list[MultipleChoiceExample]:
    if limit is None or limit >= len(examples):
        return examples
    return [examples[i] for i in sorted(_permutation(len(examples), seed)[:limit])]


def load_multiple_choice_examples(
    cfg: MultipleChoiceTaskConfig,
) -> tuple[list[MultipleChoiceExample], list[MultipleChoiceExample], list[MultipleChoiceExample]]:
    """The ``(train, validation, test)`` examples named by `cfg`, carved and subset (see the
    module docstring for the rules)."""
    name, fraction = cfg.dataset, cfg.holdout_fraction
    if cfg.train_file is not None:
        train = load_multiple_choice(name, path=cfg.train_file)
        val = test = None
        if cfg.validation_file is not None:
            val = load_multiple_choice(name, path=cfg.validation_file)
        if cfg.test_file is not None:
            test = load_multiple_choice(name, path=cfg.test_file)
    else:
        train = load_multiple_choice(name, "train")
        if name in _HUB_TEST_SPLIT:
            val = load_multiple_choice(name, "validation")
            test = load_multiple_choice(name, _HUB_TEST_SPLIT[name])
        else:
            val, test = None, load_multiple_choice(name, "validation")
    # distinct seeds per carve, so the test rows do not depend on whether validation is carved
    if test is None:
        train, test = _carve(train, fraction, cfg.split_seed + 1_000_003, "test")
    if val is None:
        train, val = _carve(train, fraction, cfg.split_seed + 1_000_004, "validation")
    return (
        _subset(train, cfg.max_train, cfg.split_seed),
        _subset(val, cfg.max_eval, cfg.split_seed + 1),
        _subset(test, cfg.max_eval, cfg.split_seed + 2),
    )


def encode_examples(
    task_or_tokenizer: MultipleChoiceTask | Any,
    examples: Sequence[MultipleChoiceExample],
    *,
    num_options: int | None = None,
    max_length: int | None = None,
) -> dict[str, Tensor]:
    """Model inputs for `examples`: ``input_ids``, ``attention_mask``, ``position_ids``
    ``(n, T)`` left-padded, and ``option_mask`` ``(n, K)``.

    With a `MultipleChoiceTask`, K, the tokenizer and ``max_length`` are the task's (a trained
    run's scorer takes these inputs as they are); with a tokenizer, K defaults to the most
    options of any example and ``max_length`` to no truncation.
    """
    if isinstance(task_or_tokenizer, MultipleChoiceTask):
        task = task_or_tokenizer
        tokenizer = task.tokenizer
        num_options = num_options or len(task.label_names)
        max_length = max_length or task.config.max_length
    else:
        tokenizer = task_or_tokenizer
    if len(examples) == 0:
        raise ValueError("examples is empty")
    most = max(len(ex.options) for ex in examples)
    num_options = num_options or most
    if most > num_options:
        raise ValueError(f"an example has {most} options but the scorer scores {num_options}")
    batch = collate_multiple_choice(
        list(examples),
        tokenizer,
        max_length=max_length,
        letter_ids=letter_token_ids(tokenizer, num_options),
    )
    option_mask = F.pad(batch.option_mask, (0, num_options - batch.option_mask.shape[1]))
    return {**batch.model_inputs(), "option_mask": option_mask}


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


@dataclass
class MultipleChoiceTask:
    """A loaded task: inputs for every split, the letters as label names, tokenizer, scorer."""

    config: MultipleChoiceTaskConfig
    train: Data
    val: Data
    test: Data
    label_names: list[str]
    tokenizer: Any
    base_model: LetterScorer
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...] = ()

    def model_factory(self) -> nn.Module:
        """A fresh copy of the pretrained scorer (nothing is newly initialised: the LM head is
        reused)."""
        return copy.deepcopy(self.base_model)


def load_multiple_choice_task(
    cfg: MultipleChoiceTaskConfig, label_names: list[str] | None = None
) -> MultipleChoiceTask:
    """Load the examples and the causal LM; tokenise every split once. With `label_names` (a
    trained run's), the task must score the same letters."""
    train, val, test = load_multiple_choice_examples(cfg)
    most = max(len(ex.options) for split in (train, val, test) for ex in split)
    num_options = max(MAX_OPTIONS[cfg.dataset], most)
    letters = option_letters(num_options)
    if label_names is not None and list(label_names) != letters:
        raise ValueError(f"the task scores the letters {letters} but the run has {label_names}")
    scorer, tokenizer, targets = load_letter_scorer(cfg.model, num_options)

    def encode(examples: list[MultipleChoiceExample]) -> Data:
        inputs = encode_examples(
            tokenizer, examples, num_options=num_options, max_length=cfg.max_length
        )
        return Data(inputs, torch.tensor([ex.answer for ex in examples], dtype=torch.long))

    return MultipleChoiceTask(
        config=cfg,
        train=encode(train),
        val=encode(val),
        test=encode(test),
        label_names=letters,
        tokenizer=tokenizer,
        base_model=scorer,
        target_modules=targets,
        modules_to_save=(),
    )
