"""gradclip.lightning: the GradientClipping callback in a real ``lightning.pytorch.Trainer``.

Parity is bitwise (``torch.equal``) against ``Trainer(gradient_clip_val=c)``: both clip the same
unscaled float32 gradients at the same point with the same kernels.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import gradclip
from gradclip.lightning import GradientClipping

STEPS = 6
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # inside Lightning 2.6 on torch 2.13


@pytest.fixture(autouse=True)
def _lightning_leaves_no_environment():
    """Lightning sets MASTER_ADDR, LOCAL_RANK, NODE_RANK, ... in os.environ and never removes them; later
    tests (Accelerate reads LOCAL_RANK and wraps models in DDP) must not see them."""
    import os
    from unittest import mock

    with mock.patch.dict(os.environ):
        yield


def _fp16_scaler():
    """16-bit AMP with a real GradScaler on the CPU (Lightning's "16-mixed" on CPU has none): unscaling is tested."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**6))]


class Net(pl.LightningModule):
    """A tiny MLP on fixed random data, with gradients large enough to be clipped every step."""

    def __init__(self, optimizer: str = "adam", nan_at: int | None = None, manual: bool = False):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.optimizer, self.nan_at = optimizer, nan_at
        self.automatic_optimization = not manual
        self.seen: list[dict] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.body(x), y) * 50.0

    def on_after_backward(self):
        if self.nan_at is not None and self.trainer.global_step == self.nan_at:
            self.body[0].weight.grad[0, 0] = float("nan")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen.append({k: v.clone() for k, v in self.trainer.callback_metrics.items()})

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _data(n: int = 48, batch_size: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x.sum(1, keepdim=True) * 3).sin() * 4
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def _fit(callbacks=(), *, steps=STEPS, model=None, ckpt_path=None, root=None, max_epochs=None, batch_size=4,
         **trainer_kw):
    torch.manual_seed(0)
    model = model if model is not None else Net()
    kw = {"max_steps": steps, "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, "deterministic": True, "log_every_n_steps": 1}
    if max_epochs is not None:
        kw.update(max_steps=-1, max_epochs=max_epochs)
    kw.update(trainer_kw)
    if kw.get("precision") == "16-mixed":  # a fresh scaler for every run
        kw.update(precision=None, plugins=_fp16_scaler())
    trainer = pl.Trainer(callbacks=list(callbacks), default_root_dir=root, **kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(num_workers|does not have many workers|log_every_n_steps).*")
        trainer.fit(model, _data(batch_size=batch_size), ckpt_path=ckpt_path)
    return model, trainer


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


# -- parity with Lightning's own clipping ----------------------------------------------------------
@pytest.mark.parametrize(("policy", "algorithm"), [(gradclip.GlobalNorm(0.5), "norm"), ("value:0.05", "value")])
@pytest.mark.parametrize(("precision", "accumulate"), [("32", 1), ("bf16-mixed", 1), ("16-mixed", 1), ("32", 4)])
def test_weights_equal_lightning_gradient_clip_val(policy, algorithm, precision, accumulate):
    kw = {"precision": precision, "accumulate_grad_batches": accumulate, "steps": 3 if accumulate > 1 else STEPS}
    theirs, _ = _fit(gradient_clip_val=0.5 if algorithm == "norm" else 0.05, gradient_clip_algorithm=algorithm, **kw)
    callback = GradientClipping(policy)
    ours, _ = _fit([callback], **kw)
    unclipped, _ = _fit(**kw)
    _assert_same(_weights(ours), _weights(theirs))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(ours), _weights(unclipped)))  # clipping mattered
    assert callback.clipper.steps == kw["steps"]  # once per optimizer step, not per micro-batch
    assert bool(callback.last_stats().clipped)


