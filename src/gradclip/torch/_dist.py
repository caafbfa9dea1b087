"""Distributed gradients for torch: one true global norm, one batched all-reduce per process group.

Where the gradients live decides what the norm needs:

- **Replicated** (DDP after its all-reduce, or one process): every rank holds every gradient, so
  the single-process path runs unchanged and no collective is made.
- **DTensors** (FSDP2 ``fully_shard``, tensor parallel), on one or more device meshes, possibly
  mixed with plain tensors (taken as replicated): each rank measures its local shards, and the
  per-tensor results are summed over the mesh's process group (one group for a 1-D mesh or one
  that spans the world, else one per mesh dimension). Mesh dimensions where a gradient is
  ``Replicate`` are counted once. ``Partial`` gradients (not reduced yet) are refused.
- **Plain tensors sharded by hand or by pipeline stage**: the caller names the process group(s)
  over which partial norms are summed (``group=``, or ``groups=(tp_group, pp_group)``), and marks
  tensors that several ranks hold identically (tied embeddings, tensor-parallel-replicated
  norms) with ``replicated=``, so that they are counted once.

For a finite ``p`` the ranks sum the ``p``-th powers of their local norms (in float64); for
``p = inf`` they take the maximum, with NaN carried in a flag beside each value (a MAX reduction
may drop it). What one group needs travels in one ``all_reduce`` of a small vector: one entry per
DTensor (so its per-tensor norm is global too) and one for the total over the caller's groups.
Per-tensor norms of plain tensors stay local: exact for pipeline stages and replicated tensors;
describe a hand-sharded tensor as a DTensor (``DTensor.from_local(shard, mesh, [Shard(0)])``)
when a per-tensor policy (AdaGC, PerTensorNorm) must see its whole norm.

When the norm is non-finite every rank knows it, and the offenders (rank, tensor, NaN/Inf
counts) are exchanged with ``all_gather_object``: a collective made only then. Reading the
non-finite flag is the one host sync, as in the single-process path.

Example (two processes; not run here)::

    norm = gct.clip_grad_norm_(fsdp_model.parameters(), 1.0)          # DTensor grads: detected
    norm = gct.clip_grad_norm_(stage.parameters(), 1.0, group=pp)     # pipeline stages
    clipper = gct.Clipper(gradclip.ZClip(), groups=(tp, pp), replicated=["embed.weight"])
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gradclip import _apply
from gradclip._errors import ConfigError, InputTypeError
from gradclip.torch import _measure

__all__ = ["Layout", "View", "exchange", "has_dtensor", "layout", "view"]

_INF = float("inf")
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})
_DTENSOR: list[Any] = []


def _c10d() -> Any:
    import torch.distributed as dist

    return dist


def dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor``, imported on first need (``None`` without it)."""
    if not _DTENSOR:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # pragma: no cover - torch built without distributed
            DTensor = None
        _DTENSOR.append(DTensor)
    return _DTENSOR[0]


def has_dtensor(tensors: Iterable[Any]) -> bool:
    """Whether any of ``tensors`` is a DTensor (a set of types: cheap on the plain path)."""
    kinds = set(map(type, tensors)) - _PLAIN
    if not kinds:
        return False
    dt = dtensor_type()
    return dt is not None and any(issubclass(k, dt) for k in kinds)


def wanted(group: Any, groups: Any, tensors: Iterable[Any]) -> bool:
    """Whether a drop-in must take the distributed path: caller groups, or DTensor gradients."""
    return group is not None or groups is not None or has_dtensor(tensors)


@dataclass(frozen=True)
class Layout:
    """The caller's description of how gradients are spread over ranks (see :func:`layout`)."""

    groups: tuple[Any, ...] = ()
    copies: Callable[[str, torch.Tensor], Any] | None = None
    check_every: int = 0


def layout(group: Any = None, groups: Any = None, replicated: Any = None, check_every: int = 0) -> Layout | None:
    """Check the distributed options of a ``gradclip.torch`` function; ``None`` when none is set.

    Raises:
        ConfigError: both ``group`` and ``groups``, an empty or repeated group, a bad copy count
            or ``check_every``.
        InputTypeError: a group that is not a ``torch.distributed.ProcessGroup``, or a
            ``replicated`` that is not names, a ``{name: copies}`` mapping or a predicate.

    Example:
        >>> layout() is None
        True
    """
    if group is not None and groups is not None:
        raise ConfigError("Pass group= (one process group) or groups= (several, e.g. (tp, pp)), not both.")
    chosen = () if group is None and groups is None else _check_groups(group if groups is None else groups)
    copies = _check_replicated(replicated)
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
        raise ConfigError(f"check_every must be an int >= 0 (0: never). Received: {check_every!r}.")
    if not chosen and copies is None and not check_every:
        return None
    return Layout(chosen, copies, check_every)


