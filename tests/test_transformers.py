"""gradclip.transformers: GradientClippingCallback in the real Hugging Face Trainer (CPU, tiny GPT-2).

Oracle for the numbers: the Trainer's own ``max_grad_norm`` clipping (torch's ``clip_grad_norm_``
through Accelerate), on the same model, data and seed.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import gradclip  # noqa: E402
import gradclip.transformers as gctr  # noqa: E402

KEYS = ("grad_norm", "grad_norm_clipped", "grad_clipped", "grad_skipped")


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def tiny_data(n: int = 32):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (n, 8), generator=g)
    return [{"input_ids": x, "labels": x} for x in ids]


def make_trainer(tmp_path, *, callbacks=None, max_grad_norm=0.0, **overrides):
    options = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": [], "save_strategy": "no",
               "disable_tqdm": True, "max_steps": 6, "per_device_train_batch_size": 4, "logging_steps": 1,
               "learning_rate": 1e-2, "max_grad_norm": max_grad_norm, "seed": 0, "data_seed": 0}
    options.update(overrides)
    args = transformers.TrainingArguments(**options)
    return transformers.Trainer(model=tiny_model(), args=args, train_dataset=tiny_data(), callbacks=callbacks)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def train_logs(trainer):
    return [r for r in trainer.state.log_history if "loss" in r]


@pytest.mark.parametrize("accumulation", [1, 4])
def test_norm_policy_equals_max_grad_norm(tmp_path, accumulation):
    c = 0.3  # below every step's norm here, so every step clips
    builtin = make_trainer(tmp_path, max_grad_norm=c, gradient_accumulation_steps=accumulation)
    builtin.train()
    ours = make_trainer(tmp_path, gradient_accumulation_steps=accumulation)
    gctr.attach(ours, f"norm:{c}")
    ours.train()
    a, b = weights(builtin), weights(ours)
    for k in a:  # same kernels, same order: bitwise (the tolerance only bounds a failure message)
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    ref, got = train_logs(builtin), train_logs(ours)
    assert len(ref) == len(got) == 6
    for r, g in zip(ref, got):
        assert g["grad_norm"] == r["grad_norm"] and g["loss"] == r["loss"]
        assert g["grad_clipped"] == 1.0 and g["grad_skipped"] == 0.0
        assert g["grad_norm_clipped"] == pytest.approx(c * g["grad_norm"] / (g["grad_norm"] + 1e-6), rel=1e-6)
    unclipped = make_trainer(tmp_path, gradient_accumulation_steps=accumulation)
    unclipped.train()  # guards the test: without clipping the weights differ
    assert any(not torch.equal(weights(unclipped)[k], a[k]) for k in a)


def _event_tags(logdir):
    """Scalar tags in the TensorBoard event files (TFRecord framing, tensorboardX's Event proto)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in logdir.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            at += 12 + length + 4
    return tags


def test_stats_reach_log_history_and_the_report_to_integrations(tmp_path):
    pytest.importorskip("tensorboardX")
    logdir = tmp_path / "tb"  # TensorBoardCallback writes under output_dir
    trainer = make_trainer(tmp_path, report_to=["tensorboard"], output_dir=str(logdir), max_steps=3)
    callback = gctr.attach(trainer, "zclip:warmup_steps=2")
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("GradientClippingCallback") < names.index("TensorBoardCallback")
    trainer.train()
    for record in train_logs(trainer):
        assert set(KEYS) <= set(record) and math.isfinite(record["grad_norm_clipped"])
    assert {f"train/{k}" for k in KEYS} <= _event_tags(logdir)
    assert callback.clipper.steps == 3

    # Passed in Trainer(callbacks=...), it runs after the integrations: a warning says so, and says how.
    late_dir = tmp_path / "tb_late"
    late = make_trainer(tmp_path, report_to=["tensorboard"], output_dir=str(late_dir), max_steps=2,
                        callbacks=[gctr.GradientClippingCallback("zclip")])
    with pytest.warns(UserWarning, match=r"attach\(trainer, callback\)"):
        late.train()
    assert "train/grad_norm_clipped" not in _event_tags(late_dir)
    assert "grad_norm_clipped" in train_logs(late)[0]


class _NaNOnStep:
    """A gradient hook that turns one backward's gradient into NaN (real autograd, no mock)."""

    def __init__(self, param, on_call: int):
        self.calls, self.on_call = 0, on_call
        param.register_hook(self)

    def __call__(self, grad):
        self.calls += 1
        return grad * float("nan") if self.calls == self.on_call else grad


class _Snapshots(transformers.TrainerCallback):
    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def _take(model, optimizer):
        opt = optimizer.state_dict()["state"]
        return ({k: v.clone() for k, v in model.state_dict().items()},
                {i: {k: v.clone() for k, v in s.items()} for i, s in opt.items()})

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.before.append(self._take(model, optimizer))

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        self.after.append(self._take(model, optimizer))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)


def test_skip_on_nonfinite_leaves_weights_and_optimizer_state_unchanged(tmp_path):
    snaps = _Snapshots()
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[snaps])
    gctr.attach(trainer, "norm:0.3", nonfinite="skip")
    _NaNOnStep(trainer.model.transformer.wte.weight, on_call=3)  # the third optimizer step's gradient
    trainer.train()
    logs = train_logs(trainer)
    assert [r["grad_skipped"] for r in logs] == [0.0, 0.0, 1.0, 0.0]
    assert math.isnan(logs[2]["grad_norm"]) and math.isnan(logs[2]["grad_norm_clipped"])
    (w0, o0), (w1, o1) = snaps.before[2], snaps.after[2]
    assert _same(w0, w1), "a skipped step changed the weights"
    assert o0.keys() == o1.keys() and all(_same(o0[i], o1[i]) for i in o0), "a skipped step changed Adam's state"
    (w0, _), (w1, _) = snaps.before[3], snaps.after[3]
    assert not _same(w0, w1) and all(torch.isfinite(v).all() for v in w1.values())


