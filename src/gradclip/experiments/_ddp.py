"""``gradclip compare --nproc N``: the PyTorch runner under DistributedDataParallel, N processes.

N worker processes form one gloo world on the CPU (started once, for all runs). Each run is the
one-process run of :func:`gradclip.experiments._torch.run` with every batch split into N parts:
rank ``r`` computes ``N * sum(loss over its part) / batch size``, DDP averages the gradients,
which gives exactly the gradient of the batch-mean loss, and the logged loss is all-reduced to
the batch mean. The clipper then sees replicated gradients and decides identically everywhere,
so the results are those of one process up to floating-point rounding. Rank 0 writes the
per-step log and reports the :class:`RunResult`.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import traceback
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any

from gradclip._errors import ConfigError
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import Data, Task

__all__ = ["MAX_NPROC", "Pool", "Shard"]

#: Most processes ``--nproc`` starts (the CPU experiment gains nothing from more).
MAX_NPROC = 16


class Shard:
    """What rank ``rank`` of ``world`` does differently in a run: its part of every batch."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def wrap(self, model: Any) -> Any:
        """The model as trained: wrapped in ``DistributedDataParallel``."""
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def loss(self, net: Any, loss_fn: Any, X: Any, y: Any) -> Any:
        """This rank's share of the batch-mean loss, scaled so that DDP's mean gives the batch's gradient."""
        import torch

        part = torch.arange(len(X)).tensor_split(self.world)[self.rank]
        return loss_fn(net(X[part]), y[part], reduction="sum") * (self.world / y.numel())

    def value(self, loss: Any) -> float:
        """The batch-mean loss (an all-reduce of the ranks' shares)."""
        import torch.distributed as dist

        total = loss.detach().clone()
        dist.all_reduce(total)
        return float(total) / self.world


class Pool:
    """A gloo world of ``nproc`` processes that trains runs with DDP (same interface as the runner).

    Args:
        nproc: Number of processes, 2 to :data:`MAX_NPROC` (1 needs no pool).
        framework: Must be ``"torch"``.

    Raises:
        ConfigError: another framework, or ``nproc`` out of range.
    """

    def __init__(self, nproc: int, framework: str = "torch") -> None:
        if framework != "torch":
            raise ConfigError(f"--nproc runs PyTorch's DistributedDataParallel; it needs --framework torch. "
                              f"Received: --framework {framework}.")
        if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_NPROC:
            raise ConfigError(f"--nproc must be an int from 1 to {MAX_NPROC}. Received: {nproc!r}.")
        self.nproc = nproc
        self._procs: list[Any] = []

    def _start(self) -> None:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        folder = tempfile.mkdtemp(prefix="gradclip-ddp-")
        self._jobs = [ctx.Queue() for _ in range(self.nproc)]
        self._results = ctx.Queue()
        args = [(r, self.nproc, f"{folder}/store", self._jobs[r], self._results) for r in range(self.nproc)]
        self._procs = [ctx.Process(target=_worker, args=a, daemon=True) for a in args]
        for p in self._procs:
            p.start()
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._jobs, folder)

    def run(self, task: Task, method: str, seed: int, data: Data, log_path: Path | None = None) -> RunResult:
        """Train one run on every rank; return rank 0's result.

        Raises:
            RuntimeError: a rank failed (its traceback is in the message) or died.
        """
        if not self._procs:
            self._start()
        for q in self._jobs:
            q.put((task, method, seed, data, None if log_path is None else str(log_path)))
        while True:
            try:
                message = self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(self._procs) if not p.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(
                        f"DDP worker rank(s) {dead} exited unexpectedly. Worker processes are spawned: a "
                        "script that calls compare(nproc=...) must guard it with if __name__ == '__main__':."
                    ) from None
                continue
            if message[0] == "ok":
                return message[1]
            self.close()
            raise RuntimeError(f"DDP worker rank {message[1]} failed:\n{message[2]}")

    def close(self) -> None:
        """Stop the workers (also done when the pool is garbage-collected)."""
        if self._procs:
            self._finalizer()
            self._procs = []


def _stop(procs: list[Any], jobs: list[Any], folder: str) -> None:
    for q in jobs:
        q.put(None)
        q.cancel_join_thread()  # a dead worker never reads its queue: do not wait for it at exit
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
    shutil.rmtree(folder, ignore_errors=True)


def _worker(rank: int, world: int, store: str, jobs: Any, results: Any) -> None:
    """One rank: join the world, then train every run it is sent until it gets ``None``.

    Ctrl-C in a terminal reaches the whole process group; a rank ignores it, and the parent, which
    handles it (finished runs are kept), stops the pool.
    """
    import signal

    import torch
    import torch.distributed as dist

    from gradclip.experiments import _torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(minutes=5))
    shard = Shard(rank, world)
    try:
        while (job := jobs.get()) is not None:
            task, method, seed, data, log = job
            try:
                result = _torch.run(task, method, seed, data, Path(log) if log and rank == 0 else None, shard=shard)
                if rank == 0:
                    results.put(("ok", result))
            except Exception:  # reported by the parent, which stops the pool
                results.put(("error", rank, traceback.format_exc()))
    finally:
        dist.destroy_process_group()
