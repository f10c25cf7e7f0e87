"""`torch.compile` on BaLoRA's training and sampling paths (issue 7): does it work, does it help?

For each workload, LoRA (noise="none") and default BaLoRA are timed eager and compiled
(`nn.Module.compile()`, in place, so that `balora.predict` still finds the adapters), one round
running all four arms of a phase in rotated order. Phases: a training step, and
`balora.predict` with S samples. The first compiled call (compilation) is reported separately,
as are graph breaks (`torch._dynamo` counters).

    python benchmarks/perf_compile.py                     # MiniLM on CPU
    python benchmarks/perf_compile.py --quick             # tiny BERT
    python benchmarks/perf_compile.py --device cuda --models minilm lm
"""

from __future__ import annotations

import time
from typing import Any

import perf_common as pc
import torch

import balora


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def run(args: Any) -> pc.Report:
    device = pc.setup(args)
    report = pc.Report("compile", device, args.quick, args.repeats)
    report.notes["torch.compile"] = (
        "compiled_vs_eager: median per-round ratio of the compiled to the eager arm (< 1: "
        "compile helps). first_call_s: the first compiled call (compilation included)."
    )
    models = ["tiny-bert"] if args.quick and args.models == list(pc.FULL_MODELS) else args.models
    for name in pc.parse_models(models, args.quick):
        work = pc.build(name, args.quick, device)
        if work is None:
            continue
        print(f"{name}: {work.description}", flush=True)
        for method, changes in (("lora", {"noise": "none"}), ("balora", {})):
            for phase in ("train step", f"predict S={args.samples}"):
                eager = pc.balora_arm(work, **changes)
                compiled = pc.balora_arm(work, **changes)
                torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()
                compiled.compile()
                if phase == "train step":
                    fns = {"eager": pc.train_step_fn(work, eager)}
                    fns["compiled"] = pc.train_step_fn(work, compiled)
                else:
                    x = work.predict_inputs
                    if x is None:
                        continue

                    def pred(m: Any, x: Any = x) -> Any:
                        return lambda: balora.predict(m.eval(), x, args.samples, seed=0)

                    fns = {"eager": pred(eager), "compiled": pred(compiled)}
                row: dict[str, Any] = {"model": name, "method": method, "phase": phase}
                start = time.perf_counter()
                try:
                    fns["compiled"]()
                    pc.sync(device)
                except Exception as err:  # report, do not hide, a failure to compile
                    row["works"] = f"no: {type(err).__name__}: {str(err)[:120]}"
                    report.add("torch.compile", row)
                    continue
                row["works"] = "yes"
                row["first_call_s"] = time.perf_counter() - start
                row["graph_breaks"] = _graph_breaks()
                times, _ = pc.interleaved(fns, args.repeats, args.warmup, device)
                row["eager_s"] = pc.median(times["eager"])
                row["compiled_vs_eager"] = pc.median(
                    [c / e for c, e in zip(times["compiled"], times["eager"], strict=True)]
                )
                report.add("torch.compile", row)
    report.write(args.output)
    return report


def main(argv: list[str] | None = None) -> pc.Report:
    parser = pc.common_parser(__doc__.splitlines()[0], default_repeats=5)
    parser.set_defaults(models=["minilm"])
    parser.add_argument("--samples", type=int, default=8, help="S of the sampling phase")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
