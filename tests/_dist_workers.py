"""Spawned-process side of tests/test_distributed.py: gloo worlds on the CPU.

:func:`launch` starts one world and every rank runs the named checks in order. A check returns
plain values (norms, errors, collective counts, names); they are saved to ``rank<r>.pt`` after
each check, and the test process asserts on them, so a failure reads like any other. The checks
themselves live in :mod:`_dist_checks`; this module holds the harness and shared helpers.
"""

from __future__ import annotations

import math
import os
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

INF = math.inf


def launch(world: int, out_dir: Path, checks: list[str]) -> list[dict]:
    """Run ``checks`` on ``world`` spawned gloo ranks; return each rank's results."""
    import torch.multiprocessing as mp

    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / "store"
    mp.start_processes(_main, args=(world, str(store), str(out_dir), checks), nprocs=world,
                       start_method="spawn", join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _main(rank: int, world: int, store: str, out: str, checks: list[str]) -> None:
    import _dist_checks

    torch.set_num_threads(1)
    os.environ["GRADCLIP_TEST_OUT"] = out
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    results: dict = {}
    try:
        for name in checks:
            try:
                results[name] = getattr(_dist_checks, name)(rank, world)
            except Exception:  # reported by the parent, with the rank's traceback
                results[name] = {"_traceback": traceback.format_exc()}
            torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class Count:
    """Count calls to ``torch.distributed.all_reduce`` (the ranks of each call's group)."""

    def __enter__(self) -> Count:
        self.calls: list[tuple[int, ...]] = []
        self._orig = dist.all_reduce

        def counted(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
            self.calls.append(tuple(dist.get_process_group_ranks(group or dist.group.WORLD)))
            return self._orig(tensor, op=op, group=group, async_op=async_op)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc) -> None:
        dist.all_reduce = self._orig


def full_grads(shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The same random float32 gradients on every rank."""
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(s, generator=gen, dtype=torch.float64) * scale).float() for n, s in shapes.items()}


def param(grad: torch.Tensor, value: torch.Tensor | None = None) -> torch.nn.Parameter:
    """A parameter (zeros, or ``value``) holding ``grad``."""
    p = torch.nn.Parameter(torch.zeros_like(grad) if value is None else value)
    p.grad = grad
    return p


def ref_norm(grads, p: float) -> float:
    """Float64 norm of whole gradients (the oracle)."""
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double(), p) for g in grads]), p))


def rel_err(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over all tensors, relative to the largest expected magnitude."""
    scale = max(float(t.abs().max()) for t in expected.values() if t.numel()) or 1.0
    return max(float((actual[n].double() - t.double()).abs().max()) if t.numel() else 0.0
               for n, t in expected.items()) / scale


def rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(b), 1e-30)


def ref_clip(grads: dict[str, torch.Tensor], max_norm: float, p: float) -> dict[str, torch.Tensor]:
    """torch's clipping of whole gradients, in float64."""
    params = {n: param(g.double().clone()) for n, g in grads.items()}
    torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm, norm_type=p)
    return {n: q.grad for n, q in params.items()}


def gather(obj):
    """Every rank's ``obj`` (a list in rank order)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Hand:
    """Gradients sharded by hand over a (tp x pp) grid of ranks.

    Stage ``s`` holds ``s{s}.w`` and ``s{s}.b`` split along dim 0 over its tensor-parallel ranks
    (uneven, possibly empty), ``s{s}.ln`` replicated on them, and the first and last stage
    both hold ``tied`` (split over tp). World 2: one stage (group=WORLD); world 4: 2 x 2 with
    ``groups=(tp, pp)``.
    """

    def __init__(self, rank: int, world: int) -> None:
        self.tp = 2
        self.pp = world // self.tp
        self.stage, self.tp_rank = divmod(rank, self.tp)
        tp_groups = [dist.new_group([s * self.tp + t for t in range(self.tp)]) for s in range(self.pp)]
        pp_groups = [dist.new_group([s * self.tp + t for s in range(self.pp)]) for t in range(self.tp)]
        if self.pp == 1:
            self.kwargs = {"group": dist.group.WORLD, "replicated": ["s0.ln"]}
        else:
            pp = self.pp
            copies = lambda name, t: True if name.endswith(".ln") else (pp if name == "tied" else 1)  # noqa: E731
            self.kwargs = {"groups": (tp_groups[self.stage], pp_groups[self.tp_rank]), "replicated": copies}
        shapes = {"tied": (6, 2)}
        for s in range(self.pp):
            shapes.update({f"s{s}.w": (7, 3), f"s{s}.b": (3,), f"s{s}.ln": (4,)})
        self.shapes = shapes

    def holds(self, name: str) -> bool:
        if name == "tied":
            return self.stage in (0, self.pp - 1)
        return name.startswith(f"s{self.stage}.")

    def split(self, name: str) -> bool:
        return not name.endswith(".ln")

    def local(self, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's parts of the whole gradients."""
        out = {}
        for n, g in full.items():
            if self.holds(n):
                out[n] = g.tensor_split(self.tp)[self.tp_rank].clone() if self.split(n) else g.clone()
        return out

    def params(self, full: dict[str, torch.Tensor]) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, param(g)) for n, g in self.local(full).items()]

    def assemble(self, named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
        """Whole gradients from every rank's parts (a collective)."""
        parts = gather({n: q.grad for n, q in named})
        out = {}
        for n in self.shapes:
            ranks = [r for r in range(len(parts)) if n in parts[r]]
            first_stage = [r for r in ranks if r // self.tp == ranks[0] // self.tp]
            out[n] = torch.cat([parts[r][n] for r in first_stage]) if self.split(n) else parts[ranks[0]][n]
        return out
