"""The timing harness: interleaved repetitions, restored gradients, flushed caches, a measured floor.

Every repetition runs every implementation of one operation once, in a rotated order, each call
preceded (outside the timed region) by restoring the gradients and flushing the caches, so every
call really clips and reads from memory. The memory floor is measured inside the same loop: one
large copy per repetition, counted as read + write bytes. Medians are reported.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

FLOOR_ELEMENTS = 64 * 1024 * 1024  # a 256 MiB float32 copy: far beyond any last-level cache
FLUSH_ELEMENTS = 32 * 1024 * 1024  # 128 MiB written between calls


@dataclass
class Impl:
    """One implementation of an operation: a name and a zero-argument callable."""

    name: str
    fn: Callable[[], Any]


@dataclass
class Result:
    """Median milliseconds per implementation, and the floor's bandwidth from the same repetitions."""

    ms: dict[str, float]
    samples: dict[str, list[float]]
    floor_gbps: float
    floor_samples: list[float] = field(default_factory=list)
    load: float | None = None  # 1-minute load average when done: other processes share the cores


class Timer:
    """Wall-clock timing on the CPU; CUDA events (and a device copy for the floor) on a GPU."""

    def __init__(self, device: str = "cpu", floor_elements: int | None = None, flush_elements: int | None = None) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._src = torch.ones(floor_elements or FLOOR_ELEMENTS, device=self.device)
        self._dst = torch.empty_like(self._src)
        self._flush = torch.empty(flush_elements or FLUSH_ELEMENTS, device=self.device)

    def flush(self) -> None:
        """Evict the caches by writing a buffer larger than the last-level cache."""
        self._flush.fill_(1.0)

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Seconds one call of ``fn`` takes."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def floor_gbps(self) -> float:
        """Bandwidth of one large copy in GB/s, counting bytes read plus bytes written."""
        self.flush()
        seconds = self(lambda: self._dst.copy_(self._src))
        return 2 * self._src.numel() * self._src.element_size() / seconds / 1e9


def runnable_others() -> int | None:
    """Runnable tasks on the machine other than this one (Linux ``/proc/loadavg``), else None."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return None


def wait_idle(max_seconds: float, polls: int = 5, interval: float = 0.2) -> bool:
    """Wait (up to ``max_seconds``) until no other task has been runnable for ``polls`` checks in a row.

    On a shared machine another process on the cores makes every parallel region wait for its
    second thread, so the harness can wait for a quiet moment before each operation.
    """
    deadline, quiet = time.monotonic() + max_seconds, 0
    while quiet < polls:
        others = runnable_others()
        if others is None:
            return False
        quiet = quiet + 1 if others <= 0 else 0
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def measure(impls: list[Impl], restore: Callable[[], None], reps: int, timer: Timer) -> Result:
    """Time every implementation ``reps`` times, interleaved, after one untimed warm-up call each.

    Args:
        impls: The implementations to compare (all act on the same gradients).
        restore: Puts the original gradients back (called before every call, not timed).
        reps: Repetitions; each one runs every implementation once, in a rotated order.
        timer: The :class:`Timer` (it also measures the floor once per repetition).

    Returns:
        A :class:`Result` with medians in milliseconds.
    """
    for impl in impls:
        restore()
        impl.fn()
    samples: dict[str, list[float]] = {i.name: [] for i in impls}
    floor: list[float] = []
    for r in range(reps):
        shift = r % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            restore()
            timer.flush()
            samples[impl.name].append(timer(impl.fn) * 1e3)
        floor.append(timer.floor_gbps())
    restore()
    ms = {k: statistics.median(v) for k, v in samples.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return Result(ms=ms, samples=samples, floor_gbps=statistics.median(floor), floor_samples=floor, load=load)
