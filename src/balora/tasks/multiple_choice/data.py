"""Multiple-choice questions: the eight commonsense datasets' row formats, and the prompt.

The causal LM reads a prompt that lists the options under letters and ends with the answer
cue; the prediction is the next-token distribution restricted to the letters
(`balora.tasks.multiple_choice.scorer`)::

    {context}                      (only when the example has one)
    Question: {question}
    A. {option 0}
    B. {option 1}
    Answer:                        ◀── next token scored over " A", " B", ... (space-prefixed)

Eight datasets are supported by `load_multiple_choice`, each read either from a local file in
the dataset's released row format (JSONL, or CSV / Parquet with the same fields) or, without a
path, from the Hugging Face hub through ``datasets``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from balora.tasks.files import hub_load, read_records

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