def test_logged_norm_is_lightning_grad_norm_and_flags_are_logged():
    class Probe(Net):  # Lightning's grad_norm utility, on the gradients before any clipping
        def on_before_optimizer_step(self, optimizer):
            self.reference = pl.utilities.grad_norm(self, norm_type=2)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            m = self.trainer.callback_metrics
            self.seen.append((self.reference, {k: float(v) for k, v in m.items()}))

    model, _ = _fit([GradientClipping("none", log_per_layer=True)], model=Probe(), steps=3)
    for reference, logged in model.seen:
        assert logged["grad_2.0_norm_total"] == pytest.approx(float(reference["grad_2.0_norm_total"]), rel=1e-6)
        for name in ("body.0.weight", "body.2.bias"):
            key = f"grad_2.0_norm/{name}"
            assert logged[key] == pytest.approx(float(reference[key]), rel=1e-6)
        assert logged["grad/clipped"] == 0.0 and logged["grad/skipped"] == 0.0
    clipped, _ = _fit([GradientClipping("norm:0.5")], steps=2)
    last = clipped.seen[-1]
    assert float(last["grad/clipped"]) == 1.0 and float(last["grad/norm_total_clipped"]) == pytest.approx(0.5, rel=1e-5)
    assert float(last["grad_2.0_norm_total"]) > 0.5
    assert "grad_2.0_norm/body.0.weight" not in last and "grad/threshold" not in last  # opt-in; fixed: not logged
    quiet, _ = _fit([GradientClipping("norm:0.5", log=False)], steps=1)
    assert not any(k.startswith("grad") for k in quiet.seen[-1])
    sparse, _ = _fit([GradientClipping("norm:0.5")], steps=4, log_every_n_steps=3)  # Lightning's logging steps
    assert ["grad/clipped" in m for m in sparse.seen] == [False, False, True, True]  # logged at step 3, kept
    ours, _ = _fit([GradientClipping("norm:0.5", log_every_n_steps=2)], steps=3, log_every_n_steps=50)
    assert ["grad/clipped" in m for m in ours.seen] == [True, True, True]
    assert float(ours.seen[1]["grad_2.0_norm_total"]) == float(ours.seen[0]["grad_2.0_norm_total"])  # step 2 not logged
    assert float(ours.seen[2]["grad_2.0_norm_total"]) != float(ours.seen[0]["grad_2.0_norm_total"])
    adaptive, _ = _fit([GradientClipping("zclip:warmup_steps=2,max_norm=none")], steps=3)
    assert float(adaptive.seen[-1]["grad/threshold"]) > 0  # ZClip's learned threshold


@pytest.mark.parametrize("spec", ["zclip", "autoclip:p=10", "agc:0.01", "spikeguard+norm:1.0", "pertensor:0.3"])
def test_any_policy_runs_in_the_trainer(spec):
    callback = GradientClipping(spec)
    model, _ = _fit([callback], steps=3)
    assert callback.clipper.steps == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "grad/norm_total_clipped" in model.seen[-1]


# -- non-finite gradients ----------------------------------------------------------------------------
def _snapshots(model):
    opt = model.trainer.optimizers[0]
    state = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
             for i, s in enumerate(opt.state[p] for p in model.parameters())}
    return _weights(model), state


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_skip_leaves_parameters_and_optimizer_state_unchanged(optimizer):
    class Recorder(pl.Callback):
        def __init__(self):
            self.after = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.after.append(_snapshots(pl_module))

    recorder = Recorder()
    callback = GradientClipping("norm:1.0", nonfinite="skip")
    model, _ = _fit([callback, recorder], model=Net(optimizer, nan_at=2), steps=4)
    (w1, s1), (w2, s2), (w3, _) = recorder.after[1:4]
    _assert_same(w2, w1)  # step index 2 had a NaN gradient: nothing moved
    for i in s1:
        assert s1[i].keys() == s2[i].keys()
        for k in s1[i]:
            assert torch.equal(torch.as_tensor(s1[i][k]), torch.as_tensor(s2[i][k])), (optimizer, i, k)
    if optimizer == "adam":
        assert float(s2[0]["step"]) == 2.0
    assert not all(torch.equal(a, b) for a, b in zip(w3, w2))  # and training went on
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert float(model.seen[2]["grad/skipped"]) == 1.0 and float(model.seen[3]["grad/skipped"]) == 0.0


def test_nonfinite_error_stops_fit_naming_the_tensor():
    with pytest.raises(gradclip.NonFiniteError, match="body.0.weight"):
        _fit([GradientClipping("norm:1.0", nonfinite="error")], model=Net(nan_at=1), steps=3)


def test_propagate_lets_nan_spread_as_lightning_does():
    model, _ = _fit([GradientClipping("norm:1.0")], model=Net(nan_at=1), steps=2)
    assert not torch.isfinite(model.body[0].weight).all()


