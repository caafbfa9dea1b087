"""``Monitor``: one record per optimizer step, from what the Clipper already measured."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from gradclip._errors import ConfigError, InputTypeError
from gradclip._stats import ClipStats
from gradclip.monitor._delivery import DEFAULT_MAX_FAILURES, Delivery
from gradclip.monitor._reader import path_label
from gradclip.monitor._record import dp_values, step_value
from gradclip.monitor._sinks import CsvSink, JsonlSink, Sink, open_sink
from gradclip.monitor._spike import SpikeDetector
from gradclip.monitor._steps import PrivacyOnlyStep, StatsStep, fetch, layers, patterns, selected, step_probe
from gradclip.monitor._support import finite, is_iterator, now, num, offender_dicts, resolve, track, untrack

__all__ = ["Monitor"]

PER_LAYER_MODES = (True, False, "on_anomaly")
#: Steps between host reads on accelerators when ``flush_every`` is not given.
ACCELERATOR_FLUSH_EVERY = 20


class Monitor:
    """Watch gradient health: one record per optimizer step, written to every sink.

    A record holds the keys documented in :mod:`gradclip.monitor._record`: ``step``, ``norm``
    (pre-clip global norm), ``clipped_norm``, ``threshold``, ``coef``, ``clipped``, ``skipped``,
    ``nonfinite``, ``loss``, ``lr``, ``spike``, ``offenders`` (every non-finite gradient in
    parameter order, the first one first, with shape and NaN/Inf counts) and ``layers``
    (``{name: {"grad_norm", "param_norm", "update_ratio"}}`` or null). Dashboards get the
    Lightning names ``grad/norm_total``, ``grad/norm_total_clipped``, ``grad/norm/<name>``,
    ``grad/threshold``, ``grad/clipped``, ``grad/skipped``, ``loss``, ``lr``. A DP-SGD step
    (``privacy=``) adds ``dp``: ``{"fraction_clipped", "norm_p10", "norm_p50", "norm_p90",
    "clip", "epsilon"}`` (scalars ``dp/<key>``, CSV columns ``dp.<key>``).

    Cost, written down. With ``clip_stats`` the global values are the Clipper's (no pass over
    the gradients); without it, one foreach norm pass. Per-layer gradient norms are the
    Clipper's pre-clip per-tensor norms (free); parameter norms cost one foreach norm over the
    kept parameters. ``update_ratio`` is ``lr * grad_norm * coef / param_norm`` (the size of an
    SGD step relative to the weights, with the clipping scale; 0 on a skipped step; null without
    ``lr``): no snapshot of the weights is kept, so it estimates, not measures, the update of
    adaptive optimizers. Without per-layer detail the model is not walked (a few tens of
    microseconds per step with ``clip_stats``). Host reads: one per step on the CPU (free: no
    transfer; :meth:`step` returns the record); on accelerators the values stay on the device and
    are read in one transfer every ``flush_every`` steps (stacked by kind: a few torch calls per
    flush), and then ``per_layer="on_anomaly"`` computes the per-layer norms on the device every
    step and keeps them only for anomalous steps (spike detection needs the values, which arrive
    at flush). A non-finite step is written at once where its flag is free to read (the CPU, any
    ``flush_every``); on accelerators it waits for the flush. :meth:`flush`, :meth:`close` (also
    at the end of a ``with`` block left by an exception) and interpreter exit (a monitor never
    closed: a crashed script; no end record then) write what is buffered.

    Args:
        sinks: Where records go: spec strings ``"jsonl:PATH"``, ``"csv:PATH"``,
            ``"tensorboard:DIR"``, ``"mlflow"``, ``"wandb"``, ``"neptune"``, a Neptune run (or a
            namespace of one, ``run["gradclip"]``), callables ``fn(record)``, or objects with
            ``write(record)`` / ``close()``. Opened now. The dashboards (TensorBoard, MLflow,
            Neptune) receive records in batches; :meth:`flush` and :meth:`close` send the rest.
        per_layer: ``True`` (per-layer detail every step), ``False`` (never) or ``"on_anomaly"``
            (default: only on spike or non-finite steps).
        spike_window: Number of previous finite norms in the spike baseline (default 50).
        spike_z: z-score above which a norm is a spike (default 4.0).
        flush_every: Steps between host reads and sink writes (default: 1 on the CPU,
            ``ACCELERATOR_FLUSH_EVERY`` = 20 on accelerators). :meth:`close` writes the rest.
        include: Glob patterns (``fnmatch``) of parameter names that get per-layer detail
            (default: all). The global norm and the offenders always cover every parameter.
        exclude: Glob patterns of parameter names left out of the per-layer detail.
        run: The run's label (legends, report rows). It is written into the start record and,
            when given, into every record (``"run"`` key). Default: ``parent/stem`` of the first
            ``jsonl:``/``csv:`` path (``runs/a/grads.jsonl`` gives ``"a/grads"``), else ``"run"``.
        framework: The framework that trains (``"torch"``, ``"keras"``, ``"tensorflow"``),
            written into the start record (``gradclip suggest`` writes its snippet for it). Default:
            unknown at the start; the end record says ``"torch"`` when torch tensors were seen.
        overwrite: Truncate existing ``jsonl:``/``csv:`` files. By default (False) a log is never
            lost: an existing file is appended to, and the new run starts with a start record
            (``"resumed": true``; in CSV, a new header line).
        max_sink_failures: Consecutive failures of one sink that raise a ``SinkError`` (default
            ``DEFAULT_MAX_FAILURES`` = 3); ``None`` only warns. See "A record is never lost".

    A record is never lost. ``loss``, ``lr`` and ``epoch`` are checked when :meth:`step` is
    called (NumPy scalars become Python numbers; a string, a container or a tensor of more than
    one value is an ``InputTypeError``, and nothing is recorded for that step), and each record is
    encoded once before any sink sees it. A sink that raises gets a ``SinkWarning`` naming it and
    the error, and the other sinks still get the record; after ``max_sink_failures`` failures in a
    row of the same sink, :meth:`step` (or :meth:`close`) raises a ``SinkError`` once every sink had
    the record, and the monitor keeps going if the caller catches it. A file that cannot be written
    (``ENOSPC``: disk full) is a ``SinkError`` naming the path. Processes may append to one
    ``jsonl:`` file (``O_APPEND``, one ``os.write`` per line; see :mod:`gradclip.monitor._sinks`).
    Threads may share a monitor: step numbering, buffering and writing hold one lock (the
    measurement does not), so steps are numbered once each and written in order.

    Every ``jsonl:`` log gets ``{"event": "start", "run": LABEL, "time": ISO-8601 UTC}`` when the
    monitor opens it and ``{"event": "end", "run": LABEL, "time": ..., "steps": N, "outcome": ...}``
    at :meth:`close` (``outcome``: :func:`gradclip._outcome.classify` of the first and last finite
    loss logged and whether a step was non-finite; ``None`` without losses; also :attr:`outcome`); these event records are not steps (:func:`gradclip.monitor.read_runs` splits a
    file into its runs at the start records). Callables and plain ``write`` objects get steps only.

    Raises:
        ConfigError: a bad option, or a sink that cannot be opened (sinks already opened are closed).
        SinkError: the start event failed ``max_sink_failures`` times (only with ``max_sink_failures=1``).

    Example:
        >>> import torch, gradclip, gradclip.torch as gct
        >>> records = []
        >>> model = torch.nn.Linear(4, 1)
        >>> clipper = gct.Clipper("norm:1.0")
        >>> from gradclip.monitor import Monitor
        >>> with Monitor(sinks=[records.append], per_layer=True) as monitor:
        ...     model(torch.ones(8, 4)).sum().mul(100).backward()
        ...     stats = clipper.step(model)
        ...     _ = monitor.step(model, clip_stats=stats, loss=1.5, lr=0.1)
        >>> records[0]["clipped"], sorted(records[0]["layers"])
        (True, ['bias', 'weight'])
    """

    def __init__(
        self,
        sinks: Iterable[Any] = (),
        *,
        per_layer: bool | str = "on_anomaly",
        spike_window: int = 50,
        spike_z: float = 4.0,
        flush_every: int | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        run: str | None = None,
        overwrite: bool = False,
        framework: str | None = None,
        max_sink_failures: int | None = DEFAULT_MAX_FAILURES,
    ) -> None:
        if per_layer not in PER_LAYER_MODES or not isinstance(per_layer, (bool, str)):
            raise ConfigError(f"per_layer must be True, False or 'on_anomaly'. Received: {per_layer!r}.")
        if flush_every is not None and (isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1):
            raise ConfigError(f"flush_every must be None or an int >= 1. Received: {flush_every!r}.")
        if not isinstance(overwrite, bool):
            raise ConfigError(f"overwrite must be True (truncate existing jsonl:/csv: logs) or False (append, the "
                              f"default). Received: {overwrite!r}.")
        if run is not None and not (isinstance(run, str) and run):
            raise ConfigError(f"run must be a non-empty string label (or None for a label from the log path). "
                              f"Received: {run!r}.")
        if max_sink_failures is not None and (isinstance(max_sink_failures, bool) or not isinstance(max_sink_failures, int)
                                              or max_sink_failures < 1):
            raise ConfigError("max_sink_failures must be an int >= 1 (consecutive failures of one sink that raise a "
                              f"SinkError) or None (only warn). Received: {max_sink_failures!r}.")
        self.include, self.exclude = patterns("include", include), patterns("exclude", exclude)
        self.per_layer, self.flush_every, self.run = per_layer, flush_every, run
        self.spikes = SpikeDetector(spike_window, spike_z)
        if isinstance(sinks, (str, bytes)) or callable(sinks):
            sinks = [sinks]
        self.steps = 0
        self.framework = framework
        self._losses: list[float] = []  # first and last finite loss
        self._nonfinite = False
        self.events: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None
        self._pending: list[dict[str, Any]] = []
        self._keep: tuple[tuple[str, ...], list[int]] | None = None
        self._closed = False
        self._lock = threading.RLock()  # step numbers, the buffer, the spike baseline and the sinks
        self.sinks: list[Sink] = []
        self._out = Delivery(self.sinks, max_sink_failures)  # closes what opened if a later sink fails
        try:
            for spec in sinks:
                self.sinks.append(open_sink(spec, overwrite=overwrite))
            self._out = Delivery(self.sinks, max_sink_failures)  # knows its jsonl: sinks
            files = [s.path for s in self.sinks if isinstance(s, (JsonlSink, CsvSink))]
            self.label: str = run if run is not None else (path_label(files[0]) if files else "run")
            start = {"event": "start", "run": self.label, "time": now()}
            self._out.event({**start, "framework": framework} if framework else start)
            self._out.raise_due()
        except BaseException:
            self.close()
            raise
        track(self)  # buffered records are written at interpreter exit if close() never came

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor(sinks={[getattr(s, 'spec', s) for s in self.sinks]!r}, per_layer={self.per_layer!r})"

    def step(self, parameters: Any = None, *, clip_stats: ClipStats | None = None, loss: Any = None,
             lr: Any = None, epoch: int | None = None, privacy: Any = None) -> dict[str, Any] | None:
        """Record one optimizer step (call after ``clipper.step``, before ``optimizer.step``).

        Args:
            parameters: ``model`` or ``model.named_parameters()`` (names the layers and the
                offenders), any container ``Clipper.step`` accepts, or ``None`` with
                ``clip_stats`` (global values only, any framework).
            clip_stats: The Clipper's result for this step; ``None`` measures the global norm.
            loss: The loss (a number or a 0-d tensor; read with the other values).
            lr: The learning rate (number or tensor).
            epoch: The epoch (an int, or a float for a fractional epoch), written into the
                record when given.
            privacy: For DP-SGD: the step's :class:`gradclip.privacy.PrivacyStats`
                (``private_step.last_stats()``, after ``private_step.step()``), the
                ``PrivateStep`` itself (its ``last_stats()`` is read), or a mapping of
                :data:`gradclip.monitor._record.DP_KEYS`. Written as the record's ``dp``
                object. Alone (no ``parameters``, no ``clip_stats``) the record holds no global
                norm (per-example clipping has none): ``threshold`` is ``C`` and ``clipped``
                says whether any example was clipped.

        Returns:
            This step's record (a JSON-safe dict) when it was written now, else ``None``
            (buffered until the next flush).

        Raises:
            ConfigError: none of ``parameters``, ``clip_stats`` and ``privacy``, or the monitor is closed.
            InputTypeError: ``parameters`` of a type no adapter accepts, or a ``loss``/``lr``/
                ``epoch`` that is not one real number, or a ``privacy`` that is not one of the
                forms above (nothing is recorded for the step then).
            SinkError: a sink failed ``max_sink_failures`` times in a row (the record was given
                to every sink first; the monitor keeps going if the error is caught).
        """
        if self._closed:
            raise ConfigError("This Monitor is closed; create a new one to keep recording.")
        values = step_value("epoch", epoch), step_value("loss", loss), step_value("lr", lr)
        dp = None if privacy is None else dp_values(privacy)
        if dp is not None and parameters is None and clip_stats is None:
            stats = privacy.last_stats() if callable(getattr(privacy, "last_stats", None)) else privacy
            probe: Any = PrivacyOnlyStep(dp, getattr(stats, "batch_size", None))
        else:
            probe = step_probe(parameters, clip_stats)
            if not isinstance(probe, StatsStep):
                self.framework = self.framework or "torch"
        with self._lock:
            if self._closed:
                raise ConfigError("This Monitor is closed; create a new one to keep recording.")
            if self.flush_every is None:
                self.flush_every = 1 if probe.device == "cpu" else ACCELERATOR_FLUSH_EVERY
            eager = self.flush_every == 1
            s = probe.scalars()
            row = [s["norm"], s["clipped_norm"], s["threshold"], s["coef"], s["clipped"], s["skipped"],
                   s["nonfinite"], *values, None, None]  # the layout _record unpacks
            names = None
            if self.per_layer is True or (self.per_layer == "on_anomaly" and not eager):
                names, row[10], row[11] = probe.layers(self._kept(probe.names))
            # eager: the offenders are looked for only if the step is non-finite, in this call
            offenders = (lambda: probe.offenders(True)) if eager else probe.offenders(False)
            entry = (self.steps, row, offenders, names, dp, getattr(probe, "omitted", ()))
            self.steps += 1
            self._pending.append(entry)
            if eager:
                return self._flush(probe)
            # a non-finite step is written at once where its flag is free to read (the CPU)
            if len(self._pending) >= self.flush_every or (probe.device == "cpu" and bool(row[6])):
                self._flush(None)
            return None

    def flush(self) -> None:
        """Read the buffered values from the device (one transfer), write their records, and flush
        the sinks that buffer (those with a ``flush()`` method).

        Raises:
            SinkError: a sink failed ``max_sink_failures`` times in a row (see :meth:`step`).
        """
        with self._lock:
            if self._pending:
                self._flush(None)
            if not self._closed:
                self._out.flush()
                self._out.raise_due()

    def close(self) -> None:
        """Write what is buffered, then close every sink (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            untrack(self)
            try:
                if self._pending:
                    self._write(self._pending)
                if hasattr(self, "label"):  # not when a sink failed to open
                    self._out.event({"event": "end", "run": self.label, "time": now(), "steps": self.steps,
                                     "outcome": self.outcome, "framework": self.framework})
            finally:
                self._pending = []
                self._out.close()
            self._out.raise_due()

    @property
    def outcome(self) -> str | None:
        """How the run went so far, by the one definition of :mod:`gradclip._outcome`.

        ``"diverged"`` once a step was non-finite or a loss NaN/Inf; else ``"exploded"``,
        ``"stalled"`` or ``"ok"`` from the first and the last finite loss logged (batch losses);
        ``None`` before two finite losses were logged.
        """
        from gradclip._outcome import classify

        if self._nonfinite:
            return "diverged"
        if len(self._losses) < 2:
            return None
        return classify(self._losses[0], self._losses[-1])

    def attach(self, clipper: Any, *, optimizer: Any = None) -> Any:
        """Record every ``clipper.step(...)`` automatically (its parameters and its ClipStats).

        The Clipper's ``step`` is wrapped on this instance only; ``lr`` is read from
        ``optimizer.param_groups[0]["lr"]`` when an optimizer is given.

        Returns:
            The clipper (for chaining). ``detach(clipper)`` undoes it.
        """
        if not hasattr(clipper, "step"):
            raise InputTypeError(f"attach() takes a gradclip Clipper. Received: {type(clipper).__name__}.")
        original = type(clipper).step

        def step(parameters: Any, **options: Any) -> ClipStats:  # options: e.g. apply_coef (gct.clipped)
            named = list(parameters) if not hasattr(parameters, "named_parameters") and is_iterator(parameters) else parameters
            stats = original(clipper, named, **options)
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            self.step(named, clip_stats=stats, lr=lr)
            return stats

        clipper.step = step
        return clipper

    @staticmethod
    def detach(clipper: Any) -> None:
        """Undo :meth:`attach`."""
        clipper.__dict__.pop("step", None)

    # -- internals -----------------------------------------------------------------------------

    def _kept(self, names: Sequence[str]) -> list[int]:
        key = tuple(names)
        if self._keep is None or self._keep[0] != key:
            keep = [i for i, n in enumerate(names) if selected(n, self.include, self.exclude)]
            self._keep = (key, keep)
        return self._keep[1]

    def _flush(self, probe: Any) -> dict[str, Any] | None:
        """Write the buffered records (holding the lock), then raise a sink's due SinkError."""
        pending, self._pending = self._pending, []
        record = self._write(pending, probe)
        self._out.raise_due()
        return record

    def _write(self, pending: list[tuple], probe: Any = None) -> dict[str, Any] | None:
        values = fetch([entry[1] for entry in pending])  # one host read for every buffered step
        out, record = self._out, None
        for entry, flat in zip(pending, values):
            record = self._record(entry, flat, probe)
            out.write(record, out.encode(record))
            self.last = record
        return record

    def _record(self, entry: tuple, flat: list[Any], probe: Any) -> dict[str, Any]:
        """One step's JSON-safe record from its host values (``probe``: the step, when eager)."""
        step, _, offenders, names, dp, omitted = entry
        norm, clipped_norm, threshold, coef, clipped, skipped, nonfinite, epoch, loss, lr, grad_norms, param_norms = flat
        spike, z = self.spikes.update(norm)
        nonfinite, skipped = bool(nonfinite), bool(skipped)
        found = resolve(offenders) if nonfinite else ()
        if self.per_layer == "on_anomaly":
            if not (spike or nonfinite):
                names = None
            elif probe is not None and names is None:  # eager: measure now
                names, gn, pn = probe.layers(self._kept(probe.names))
                grad_norms, param_norms = fetch([[gn, pn]])[0]
        record: dict[str, Any] = {"step": step}
        if epoch is not None:  # a whole float (an int tensor read as float) is written as an int
            record["epoch"] = int(epoch) if isinstance(epoch, float) and epoch.is_integer() else finite(epoch)
        if self.run is not None:
            record["run"] = self.run
        record.update(
            loss=num(loss), lr=num(lr), norm=finite(norm), clipped_norm=finite(clipped_norm),
            threshold=finite(threshold), coef=finite(coef), clipped=bool(clipped), skipped=skipped,
            nonfinite=nonfinite, spike=spike, offenders=offender_dicts(found) if found else [],
            layers=finite(layers(names, grad_norms, param_norms, lr, coef, skipped)) if names is not None else None,
        )
        for key in omitted:
            del record[key]
        if dp is not None:
            record["dp"] = dp
        if record["loss"] is not None:  # first and last finite loss
            losses = self._losses
            if len(losses) < 2:
                losses.append(record["loss"])
            else:
                losses[1] = record["loss"]
        elif loss is not None:
            self._nonfinite = True
        if spike:
            self.events.append({"step": step, "kind": "spike", "norm": norm, "z": z})
        if nonfinite:
            self._nonfinite = True
            self.events.append({"step": step, "kind": "nonfinite",
                                "first": record["offenders"][0] if record["offenders"] else None})
        return record
