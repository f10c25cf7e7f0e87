"""Cost of Laplace-LoRA's evaluation at several S: the predictive moments kept across S values
against Jacobians recomputed for every S, measured side by side in one process.

A comparison evaluates a stochastic method at S = 0 and at each S of its grid. Laplace's GLM
predictive N(f_MAP(x), J Σ Jᵀ) needs the Jacobian J of every output with respect to every
adapter weight; `Laplace` keeps the moments of recent inputs, so only the first S value of an
evaluation computes them. The arm ``recomputed`` turns that cache off (its size bound set to
0), which is how every S value was evaluated before.

    python benchmarks/perf_laplace.py                 # MiniLM, Rotten Tomatoes, S 1 4 10 32
    python benchmarks/perf_laplace.py --quick         # smoke run, small sizes

Both arms predict the same inputs with the same seed; ``max_abs_diff`` is the largest
difference of their mean probabilities (0: the same draws).
"""

from __future__ import annotations

from typing import Any

import perf_common as pc
import torch

from balora.config import BaLoRAConfig
from balora.methods import TrainConfig, make_method
from balora.methods import laplace as laplace_module
from balora.predict import predict_batched
from balora.tasks.text import TextTaskConfig, load_text_task


def run(args: Any) -> pc.Report:
    device = pc.setup(args)
    report = pc.Report("laplace", device, args.quick, args.repeats)
    grid = [1, 4] if args.quick else args.samples
    report.notes["S-grid evaluation"] = (
        f"One evaluation: predict at S = {grid} over the same examples in batches of "
        f"{args.batch_size}. kept: the moments of the first S are reused for the others "
        "(balora's default); recomputed: Jacobians for every S (the cache bound set to 0). "
        "Median seconds over the rounds and the median per-round ratio."
    )
    cfg = TextTaskConfig(max_train=32 if args.quick else 128, max_eval=args.examples,
                         max_length=24 if args.quick else 48)  # fmt: skip
    task = load_text_task(cfg)
    adapter = BaLoRAConfig(
        target_modules=list(task.target_modules), modules_to_save=list(task.modules_to_save)
    )
    train = TrainConfig(epochs=1, batch_size=16, max_steps=4 if args.quick else 20)
    method = make_method("laplace", task.model_factory, "classification", adapter=adapter,
                         train=train, seed=0)  # fmt: skip
    method.fit(task.train, task.val)
    test = task.test

    means: dict[str, list[torch.Tensor]] = {}  # each arm's last predictions, for the diff

    def evaluation(name: str, bound: int) -> Any:
        def call() -> None:
            method.laplace = method.laplace  # a fresh evaluation: no moments kept from before
            old = laplace_module.MAX_CACHED_ELEMENTS
            laplace_module.MAX_CACHED_ELEMENTS = bound
            try:
                means[name] = [
                    predict_batched(method, test, s, seed=0, batch_size=args.batch_size).mean
                    for s in grid
                ]
            finally:
                laplace_module.MAX_CACHED_ELEMENTS = old

        return call

    fns = {
        "kept": evaluation("kept", laplace_module.MAX_CACHED_ELEMENTS),
        "recomputed": evaluation("recomputed", 0),
    }
    times, _ = pc.interleaved(fns, args.repeats, args.warmup, device)
    kept, recomputed = means["kept"], means["recomputed"]
    report.add(
        "S-grid evaluation",
        {
            "model": "minilm",
            "examples": len(test),
            "S": " ".join(map(str, grid)),
            "posterior_params": int(method.laplace.n_params),
            "kept_s": pc.median(times["kept"]),
            "recomputed_s": pc.median(times["recomputed"]),
            "kept_vs_recomputed": pc.median(
                [a / b for a, b in zip(times["kept"], times["recomputed"], strict=True)]
            ),
            "max_abs_diff": max(
                float((a - b).abs().max()) for a, b in zip(kept, recomputed, strict=True)
            ),
        },
    )
    report.write(args.output)
    return report


def main(argv: list[str] | None = None) -> pc.Report:
    parser = pc.common_parser(__doc__.splitlines()[0], default_repeats=2)
    parser.set_defaults(warmup=0)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4, 10, 32], help="S grid")
    parser.add_argument("--examples", type=int, default=64, help="evaluation examples")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
