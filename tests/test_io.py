"""Adapters on disk: exact round trip, atomic writes, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import balora
from balora.io import CONFIG_NAME, WEIGHTS_NAME, cache_dir, publish_dir, write_files
from tests.conftest import MLP, tiny_bert


def base(seed=0, d_in=6):
    torch.manual_seed(seed)
    return MLP(d_in=d_in)


def adapted(source="layer", seed=0, d_in=6):
    model = base(seed, d_in)
    cfg = balora.BaLoRAConfig(
        r=2,
        target_modules=["fc1", "fc2"],
        modules_to_save=["head"],
        alpha_source=source,
        alpha_feature_dim=d_in,
        alpha_init=0.4,
    )
    balora.apply(model, cfg)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_()
    return model


@pytest.mark.parametrize("source", ["layer", "backbone", "constant"])
def test_round_trip_is_exact(tmp_path, source):
    model = adapted(source)
    balora.save(model, tmp_path / "ad")
    fresh = balora.load(base(), tmp_path / "ad")
    x = torch.randn(4, 6)
    for m in (model, fresh):
        m.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    a = balora.predict(model, x, num_samples=4, seed=0)
    b = balora.predict(fresh, x, num_samples=4, seed=0)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    meta = json.loads((tmp_path / "ad" / CONFIG_NAME).read_text())
    assert meta["balora_version"] == balora.__version__
    assert meta["modules"]["fc1"]["lora_A"] == [2, 6]
    assert meta["config"]["alpha_source"] == source


def test_hf_model_round_trip(tmp_path, bert_batch):
    model = tiny_bert()
    balora.apply(model, balora.BaLoRAConfig(modules_to_save=["classifier"]))
    with torch.no_grad():
        for layer in balora.inject.get_adapter(model).layers.values():
            layer.lora_B.normal_()
    balora.save(model, tmp_path)
    fresh = balora.load(tiny_bert(), tmp_path)
    torch.testing.assert_close(fresh(**bert_batch).logits, model(**bert_batch).logits)


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        balora.load(MLP(), tmp_path / "nothing")
    balora.save(adapted(), tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        balora.load(MLP(), tmp_path)


def test_module_name_and_shape_mismatch(tmp_path):
    balora.save(adapted(), tmp_path)
    with pytest.raises(ValueError, match="fc1"):
        balora.load(nn.Sequential(nn.Linear(6, 3)), tmp_path)
    model = MLP(d_in=7)
    with pytest.raises(ValueError, match=r"shape mismatch for fc1\."):
        balora.load(model, tmp_path)
    assert "_balora" not in model.__dict__
    assert isinstance(model.fc1, nn.Linear)


def test_unreadable_and_torn_files(tmp_path):
    balora.save(adapted(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        balora.load(MLP(), tmp_path)
    balora.save(adapted(), tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checksum"):
        balora.load(MLP(), tmp_path)
    # a garbage file whose checksum is recorded: the safetensors reader fails, clearly
    import hashlib

    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["weights_sha256"] = hashlib.sha256(b"garbage").hexdigest()
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cannot read"):
        balora.load(MLP(), tmp_path)


def test_crash_mid_save_keeps_previous_adapter(tmp_path, monkeypatch):
    first = adapted(seed=0)
    balora.save(first, tmp_path)

    real_write_temp = balora.io.write_temp

    def crash(path, write):  # the weights are written, then the config write is interrupted
        if path.name == CONFIG_NAME:
            raise KeyboardInterrupt
        return real_write_temp(path, write)

    monkeypatch.setattr("balora.io.write_temp", crash)
    with pytest.raises(KeyboardInterrupt):
        balora.save(adapted(seed=1), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = balora.load(base(), tmp_path)
    x = torch.randn(3, 6)
    first.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), first(x), rtol=0, atol=0)


def test_save_refuses_nan_and_merged(tmp_path):
    model = adapted()
    balora.merge(model)
    with pytest.raises(RuntimeError, match="merged"):
        balora.save(model, tmp_path)
    balora.unmerge(model)
    with torch.no_grad():
        model.fc1.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        balora.save(model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BALORA_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(root=tmp_path / "arg") == tmp_path / "arg"
    assert cache_dir("mof", "x") == tmp_path / "env" / "mof" / "x"
    monkeypatch.delenv("BALORA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "balora"


def test_publish_is_atomic(tmp_path):
    final = tmp_path / "cache" / "model"

    def failing(tmp):
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        publish_dir(final, failing)
    assert not final.exists()
    assert list(final.parent.iterdir()) == []  # the temporary directory is gone too
    publish_dir(final, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (final / "config.json").read_text() == "{}"


def test_write_files_is_all_or_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")

    def failing(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_files(
            {
                tmp_path / "a.txt": lambda p: Path(p).write_text("new a"),
                tmp_path / "b.txt": failing,
            }
        )
    assert (tmp_path / "a.txt").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporaries
    write_files({tmp_path / "a.txt": lambda p: Path(p).write_text("new a")})
    assert (tmp_path / "a.txt").read_text() == "new a"