def _check_groups(value: Any) -> tuple[Any, ...]:
    dist = _c10d()
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise ConfigError("group=/groups= need torch.distributed, which this torch build lacks. Drop them.")
    items = (value,) if isinstance(value, dist.ProcessGroup) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        items = (items,)
    items = tuple(items)
    if not items:
        raise ConfigError("groups= is empty. Pass the process groups to sum over, or leave it out.")
    for i, g in enumerate(items):
        if not isinstance(g, dist.ProcessGroup):
            hint = " For a DeviceMesh pass mesh.get_group()." if type(g).__name__ == "DeviceMesh" else ""
            raise InputTypeError(
                f"groups[{i}] must be a torch.distributed.ProcessGroup (from dist.new_group or "
                f"dist.group.WORLD). Received: {type(g).__name__}.{hint}"
            )
    if len({id(g) for g in items}) < len(items):
        raise ConfigError("groups= names the same process group twice; each is summed over once.")
    return items


def _check_replicated(value: Any) -> Callable[[str, torch.Tensor], Any] | None:
    if value is None or callable(value):
        return value
    if isinstance(value, Mapping):
        counts = dict(value)
        for name, n in counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(
                    f"replicated[{name!r}] must be an int >= 1 (how many ranks hold it). Received: {n!r}."
                )
        return lambda name, t: counts.get(name, 1)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InputTypeError(
            "replicated must be a list of parameter names, a {name: copies} mapping or a predicate "
            f"(name, tensor) -> bool | int. Received: {type(value).__name__}."
        )
    names = frozenset(value)
    return lambda name, t: name in names


def view(cfg: Layout | None, names: list[str], tensors: list[torch.Tensor]) -> View | None:
    """A :class:`View` when the gradients need reducing (DTensors or caller groups), else ``None``."""
    if (cfg is None or not cfg.groups) and not has_dtensor(tensors):
        return None
    return View(cfg, names, tensors)


