"""Before/after of the layer speed fixes of issue 7, interleaved in one process.

The "before" arm runs the sampling code of `balora/layers.py` at git revision `--rev` (read with
``git show``), bound to the same layer objects; "after" is the working tree. Both draw the same
random numbers, so they differ only in arithmetic. Arms: a default-BaLoRA training step and
`balora.predict` with S samples, each against LoRA (noise="none").

    python benchmarks/perf_before_after.py --rev d3383c4 --models minilm efficientnet --quick
"""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import perf_common as pc
import torch

import balora
from balora import layers as new_layers


def old_layers(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:src/balora/layers.py"], capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("balora_layers_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "balora_layers_before", "exec"), module.__dict__)
    return module


def to_before(model: torch.nn.Module, old: types.ModuleType) -> torch.nn.Module:
    """Give every BaLoRA layer of `model` the forward / noise code of the old module."""
    for layer in balora.inject.get_adapter(model).layers.values():
        cls = type(layer)
        body = {
            "forward": old.BaLoRALayer.forward,
            "_unit_noise": old.BaLoRALayer._unit_noise,
        }
        if isinstance(layer, new_layers.ConvNd):
            body["_project_per_example"] = old.ConvNd._project_per_example
        layer.__class__ = type("Before" + cls.__name__, (cls,), body)
    return model


def run(args: Any) -> pc.Report:
    device = pc.setup(args)
    old = old_layers(args.rev)
    report = pc.Report("before_after", device, args.quick, args.repeats)
    for name in pc.parse_models(args.models, args.quick):
        work = pc.build(name, args.quick, device)
        if work is None:
            continue
        print(f"{name}: {work.description}", flush=True)
        arms = {
            "lora": pc.balora_arm(work, noise="none"),
            "before": to_before(pc.balora_arm(work), old),
            "after": pc.balora_arm(work),
        }
        steps = {k: pc.train_step_fn(work, m) for k, m in arms.items()}
        times, _ = pc.interleaved(steps, args.repeats, args.warmup, device)
        row = {"model": name, "phase": "train step", "lora_s": pc.median(times["lora"])}
        for k in ("before", "after"):
            row[f"{k}_vs_lora"] = pc.median(
                [a / b for a, b in zip(times[k], times["lora"], strict=True)]
            )
        report.add("before/after", row)
        if work.predict_inputs is not None:
            x, s = work.predict_inputs, args.samples
            for m in arms.values():
                m.eval()
                for layer in balora.inject.get_adapter(m).layers.values():
                    torch.nn.init.normal_(layer.lora_B, std=0.02)
            preds = {
                k: (lambda m=m, x=x, s=s: balora.predict(m, x, s, seed=0)) for k, m in arms.items()
            }
            times, _ = pc.interleaved(preds, args.repeats, args.warmup, device)
            row = {"model": name, "phase": f"predict S={s}", "lora_s": pc.median(times["lora"])}
            for k in ("before", "after"):
                row[f"{k}_vs_lora"] = pc.median(
                    [a / b for a, b in zip(times[k], times["lora"], strict=True)]
                )
            report.add("before/after", row)
    report.write(args.output)
    return report


def main(argv: list[str] | None = None) -> pc.Report:
    parser = pc.common_parser(__doc__.splitlines()[0], default_repeats=5)
    parser.set_defaults(models=["minilm", "efficientnet"])
    parser.add_argument("--rev", default="d3383c4", help="git revision of the 'before' layers")
    parser.add_argument("--samples", type=int, default=32, help="S of the predict phase")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
