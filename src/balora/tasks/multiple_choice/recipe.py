"""The multiple-choice recipe: a causal LM answers by the next-token logits of the option letters.

This is the commonsense-reasoning protocol (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e/c,
OBQA): the prompt lists the options under letters and ends with ``"Answer:"``; the class scores
are the LM's next-token logits at the letter tokens, and the adapters sit on the attention and
MLP projections. No new head: the LM head is reused, so ``modules_to_save`` is empty.

    MultipleChoiceTaskConfig ──load_multiple_choice_task──▶ MultipleChoiceTask
        train / val / test   Data(inputs, answers (N,))
                             inputs: input_ids, attention_mask, position_ids (N, T), LEFT-padded;
                                     option_mask (N, K), K = the dataset's most options
        base_model           LetterScorer(lm, letter_ids (K,))   (scorer.py)

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
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from balora.dataset import Data
from balora.errors import UserError
from balora.predict import Prediction
from balora.splits import holdout, random_subset
from balora.tasks.multiple_choice.classification import (
    CLASSIFICATION_SETS,
    DEFAULT_QUESTION,
    as_examples,
    load_classification,
    read_texts,
)
from balora.tasks.multiple_choice.data import (
    DATASETS,
    MultipleChoiceExample,
    load_multiple_choice,
    option_letters,
)
from balora.tasks.multiple_choice.scorer import LetterScorer, encode_examples, load_letter_scorer
from balora.tasks.recipe import (
    ClassificationRecipe,
    Encoded,
    EvaluationSource,
    LoadedTask,
    TrainedTask,
    inputs_from,
)

DatasetName = Literal[
    "boolq",
    "piqa",
    "siqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
    "rotten_tomatoes",
    "classification",
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


def canonical_dataset(name: str) -> str:
    """The canonical name of a dataset or one of its aliases (``"ARC-e"`` -> ``"arc_easy"``)."""
    if not isinstance(name, str):
        raise ValueError(f"dataset must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if key in CLASSIFICATION_SETS:
        return key
    for canonical, spec in DATASETS.items():
        if key == canonical or key in {a.replace("-", "_") for a in spec.aliases}:
            return canonical
    known = sorted([*DATASETS, *CLASSIFICATION_SETS])
    raise ValueError(f"dataset must be one of {known} (or an alias), got {name!r}")


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
    text_column: str = "text"
    """dataset='classification': the column holding the text."""
    label_column: str = "label"
    """dataset='classification': the column holding the label."""
    question: str = DEFAULT_QUESTION
    """rotten_tomatoes / classification: the question asked after each text."""
    label_words: tuple[str, ...] | None = None
    """rotten_tomatoes / classification: the option shown for each class, in label order
    (default: negative / positive for Rotten Tomatoes, the label names otherwise)."""

    def __post_init__(self) -> None:
        self.dataset = canonical_dataset(self.dataset)  # type: ignore[assignment]
        for name in ("train_file", "validation_file", "test_file", "model"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if self.dataset == "classification" and self.train_file is None:
            raise ValueError("dataset='classification' reads train_file: give a labelled file")
        if self.label_words is not None:
            self.label_words = tuple(self.label_words)
            if len(self.label_words) < 2 or not all(w.strip() for w in self.label_words):
                raise ValueError(f"label_words must name 2 or more classes, got {self.label_words}")
        if not self.question.strip():
            raise ValueError("question must not be empty")
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
# Data: splits, carving, encoding
# --------------------------------------------------------------------------------------------


def _carve(
    examples: list[MultipleChoiceExample], fraction: float, seed: int, what: str
) -> tuple[list[MultipleChoiceExample], list[MultipleChoiceExample]]:
    """``(rest, held out)``: `fraction` of `examples` (at least one), drawn with `seed`."""
    if len(examples) - max(1, round(fraction * len(examples))) < 1:
        raise ValueError(
            f"cannot carve a {what} split out of {len(examples)} training example(s): give it "
            "a file"
        )
    rest, held = holdout(len(examples), fraction, seed, at_least_one=True)
    return [examples[i] for i in rest.tolist()], [examples[i] for i in held.tolist()]


def _subset(
    examples: list[MultipleChoiceExample], limit: int | None, seed: int
) -> list[MultipleChoiceExample]:
    return [examples[i] for i in random_subset(len(examples), limit, seed)]


def load_multiple_choice_examples(
    cfg: MultipleChoiceTaskConfig,
) -> tuple[list[MultipleChoiceExample], list[MultipleChoiceExample], list[MultipleChoiceExample]]:
    """The ``(train, validation, test)`` examples named by `cfg`, carved and subset (see the
    module docstring for the rules)."""
    name, fraction = cfg.dataset, cfg.holdout_fraction
    if name in CLASSIFICATION_SETS:
        data, words = load_classification(cfg)
        train, val, test = (
            as_examples(split, words, cfg.question)
            for split in (data.train, data.validation, data.test)
        )
    elif cfg.train_file is not None:
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
    if test is None:  # (never for CLASSIFICATION_SETS: they are split like the text task)
        train, test = _carve(train, fraction, cfg.split_seed + 1_000_003, "test")
    if val is None:
        train, val = _carve(train, fraction, cfg.split_seed + 1_000_004, "validation")
    return (
        _subset(train, cfg.max_train, cfg.split_seed),
        _subset(val, cfg.max_eval, cfg.split_seed + 1),
        _subset(test, cfg.max_eval, cfg.split_seed + 2),
    )


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
    option_words: list[str] | None = None
    """rotten_tomatoes / classification: the word shown for each class (its option)."""

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
    num_options = max(MAX_OPTIONS.get(cfg.dataset, 2), most)
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
        option_words=list(train[0].options) if cfg.dataset in CLASSIFICATION_SETS else None,
    )


def _questions(task: MultipleChoiceTask, texts: Sequence[str], labels: Sequence[int]):
    """A classification set's texts as the task's questions."""
    words, question = task.option_words, task.config.question
    return [
        MultipleChoiceExample(question=question, options=list(words), answer=y, context=text)
        for text, y in zip(texts, labels, strict=True)
    ]


class MultipleChoiceRecipe(ClassificationRecipe):
    """``--task multiple-choice``: a causal LM scores the option letters."""

    name = "multiple-choice"
    summary = "a causal LM scores option letters (also a labelled text set as a question)"
    config_class = MultipleChoiceTaskConfig

    def load(self, cfg: MultipleChoiceTaskConfig, *, progress: bool) -> LoadedTask:
        task = load_multiple_choice_task(cfg)
        loaded = LoadedTask.labelled(task)
        if task.option_words is not None:
            loaded.record["option_words"] = task.option_words
            loaded.description += f" for {task.option_words}"
        return loaded

    def load_trained(self, cfg: MultipleChoiceTaskConfig, run: dict[str, Any]) -> TrainedTask:
        task = load_multiple_choice_task(cfg, label_names=run["label_names"])
        return TrainedTask(task.model_factory, task)

    def read_inputs(
        self,
        cfg: MultipleChoiceTaskConfig,
        run: dict[str, Any],
        items: Sequence[str],
        file: Path | None,
    ) -> list[Any]:
        if cfg.dataset in CLASSIFICATION_SETS:  # texts, as for the text task
            texts = list(items)
            if file is not None:
                texts += read_texts(file, cfg.text_column, None, [])[0]
            return inputs_from(texts, None, "texts to classify, or --file listing them")
        if items or file is None:
            raise UserError(
                "multiple-choice runs read questions from --file (the dataset's format)"
            )
        return load_multiple_choice(cfg.dataset, path=file)

    def _encode(
        self, task: MultipleChoiceTask, examples: Sequence[MultipleChoiceExample]
    ) -> dict[str, torch.Tensor]:
        return encode_examples(
            task.tokenizer,
            examples,
            num_options=len(task.label_names),
            max_length=task.config.max_length,
        )

    def encode_inputs(
        self,
        cfg: MultipleChoiceTaskConfig,
        run: dict[str, Any],
        trained: TrainedTask,
        items: list[Any],
    ) -> Encoded:
        if cfg.dataset in CLASSIFICATION_SETS:
            names, items = list(items), _questions(trained.encoder, items, [0] * len(items))
        else:
            names = [ex.question for ex in items]
        inputs = self._encode(trained.encoder, items)
        return Encoded(names, Data(inputs, torch.zeros(len(items), dtype=torch.long)))

    def read_evaluation(
        self, cfg: MultipleChoiceTaskConfig, run: dict[str, Any], source: EvaluationSource
    ) -> Any:
        if source.data is None:
            return None
        if cfg.dataset in CLASSIFICATION_SETS:
            # labels by the training data's class names, in their order
            names = load_classification(cfg)[0].label_names
            text = source.text_column or cfg.text_column
            label = source.label_column or cfg.label_column
            return read_texts(source.data, text, label, names)
        return load_multiple_choice(cfg.dataset, path=source.data)

    def evaluation_data(
        self, cfg: MultipleChoiceTaskConfig, run: dict[str, Any], trained: TrainedTask, read: Any
    ) -> tuple[Data, Data | None, dict[str, str]]:
        task: MultipleChoiceTask = trained.encoder
        if read is None:
            return task.test, None, {}
        if isinstance(read, tuple):  # (texts, labels) of a classification set
            read = _questions(task, *read)
        answers = torch.tensor([ex.answer for ex in read], dtype=torch.long)
        return Data(self._encode(task, read), answers), None, {}

    def rows(
        self, run: dict[str, Any], names: list[str], pred: Prediction
    ) -> tuple[list[dict[str, Any]], list[str]]:
        rows, columns = super().rows(run, names, pred)
        words = run.get("option_words")
        if words:  # the class word rather than its letter
            for row in rows:
                row["label"] = words[run["label_names"].index(row["label"])]
        return rows, columns
