"""S-sample prediction cost of BaLoRA (issue 7), measured side by side with LoRA.

For each workload and S in (1, 8, 32, 128), one round times (order rotated, after a warm-up):

    balora          balora.predict(model, x, S): S posterior samples, one pass over S·b rows
    lora_repeated   the same call on the LoRA arm (noise="none"): the same arithmetic, no noise
    lora_single     one LoRA forward over the b inputs (the S-forward figure is S times it)
    ensemble        M LoRA members (default M=5), one forward each over the b inputs

and, with the adapters confined to the later layers, `predict(..., cache_prefix=True)` against
the uncached call (the frozen prefix runs once per batch instead of S times).

    python benchmarks/perf_predict.py                     # MiniLM, EfficientNet, LM on CPU
    python benchmarks/perf_predict.py --quick
    python benchmarks/perf_predict.py --device cuda --samples 1 8 32 128 512
"""

from __future__ import annotations

from typing import Any

import perf_common as pc
import torch

import balora
from balora.predict import model_output


def _forward(model: torch.nn.Module, inputs: Any) -> Any:
    def call() -> None:
        with torch.no_grad():
            model_output(model, inputs)

    return call


def _predict(model: torch.nn.Module, inputs: Any, s: int, **kw: Any) -> Any:
    return lambda: balora.predict(model, inputs, s, seed=0, **kw)


def ratio(a: list[float], b: list[float], scale: float = 1.0) -> float:
    return pc.median([x / (scale * y) for x, y in zip(a, b, strict=True)])


def run(args: Any) -> pc.Report:
    device = pc.setup(args)
    report = pc.Report("predict", device, args.quick, args.repeats)
    samples = args.samples or ([1, 8] if args.quick else [1, 8, 32, 128])
    report.notes["S-sample prediction"] = (
        "vs_lora_repeated: balora.predict with S samples / the same call on LoRA (one pass "
        "over the batch repeated S times; target <= 1.05). vs_S_single: / (S x one LoRA forward "
        f"over the b inputs). vs_ensemble: / one forward of each of M={args.members} LoRA "
        "members. Medians of per-round ratios."
    )
    report.notes["frozen-prefix cache"] = (
        "Adapters only in the later layers; predict(..., cache_prefix=True) / the uncached "
        "call, same S, same seed (max_abs_diff: largest difference of the sampled outputs)."
    )
    for name in pc.parse_models(args.models, args.quick):
        if name in ("chgnet",):
            report.add(
                "skipped",
                {"model": name, "why": "inputs are a list of graphs; predict() repeats tensors"},
            )
            continue
        work = pc.build(name, args.quick, device)
        if work is None or work.predict_inputs is None:
            report.add("skipped", {"model": name, "why": "could not be built (see log)"})
            continue
        print(f"{name}: {work.description}", flush=True)
        x = work.predict_inputs
        b = pc.to_device(x, device)
        b_rows = (b if isinstance(b, torch.Tensor) else b["input_ids"]).shape[0]
        bal = pc.balora_arm(work).eval()
        lora = pc.balora_arm(work, noise="none").eval()
        members = [pc.balora_arm(work, noise="none").eval() for _ in range(args.members)]
        for m in [bal, lora, *members]:  # trained adapters have B != 0
            for layer in balora.inject.get_adapter(m).layers.values():
                torch.nn.init.normal_(layer.lora_B, std=0.02)
        single = _forward(lora, x)

        def ensemble(members: list = members, x: Any = x) -> None:
            with torch.no_grad():
                for m in members:
                    model_output(m, x)

        for s in samples:
            fns = {
                "balora": _predict(bal, x, s),
                "lora_repeated": _predict(lora, x, s),
                "lora_single": single,
                "ensemble": ensemble,
            }
            times, _ = pc.interleaved(fns, args.repeats, args.warmup, device)
            report.add(
                "S-sample prediction",
                {
                    "model": name,
                    "S": s,
                    "b": b_rows,
                    "balora_s": pc.median(times["balora"]),
                    "vs_lora_repeated": ratio(times["balora"], times["lora_repeated"]),
                    "vs_S_single": ratio(times["balora"], times["lora_single"], s),
                    "lora_repeated_vs_S_single": ratio(
                        times["lora_repeated"], times["lora_single"], s
                    ),
                    "vs_ensemble": ratio(times["balora"], times["ensemble"]),
                },
            )
        del bal, lora, members
        if work.later_targets is not None:
            late = pc.balora_arm(work, targets=work.later_targets).eval()
            for layer in balora.inject.get_adapter(late).layers.values():
                torch.nn.init.normal_(layer.lora_B, std=0.02)
            for s in samples:
                fns = {
                    "uncached": _predict(late, x, s),
                    "cached": _predict(late, x, s, cache_prefix=True),
                }
                times, _ = pc.interleaved(fns, args.repeats, args.warmup, device)
                a = balora.predict(late, x, s, seed=0, keep_samples=True).samples
                c = balora.predict(late, x, s, seed=0, keep_samples=True, cache_prefix=True)
                report.add(
                    "frozen-prefix cache",
                    {
                        "model": name,
                        "adapted": len(balora.inject.get_adapter(late).layers),
                        "S": s,
                        "uncached_s": pc.median(times["uncached"]),
                        "cached_vs_uncached": ratio(times["cached"], times["uncached"]),
                        "max_abs_diff": float((a - c.samples).abs().max()),
                    },
                )
            del late
    report.write(args.output)
    return report


def main(argv: list[str] | None = None) -> pc.Report:
    parser = pc.common_parser(__doc__.splitlines()[0], default_repeats=5)
    parser.set_defaults(models=["minilm", "efficientnet", "lm"])
    parser.add_argument(
        "--samples", type=int, nargs="+", help="S values (default 1 8 32 128; 1 8 with --quick)"
    )
    parser.add_argument("--members", type=int, default=5, help="ensemble size M")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
