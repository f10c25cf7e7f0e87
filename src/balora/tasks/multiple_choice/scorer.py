"""A causal LM as a K-way classifier: left-padded letter prompts, the letters' next-token
logits, and the attention / MLP projections that carry the adapters.

    examples ──collate_multiple_choice──▶ MultipleChoiceBatch
        input_ids, attention_mask, position_ids (B, T), LEFT-padded so that position -1 is the
        next-token position of every row; answers (B,); letter_ids (K,); option_mask (B, K)
    model(**batch.model_inputs()).logits (B, T, V) ──option_logits──▶ (B, K)

    LetterScorer.forward(input_ids, attention_mask, position_ids, option_mask)
        lm(...) next-token logits of the last position    (B, V)   (only that position's logits
            ──index_select(letter_ids)──▶                 (B, K)    are computed)
            ──+ MASKED_LOGIT where option_mask is 0──▶    (B, K)   the class logits

Because the scorer returns plain ``(B, K)`` logits, every method in `balora.methods` trains it
with cross-entropy and `balora.predict` gives class probabilities over the options. Asked for
``output_hidden_states`` it returns an object with ``.logits`` and ``.hidden_states`` and
exposes the LM's ``config``, so the ``backbone`` α source's default features (the mean of the
last hidden state over non-padding positions) work through it unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balora.tasks.multiple_choice.data import (
    ANSWER_CUE,
    MultipleChoiceExample,
    format_prompt,
    option_letters,
)
from balora.tasks.multiple_choice.lm import load_causal_lm

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


def letter_token_ids(tokenizer: Any, n: int) -> list[int]:
    """The token id of each of the first `n` letters as it follows the prompt.

    The prompt ends with ``"Answer:"`` and the letter follows with a space, so the id is that of
    ``" A"``, ``" B"``, ... read off the tokenisation of ``"Answer: A"`` after that of
    ``"Answer:"`` (which also covers tokenizers that mark a leading space, like SentencePiece's
    ``"▁A"``). Raises `ValueError` when a letter is not exactly one token there, or when two
    letters share an id.
    """
    prefix = tokenizer.encode(ANSWER_CUE, add_special_tokens=False)
    ids = []
    for letter in option_letters(n):
        full = tokenizer.encode(f"{ANSWER_CUE} {letter}", add_special_tokens=False)
        if full[: len(prefix)] != prefix or len(full) != len(prefix) + 1:
            pieces = tokenizer.convert_ids_to_tokens(full[len(prefix) :])
            raise ValueError(
                f"letter {letter!r} after {ANSWER_CUE!r} is not a single token for this "
                f"tokenizer: {ANSWER_CUE!r} -> {prefix}, '{ANSWER_CUE} {letter}' -> {full} "
                f"(pieces {pieces})"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"letters share token ids for this tokenizer: {ids}")
    return ids


@dataclass(frozen=True)
class MultipleChoiceBatch:
    """Left-padded prompts and what is needed to score the next token over the letters.

    Shapes: ``input_ids``, ``attention_mask``, ``position_ids`` ``(B, T)``; ``answers`` ``(B,)``;
    ``letter_ids`` ``(K,)`` with ``K`` the most options of any row; ``option_mask`` ``(B, K)``,
    True where row ``b`` has an option ``k``. Position ``T - 1`` is every row's last prompt token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    answers: torch.Tensor
    letter_ids: torch.Tensor
    option_mask: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a causal LM's forward.

        ``position_ids`` count only real tokens, so a left-padded prompt sees the same positions
        as it would unpadded (this matters for absolute-position models; RoPE is shift-invariant).
        """
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }

    def to(self, device: torch.device | str) -> MultipleChoiceBatch:
        return MultipleChoiceBatch(
            **{name: getattr(self, name).to(device) for name in self.__dataclass_fields__}
        )


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")


def collate_multiple_choice(
    examples: Sequence[MultipleChoiceExample],
    tokenizer: Any,
    *,
    max_length: int | None = None,
    letter_ids: Sequence[int] | None = None,
) -> MultipleChoiceBatch:
    """Tokenise the prompts of `examples` and LEFT-pad them into a `MultipleChoiceBatch`.

    Padding is done here rather than by the tokenizer, so the result does not depend on the
    tokenizer's ``padding_side``. A prompt longer than `max_length` tokens keeps its last
    `max_length` tokens (the options and the answer cue). `letter_ids` defaults to
    `letter_token_ids` for the largest option count in the batch.
    """
    if len(examples) == 0:
        raise ValueError("examples is empty")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    num_options = [len(ex.options) for ex in examples]
    k = max(num_options)
    if letter_ids is None:
        letter_ids = letter_token_ids(tokenizer, k)
    elif len(letter_ids) < k:
        raise ValueError(f"letter_ids has {len(letter_ids)} ids but a row has {k} options")
    encoded = [tokenizer(format_prompt(ex))["input_ids"] for ex in examples]
    if max_length is not None:
        encoded = [ids[-max_length:] for ids in encoded]
    length = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), length), _pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for b, ids in enumerate(encoded):
        input_ids[b, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, length - len(ids) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return MultipleChoiceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        answers=torch.tensor([ex.answer for ex in examples], dtype=torch.long),
        letter_ids=torch.tensor(list(letter_ids)[:k], dtype=torch.long),
        option_mask=torch.arange(k)[None, :] < torch.tensor(num_options)[:, None],
    )


def option_logits(logits: torch.Tensor, batch: MultipleChoiceBatch) -> torch.Tensor:
    """The ``(B, K)`` next-token logits of the letters; ``-inf`` where a row has no option k.

    `logits` is the LM's ``(B, T, V)`` output on ``batch.model_inputs()``; thanks to left
    padding its last position is every row's next-token position.
    """
    if logits.dim() != 3 or logits.shape[:2] != batch.input_ids.shape:
        raise ValueError(
            f"logits must be (B, T, V) = ({', '.join(map(str, batch.input_ids.shape))}, V), "
            f"got {tuple(logits.shape)}"
        )
    letters = logits[:, -1, :].index_select(-1, batch.letter_ids.to(logits.device))
    return letters.masked_fill(~batch.option_mask.to(logits.device), float("-inf"))


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


def encode_examples(
    tokenizer: Any,
    examples: Sequence[MultipleChoiceExample],
    *,
    num_options: int | None = None,
    max_length: int | None = None,
) -> dict[str, Tensor]:
    """Model inputs for `examples`: ``input_ids``, ``attention_mask``, ``position_ids``
    ``(n, T)`` left-padded, and ``option_mask`` ``(n, K)``.

    K (`num_options`) defaults to the most options of any example and `max_length` to no
    truncation; a trained scorer takes the inputs of its task's K and ``max_length``.
    """
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
