"""Checks run on every rank of a spawned gloo world (harness: :mod:`_dist_workers`).

Each check rebuilds the single-process reference on every rank (whole gradients, same seeds) and
returns plain values: relative errors, collective counts, what was reported. No asserts here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from _dist_workers import INF, Count, Hand, full_grads, gather, param, ref_clip, ref_norm, rel, rel_err

import gradclip
import gradclip.torch as gct

PS = (1.0, 2.0, INF)


def _mlp(hidden: tuple[int, int] = (5, 3)) -> nn.Module:
    """6 -> hidden -> 1 (uneven FSDP shards; tensor parallelism needs even widths: (8, 4))."""
    torch.manual_seed(0)
    a, b = hidden
    return nn.Sequential(nn.Linear(6, a), nn.ReLU(), nn.Linear(a, b), nn.ReLU(), nn.Linear(b, 1))


def _mesh(*shape: int, names=None):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", shape, mesh_dim_names=names)


def _fsdp_pair(world: int, tp: bool = False) -> tuple[nn.Module, nn.Module]:
    """The same MLP twice with gradients of one batch: whole, and FSDP2 (+ TP on a 2-D mesh)."""
    from torch.distributed.fsdp import fully_shard

    ref, model = (_mlp((8, 4)), _mlp((8, 4))) if tp else (_mlp(), _mlp())
    if tp:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        mesh = _mesh(world // 2, 2, names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        fully_shard(model, mesh=mesh["dp"])
    else:
        fully_shard(model, mesh=_mesh(world))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    for net in (ref, model):
        net(x).pow(2).sum().mul(10).backward()
    return ref, model


def _dt(t: torch.Tensor, mesh, placements):
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.clone(), mesh, placements)


def _whole(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: q.grad.full_tensor() if hasattr(q.grad, "full_tensor") else q.grad for n, q in model.named_parameters()}


def _fsdp(world: int, tp: bool) -> dict:
    out = {}
    for p in PS:
        ref, model = _fsdp_pair(world, tp)
        whole = {n: q.grad for n, q in ref.named_parameters()}
        with Count() as c1:
            total = gct.get_total_norm([q.grad for q in model.parameters()], p)
        with Count() as c2:
            norm = gct.clip_grad_norm_(model.parameters(), 0.5, norm_type=p)
        out[p] = {"plain": type(norm) is torch.Tensor and type(total) is torch.Tensor,
                  "norm_err": rel(float(norm), ref_norm(whole.values(), p)),
                  "total_err": rel(float(total), ref_norm(whole.values(), p)),
                  "grad_err": rel_err(_whole(model), ref_clip(whole, 0.5, p)), "calls": c1.calls + c2.calls}
    ref, model = _fsdp_pair(world, tp)  # torch's own norm (a DTensor) into our clip_grads_with_norm_
    whole = {n: q.grad for n, q in ref.named_parameters()}
    try:
        norm = torch.nn.utils.get_total_norm([q.grad for q in model.parameters()])
        out["torch_raises"] = False
    except RuntimeError:  # torch 2.13 stacks per-tensor norms: two meshes (FSDP2 + TP) cannot be mixed
        out["torch_raises"] = True
        norm = gct.get_total_norm([q.grad for q in model.parameters()])
    gct.clip_grads_with_norm_(model.parameters(), 0.5, norm)
    out["with_norm_err"] = rel_err(_whole(model), ref_clip(whole, 0.5, 2.0))
    gct.clip_grad_value_(model.parameters(), 0.01, nonfinite="skip")
    expected = {n: g.double().clamp(-0.01, 0.01) for n, g in ref_clip(whole, 0.5, 2.0).items()}
    out["value_err"] = rel_err(_whole(model), expected)
    ref, model = _fsdp_pair(world, tp)
    with Count() as c:
        stats = gct.Clipper(gradclip.GlobalNorm(0.5)).step(model)
    expected = [float(torch.linalg.vector_norm(q.grad.double())) for q in ref.parameters()]
    out["clipper"] = {"norm_err": rel(float(stats.norm), ref_norm([q.grad for q in ref.parameters()], 2.0)),
                      "tensor_err": max(rel(float(a), b) for a, b in zip(stats.tensor_norms, expected)),
                      "clipped_err": rel(float(stats.clipped_norm), 0.5), "calls": c.calls}
    return out


def fsdp2(rank: int, world: int) -> dict:
    return _fsdp(world, tp=False)


def fsdp_tp(rank: int, world: int) -> dict:
    return _fsdp(world, tp=True)


def hand(rank: int, world: int) -> dict:
    h = Hand(rank, world)
    whole = full_grads(h.shapes, seed=3)
    out = {}
    for p in PS:
        named = h.params(whole)
        with Count() as c:
            norm = gct.clip_grad_norm_(named, 0.5, norm_type=p, **h.kwargs)
        out[p] = {"norm_err": rel(float(norm), ref_norm(whole.values(), p)),
                  "grad_err": rel_err(h.assemble(named), ref_clip(whole, 0.5, p)), "calls": c.calls}
    named = h.params(whole)
    with Count() as c:
        stats = gct.Clipper(gradclip.GlobalNorm(0.5), **h.kwargs).step(named)
    out["clipper"] = {"norm_err": rel(float(stats.norm), ref_norm(whole.values(), 2.0)),
                      "grad_err": rel_err(h.assemble(named), ref_clip(whole, 0.5, 2.0)), "calls": c.calls}
    unmarked = {k: v for k, v in h.kwargs.items() if k != "replicated"}
    norm = gct.get_total_norm([q.grad for _, q in h.params(whole)], **unmarked)
    out["unmarked_err"] = rel(float(norm), ref_norm(whole.values(), 2.0))
    return out


def meshes(rank: int, world: int) -> dict:
    """DTensors on two meshes (and a sub-mesh), Replicate dimensions, plus a plain tensor."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh1, mesh2 = _mesh(world), _mesh(world // 2, 2, names=("dp", "tp"))
    where = {"a": (mesh1, [Shard(0)]), "b": (mesh1, [Replicate()]), "c": (mesh2, [Replicate(), Shard(0)]),
             "d": (mesh2, [Shard(1), Shard(0)]), "e": (mesh2["tp"], [Shard(1)])}
    whole = full_grads({"a": (9, 4), "b": (5,), "c": (6, 3), "d": (3, 5), "e": (4, 4), "plain": (7,)}, seed=5)

    def build():
        named = []
        for n, g in whole.items():
            if n in where:
                m, pl = where[n]
                value = distribute_tensor(torch.zeros_like(g), m, pl)
                named.append((n, param(distribute_tensor(g.clone(), m, pl), value)))
            else:
                named.append((n, param(g.clone())))
        return named

    groups = [mesh1.get_group(), dist.group.WORLD, mesh2["tp"].get_group()]
    out = {"expected_calls": len({id(g) for g in groups})}
    for p in PS:
        named = build()
        with Count() as c:
            norm = gct.clip_grad_norm_(named, 0.5, norm_type=p)
        got = {n: q.grad.full_tensor() if n in where else q.grad for n, q in named}
        out[p] = {"norm_err": rel(float(norm), ref_norm(whole.values(), p)),
                  "grad_err": rel_err(got, ref_clip(whole, 0.5, p)), "calls": c.calls}
    named = build()
    stats = gct.Clipper(gradclip.PerTensorNorm(0.5)).step(named)
    expected = [float(torch.linalg.vector_norm(g.double())) for g in whole.values()]
    out["per_tensor_err"] = max(rel(float(a), b) for a, b in zip(stats.tensor_norms, expected))
    return out


