"""The public contract of a clipping policy: write your own, and every adapter runs it.

A policy is the "decide" step. Each step the adapter (``gradclip.torch``, ``gradclip.keras``,
``gradclip.tensorflow``, ``gradclip.jax``) measures the gradients into a :class:`Measurement`
(global norm, per-tensor norms, finiteness), calls :meth:`Policy.decide` with the policy's state
and the backend's array operations (:class:`PolicyOps`), and applies the :class:`Decision` it
returns: one global factor (``coef``), one per tensor (``coefs``), per unit (``unit_coefs``), a
clamp, and optionally a ``skip`` flag. So a policy is written once, with the methods of
:class:`PolicyOps` on small arrays (no ``if`` on a value: it would read the device), and runs in
every framework, on the gradients' device, inside ``torch.compile``, ``tf.function`` and ``jax.jit``.

To write one, subclass :class:`Policy` as a frozen dataclass whose fields are its
hyper-parameters, and define:

- :meth:`Policy.init_state` ``(like, ops, names)``: the state, a flat dict of arrays with their
  final shapes (made like ``like``: ``ops.scalar(0.0, like)``, ``ops.filled((n,), 0.0, like)``);
- :meth:`Policy.decide` ``(m, state, ops)``: the decision and the next state (leave the state
  unchanged where ``m.finite`` is False: ``ops.where(m.finite, new, old)``);
- ``decision_form``: a :class:`DecisionForm` saying which kind of decision it returns and what its
  threshold is, for the adapters that size their variables before the first step (Keras,
  TensorFlow, JAX; the torch adapter does not need it);
- ``can_skip = True`` if ``decide`` may return a skip flag; ``needs_tensor_norms = True`` if it
  reads ``m.tensor_norms``.

:class:`NumpyOps` is the reference backend: a policy can be tried on NumPy arrays with no
framework installed. :class:`Ops` (= :class:`StepOps`) is the whole contract of a backend:
:class:`PolicyOps` plus the tensor-level methods of the functional step. README's "Write your own
policy" has a complete example.

Example:
    >>> import numpy as np
    >>> from dataclasses import dataclass
    >>> from gradclip.policy import Decision, DecisionForm, Measurement, NumpyOps, Policy
    >>> @dataclass(frozen=True)
    ... class Halve(Policy):
    ...     '''Halve every gradient (a fixed global factor).'''
    ...     decision_form = DecisionForm("coef", threshold="none")
    ...     def decide(self, m, state, ops):
    ...         return Decision(coef=ops.full_like(m.norm, 0.5)), state
    >>> decision, _ = Halve().decide(Measurement(norm=np.float32(4.0)), {}, NumpyOps)
    >>> float(decision.coef), decision.kind
    (0.5, 'coef')
"""

from gradclip._ops import NumpyOps, Ops, PolicyOps, StepOps
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy, registry

__all__ = ["Decision", "DecisionForm", "Measurement", "NumpyOps", "Ops", "Policy", "PolicyOps", "StepOps", "registry"]
