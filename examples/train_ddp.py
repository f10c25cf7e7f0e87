"""Data-parallel BaLoRA training with plain PyTorch DDP: one script for 1 or N processes.

    python examples/train_ddp.py -o runs/ddp                              # one process
    torchrun --nproc-per-node 2 examples/train_ddp.py -o runs/ddp         # 2 processes
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --master-port 29500 \\
        --nproc-per-node 8 examples/train_ddp.py -o runs/ddp              # 2 machines x 8 GPUs
    python examples/train_ddp.py -o runs/ddp --resume                     # continue a killed run

gloo on CPU, nccl on GPUs. A synthetic classification task and a small MLP stand in for your
data and model; the parts that matter are marked "BaLoRA:". The global batch of each step is a
fixed slice of a seeded permutation, cut into ``world_size x accumulation`` micro-batches;
micro-batch ``g * world_size + rank`` goes to accumulation step g of rank `rank`, so a run
gives the same adapter (up to floating-point summation order) for any split of the same global
batch into processes and accumulation steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import balora
from balora.integrations.distributed import (
    latest_checkpoint,
    load_checkpoint,
    rank_and_world_size,
    save_adapter,
    save_checkpoint,
    training_noise,
    unwrap,
)


class MLP(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def synthetic_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 1.5 * F.one_hot(y, 8).float()
    return x, y


def global_batch(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the examples of optimizer step `step` (an epoch drops its last partial batch)."""
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[position * batch_size : (position + 1) * batch_size]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-o", "--output-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps")
    p.add_argument("--global-batch-size", type=int, default=32)
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per process/step")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", default="example", choices=["example", "token", "none"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every k steps (0: off)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard), not DDP")
    p.add_argument("--crash-after-step", type=int, default=0, help="testing: SIGKILL after step k")
    args = p.parse_args()

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = rank_and_world_size()
    device = torch.device(
        f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    )
    micro, rest = divmod(args.global_batch_size, world * args.accumulation)
    if rest or micro == 0:
        raise SystemExit(
            f"--global-batch-size {args.global_batch_size} must be a multiple of "
            f"world size x accumulation = {world * args.accumulation}"
        )

    x, y = synthetic_data(args.num_train, args.seed)
    torch.manual_seed(args.seed)  # the same initial adapter on every rank
    model = MLP()
    config = balora.BaLoRAConfig(
        r=4, target_modules=["fc1", "fc2"], modules_to_save=["head"], noise=args.noise
    )
    balora.apply(model, config)
    model.to(device=device, dtype=getattr(torch, args.dtype))
    if args.fsdp:  # FSDP2: each adapted layer, then the root (mixed frozen/trainable is fine)
        if args.save_every or args.accumulation > 1:
            raise SystemExit("this example checkpoints and accumulates with DDP only")
        for name in config.target_modules:
            fully_shard(model.get_submodule(name))
        ddp = fully_shard(model)
    else:
        ddp = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr)

    start = 0
    if args.resume and (last := latest_checkpoint(args.output_dir)) is not None:
        start = load_checkpoint(last, model, opt)["step"]
        if rank == 0:
            print(f"resumed from {last} at step {start}")

    for step in range(start, args.steps):
        batch = global_batch(step, args.num_train, args.global_batch_size, args.seed)
        opt.zero_grad(set_to_none=True)
        totals = torch.zeros(2, dtype=torch.float64)
        for g in range(args.accumulation):
            k = g * world + rank  # global micro-batch index
            idx = batch[k * micro : (k + 1) * micro]
            xb = x[idx].to(device=device, dtype=getattr(torch, args.dtype))
            last_micro = g == args.accumulation - 1
            no_sync = world > 1 and not last_micro and not args.fsdp
            sync = ddp.no_sync() if no_sync else contextlib.nullcontext()
            # BaLoRA: independent, reproducible noise per (step, global micro-batch)
            with sync, training_noise(ddp, args.seed, step, g):
                nll = F.cross_entropy(ddp(xb), y[idx].to(device))
                # BaLoRA: the KL is divided by the GLOBAL training-set size
                loss = balora.elbo_loss(nll, unwrap(ddp), num_train=args.num_train)
                (loss / args.accumulation).backward()  # DDP averages over ranks
            totals += torch.stack([nll.detach(), balora.kl_divergence(model).detach()]).cpu()
        opt.step()
        if world > 1:
            dist.all_reduce(totals)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            nll_mean, kl_mean = (totals / (world * args.accumulation)).tolist()
            print(f"step {step + 1}: nll {nll_mean:.4f}  kl/example {kl_mean:.3f}", flush=True)
        if args.save_every and (step + 1) % args.save_every == 0:
            save_checkpoint(args.output_dir, ddp, opt, step + 1, keep=2)  # rank 0, atomic
        if args.crash_after_step == step + 1:
            os.kill(os.getpid(), signal.SIGKILL)

    save_adapter(ddp, args.output_dir / "adapter")  # gathers FSDP shards; rank 0 writes
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
