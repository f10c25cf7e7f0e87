"""How gradient clipping treats BaLoRA's adapters: runs `balora train ARGS...` and logs, per
step, the gradient norm each `clip_grad_norm_` call saw and each optimizer group's gradient
norm after clipping (the adapters and heads first, the α parameters second). Made for
docs/regime.md ("A flaw in BaLoRA's training"):

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/clip_diagnostic.py --every 12 -- \\
        --task multiple-choice --dataset rotten_tomatoes --max-train 192 --max-eval 8 \\
        --max-length 96 --batch-size 4 --max-steps 48 --epochs 100 --lr 1e-4 \\
        --method balora --prior-p 0.1 --kl-reduction element -o /tmp/clip --no-progress
"""

from __future__ import annotations

import argparse

import torch
from torch.nn.utils import get_total_norm

from balora.cli import main

clipped: list[float] = []  # every clip_grad_norm_ call's input norm, this step
steps: list[tuple[list[float], list[float]]] = []  # per step: (clip inputs, group norms after)


def _clip(params, max_norm, *args, **kwargs):
    total = _clip_grad_norm(params, max_norm, *args, **kwargs)
    clipped.append(float(total))
    return total


def _step(self, *args, **kwargs):
    norms = [
        float(get_total_norm([p.grad for p in g["params"] if p.grad is not None]))
        for g in self.param_groups
    ]
    steps.append((list(clipped), norms))
    clipped.clear()
    return _adamw_step(self, *args, **kwargs)


_clip_grad_norm = torch.nn.utils.clip_grad_norm_
_adamw_step = torch.optim.AdamW.step


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=5, help="print every k-th step")
    parser.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="-- then `balora train` options"
    )
    args = parser.parse_args()
    torch.nn.utils.clip_grad_norm_ = _clip
    torch.optim.AdamW.step = _step
    status = main(["train", *[a for a in args.train_args if a != "--"]])
    if status:
        raise SystemExit(status)
    print("step | norms clip_grad_norm_ saw | group norms after clipping (adapters, α)")
    for i, (seen, after) in enumerate(steps):
        if i % args.every == 0 or i == len(steps) - 1:
            seen_s, after_s = (", ".join(f"{v:.3g}" for v in vs) for vs in (seen, after))
            print(f"{i} | {seen_s} | {after_s}")