class View:
    """One step's view of this rank's gradients: their local parts, and how to reduce their norms.

    Attributes:
        local: The local tensor of each gradient (a DTensor's shard; plain tensors as given).
            Scaling them in place scales the gradients.
        groups: Every process group reduced over, in the order of the collectives.
    """

    def __init__(self, cfg: Layout | None, names: list[str], tensors: list[torch.Tensor]) -> None:
        dist = _c10d()
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "These gradients are DTensors or group= was given, but torch.distributed is not "
                "initialized. Call torch.distributed.init_process_group() first."
            )
        self.user = cfg.groups if cfg is not None else ()
        self.rank = dist.get_rank()
        dt = dtensor_type()
        self.local: list[torch.Tensor] = []
        self.shapes = [tuple(t.shape) for t in tensors]
        self.dt_pos: list[int] = []  # per DTensor: position, placements, 1 / replication, groups
        self.placements: list[tuple] = []
        self.rep: list[float] = []
        self.chains: list[tuple] = []
        weights, meshes = [], {}
        for name, t in zip(names, tensors):
            summed = bool(self.user)  # plain tensors are summed only over the caller's groups
            if dt is not None and isinstance(t, dt):
                if id(t.device_mesh) not in meshes:
                    meshes[id(t.device_mesh)] = self._mesh_chain(t.device_mesh)
                self.dt_pos.append(len(self.local))
                self.placements.append(tuple(t.placements))
                self.rep.append(1.0 / _replication(name, t))
                self.chains.append(meshes[id(t.device_mesh)])
                t, summed = t.to_local(), True
            self.local.append(t)
            weights.append(1.0 / self._copies(cfg, name, t) if summed else 1.0)
        self.device = self.local[0].device if self.local else _idle_device(self.user)
        self.red = torch.float32 if self.device.type == "mps" else torch.float64
        self.weights = None if all(w == 1.0 for w in weights) else self._vec(weights)
        self.groups = _distinct(g for c in self.chains for g in c) + list(self.user)

    def _vec(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=self.red, device=self.device)

    def _mesh_chain(self, mesh: Any) -> tuple[Any, ...]:
        """The process groups a DTensor on ``mesh`` is summed over."""
        dist = _c10d()
        if mesh.ndim == 1:
            chain = (mesh.get_group(0),)
        elif mesh.size() == dist.get_world_size():
            chain = (dist.group.WORLD,)
        else:
            chain = tuple(mesh.get_group(d) for d in range(mesh.ndim))
        for u in self.user:
            for g in chain:
                shared = set(dist.get_process_group_ranks(u)) & set(dist.get_process_group_ranks(g))
                if shared - {self.rank}:
                    raise ConfigError(
                        f"group= includes ranks {sorted(shared)}, over which DTensor gradients on mesh "
                        f"{mesh.mesh.tolist()} are already summed. Pass group= only for the ranks that "
                        "hold other parts of the model (pipeline stages), not the mesh's own ranks."
                    )
        return chain

    def _copies(self, cfg: Layout | None, name: str, t: torch.Tensor) -> int:
        if cfg is None or cfg.copies is None:
            return 1
        n = cfg.copies(name, t)
        if n is True:
            return _c10d().get_world_size(self.user[0]) if self.user else 1
        if n is False or n is None:
            return 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"replicated({name!r}, ...) must return a bool or an int >= 1. Received: {n!r}.")
        return n

    def norms(self, p: float, foreach: bool | None, dtype: torch.dtype,
              flag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-tensor norms and the global norm (``dtype``), and ``flag`` OR-ed over all ranks.

        DTensors' per-tensor norms are those of the whole tensors; plain tensors' are local.
        """
        inf = p == _INF
        if self.local:
            x = _measure.norms_in_order(self.local, p, foreach, dtype)
        else:
            x = torch.zeros(0, dtype=dtype, device=self.device)
        powed = x.to(self.red) if inf else x.to(self.red).pow(p)
        tensor_norms = x
        if self.dt_pos:  # whole-tensor values of the DTensors: summed (max) over their meshes
            index = torch.tensor(self.dt_pos, device=self.device)
            part = powed.index_select(0, index)
            part = part if inf else part * self._vec(self.rep)
            part, flag = _reduce(part, self.chains, [1] * len(self.chains), inf, flag)
            powed = powed.index_copy(0, index, part)
            tensor_norms = x.index_copy(0, index, (part if inf else part.pow(1.0 / p)).to(dtype))
        if inf:
            total = powed.amax() if powed.numel() else powed.new_zeros(())
        else:
            total = (powed if self.weights is None else powed * self.weights).sum()
        if self.user:
            total, flag = _reduce(total.reshape(1), [self.user], [1], inf, flag)
        norm = (total if inf else total.pow(1.0 / p)).reshape(()).to(dtype)
        return tensor_norms, norm, flag

    def offenders(self, names: list[str], index: list[int], grads: list[torch.Tensor]) -> tuple:
        """Every rank's non-finite gradients, with ranks and whole-tensor shapes (a collective)."""
        shape_of = dict(zip(index, self.shapes))
        mine = [dataclasses.replace(o, rank=self.rank, shape=shape_of.get(o.index, o.shape))
                for o in _measure.offenders(names, index, grads)]
        return exchange(mine, self.groups)

    def restates(self, decision: Any) -> bool:
        """Whether the post-clip norm must be measured again (elementwise or local per-tensor changes).

        Plain tensors' per-tensor norms are local when the caller gave process groups
        (:func:`gradclip._apply.remeasured` says which decisions that concerns).
        """
        return _apply.remeasured(decision, local_tensor_norms=bool(self.user))

    def restate(self, p: float, foreach: bool | None, dtype: torch.dtype, clipped: torch.Tensor) -> tuple:
        """``(clipped, clipped_norm)`` over all ranks, after the local gradients were changed."""
        _, norm, flag = self.norms(p, foreach, dtype, clipped)
        return flag, norm

    def params(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The local parts of parameters (AGC compares each gradient unit with its weight's)."""
        dt = dtensor_type()
        return [w.to_local() if dt is not None and isinstance(w, dt) else w for w in params]

    def units(self, policy: Any, g_norms: list, w_norms: list) -> tuple[list, list]:
        """AGC: sum the unit norms over the ranks where a unit is split (sharded on a reduced axis).

        Raises:
            ConfigError: a gradient sharded both along and across its units.
        """
        from gradclip._policies._agc import unit_axes

        split = []
        for k, pos in enumerate(self.dt_pos):
            if g_norms[pos] is None:
                continue
            ndim = len(self.shapes[pos])
            axes = unit_axes(ndim, "torch", policy.axis)
            reduced = set(range(ndim)) if axes is None else set(axes)
            dims = {getattr(pl, "dim", None) for pl in self.placements[k] if not pl.is_replicate()}
            if dims & reduced and dims - reduced:
                raise ConfigError(
                    f"AGC measures one norm per unit, but the gradient {self.shapes[pos]} at position {pos} "
                    f"is sharded both across and along its units ({self.placements[k]}). Exclude it "
                    "(exclude=[name]) or shard it along one kind of axis only."
                )
            if dims & reduced:
                split.append(k)
        if not split:
            return g_norms, w_norms
        g_norms, w_norms = list(g_norms), list(w_norms)
        items = [(norms, self.dt_pos[k], k) for k in split for norms in (g_norms, w_norms)]
        sizes = [norms[pos].numel() for norms, pos, _ in items]
        values = torch.cat([norms[pos].to(self.red).square().flatten() * self.rep[k] for norms, pos, k in items])
        total, _ = _reduce(values, [self.chains[k] for _, _, k in items], sizes, False)
        for (norms, pos, _), piece in zip(items, total.split(sizes)):
            norms[pos] = piece.sqrt().reshape(norms[pos].shape).to(norms[pos].dtype)
        return g_norms, w_norms


def _replication(name: str, t: Any) -> int:
    """On how many ranks of its mesh a DTensor's local part is repeated (Replicate dimensions).

    Raises:
        ConfigError: a ``Partial`` placement (the gradient is not reduced yet).
    """
    placements = tuple(t.placements)
    if any(pl.is_partial() for pl in placements):
        raise ConfigError(
            f"The gradient of {name!r} is a DTensor with a Partial placement {placements}: its parts "
            "still have to be summed, so its norm means nothing yet. Clip after the gradient reduction, "
            "or call grad.redistribute(placements=[Replicate()] * mesh.ndim) first."
        )
    return math.prod(t.device_mesh.size(d) for d, pl in enumerate(placements) if pl.is_replicate())


def _idle_device(groups: tuple) -> torch.device:
    """Where a rank with no gradients builds its (empty) share: the device its backend needs."""
    dist = _c10d()
    if groups and torch.cuda.is_available() and dist.get_backend(groups[0]) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _distinct(groups: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for g in groups:
        if not any(g is h for h in out):
            out.append(g)
    return out


def _reduce(values: torch.Tensor, chains: list[tuple], sizes: list[int], inf: bool,
            flag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum (``inf``: max) each segment of ``values`` over every process group of its chain.

    Segment ``i`` has ``sizes[i]`` entries and is reduced over the groups ``chains[i]``. One
    ``all_reduce`` per distinct group, in order of first appearance (the same on every rank);
    ``flag`` (0-d) rides along in each and comes back OR-ed over all of them.
    """
    dist = _c10d()
    f = None if flag is None else flag.reshape(1).to(device=values.device, dtype=values.dtype)
    ends = list(itertools.accumulate(sizes))
    for g in _distinct(g for c in chains for g in c):
        spans = [(e - n, e) for c, n, e in zip(chains, sizes, ends) if any(g is h for h in c)]
        index = None
        if len(spans) < len(chains):
            index = torch.cat([torch.arange(a, b) for a, b in spans]).to(values.device)
        part = values if index is None else values.index_select(0, index)
        n = part.numel()
        pieces = [part.masked_fill(torch.isnan(part), 0.0), torch.isnan(part).to(part.dtype)] if inf else [part]
        vec = torch.cat(pieces + ([f] if f is not None else []))
        dist.all_reduce(vec, op=dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM, group=g)
        part = vec[:n].masked_fill(vec[n : 2 * n] > 0, math.nan) if inf else vec[:n]
        f = vec[-1:] if f is not None else None
        values = part if index is None else values.index_copy(0, index, part)
    return values, (None if f is None else f[0] > 0)


def exchange(found: list, groups: list[Any]) -> tuple:
    """Merge every rank's offenders over ``groups`` (``all_gather_object`` per group), by rank."""
    dist = _c10d()
    merged = {(o.rank, o.index, o.name): o for o in found}
    for g in groups:
        gathered: list[Any] = [None] * dist.get_world_size(g)
        dist.all_gather_object(gathered, list(merged.values()), group=g)
        for part in gathered:
            merged.update({(o.rank, o.index, o.name): o for o in part})
    return tuple(sorted(merged.values(), key=lambda o: (o.rank, o.index)))
