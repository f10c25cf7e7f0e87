"""Every performance benchmark of issue 7 in one command; tables go to --output.

    python benchmarks/perf_all.py --device cuda --output DIR      # GPU: a few minutes
    python benchmarks/perf_all.py --quick --output /tmp/perf      # smoke run
    python benchmarks/perf_all.py --small --output docs/results/performance   # shared CPU

Runs perf_params, perf_train, perf_predict and perf_compile (skip it with --skip-compile) with
the same device, output folder and size; each writes ``<name>.md`` and ``<name>.json``.
``--small`` uses the quick sizes with the full number of repetitions (what a loaded CPU allows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import perf_common as pc
import perf_compile
import perf_params
import perf_predict
import perf_train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=pc.DEFAULT_OUTPUT)
    parser.add_argument("--quick", action="store_true", help="smoke run: small, 2 repeats")
    parser.add_argument("--small", action="store_true", help="small sizes, full repeats")
    parser.add_argument("--models", nargs="+", default=list(pc.FULL_MODELS))
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args(argv)
    out = ["--device", args.device, "--output", str(args.output)]
    size = ["--quick"] if args.quick or args.small else []
    repeats = {"train": 5, "predict": 3, "compile": 3} if args.small else {}

    def rep(name: str) -> list[str]:
        return ["--repeats", str(repeats[name])] if name in repeats else []

    perf_params.main([*out, "--models", *args.models])
    perf_train.main([*out, *size, *rep("train"), "--models", *args.models])
    predict_models = [m for m in args.models if m != "chgnet"]
    samples = ["--samples", "1", "8", "32"] if args.small else []
    perf_predict.main([*out, *size, *rep("predict"), *samples, "--models", *predict_models])
    if not args.skip_compile:
        models = [m for m in args.models if m in ("minilm", "tiny-bert")] or args.models[:1]
        perf_compile.main([*out, *size, *rep("compile"), "--models", *models])


if __name__ == "__main__":
    main()
