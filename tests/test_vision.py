"""The vision recipe: data formats and their errors, EfficientNet conv adapters on the real
pretrained blocks, ViT (Hugging Face, timm) adapters, and the CLI round trip."""

from __future__ import annotations

import copy
import gzip
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import balora
from balora.cli import main
from balora.methods import TrainConfig, make_method
from balora.tasks.vision import (
    FASHION_MNIST_DIR,
    ImageClassifier,
    ImageSplit,
    VisionTaskConfig,
    load_cifar,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_folder,
    load_mnist_sample,
    load_vision_backbone,
    load_vision_task,
    read_idx,
    read_images,
    subset,
)

efficientnet = pytest.importorskip("efficientnet_lite_pytorch")

# ── file formats ────────────────────────────────────────────────────────────────────────────


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def write_mnist_like(root, n_train=40, n_test=20, k=4, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % k)
    return root


def test_read_idx_round_trip_and_errors(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    for compress in (True, False):
        path = tmp_path / f"x{'.gz' if compress else ''}"
        write_idx(path, array, compress)
        np.testing.assert_array_equal(read_idx(path), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", array, compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-7])
    with pytest.raises(ValueError, match="holds 53 bytes"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="no such IDX file"):
        read_idx(tmp_path / "missing")


def test_idx_dataset_split_is_stratified_and_seeded(tmp_path):
    root = write_mnist_like(tmp_path / "idx", n_train=40)
    a = load_idx_dataset(root, val_fraction=0.25, seed=3)
    b = load_idx_dataset(root, val_fraction=0.25, seed=3)
    # 10 images per class; round(2.5) = 2 held out of each
    assert len(a.train) == 32
    assert len(a.validation) == 8
    assert len(a.test) == 20
    assert torch.equal(a.validation.images, b.validation.images)
    assert a.validation.labels.bincount().tolist() == [2, 2, 2, 2]
    c = load_idx_dataset(root, val_fraction=0.25, seed=4)
    assert not torch.equal(a.validation.images, c.validation.images)
    assert a.train.images.shape[1:] == (1, 28, 28)
    assert a.label_names == ["0", "1", "2", "3"]
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist absent")
def test_real_fashion_mnist_and_mnist_sample():
    data = load_fashion_mnist()
    assert (len(data.train), len(data.validation), len(data.test)) == (54000, 6000, 10000)
    assert data.train.labels.bincount().tolist() == [5400] * 10
    assert data.label_names[9] == "Ankle boot"
    mnist = load_mnist_sample()
    assert mnist.images.shape == (5000, 1, 28, 28)
    assert set(mnist.labels.tolist()) == set(range(10))


def test_cifar_binary_format(tmp_path):
    rng = np.random.default_rng(0)
    for name, label_bytes, files in (
        ("cifar10", 1, [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]),
        ("cifar100", 2, ["train.bin", "test.bin"]),
    ):
        root = tmp_path / name
        root.mkdir()
        records = {}
        for f in files:
            rows = rng.integers(0, 256, (10, label_bytes + 3072), dtype=np.uint8)
            rows[:, label_bytes - 1] = np.arange(10) % 5
            rows.tofile(root / f)
            records[f] = rows
        data = load_cifar(name, root, val_fraction=0.2)
        assert len(data.test) == 10
        assert len(data.train) + len(data.validation) == 10 * (len(files) - 1)
        # the first test image: channel-major 32x32 planes, label from the last label byte
        first = records[files[-1]][0]
        assert torch.equal(data.test.images[0].flatten(), torch.from_numpy(first[label_bytes:]))
        assert data.test.labels[0].item() == first[label_bytes - 1]
    (tmp_path / "cifar10" / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="whole number of CIFAR records"):
        load_cifar("cifar10", tmp_path / "cifar10")


def make_folder(root, classes=("cat", "dog"), per_class=6, size=20, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_image_folder_layouts(tmp_path):
    data = load_image_folder(make_folder(tmp_path / "flat", per_class=10), image_size=16)
    assert data.label_names == ["cat", "dog"]
    assert (len(data.train), len(data.validation), len(data.test)) == (16, 2, 2)
    assert data.train.images.shape[1:] == (3, 16, 16)
    assert data.train.images.dtype == torch.uint8
    split = tmp_path / "split"
    make_folder(split / "train", per_class=5)
    make_folder(split / "test", per_class=2, seed=1)
    data = load_image_folder(split, image_size=16, val_fraction=0.2)
    assert (len(data.train), len(data.validation), len(data.test)) == (8, 2, 4)


def test_image_folder_errors_name_the_culprit(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "bird").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*bird holds no images"):
        load_image_folder(root)
    (root / "bird" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image_folder(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        load_image_folder(tmp_path / "missing")
    files, images, errors = read_images([root / "cat", root / "bird"], image_size=8, channels=3)
    assert len(files) == 6
    assert images.shape == (6, 3, 8, 8)
    assert list(errors) == [root / "bird" / "broken.png"]


def test_subset_is_class_balanced_and_seeded():
    labels = torch.tensor([0] * 80 + [1] * 20)
    split = ImageSplit(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels)
    a, b = subset(split, 10, seed=1), subset(split, 10, seed=1)
    assert torch.equal(a.labels, b.labels)
    assert a.labels.bincount().tolist() == [5, 5]
    assert len(subset(split, 1000, seed=1)) == 100


# ── EfficientNet-Lite0: conv adapters on the real pretrained blocks ─────────────────────────

R, SCALE = 4, 2.0  # rank, lora_alpha / r


@pytest.fixture(scope="module")
def effnet():
    labels = [str(i) for i in range(10)]
    model, targets, heads = load_vision_backbone(
        "efficientnet-lite0", labels, image_size=32, pretrained=True
    )
    assert targets == ("_expand_conv", "_project_conv", "_conv_head")
    assert heads == ("_fc",)
    return model.double().eval()


def _images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def _adapt(model, pattern, **overrides):
    model = copy.deepcopy(model)
    config = balora.BaLoRAConfig(r=R, lora_alpha=R * SCALE, target_modules=pattern, **overrides)
    balora.apply(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.05)
    return model.eval()


def test_efficientnet_adapters_equal_merged_lora_on_pretrained_blocks(effnet):
    pattern = r"backbone\._blocks\.(1|5|9)\._(expand|project)_conv|backbone\._conv_head"
    model = _adapt(effnet, pattern)
    reference = copy.deepcopy(effnet)
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, balora.BaLoRALayer)}
    assert len(wrapped) == 7
    with torch.no_grad():
        for name, layer in wrapped.items():
            w = reference.get_submodule(name).weight  # (d_out, C_in, 1, 1)
            delta = SCALE * layer.lora_B @ layer.lora_A.flatten(1)
            w += delta.view_as(w)
    x = _images(4)
    out = model(x)
    torch.testing.assert_close(out, reference(x), rtol=0, atol=1e-10)
    assert (out - effnet(x)).abs().max() > 1e-3  # the adapters do change the output


@pytest.mark.parametrize("noise", ["example", "token"])
def test_efficientnet_sampled_moments_against_analytic(effnet, noise):
    alpha, n = 0.3, 3000
    model = _adapt(effnet, r"backbone\._blocks\.5\._project_conv", alpha_init=alpha, noise=noise)
    conv = model.backbone._blocks[5]._project_conv
    captured = {}
    hook = conv.register_forward_pre_hook(lambda m, args: captured.setdefault("u", args[0]))
    model(_images(1))
    hook.remove()
    u = captured["u"]  # the real activation entering the block's projection: (1, C, h, w)
    with balora.sampling(model, seed=0), torch.no_grad():
        y = conv(u.repeat(n, 1, 1, 1))
    mean = conv(u)[0]
    a2, b2 = conv.lora_A.detach() ** 2, conv.lora_B.detach() ** 2
    var_h = alpha * F.conv2d(u**2, a2)  # (1, r, h, w): per-element noise on A
    var_y = SCALE**2 * F.conv2d(var_h, b2.view(*b2.shape, 1, 1))[0]
    assert ((y.mean(0) - mean).abs() <= 4.5 * (var_y / n).sqrt() + 1e-12).all()
    mask = var_y > 1e-3 * var_y.max()
    rel = (y.var(0)[mask] / var_y[mask] - 1).abs()
    assert rel.median() < 0.05, rel.median()
    assert rel.max() < 0.25, rel.max()
    # example noise: one weight draw per image, so every position moves together
    pos = y[:, :, 0, 0] - mean[:, 0, 0], y[:, :, 1, 1] - mean[:, 1, 1]
    corr = F.cosine_similarity(pos[0].T, pos[1].T, dim=1).abs().mean()
    assert corr > 0.3 if noise == "example" else corr < 0.1


def test_depthwise_and_padded_convs_are_refused_with_reason(effnet):
    with pytest.raises(TypeError, match="groups="):
        balora.apply(copy.deepcopy(effnet), balora.BaLoRAConfig(target_modules=["_depthwise_conv"]))
    with pytest.raises(TypeError, match="overrides forward"):
        balora.apply(copy.deepcopy(effnet), balora.BaLoRAConfig(target_modules=["_conv_stem"]))


def test_batch_norm_stays_frozen_in_training(effnet):
    model = copy.deepcopy(effnet).float()
    before = model.backbone._bn0.running_mean.clone()
    model.train()
    assert not model.backbone._bn0.training
    assert model.backbone._dropout.training
    model(_images(4))
    assert torch.equal(model.backbone._bn0.running_mean, before)


# ── ViTs ────────────────────────────────────────────────────────────────────────────────────


def tiny_vit_dir(path):
    """A 2-layer ViT classifier with random weights, on disk."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    ViTForImageClassification(config).save_pretrained(path)
    return path


@pytest.fixture
def tiny_vit(tmp_path):
    return tiny_vit_dir(tmp_path / "tiny-vit")


def test_hf_vit_recipe_trains_and_predicts(tmp_path, tiny_vit):
    data = make_folder(tmp_path / "imgs", per_class=12)
    task = load_vision_task(VisionTaskConfig(data=str(data), model=str(tiny_vit), image_size=16))
    assert task.target_modules in (("q_proj", "v_proj"), ("query", "value"))
    assert task.modules_to_save == ("classifier",)
    method = make_method(
        "balora",
        task.model_factory,
        "classification",
        adapter=balora.BaLoRAConfig(
            target_modules=task.target_modules, modules_to_save=task.modules_to_save
        ),
        train=TrainConfig(epochs=2, batch_size=8, progress=False),
        seed=0,
    )
    report = method.fit(task.train, task.val)
    assert len(report.history) == 2
    assert all(np.isfinite(h["train_nll"]) for h in report.history)
    pred = method.predict(task.test.inputs, 4, seed=0)
    assert pred.mean.shape == (len(task.test), 2)
    torch.testing.assert_close(pred.mean.sum(-1), torch.ones(len(task.test)))
    assert (pred.epistemic >= 0).all()
    assert pred.epistemic.max() > 0


def test_timm_vit_qkv_adapters():
    timm = pytest.importorskip("timm", reason="timm needs torchvision (no CPU build here)")
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=16, patch_size=8,
        depth=2,
    )  # fmt: skip
    model = ImageClassifier(net, image_size=16, in_channels=3, mean=(0.5,), std=(0.5,)).double()
    balora.apply(model, balora.BaLoRAConfig(target_modules=["qkv"], modules_to_save=["head"]))
    x = _images(3)
    model.eval()
    with balora.disable_adapters(model):
        reference = model(x)
    torch.testing.assert_close(model(x), reference)  # B = 0 at initialisation
    with balora.sampling(model, seed=0), torch.no_grad():
        assert model(x).shape == (3, 3)


# ── the command line ────────────────────────────────────────────────────────────────────────


def test_cli_vision_train_evaluate_predict(tmp_path, tiny_vit, capsys):
    data = make_folder(tmp_path / "imgs", per_class=12)
    run = tmp_path / "run"
    common = ["--task", "vision", "--data", str(data), "--model", str(tiny_vit)]
    common += ["--image-size", "16", "--ood", "none"]
    assert main(["train", *common, "-o", str(run), "--epochs", "1", "--batch-size", "8"]) == 0
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["task"] == "vision"
    assert recorded["label_names"] == ["cat", "dog"]
    assert main(["evaluate", str(run), "--data", str(data), "--num-samples", "2"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 24
    assert set(metrics["by_samples"]) == {"0", "2"}
    (data / "dog" / "broken.png").write_bytes(b"garbage")
    capsys.readouterr()
    code = main(["predict", str(run), str(data / "cat"), str(data / "dog"), "--format", "jsonl"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "skipped" in err
    assert "broken.png" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 24
    assert {r["label"] for r in rows} <= {"cat", "dog"}
    assert all(0 <= r["probability"] <= 1 and r["epistemic"] >= 0 for r in rows)
    assert main(["predict", str(run), str(data / "dog" / "broken.png")]) == 2


def test_too_few_images_are_named_before_the_backbone_loads(tmp_path):
    data = make_folder(tmp_path / "few", per_class=2)
    with pytest.raises(ValueError, match=r"too small: its (validation|test) split is empty"):
        load_vision_task(VisionTaskConfig(data=str(data), model="no-such-model"))