def test_propagate_lets_nan_through(tmp_path):
    # The contrast to the skip test: without skipping, the same NaN reaches the weights.
    trainer = make_trainer(tmp_path, max_steps=3)
    gctr.attach(trainer, "norm:0.3")
    _NaNOnStep(trainer.model.transformer.wte.weight, on_call=3)
    trainer.train()
    assert not torch.isfinite(trainer.model.transformer.wte.weight).all()


def test_resume_from_checkpoint_keeps_the_policy_state(tmp_path):
    spec = "zclip:warmup_steps=2,z_thresh=0.5"  # clips from step 3 on, driven by the EMA
    full = make_trainer(tmp_path / "a", max_steps=6, save_strategy="steps", save_steps=3)
    cb_full = gctr.attach(full, spec)
    full.train()
    resumed = make_trainer(tmp_path / "a", max_steps=6, save_strategy="no")
    cb_resumed = gctr.attach(resumed, spec)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-3"))
    a, b = cb_full.clipper.state_dict(), cb_resumed.clipper.state_dict()
    assert a["steps"] == b["steps"] == 6
    for k in a["state"]:
        torch.testing.assert_close(b["state"][k], a["state"][k], rtol=0, atol=0, msg=k)
    wa, wb = weights(full), weights(resumed)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7, msg=k)
    assert sum(r["grad_clipped"] for r in train_logs(full)) >= 1, "the policy must clip for the test to mean much"
    # Guard: a policy that starts fresh from the same checkpoint does not reproduce the full run.
    class Renamed(gctr.GradientClippingCallback):  # checkpoint states are found by class name
        pass

    fresh = make_trainer(tmp_path / "a", max_steps=6)
    cb_fresh = gctr.attach(fresh, Renamed(spec))
    with pytest.warns(UserWarning, match="starts fresh"):
        fresh.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / "checkpoint-3"))
    c = cb_fresh.clipper.state_dict()
    assert c["steps"] == 3 and any(not torch.equal(c["state"][k], a["state"][k]) for k in a["state"])


@pytest.mark.slow
def test_end_to_end_training_reduces_the_loss(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=40, learning_rate=3e-2)
    gctr.attach(trainer, gradclip.ZClip(), nonfinite="skip")
    trainer.train()
    logs = train_logs(trainer)
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.3
    assert all(set(KEYS) <= set(r) for r in logs)


def test_bad_input_is_refused_at_set_up(tmp_path):
    cb = gctr.GradientClippingCallback("norm:1.0")
    with pytest.raises(gradclip.ConfigError, match=r"max_grad_norm=0\)") as info:
        make_trainer(tmp_path, max_grad_norm=1.0, callbacks=[cb])  # the Trainer's default is 1.0
    assert "\n" not in str(info.value)
    trainer = make_trainer(tmp_path, max_grad_norm=1.0)
    with pytest.raises(gradclip.ConfigError, match="would clip them first"):
        gctr.attach(trainer, "norm:1.0")
    trainer = make_trainer(tmp_path, callbacks=[cb])
    trainer.args.max_grad_norm = 0.5  # changed after set-up: refused before the first step
    with pytest.raises(gradclip.ConfigError, match="max_grad_norm=0.5"):
        trainer.train()
    with pytest.raises(gradclip.ConfigError, match="Unknown method 'zlcip'"):
        gctr.GradientClippingCallback("zlcip")
    with pytest.raises(gradclip.ConfigError, match="nonfinite"):
        gctr.GradientClippingCallback("zclip", nonfinite="ignore")
    with pytest.raises(gradclip.InputTypeError, match="Received: Module"):
        gctr.attach(torch.nn.Module(), "zclip")


def test_state_survives_json(tmp_path):
    from gradclip.transformers import _state

    cb = gctr.GradientClippingCallback("zclip:warmup_steps=2")
    for scale in (1.0, 3.0, 0.5):
        w = torch.nn.Parameter(torch.ones(3))
        w.grad = torch.full((3,), scale)
        cb.clipper.step([w])
    import json

    saved = json.loads(json.dumps(cb.state()))
    again = gctr.GradientClippingCallback("zclip:warmup_steps=2")
    again.clipper.load_state_dict(_state.from_json(saved["attributes"]["clipper_state"]))
    for k, v in cb.clipper.state_dict()["state"].items():
        assert torch.equal(again.clipper.state_dict()["state"][k], v)
    with pytest.raises(gradclip.StateDictError, match="'mu'"):
        _state.from_json({"state": {"mu": {"dtype": "complex64", "shape": [], "data": 0}}})


def test_missing_package_names_the_extra():
    # One subprocess; a failed import leaves no module behind, so the next simulated absence starts clean.
    code = ("import sys\n"
            "for missing in ('transformers', 'accelerate'):\n"
            "    sys.modules[missing] = None\n"
            "    try:\n        import gradclip.transformers\n    except ModuleNotFoundError as e:\n        print(e)\n"
            "    del sys.modules[missing]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"gradclip.transformers needs {missing}, which is not installed: "
                                "pip install 'gradclip[transformers]'." for missing in ("transformers", "accelerate")]


def test_public_api_is_frozen():
    assert gctr.__all__ == ["GradientClippingCallback", "attach"]
    assert issubclass(gctr.GradientClippingCallback, transformers.TrainerCallback)
