"""The operations timed on each workload, each with gradclip's and torch's implementations.

Every operation carries the bytes it must move at the least (its memory floor) and the name of
the implementation the others are compared with (``base``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import gradclip.torch as gct
from gradclip.bench._timing import Impl
from gradclip.bench._workloads import Workload
from gradclip.monitor import Monitor

TU = torch.nn.utils
CLIP_AT = 1.0  # N(0, 1) gradients have a norm of sqrt(elements): every call clips
NEVER = 1e12  # never clips: the "no clipping needed" case
VALUE = 0.5  # about 60% of N(0, 1) elements lie outside [-0.5, 0.5]
POLICIES = ("autoclip:p=10", "zclip", "adagc", "maxhist:5", "spikeguard+norm:1.0", "agc:0.01")


@dataclass
class Op:
    """One operation: its implementations, its floor in bytes, and the comparison base."""

    name: str
    impls: list[Impl]
    floor_bytes: int
    base: str = "torch foreach"


def _norm_impls(ps: list[torch.nn.Parameter], max_norm: float, low_precision: bool) -> list[Impl]:
    impls = [
        Impl("torch foreach", lambda: TU.clip_grad_norm_(ps, max_norm, foreach=True)),
        Impl("torch loop", lambda: TU.clip_grad_norm_(ps, max_norm, foreach=False)),
        Impl("gradclip", lambda: gct.clip_grad_norm_(ps, max_norm)),
        Impl("gradclip fast=True", lambda: gct.clip_grad_norm_(ps, max_norm, fast=True)),
    ]
    if low_precision:
        f32 = torch.float32
        impls.append(Impl("gradclip norm_dtype=fp32", lambda: gct.clip_grad_norm_(ps, max_norm, norm_dtype=f32)))
        impls.append(Impl("gradclip fast, fp32 norm",
                          lambda: gct.clip_grad_norm_(ps, max_norm, norm_dtype=f32, fast=True)))
    spec = f"norm:{max_norm}"
    impls.append(Impl("Clipper", lambda c=gct.Clipper(spec): c.step(ps)))
    impls.append(Impl("Clipper fast=True", lambda c=gct.Clipper(spec, fast=True): c.step(ps)))
    return impls


def clip_ops(w: Workload, extras: bool) -> list[Op]:
    """Clip (clipping and not), norm only, value clip; with ``extras`` also policies and Monitor."""
    ps, grads, g = w.params, w.grads, w.grad_bytes
    low = w.grads[0].dtype in (torch.bfloat16, torch.float16)
    ops = [
        Op("clip (clipping)", _norm_impls(ps, CLIP_AT, low), 3 * g),
        Op("clip (no clipping needed)", _norm_impls(ps, NEVER, low), g),
        Op("norm only", [
            Impl("torch foreach", lambda: TU.get_total_norm(grads, foreach=True)),
            Impl("torch loop", lambda: TU.get_total_norm(grads, foreach=False)),
            Impl("gradclip", lambda: gct.get_total_norm(grads)),
            Impl("gradclip fast=True", lambda: gct.get_total_norm(grads, fast=True)),
        ], g),
        Op("value clip", [
            Impl("torch foreach", lambda: TU.clip_grad_value_(ps, VALUE, foreach=True)),
            Impl("torch loop", lambda: TU.clip_grad_value_(ps, VALUE, foreach=False)),
            Impl("gradclip", lambda: gct.clip_grad_value_(ps, VALUE)),
        ], 2 * g),
    ]
    return ops + ([monitor_op(w)] if extras else [])


class PolicyBench:
    """Every adaptive policy against plain global-norm clipping, both through a default Clipper.

    Each adaptive clipper first sees 80 steps of tiny gradients (on stand-in tensors of the same
    count), so its threshold is low and every timed call clips (or, for SpikeGuard, skips a spike),
    as plain clipping does. Its state is restored to that snapshot before every call, so repeated
    calls do not teach it the benchmark's norm.
    """

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.clippers = {s: gct.Clipper(s) for s in ("norm:1.0", *POLICIES)}
        tiny = [torch.nn.Parameter(torch.zeros(1, device=w.params[0].device)) for _ in w.params]
        for c in self.clippers.values():
            for i in range(80):
                for p in tiny:
                    p.grad = torch.full_like(p, 1e-3 * (1 + i % 3))
                c.step(tiny)
        self.snapshots = {s: c.state_dict() for s, c in self.clippers.items()}

    def restore(self) -> None:
        self.w.restore()
        for s, c in self.clippers.items():
            c.load_state_dict(self.snapshots[s])

    def op(self) -> Op:
        ps = self.w.params
        impls = [Impl(f"Clipper {s}", lambda c=c: c.step(ps)) for s, c in self.clippers.items()]
        return Op("adaptive policies", impls, 3 * self.w.grad_bytes, base="Clipper norm:1.0")


def monitor_op(w: Workload) -> Op:
    """The Monitor's cost on top of the Clipper (callback sink: the monitor's own work only)."""
    ps, clipper = w.params, gct.Clipper("norm:1.0")
    quiet, layers = Monitor([lambda r: None], per_layer=False), Monitor([lambda r: None], per_layer=True)
    return Op("Monitor overhead", [
        Impl("Clipper", lambda: clipper.step(ps)),
        Impl("Clipper + Monitor(per_layer=False)", lambda: quiet.step(ps, clip_stats=clipper.step(ps))),
        Impl("Clipper + Monitor(per_layer=True)", lambda: layers.step(ps, clip_stats=clipper.step(ps))),
    ], 3 * w.grad_bytes, base="Clipper")


class StepBench:
    """A full optimizer step (clip + AdamW), three ways, each with its own parameters and state."""

    def __init__(self, make) -> None:
        self.work = [make() for _ in range(3)]
        a, b, c = (w.params for w in self.work)
        self.opts = [torch.optim.AdamW(a, foreach=True), torch.optim.AdamW(b, fused=True),
                     gct.clipped(torch.optim.AdamW(c, fused=True), "norm:1.0")]
        self.name = self.work[0].label()

    def restore(self) -> None:
        for w in self.work:
            w.restore()

    def op(self) -> Op:
        (a, b, _), (fe, fu, ours) = (w.params for w in self.work), self.opts
        # fused AdamW moves 7 parameter-sized arrays (read p, g, m, v; write p, m, v), the norm one more
        return Op("clip + AdamW step", [
            Impl("torch clip + AdamW(foreach)", lambda: (TU.clip_grad_norm_(a, 1.0), fe.step())),
            Impl("torch clip + AdamW(fused)", lambda: (TU.clip_grad_norm_(b, 1.0), fu.step())),
            Impl("gradclip clipped(AdamW(fused))", ours.step),
        ], 8 * self.work[0].grad_bytes, base="torch clip + AdamW(foreach)")