# -- checkpoints -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["zclip:warmup_steps=4", "autoclip:p=20"])
def test_policy_state_survives_checkpoint_and_resume(tmp_path, spec):
    full_cb = GradientClipping(spec)
    full, _ = _fit([full_cb], max_epochs=2)
    first_cb = GradientClipping(spec)
    _, trainer = _fit([first_cb], max_epochs=1)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["callbacks"]
    assert any(v.get("policy") == first_cb.clipper.policy.spec() for v in saved.values())
    resumed_cb = GradientClipping(spec)
    resumed, _ = _fit([resumed_cb], max_epochs=2, ckpt_path=ckpt)
    assert resumed_cb.clipper.steps == full_cb.clipper.steps == 24
    a, b = full_cb.clipper.state_dict(), resumed_cb.clipper.state_dict()
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    _assert_same(_weights(resumed), _weights(full))


def test_resume_with_another_policy_is_refused(tmp_path):
    _, trainer = _fit([GradientClipping("zclip")], steps=2)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(gradclip.StateDictError, match="autoclip|zclip"):
        _fit([GradientClipping("autoclip")], steps=3, ckpt_path=tmp_path / "a.ckpt")


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_policy_spec_and_types_are_refused_at_construction():
    with pytest.raises(gradclip.ConfigError, match="Unknown method 'nrm'"):
        GradientClipping("nrm:1.0")
    with pytest.raises(gradclip.ConfigError, match="nonfinite"):
        GradientClipping("norm:1.0", nonfinite="ignore")
    with pytest.raises(gradclip.InputTypeError, match="Received: float"):
        GradientClipping(1.0)
    with pytest.raises(gradclip.ConfigError, match="log must be True or False"):
        GradientClipping("norm:1.0", log="yes")


def test_gradient_clip_val_together_with_the_callback_is_refused():
    with pytest.raises(gradclip.ConfigError, match=r"drop gradient_clip_val") as info:
        _fit([GradientClipping("norm:1.0")], gradient_clip_val=1.0, steps=1)
    assert "\n" not in str(info.value)


def test_error_mode_with_a_grad_scaler_is_refused():
    with pytest.raises(gradclip.ConfigError, match="nonfinite='error' with a GradScaler"):
        _fit([GradientClipping("norm:1.0", nonfinite="error")], precision="16-mixed", steps=1)


def test_fsdp1_is_refused_naming_fsdp2():
    from lightning.pytorch.strategies import FSDPStrategy

    class CpuFSDP(FSDPStrategy):  # Lightning refuses strategy="fsdp" on the CPU before any callback runs
        pass

    try:
        with pytest.raises(gradclip.ConfigError, match="own shard's norm.*ModelParallelStrategy"):
            _fit([GradientClipping("norm:1.0")], strategy=CpuFSDP(), steps=1)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_manual_optimization_is_refused_with_what_to_do():
    with pytest.raises(gradclip.ConfigError, match=r"automatic_optimization=False.*clipper.step\(self\)") as info:
        _fit([GradientClipping("norm:1.0")], model=Net(manual=True), steps=1)
    assert "\n" not in str(info.value)


def test_missing_lightning_is_a_one_line_error_naming_the_extra():
    code = ("import sys; sys.modules['lightning'] = None\n"
            "try:\n    import gradclip.lightning\n"
            "except ImportError as e:\n"
            "    import gradclip; assert isinstance(e, gradclip.GradclipError); print(repr(str(e)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert "pip install 'gradclip[lightning]'" in out and "\\n" not in out


def test_a_ready_clipper_is_accepted_and_its_state_shared():
    clipper = gradclip.torch.Clipper("zclip")
    callback = GradientClipping(clipper)
    _fit([callback], steps=2)
    assert clipper.steps == 2 and callback.last_stats() is clipper.last_stats()
    with pytest.raises(gradclip.ConfigError, match="to the Clipper itself"):
        GradientClipping(clipper, nonfinite="skip")


# -- monitoring --------------------------------------------------------------------------------------
def test_monitor_gets_one_record_per_optimizer_step_with_loss_and_lr():
    records: list[dict] = []
    with gradclip.Monitor(sinks=[records.append], per_layer=True) as monitor:
        _fit([GradientClipping("norm:0.5", monitor=monitor)], steps=3, accumulate_grad_batches=2)
    assert len(records) == 3
    assert [r["lr"] for r in records] == [0.01] * 3
    assert all(r["clipped"] and r["loss"] > 0 and "body.0.weight" in r["layers"] for r in records)
    assert records[0]["clipped_norm"] == pytest.approx(0.5, rel=1e-5)
