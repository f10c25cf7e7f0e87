"""Parameter overhead of BaLoRA over LoRA, per α source (issue 7). Counts, not timings.

For each workload: the adapter parameters of LoRA (A and B of every adapted layer), of PEFT's
LoRA, and of BaLoRA with each α source (what it adds: ``layer`` d_in + 1 per layer, ``constant``
1 per layer, ``backbone`` one MLP for all layers), and of an M-member LoRA ensemble. Heads in
`modules_to_save` are counted separately, since every method trains them alike.

    python benchmarks/perf_params.py
    python benchmarks/perf_params.py --models minilm lm --members 5
"""

from __future__ import annotations

from typing import Any

import perf_common as pc

ADAPTER_KEYS = ("lora_A", "lora_B")


def _count(model: Any, saved: list[str]) -> tuple[int, int, int]:
    """(LoRA factors, α parameters, trainable heads) of a wrapped model."""
    lora = alpha = head = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(k in name for k in ADAPTER_KEYS):
            lora += p.numel()
        elif "alpha" in name:
            alpha += p.numel()
        else:
            head += p.numel()
    return lora, alpha, head


def run(args: Any) -> pc.Report:
    device = pc.setup(args)
    report = pc.Report("params", device, args.quick, 1)
    report.notes["parameters"] = (
        "lora_params: A and B of every adapted layer (r=8). extra: α parameters BaLoRA adds. "
        f"overhead: extra / lora_params. ensemble: M={args.members} LoRA members' factors. "
        "head: trainable modules_to_save (same for every method)."
    )
    for name in pc.parse_models(args.models, args.quick):
        work = pc.build(name, True, device)
        if work is None:
            report.add("skipped", {"model": name, "why": "could not be built (see log)"})
            continue
        total = sum(p.numel() for p in work.model.parameters())
        lora, _, head = _count(pc.balora_arm(work, noise="none"), work.modules_to_save)
        why = pc.peft_supported(work)
        peft: Any = (
            f"fails ({why})"
            if why
            else sum(
                p.numel()
                for n, p in pc.peft_arm(work).named_parameters()
                if p.requires_grad and "lora_" in n
            )
        )
        row: dict[str, Any] = {
            "model": name,
            "base_params": total,
            "adapted_layers": len(pc.balora_arm(work, noise="none")._balora.layers),
            "lora_params": lora,
            "peft_lora_params": peft,
            "head": head,
        }
        for source in pc.ALPHA_SOURCES:
            if source == "backbone" and not work.supports_backbone:
                row["extra_backbone"] = "n/a"
                continue
            _, extra, _ = _count(pc.balora_arm(work, alpha_source=source), work.modules_to_save)
            row[f"extra_{source}"] = extra
            row[f"overhead_{source}"] = extra / lora
        row["ensemble_params"] = args.members * lora
        report.add("parameters", row)
    report.write(args.output)
    return report


def main(argv: list[str] | None = None) -> pc.Report:
    parser = pc.common_parser(__doc__.splitlines()[0], default_repeats=1)
    parser.add_argument("--members", type=int, default=5, help="ensemble size M")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
