"""Experiment trackers as sinks: ``mlflow``, ``wandb`` and ``neptune``.

Each logs the dashboard scalars of :func:`gradclip.monitor._metrics.scalars` (``grad/norm_total``,
``grad/norm/<layer>``, ``loss``, ``lr``, ``dp/<key>`` ...) at the record's step. Each uses the run
that is already active (MLflow's active run, ``wandb.run``, or a Neptune run passed as the sink)
and never ends it; when there is none, the sink starts one and ends it at ``close()``. Where and
how the run is created is the tracker's own configuration, read from its environment variables:
``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME``; ``WANDB_PROJECT`` / ``WANDB_MODE`` (``offline``)
/ ``WANDB_DIR``; ``NEPTUNE_PROJECT`` / ``NEPTUNE_API_TOKEN`` / ``NEPTUNE_MODE`` (``offline``).
To choose anything else (a run name, tags), start the run yourself before the monitor.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gradclip._errors import ConfigError
from gradclip.monitor._metrics import scalars
from gradclip.monitor._sinks import BatchedSink, Sink, require

__all__ = ["MlflowSink", "NeptuneSink", "WandbSink"]


def _start_failed(spec: str, exc: Exception, fix: str) -> ConfigError:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return ConfigError(f"Sink {spec!r} could not start a run: {type(exc).__name__}: {first} {fix}")


class MlflowSink(BatchedSink):
    """MLflow metrics in the active run (one is started if none is, and ended at ``close()``).

    Metrics are sent with one ``MlflowClient.log_batch`` call per batch (every ``every`` records,
    every ``max_secs`` seconds, and at ``flush()``/``close()``), each at the record's step and
    write time. Names keep MLflow's allowed characters (letters, digits, ``_ - . / `` and space);
    any other character of a layer name becomes ``_``.
    """

    def __init__(self, spec: str = "mlflow", *, every: int = 100, max_secs: float = 10.0) -> None:
        super().__init__(every=every, max_secs=max_secs)
        self.spec = spec
        mlflow = require(spec, "mlflow", "mlflow")
        self._mlflow = mlflow
        active = mlflow.active_run()
        try:
            run = active if active is not None else mlflow.start_run()
        except Exception as exc:  # noqa: BLE001 - the tracker's own error, named in the message
            raise _start_failed(spec, exc, "Check MLFLOW_TRACKING_URI (and MLFLOW_EXPERIMENT_NAME), or start the "
                                "run yourself with mlflow.start_run() before creating the Monitor.") from None
        self.started, self.run_id = active is None, run.info.run_id
        self._client = mlflow.MlflowClient()
        self._Metric = mlflow.entities.Metric
        self._names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        safe = self._names.get(name)
        if safe is None:
            safe = re.sub(r"[^/\w.\- ]", "_", name)
            safe = "/".join(part if part not in ("", ".", "..") else "_" for part in safe.split("/"))
            self._names[name] = safe
        return safe

    def keep(self, record: dict[str, Any]) -> Any:
        return record["step"], int(time.time() * 1000), scalars(record)

    def send(self, batch: list[Any]) -> None:
        Metric, name = self._Metric, self._name
        metrics = [Metric(name(k), v, ts, step) for step, ts, values in batch for k, v in values.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def release(self) -> None:
        if self.started:
            self.started = False
            active = self._mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                self._mlflow.end_run()
            else:
                self._client.set_terminated(self.run_id)


class WandbSink(Sink):
    """Weights & Biases metrics (``run.log``) in ``wandb.run``; ``wandb.init()`` if none, finished at ``close()``.

    Every record is one ``run.log`` row holding its scalars and ``grad/step`` (the record's step),
    and ``grad/*`` and ``dp/*`` are plotted against ``grad/step`` (``define_metric``; so are
    ``loss`` and ``lr`` in a run the sink started). No ``step=`` is passed: W&B drops a row whose
    step is below the run's current step, which would happen as soon as your own ``wandb.log``
    calls share the run.
    """

    def __init__(self, spec: str = "wandb") -> None:
        self.spec = spec
        wandb = require(spec, "wandb", "wandb")
        self._wandb = wandb
        self.started = wandb.run is None
        try:
            self.run = wandb.run if wandb.run is not None else wandb.init()
        except Exception as exc:  # noqa: BLE001
            raise _start_failed(spec, exc, "Run `wandb login` or set WANDB_MODE=offline, or call wandb.init() "
                                "yourself before creating the Monitor.") from None
        self.run.define_metric("grad/step", hidden=True)
        for pattern in ("grad/*", "dp/*", *(("loss", "lr") if self.started else ())):
            self.run.define_metric(pattern, step_metric="grad/step")

    def write(self, record: dict[str, Any]) -> None:
        if self.run is None:
            from gradclip.monitor._sinks import SinkError

            raise SinkError(f"Sink {self.spec!r} is closed.", sink=self.spec)
        values = scalars(record)
        values["grad/step"] = record["step"]
        self.run.log(values)

    def close(self) -> None:
        run, self.run = self.run, None
        if run is not None and self.started:
            run.finish()


class NeptuneSink(BatchedSink):
    """Neptune series (``run["grad/norm_total"]``...) in a run you pass, or in ``neptune.init_run()``.

    ``Monitor(sinks=["neptune"])`` starts a run (configured by ``NEPTUNE_PROJECT``,
    ``NEPTUNE_API_TOKEN``, ``NEPTUNE_MODE``) and stops it at ``close()``; ``Monitor(sinks=[run])``
    or ``sinks=[run["monitoring"]]`` (a namespace) logs into your run and leaves it running.
    Each field gets one ``extend(values, steps=..., timestamps=...)`` per batch (every ``every``
    records, every ``max_secs`` seconds, and at ``flush()``/``close()``); Neptune names the
    namespaces by ``/``, so ``grad/norm/<layer>`` is the field ``<layer>`` of ``grad/norm``.
    """

    def __init__(self, spec: str = "neptune", run: Any = None, *, every: int = 100, max_secs: float = 10.0) -> None:
        super().__init__(every=every, max_secs=max_secs)
        self.spec = spec
        neptune = require(spec, "neptune", "neptune")
        self.started = run is None
        if run is None:
            try:
                run = neptune.init_run()
            except Exception as exc:  # noqa: BLE001
                raise _start_failed(spec, exc, "Set NEPTUNE_PROJECT and NEPTUNE_API_TOKEN, or NEPTUNE_MODE=offline, "
                                    "or pass your own run: Monitor(sinks=[run]).") from None
        self.run = run

    def keep(self, record: dict[str, Any]) -> Any:
        return record["step"], time.time(), scalars(record)

    def send(self, batch: list[Any]) -> None:
        fields: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for step, wall, values in batch:
            for name, value in values.items():
                series = fields.get(name)
                if series is None:
                    series = fields[name] = ([], [], [])
                series[0].append(value)
                series[1].append(step)
                series[2].append(wall)
        for name, (values, steps, walls) in fields.items():
            self.run[name].extend(values, steps=steps, timestamps=walls)

    def release(self) -> None:
        if self.started:
            self.started = False
            self.run.stop()


def is_neptune_run(obj: Any) -> bool:
    """True for a Neptune run (or a namespace handler of one), without importing neptune."""
    return type(obj).__module__.split(".")[0] == "neptune" and hasattr(obj, "__getitem__")
