"""``Clipper``: run any gradclip policy on torch gradients (measure → decide → apply)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch

from gradclip import _apply, _validate
from gradclip._errors import ConfigError, InputTypeError, NonFiniteError, Offender, StateDictError, nonfinite_message
from gradclip._policies import Decision, Measurement, Policy, _statecheck
from gradclip._spec import parse_policy
from gradclip._stats import ClipStats
from gradclip.torch import _dist, _fast, _measure, _params, _replicas, _units
from gradclip.torch._ops import TorchGradOps, TorchOps

__all__ = ["Clipper"]


class Clipper:
    """Clip torch gradients with any policy and report what happened as :class:`gradclip.ClipStats`.

    One call per optimizer step, between ``loss.backward()`` and ``optimizer.step()``. Norms are
    accumulated in float32 (float64 when a gradient is float64) whatever the gradient dtype, so
    bf16/fp16 gradients get a 7-digit norm; ``norm_dtype`` overrides it.

    Host-device syncs and ``torch.compile``, written down. On accelerators, and under
    ``torch.compile`` on any device, a step is branch-free. Host reads per step:

    - ``"propagate"``: 0. Every policy compiles in one graph (``fullgraph=True``) and gives the
      eager numbers. Offenders are found lazily from per-tensor flags, when ``stats.offenders``
      is read, with NaN/Inf counts reported as -1 (the gradients are already scaled by then).
      ``AutoClip`` under ``torch.compile``: pass ``window=N`` (a fixed-size history);
      ``AutoClip()`` grows its history by one slot per step, so every step is a new graph and
      ``fullgraph=True`` stops at torch's recompile limit.
    - ``"skip"``: 1 (whether the norm is finite: refusing a step is a branch), or 0 under
      :func:`gradclip.torch.clipped` with a fused optimizer and a policy that decides one global
      factor, where the skip is folded into the kernel's ``found_inf`` and the policy state is
      kept with a ``where``.
    - ``"zero"``: 1 (zeroing instead of applying the policy is a branch).
    - ``"error"``: 1 (to decide whether to raise).

    Under ``torch.compile`` each of those reads is one graph break. In eager mode on the CPU a
    read waits for no device, so the CPU path reads where it saves work: a factor of exactly 1
    skips the multiply, value clipping finds its flag with one ``aminmax``, and offenders are
    counted exactly when the norm is non-finite.

    Args:
        policy: A :class:`gradclip.Policy` or a spec string (``"norm:1.0"``, ``"value:0.5"``).
        nonfinite: ``"propagate"`` (default: apply the policy anyway, NaN spreads as in torch),
            ``"error"`` (raise :class:`gradclip.NonFiniteError`, gradients untouched), ``"skip"``
            (gradients untouched, ``stats.skipped`` is True: do not call ``optimizer.step()``) or
            ``"zero"`` (all gradients set to zero).
        norm_dtype: dtype to accumulate norms in (default: float32, or float64 for float64 grads).
        foreach: Use foreach kernels (``None``: where supported).
        fast: Norm kernel on the CPU (2-norm). ``None`` (default): blocked dot products where
            torch's kernel would convert dtypes (bf16/fp16 gradients, or float32 ones next to
            float64), which is ~10x faster there; torch's kernels elsewhere, so float32 and
            float64 norms are bitwise those of ``torch.nn.utils``. ``True``: blocked dot products
            for every CPU group (~1.5x faster with 2 threads; last bits differ from torch's).
            ``False``: torch's kernels always. See :mod:`gradclip.torch._fast`.
        group, groups, replicated: Gradients sharded by hand or by pipeline stage, as in
            :func:`gradclip.torch.clip_grad_norm_`. DTensor gradients (FSDP2, tensor parallel)
            and replicated ones (DDP) need nothing. The policy then decides from the global
            norm, identically on every rank, so its state is the same everywhere (save it once).
            Per-tensor norms are global for DTensors and local for plain tensors.
        check_every: Every this many steps, all-gather the norm and raise
            :class:`gradclip.ReplicaMismatchError` when the ranks disagree (relative spread above
            1e-6): catches silently diverging replicas. One ``all_gather``; 0 (default): never.

    Raises:
        ConfigError: unknown ``nonfinite``, an invalid policy spec or distributed option.

    Example:
        >>> import torch, gradclip, gradclip.torch as gct
        >>> model = torch.nn.Linear(4, 1)
        >>> clipper = gct.Clipper(gradclip.GlobalNorm(1.0), nonfinite="skip")
        >>> model(torch.ones(8, 4)).sum().mul(100).backward()
        >>> stats = clipper.step(model)
        >>> bool(stats.clipped), round(float(stats.clipped_norm), 4)
        (True, 1.0)
        >>> clipper.last_stats() is stats
        True
    """

    def __init__(
        self,
        policy: Policy | str,
        *,
        nonfinite: str = "propagate",
        norm_dtype: torch.dtype | None = None,
        foreach: bool | None = None,
        fast: bool | None = None,
        group: Any = None,
        groups: Any = None,
        replicated: Any = None,
        check_every: int = 0,
    ) -> None:
        self.policy = parse_policy(policy)
        self._dist = _dist.layout(group, groups, replicated, check_every)
        self.fast = _fast.flag(fast, auto=True)
        self.nonfinite = _validate.choice("nonfinite", nonfinite, _validate.NONFINITE_MODES)
        self.norm_dtype = _params.norm_dtype(norm_dtype)
        self._seen_grads = self._warned_empty = False
        self.foreach = foreach
        self._state: dict[str, Any] | None = None
        self._place = False
        self._last: ClipStats | None = None
        self.steps = 0

    def __repr__(self) -> str:
        return f"Clipper({self.policy!r}, nonfinite={self.nonfinite!r})"

    def last_stats(self) -> ClipStats:
        """The :class:`gradclip.ClipStats` of the last :meth:`step` (0-d tensors: no host read).

        Raises:
            ConfigError: no step has run yet.
        """
        if self._last is None:
            raise ConfigError("This Clipper has not run a step yet: call clipper.step(model) first.")
        return self._last

    @torch.no_grad()
    def step(self, parameters: Any, *, apply_coef: bool = True) -> ClipStats:
        """Measure the gradients, let the policy decide, apply the decision in place.

        Args:
            parameters: ``model``, ``model.parameters()``, ``model.named_parameters()`` (names
                feed ``stats.offenders``), a tensor, or ``optimizer.param_groups``.
            apply_coef: When False and the decision is one global factor, the gradients are not
                multiplied: the factor is ``stats.coef`` for the caller to apply (this is how
                :func:`gradclip.torch.clipped` hands it to a fused optimizer). Every other
                decision (per-tensor, unit-wise, clamp) is applied as usual. Default True.

        Returns:
            :class:`gradclip.ClipStats` with 0-d tensors on the gradients' device.

        Raises:
            NonFiniteError: with ``nonfinite="error"`` and NaN/Inf gradients (left untouched).
            InputTypeError: ``parameters`` is not one of the accepted containers.
        """
        stats = self._step(parameters, apply_coef)
        self._last = stats
        return stats

    def _step(self, parameters: Any, apply_coef: bool) -> ClipStats:
        named = _params.unique(_params.named_tensors(parameters))  # a tensor listed twice counts once
        names, index, grads = _params.with_grads(named)
        _params.check_grads(names, grads)
        _check_complex(self.policy, names, grads)
        p = self.policy.measure_norm_type
        if not grads:
            if self._seen_grads and not self._warned_empty:
                self._warned_empty = True
                warnings.warn("This Clipper measured gradients before and now sees none: nothing is clipped. Was "
                              "`parameters` an exhausted generator (model.parameters() is one: pass the model, or "
                              "list(model.parameters()))?", stacklevel=3)
            return self._empty_stats(p)
        self._seen_grads = True
        acc = self.norm_dtype or (torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32)
        view = _dist.view(self._dist, names, grads)  # None unless DTensors or group(s)
        if view is not None:  # local parts; global norms from one all-reduce per process group
            grads = view.local
            tensor_norms, norm, _ = view.norms(p, self.foreach, acc)
        else:
            tensor_norms = _measure.norms_in_order(grads, p, self.foreach, acc, self.fast)
            norm = torch.linalg.vector_norm(tensor_norms, p)
        finite = torch.isfinite(norm)
        offenders: Any = ()
        eager = _fast.host_reads(grads[0].device)  # eager CPU: host reads are free there
        fold = not eager and self.nonfinite == "skip" and not apply_coef  # into the fused kernel's found_inf
        if eager or (self.nonfinite != "propagate" and not fold):
            if not bool(finite):  # one host read; free on the CPU
                offenders = (_measure.offenders if view is None else view.offenders)(names, index, grads)
                if self.nonfinite != "propagate":
                    return self._refuse(grads, norm, offenders, p, tensor_norms, names)
        else:  # branch-free (accelerator, torch.compile): names from the per-tensor flags, read lazily
            flags = ~torch.isfinite(tensor_norms)
            offenders = lambda: _lazy_offenders(names, index, grads, flags)  # noqa: E731
        if self._state is None:
            self._state = self.policy.init_state(norm, TorchOps)
        elif self._place:  # loaded from a checkpoint: check it fits this step, move it to the gradients' device
            shapes = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in self._state.items()}
            _statecheck.check_step(self.policy, shapes, len(grads), str(norm.dtype).removeprefix("torch."))
            self._state = {k: v.to(norm.device) if isinstance(v, torch.Tensor) else v for k, v in self._state.items()}
            self._place = False
        units: tuple = (None, None)
        if self.policy.needs_unit_norms:
            module_names = _units.excluded_module_params(self.policy, parameters)
            params = [named[i][1] for i in index]
            units = _units.unit_norms(self.policy, names, params if view is None else view.params(params), grads, acc,
                                      module_names)
            if view is not None:
                units = view.units(self.policy, *units)
        m = Measurement(norm=norm, tensor_norms=tensor_norms, finite=finite, names=tuple(names),
                        unit_norms=units[0], param_unit_norms=units[1], sizes=tuple(named[i][1].numel() for i in index))
        before = self._state
        decision, self._state = self.policy.decide(m, before, TorchOps)
        if fold and not _apply.foldable(decision):  # no global factor for the kernel to skip with: one host read
            fold = False
            if not bool(finite):
                self._state = before
                found = (_measure.offenders if view is None else view.offenders)(names, index, grads)
                return self._refuse(grads, norm, found, p, tensor_norms, names)
        elif fold:
            decision, self._state = _fold_nonfinite(decision, before, self._state, finite)
        _, out = _apply.apply(decision, grads, m, TorchOps, norm_type=p, apply_coef=apply_coef,
                              grad_ops=TorchGradOps(self.foreach, self.fast, acc))
        stats = ClipStats(norm=out.norm, clipped_norm=out.clipped_norm, coef=out.coef, clipped=out.clipped,
                          nonfinite=out.nonfinite, skipped=out.skipped, threshold=out.threshold, offenders=offenders,
                          norm_type=p, tensor_norms=out.tensor_norms, names=m.names)
        if fold:  # a non-finite step reads as in _refuse: not clipped, norm unchanged
            stats.clipped = torch.where(finite, stats.clipped, False)
            stats.clipped_norm = torch.where(finite, stats.clipped_norm, norm)
        if view is not None and view.restates(decision):  # changed locally: measure again
            stats.clipped, stats.clipped_norm = view.restate(p, self.foreach, acc, stats.clipped)
        if self._dist is not None and self._dist.check_every:
            _replicas.maybe_check(self._dist.check_every, norm, self.steps)
        self.steps += 1
        return stats

    def _refuse(self, grads: list[torch.Tensor], norm: torch.Tensor, found: tuple, p: float,
                tensor_norms: torch.Tensor, names: list[str]) -> ClipStats:
        """Non-finite gradients under "error", "skip" or "zero": the policy and its state are not run."""
        if self.nonfinite == "error":
            message = nonfinite_message(float(norm), p, found)
            raise NonFiniteError(message + ("" if found else _measure.overflow_hint(norm, grads)), found, float(norm))
        zero = self.nonfinite == "zero"
        if zero:
            _measure.zero_(grads)
        self.steps += 1
        flag = lambda v: torch.tensor(v, device=norm.device)  # noqa: E731
        return ClipStats(
            norm=norm, clipped_norm=torch.zeros_like(norm) if zero else norm,
            coef=torch.zeros_like(norm) if zero else None, clipped=flag(zero),
            nonfinite=flag(True), skipped=flag(not zero), threshold=None,
            offenders=found, norm_type=p, tensor_norms=tensor_norms, names=tuple(names),
        )

    def _empty_stats(self, p: float) -> ClipStats:
        zero = torch.tensor(0.0, dtype=self.norm_dtype or torch.float32)
        return ClipStats(
            norm=zero, clipped_norm=zero, coef=None, clipped=torch.tensor(False),
            nonfinite=torch.tensor(False), skipped=torch.tensor(False), threshold=None, norm_type=p,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the format version, the policy spec, its state and the step count.

        Returns:
            ``{"version": 1, "policy": str, "steps": int, "state": {name: tensor}}`` (plain
            values, saveable with ``torch.save`` next to the model and optimizer state).
        """
        state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in (self._state or {}).items()}
        return {"version": _statecheck.FORMAT_VERSION, "policy": _statecheck.identity(self.policy), "steps": self.steps,
                "state": state}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Restore what :meth:`state_dict` returned, after checking all of it.

        Everything is checked before anything is assigned: the format version (a state dict
        without ``"version"`` is version 1, the format of gradclip before the key existed), the
        policy spec, the exact key set of the state, every shape and dtype, the values the policy
        needs valid (a NaN mean, a negative variance, a count or ring position out of range). The
        number of gradient tensors of a per-tensor state (``AutoClip(scope="tensor")``) and the
        float dtype are checked at the first step after the load, before the state is used, with
        the same error. On any error nothing is loaded.

        Args:
            state_dict: A dict from :meth:`state_dict`.
            strict: ``True`` (default): the state must have been saved with this very policy spec.
                ``False``: a resumed run with changed hyper-parameters: a state saved by the same
                policy class (the same classes in order, for a chain) is accepted, its arrays that
                still fit (same key, shape and dtype, valid values) are kept, and the others are
                reset to their initial value with a ``UserWarning`` naming them.

        Raises:
            StateDictError: the state dict is malformed, was saved with another policy, or a
                state array does not fit (the message names each key, what was found and what
                was expected).

        Example:
            >>> import gradclip.torch as gct
            >>> import warnings, torch, gradclip.torch as gct
            >>> first = gct.Clipper("zclip:warmup_steps=4")
            >>> w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)
            >>> stats = first.step([w])
            >>> resumed = gct.Clipper("zclip:warmup_steps=8,alpha=0.9")  # changed hyper-parameters
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     warnings.simplefilter("always")
            ...     resumed.load_state_dict(first.state_dict(), strict=False)
            >>> str(caught[0].message)[:62]  # the warm-up buffer no longer fits; mu and var are kept
            "load_state_dict(strict=False) reset the state arrays ['count',"
        """
        steps, state, reset = self._checked(state_dict, strict)
        if reset:
            warnings.warn(f"load_state_dict(strict=False) reset the state arrays {reset} of {_statecheck.identity(self.policy)!r} "
                          "to their initial values (they do not fit this policy); the others were kept.", stacklevel=2)
        self.steps = steps
        self._state = state or None
        self._place = self._state is not None

    def _checked(self, state_dict: Any, strict: bool) -> tuple[int, dict[str, Any], list[str]]:
        """Validate a state dict; return ``(steps, state, reset keys)`` without assigning anything."""
        if not isinstance(state_dict, dict) or not {"policy", "steps", "state"} <= set(state_dict):
            raise StateDictError(
                "A Clipper state dict has keys 'policy', 'steps' and 'state'. Received: "
                f"{sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__}."
            )
        extra = sorted(set(state_dict) - {"version", "policy", "steps", "state"})
        if extra:
            raise StateDictError(f"A Clipper state dict has keys 'version', 'policy', 'steps' and 'state'. Received "
                                 f"also {extra}: is this the state dict of another object?")
        _statecheck.check_version(state_dict)
        steps, state = state_dict["steps"], state_dict["state"]
        if not isinstance(state, dict) or isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise StateDictError(
                "A Clipper state dict has an int 'steps' >= 0 and a dict 'state'. Received: "
                f"steps={steps!r}, state of type {type(state).__name__}."
            )
        _statecheck.check_spec(state_dict["policy"], self.policy, strict)
        arrays = {k: _to_numpy(k, v) for k, v in state.items()}
        kept, reset = _statecheck.check(self.policy, arrays, strict=strict)
        device = next((v.device for v in state.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
        out = {k: state[k] if k not in reset and isinstance(state.get(k), torch.Tensor)
               else torch.from_numpy(np.array(v, copy=True)).to(device)
               for k, v in kept.items()}
        return int(steps), out, reset


def _to_numpy(key: str, value: Any) -> Any:
    """A host copy of a saved state tensor for the checks (a read at load time, not in a step).

    NumPy arrays are accepted too: a state saved by another adapter (``gradclip.jax.state_dict``).
    """
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, torch.Tensor):
        raise StateDictError(f"State key {key!r}: found a {type(value).__name__}, expected a torch.Tensor "
                             "(or a NumPy array).")
    try:
        return value.detach().cpu().numpy()
    except TypeError:
        raise StateDictError(f"State key {key!r}: found dtype {value.dtype}, expected float32, float64 or "
                             "int64.") from None


def _check_complex(policy: Policy, names: list[str], grads: list[torch.Tensor]) -> None:
    """Refuse complex gradients for the policies that need real numbers (clamping, unit-wise ratios)."""
    real_only = [m for m in policy.members() if getattr(m, "spec_name", "") == "value" or m.needs_unit_norms]
    if not real_only or not any(d.is_complex for d in {g.dtype for g in grads}):
        return
    bad = next((n for n, g in zip(names, grads) if g.is_complex()), None)
    if bad is not None:
        raise InputTypeError(f"{type(real_only[0]).__name__} needs real gradients (it clamps or compares real values), "
                             f"and the gradient of {bad!r} is complex. Received a complex gradient; use a norm policy "
                             "(GlobalNorm, PerTensorNorm, AutoClip, ZClip...), which measures the moduli.")


def _fold_nonfinite(d: Decision, before: dict[str, Any], after: dict[str, Any],
                    finite: torch.Tensor) -> tuple[Decision, dict[str, Any]]:
    """``nonfinite="skip"`` without a host read: a non-finite step is a skip, and keeps the old state."""
    bad = ~finite
    state = {k: torch.where(finite, v, before[k]) if _same_shape(v, before.get(k)) else v for k, v in after.items()}
    return dataclasses.replace(d, skip=bad if d.skip is None else d.skip | bad), state


def _same_shape(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape


def _lazy_offenders(names, index, grads, flags) -> tuple:
    """Offenders from per-tensor non-finite flags (counts unknown: -1)."""
    bad = flags.nonzero().flatten().tolist()
    return tuple(Offender(names[i], index[i], tuple(grads[i].shape), -1, -1) for i in bad)
