"""Training-step cost of BaLoRA against LoRA and PEFT's LoRA (issue 7), measured side by side.

For each workload (`perf_common`), every arm wraps the same frozen base weights: PEFT's LoRA,
``lora`` (BaLoRA with ``noise="none"``: the same code path without noise) and BaLoRA for each α
source (layer, backbone, constant) and noise structure (example, token); r=8, lora_alpha=16.
A step is forward + ELBO + backward + AdamW. Each round runs every arm once (order rotated);
the table holds the median step time and peak memory, and their ratios to ``lora`` and to
PEFT's LoRA. The default configuration is ``balora-layer-example``.

    python benchmarks/perf_train.py                       # all workloads, CPU (~15 min)
    python benchmarks/perf_train.py --quick               # smoke run
    python benchmarks/perf_train.py --device cuda --models lm --repeats 20
"""

from __future__ import annotations

from typing import Any

import perf_common as pc
import torch

DEFAULT = "balora-layer-example"


def run(args: Any) -> pc.Report:
    device = pc.setup(args)
    report = pc.Report("train", device, args.quick, args.repeats)
    report.notes["train step"] = (
        "Median seconds and peak memory of one optimisation step; ratios are per-round "
        "medians of arm / reference, measured interleaved. Memory: "
        + (
            "torch.cuda.max_memory_allocated during the step."
            if device.type == "cuda"
            else "rise of the process's RSS high-water mark during the step (CPU; the mmap "
            "threshold pinned, so large tensors are fresh mappings)."
        )
    )
    for name in pc.parse_models(args.models, args.quick):
        work = pc.build(name, args.quick, device)
        if work is None:
            report.add("skipped", {"model": name, "why": "could not be built (see log)"})
            continue
        print(f"{name}: {work.description}", flush=True)
        arms = [a for a in pc.train_arm_names(work) if not args.arms or a in args.arms]
        arms = list(dict.fromkeys(["peft-lora", "lora", *arms]))  # the references always run
        why = pc.peft_supported(work)
        if why:
            arms.remove("peft-lora")
            report.add("skipped", {"model": name, "why": f"PEFT LoRA: {why}"})
        steps = {arm: pc.train_step_fn(work, pc.make_train_arm(work, arm)) for arm in arms}
        times, peaks = pc.interleaved(steps, args.repeats, args.warmup, device, memory=True)
        t_lora, t_peft = times["lora"], times.get("peft-lora")
        for arm in arms:
            t = times[arm]
            row: dict[str, Any] = {
                "model": name,
                "arm": arm + (" (default)" if arm == DEFAULT else ""),
                "step_s": pc.median(t),
                "time_vs_lora": pc.median([a / b for a, b in zip(t, t_lora, strict=True)]),
                "time_vs_peft": pc.median([a / b for a, b in zip(t, t_peft, strict=True)])
                if t_peft
                else None,
            }
            if peaks[arm]:
                peak = pc.median(peaks[arm])
                row["peak_MiB"] = peak / 2**20
                for ref, key in (("lora", "mem_vs_lora"), ("peft-lora", "mem_vs_peft")):
                    base = pc.median(peaks[ref]) if peaks.get(ref) else 0
                    row[key] = peak / base if base > 2**20 else None  # < 1 MiB: noise
            report.add("train step", {**row, "setup": work.description} if arm == "lora" else row)
        del steps, work
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report.write(args.output)
    return report


def main(argv: list[str] | None = None) -> pc.Report:
    parser = pc.common_parser(__doc__.splitlines()[0], default_repeats=7)
    parser.add_argument("--arms", nargs="+", help="only these BaLoRA arms (and the references)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