def pipeline_fsdp(rank: int, world: int) -> dict:
    """Two pipeline stages, each FSDP-sharded over its own 2 ranks (DTensors on the stage's mesh),
    each with a plain tensor replicated over its stage; ``group=`` the pipeline group."""
    grid = _mesh(2, world // 2, names=("pp", "dp"))
    stage, stage_mesh, pp = rank // (world // 2), grid["dp"], grid["pp"].get_group()
    whole = full_grads({f"s{s}.{k}": shape for s in range(2) for k, shape in (("w", (5, 3)), ("p", (4,)))}, seed=9)

    def build():
        mine = [(n, g) for n, g in whole.items() if n.startswith(f"s{stage}.")]
        return [(n, param(_dt(g, stage_mesh, [_shard0()]) if n.endswith(".w") else g.clone())) for n, g in mine]

    out = {}
    for p in PS:
        named = build()
        with Count() as c:
            norm = gct.clip_grad_norm_(named, 0.5, norm_type=p, group=pp)
        parts = gather({n: q.grad.full_tensor() if n.endswith(".w") else q.grad for n, q in named})
        got = {n: g for part in parts for n, g in part.items()}
        out[p] = {"norm_err": rel(float(norm), ref_norm(whole.values(), p)),
                  "grad_err": rel_err(got, ref_clip(whole, 0.5, p)), "calls": c.calls}
    return out


def _shard0():
    from torch.distributed.tensor import Shard

    return Shard(0)


def _poisoned(h: Hand, whole: dict, rank: int, value: float = math.nan):
    named = h.params(whole)
    if rank == 1:
        dict(named)["s0.w"].grad[0, 1] = value
    return named


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def nonfinite(rank: int, world: int) -> dict:
    """A NaN in rank 1's shard only: every rank must see it, name rank 1, and skip together."""
    h = Hand(rank, world)
    whole = full_grads(h.shapes, seed=7)
    out = {}
    named = _poisoned(h, whole, rank)
    before = {n: q.grad.clone() for n, q in named}
    opt = torch.optim.SGD([q for _, q in named], lr=0.1)
    stats = gct.Clipper(gradclip.GlobalNorm(1.0), nonfinite="skip", **h.kwargs).step(named)
    if not bool(stats.skipped):
        opt.step()
    out["skip"] = {"skipped": bool(stats.skipped), "nonfinite": bool(stats.nonfinite),
                   "offenders": [(o.rank, o.name, o.shape, o.nan_count) for o in stats.offenders],
                   "grads_untouched": all(_same(q.grad, before[n]) for n, q in named),
                   "params_untouched": all(bool((q == 0).all()) for _, q in named)}
    try:
        gct.clip_grad_norm_(_poisoned(h, whole, rank), 1.0, nonfinite="error", **h.kwargs)
        out["error"] = None
    except gradclip.NonFiniteError as e:
        out["error"] = {"message": str(e), "offenders": [(o.rank, o.name) for o in e.offenders]}
    plain = {k: v for k, v in h.kwargs.items() if k != "replicated"}
    out["inf_norm_nan"] = float(gct.get_total_norm([q.grad for _, q in _poisoned(h, whole, rank)], INF, **plain))
    out["two_norm_inf"] = float(gct.get_total_norm([q.grad for _, q in _poisoned(h, whole, rank, INF)], 2.0, **plain))
    named = _poisoned(h, whole, rank)
    before = {n: q.grad.clone() for n, q in named}
    gct.clip_grad_value_(named, 0.1, nonfinite="skip", **plain)
    out["value_untouched"] = all(_same(q.grad, before[n]) for n, q in named)
    ref, model = _fsdp_pair(world)
    if rank == 1:
        model[0].weight.grad.to_local()[0, 0] = math.nan
    stats = gct.Clipper("norm:1.0", nonfinite="skip").step(model)
    out["fsdp"] = {"skipped": bool(stats.skipped), "offenders": [(o.rank, o.name, o.shape) for o in stats.offenders]}
    return out


POLICIES = {
    "autoclip": gradclip.AutoClip(percentile=25.0),
    "zclip": gradclip.ZClip(warmup_steps=10),
    "adagc": gradclip.AdaGC(warmup_steps=10),
    "spikeguard": gradclip.SpikeGuard(window=16, min_history=8, sigma=3.0),
}
SHAPES = {"w": (9, 4), "b": (5,), "v": (3, 7)}


def _state(clipper) -> dict:
    return {k: v.double().flatten().tolist() if isinstance(v, torch.Tensor) else v
            for k, v in sorted(clipper.state_dict()["state"].items())}


def _run_policy(name: str, kind: str, rank: int, world: int, steps: int = 50) -> dict:
    """``steps`` steps of one policy on sharded gradients; a resumed copy; a whole-gradient reference."""
    from torch.distributed.tensor import Shard, distribute_tensor

    policy, mesh, h = POLICIES[name], _mesh(world) if kind == "dtensor" else None, Hand(rank, world)
    kwargs = {} if kind == "dtensor" else h.kwargs

    def named(step: int, shapes: dict):
        whole = full_grads(shapes, seed=100 + step, scale=40.0 if step in (30, 41) else 1.0)
        if kind == "dtensor":
            return whole, [(n, param(distribute_tensor(g, mesh, [Shard(0)]))) for n, g in whole.items()]
        return whole, h.params(whole)

    shapes = SHAPES if kind == "dtensor" else h.shapes
    ref, full, resumed = gct.Clipper(policy), gct.Clipper(policy, **kwargs), gct.Clipper(policy, **kwargs)
    calls, errs, ckpt = [], [], Path(os.environ["GRADCLIP_TEST_OUT"]) / f"ckpt_{name}_{kind}.pt"
    for step in range(steps):
        whole, sharded = named(step, shapes)
        expected = ref.step([(n, param(g.clone())) for n, g in whole.items()])
        with Count() as c:
            stats = full.step(sharded)
        calls.append(len(c.calls))
        errs.append(rel(float(stats.norm), float(expected.norm)))
        if step == steps // 2:  # state is replicated: rank 0 saves it, every rank loads it
            if rank == 0:
                torch.save(resumed.state_dict(), ckpt)
            dist.barrier()
            resumed = gct.Clipper(policy, **kwargs)
            resumed.load_state_dict(torch.load(ckpt, weights_only=False))
        resumed.step(named(step, shapes)[1])
    return {"state": _state(full), "ref_state": _state(ref), "resumed_state": _state(resumed),
            "norm_err": max(errs), "calls": calls}


def policies(rank: int, world: int) -> dict:
    out = {f"{n}/dtensor": _run_policy(n, "dtensor", rank, world) for n in POLICIES}
    out.update({f"{n}/hand": _run_policy(n, "hand", rank, world) for n in POLICIES if n != "adagc"})
    return out


def policies_small(rank: int, world: int) -> dict:
    return {"zclip/hand": _run_policy("zclip", "hand", rank, world),
            "adagc/dtensor": _run_policy("adagc", "dtensor", rank, world)}


def value_agc(rank: int, world: int) -> dict:
    """Elementwise and unit-wise policies on DTensors (units whole per rank, and split)."""
    from torch.distributed.tensor import Shard

    mesh = _mesh(world)
    where = {"w0": [Shard(0)], "b0": [Shard(0)], "w1": [Shard(1)]}
    grads = full_grads({"w0": (6, 4), "b0": (6,), "w1": (3, 8)}, seed=11, scale=0.5)
    weights = full_grads({"w0": (6, 4), "b0": (6,), "w1": (3, 8)}, seed=12)
    out = {}
    for policy in (gradclip.AGC(clip_factor=0.05), gradclip.Value(0.3)):
        ref_named = [(n, param(g.clone(), weights[n].clone())) for n, g in grads.items()]
        expected = gct.Clipper(policy).step(ref_named)
        named = [(n, param(_dt(g, mesh, where[n]), _dt(weights[n], mesh, where[n])))
                 for n, g in grads.items()]
        with Count() as c:
            stats = gct.Clipper(policy).step(named)
        out[policy.spec_name] = {
            "grad_err": rel_err({n: q.grad.full_tensor() for n, q in named}, {n: q.grad for n, q in ref_named}),
            "norm_err": rel(float(stats.norm), float(expected.norm)),
            "clipped_norm_err": rel(float(stats.clipped_norm), float(expected.clipped_norm)),
            "clipped": (bool(stats.clipped), bool(expected.clipped)), "calls": len(c.calls)}
    return out


def replicas(rank: int, world: int) -> dict:
    """The consistency check, and DDP (replicated gradients: no collective of ours)."""
    from torch.nn.parallel import DistributedDataParallel

    out = {"same": gct.check_replicas(torch.tensor(2.5)).consistent}
    diff = gct.check_replicas(1.0 + rank)
    out["diff"] = (diff.consistent, diff.values, diff.ranks)
    try:
        gct.Clipper("norm:1.0", check_every=1).step([("w", param(torch.full((3,), 1.0 + rank)))])
        out["mismatch"] = None
    except gradclip.ReplicaMismatchError as e:
        out["mismatch"] = {"message": str(e), "values": e.values, "ranks": e.ranks}
    ref, model = _mlp(), _mlp()
    ddp = DistributedDataParallel(model)
    x = torch.randn(4 * world, 6, generator=torch.Generator().manual_seed(2))
    ref(x).pow(2).mean().backward()
    ddp(x.tensor_split(world)[rank]).pow(2).mean().backward()
    clipper = gct.Clipper("norm:0.5", check_every=1)
    with Count() as c:
        stats = clipper.step(model)
    out["ddp"] = {"norm_err": rel(float(stats.norm), ref_norm([q.grad for q in ref.parameters()], 2.0)),
                  "calls": c.calls, "states": gather(float(stats.norm))}
    return out


def errors(rank: int, world: int) -> dict:
    """Misuse raises typed errors on every rank, before any collective."""
    from torch.distributed.tensor import DTensor, Partial, Shard

    mesh, world_group = _mesh(world), dist.group.WORLD

    def catch(fn) -> tuple[str, str] | None:
        try:
            fn()
        except Exception as e:  # the parent checks type and message
            return type(e).__name__, str(e)
        return None

    plain = [("w", param(torch.ones(3)))]
    partial_grad = DTensor.from_local(torch.ones(3), mesh, [Partial()])
    partial = [("w", param(partial_grad, _dt(torch.zeros(3), mesh, [Shard(0)])))]
    sharded = [("w", param(_dt(torch.ones(4), mesh, [Shard(0)])))]
    return {
        "both": catch(lambda: gct.clip_grad_norm_(plain, 1.0, group=world_group, groups=[world_group])),
        "mesh": catch(lambda: gct.clip_grad_norm_(plain, 1.0, group=mesh)),
        "partial": catch(lambda: gct.clip_grad_norm_(partial, 1.0)),
        "overlap": catch(lambda: gct.clip_grad_norm_(sharded, 1.0, group=world_group)),
        "copies": catch(lambda: gct.clip_grad_norm_(plain, 1.0, group=world_group, replicated={"w": 0})),
        "predicate": catch(lambda: gct.clip_grad_norm_(plain, 1.0, group=world_group, replicated=lambda n, t: 2.5)),
    }
