"""Launch helpers for the multi-process tests: run an example script with 1 or 2 gloo
processes on CPU (``torch.distributed.run``, or ``accelerate launch``), with a timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    script: str, *args: object, nproc: int = 1, launcher: str = "torchrun", killed: bool = False
) -> str:
    """Run ``examples/<script>`` and return its output; raise with the output on failure.
    ``killed=True``: the run must end by SIGKILL (a simulated crash)."""
    path = str(EXAMPLES / script)
    if nproc == 1:
        cmd = [sys.executable, path]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
        cmd += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", path]
    else:  # accelerate launch: --multi_gpu starts torchrun-style processes, gloo on CPU
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        cmd += [f"--num_processes={nproc}", "--num_machines=1", "--mixed_precision=no"]
        cmd += ["--dynamo_backend=no", f"--main_process_port={free_port()}", path]
    cmd += [str(a) for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    expected = -signal.SIGKILL if killed else 0
    if proc.returncode != expected:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)
