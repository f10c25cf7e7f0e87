"""Cost measurements of a run: peak memory of a phase and synchronised wall time.

On CUDA the peak is `torch.cuda.max_memory_allocated` (reset at the start of the phase). On CPU
there is no allocator counter for every tensor, so the peak is the process's resident set size:
Linux keeps its high-water mark (``VmHWM`` in ``/proc/self/status``) and resets it to the current
RSS when ``5`` is written to ``/proc/self/clear_refs``; the phase's figure is the high-water mark
at its end minus the RSS at its start. Elsewhere (or without permission) the CPU figure is None.

`environment` records where a run was computed: a seeded run is repeatable on one machine, but
another CPU's kernels (e.g. AVX512 against AVX2) round differently, and a long training amplifies
that into a different model.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from balora.experiments.results import MemoryKind

_STATUS = Path("/proc/self/status")
_CPUINFO = Path("/proc/cpuinfo")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemoryMeter:
    """Measures the peak memory of a phase: ``start()``, run the phase, ``stop()`` -> bytes.

    `kind` is ``cuda_max_memory_allocated`` when `device` is a CUDA device, else
    ``cpu_peak_rss_increase``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.kind: MemoryKind = (
            "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss_increase"
        )
        self._baseline_kib: int | None = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self._baseline_kib = _status_kib("VmRSS") if _reset_rss_peak() else None

    def stop(self) -> int | None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = _status_kib("VmHWM")
        if self._baseline_kib is None or peak is None:
            return None
        return max(0, peak - self._baseline_kib) * 1024


class Stopwatch:
    """Wall time of a block, synchronising CUDA first so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._start


def _cpu_model() -> str:
    try:
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Where a run is computed: library versions, the processor, the kernels torch chose for
    it (``cpu_capability``: AVX512, AVX2, ...), the thread count and the device (with the GPU's
    name on CUDA)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
