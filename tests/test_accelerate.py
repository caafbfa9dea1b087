"""gradclip.accelerate after ``accelerator.prepare`` (real Accelerate on CPU).

Oracle: Accelerate's own ``accelerator.clip_grad_norm_`` on the same gradients, and the same
training loop clipped by it.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from accelerate.state import AcceleratorState, GradientState  # noqa: E402

import gradclip  # noqa: E402
import gradclip.accelerate as gca  # noqa: E402
import gradclip.torch as gct  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_state():
    """Accelerate keeps one process-wide state; every test builds its own Accelerator."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def setup(mixed_precision="no", accumulation=1, seed=0, optimizer=torch.optim.AdamW):
    acc = accelerate.Accelerator(cpu=True, mixed_precision=mixed_precision, gradient_accumulation_steps=accumulation)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = optimizer(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    return acc, model, opt


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g) * 3, torch.randn(8, 3, generator=g)) for _ in range(n)]


def loss_of(acc, model, x, y):
    with acc.autocast():
        return torch.nn.functional.mse_loss(model(x).float(), y)


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def put(model, saved):
    for p, g in zip(model.parameters(), saved):
        p.grad = g.clone()


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_equals_accelerators(mixed_precision, norm_type):
    acc, model, _ = setup(mixed_precision)
    x, y = batches(1)[0]
    acc.backward(loss_of(acc, model, x, y))
    saved = grads(model)
    for max_norm in (1e-3, 0.5, 1e6):  # clips hard, clips, does not clip
        put(model, saved)
        theirs = acc.clip_grad_norm_(model.parameters(), max_norm, norm_type=norm_type)
        expected = grads(model)
        put(model, saved)
        ours = gca.clip_grad_norm_(acc, model.parameters(), max_norm, norm_type=norm_type)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), (max_norm, ours, theirs)
        for g, e in zip(grads(model), expected):
            assert torch.equal(g, e)
    ref = math.sqrt(sum(float((g.double() ** 2).sum()) for g in saved)) if norm_type == 2.0 else None
    if ref is not None:  # and both against the float64 NumPy-style oracle
        assert float(ours) == pytest.approx(ref, rel=1e-6)


def _train(accumulation, clip, steps=3, mixed_precision="no"):
    acc, model, opt = setup(mixed_precision, accumulation)
    returned = []
    for x, y in batches(steps * accumulation):
        with acc.accumulate(model):
            acc.backward(loss_of(acc, model, x, y))
            returned.append(clip(acc, model))
            opt.step()
            opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()], returned


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_clipper_under_accumulate_equals_accelerate_loop(mixed_precision):
    c = 0.05  # below every step's norm: every step clips

    def reference(acc, model):
        return acc.clip_grad_norm_(model.parameters(), c) if acc.sync_gradients else None

    clippers = {}

    def ours(acc, model):
        clipper = clippers.setdefault("c", gca.Clipper(acc, f"norm:{c}"))
        return clipper.step(model)

    ref_w, ref_out = _train(4, reference, mixed_precision=mixed_precision)
    our_w, our_out = _train(4, ours, mixed_precision=mixed_precision)
    for a, b in zip(ref_w, our_w):
        assert torch.equal(a, b)
    assert [o is None for o in our_out] == [o is None for o in ref_out] == [True, True, True, False] * 3
    for r, o in zip(ref_out[3::4], our_out[3::4]):
        assert torch.equal(o.norm, r) and bool(o.clipped)
    unclipped_w, _ = _train(4, lambda acc, model: None, mixed_precision=mixed_precision)
    assert any(not torch.equal(a, b) for a, b in zip(ref_w, unclipped_w)), "the test must see clipping"


def test_skip_leaves_parameters_and_optimizer_state_unchanged():
    acc, model, opt = setup()
    clipper = gca.Clipper(acc, "zclip:warmup_steps=2", nonfinite="skip")
    for step, (x, y) in enumerate(batches(4)):
        acc.backward(loss_of(acc, model, x, y))
        if step == 2:
            next(model.parameters()).grad[0, 0] = float("nan")
            before = ([p.detach().clone() for p in model.parameters()],
                      {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()})
        stats = clipper.step(model)
        opt.step()  # called unconditionally: a skipped step has no gradients to apply
        opt.zero_grad()
        assert bool(stats.skipped) == (step == 2)
        if step == 2:
            assert stats.offenders[0].name == "0.weight" and clipper.clipper.state_dict()["steps"] == 3
            after = opt.state_dict()["state"]
            assert all(torch.equal(a, b) for a, b in zip(before[0], model.parameters()))
            assert all(torch.equal(before[1][k][n], after[k][n]) for k in before[1] for n in before[1][k])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_grad_scaler_is_unscaled_once():
    # Accelerate creates a GradScaler for fp16 only on accelerators. Here a real torch GradScaler on
    # the CPU stands in for it (set before prepare, as Accelerate does), so the unscale path runs.
    acc = accelerate.Accelerator(cpu=True, mixed_precision="fp16")
    acc.native_amp, acc.scaler = True, torch.amp.GradScaler("cpu", init_scale=2.0**10)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    (x, y), = batches(1)
    acc.backward(torch.nn.functional.mse_loss(model(x), y))
    scaled = grads(model)
    theirs = acc.clip_grad_norm_(model.parameters(), 0.1)
    expected = grads(model)
    acc.scaler.update()  # lets the same gradients be unscaled again
    put(model, scaled)
    ours = gca.clip_grad_norm_(acc, model.parameters(), 0.1)
    assert torch.equal(ours, theirs) and all(torch.equal(g, e) for g, e in zip(grads(model), expected))
    assert float(ours) == pytest.approx(float(torch.cat([g.flatten() for g in scaled]).norm()) / 2**10, rel=1e-6)
    acc.scaler.update()
    put(model, scaled)
    acc.unscale_gradients()  # the loop unscaled already: the Clipper must not unscale again
    stats = gca.Clipper(acc, "norm:0.1").step(model)
    assert torch.equal(stats.norm, theirs)
    acc.scaler.update()
    put(model, scaled)
    stats = gca.Clipper(acc, "norm:0.1").step(model)  # not unscaled yet: the Clipper unscales
    assert torch.equal(stats.norm, theirs)
    opt.step()  # the scaler sees the gradients as unscaled and steps
    assert not acc.optimizer_step_was_skipped


def test_state_saved_and_loaded_with_accelerator_checkpoints(tmp_path):
    acc, model, opt = setup()
    clipper = gca.Clipper(acc, "zclip:warmup_steps=2")
    acc.register_for_checkpointing(clipper)
    for x, y in batches(4):
        acc.backward(loss_of(acc, model, x, y))
        clipper.step(model)
        opt.step()
        opt.zero_grad()
    acc.save_state(str(tmp_path / "ckpt"))
    saved = clipper.state_dict()
    clipper.load_state_dict(gct.Clipper("zclip:warmup_steps=2").state_dict())
    assert clipper.state_dict()["steps"] == 0
    acc.load_state(str(tmp_path / "ckpt"))
    loaded = clipper.state_dict()
    assert loaded["steps"] == 4 and all(torch.equal(loaded["state"][k], v) for k, v in saved["state"].items())


def test_bad_input_is_refused():
    acc, model, _ = setup()
    with pytest.raises(gradclip.InputTypeError, match="Received: Sequential"):
        gca.clip_grad_norm_(model, model.parameters(), 1.0)
    with pytest.raises(gradclip.InputTypeError, match="accelerate.Accelerator"):
        gca.Clipper("zclip", "norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="Unknown method"):
        gca.Clipper(acc, "zlcip")
    with pytest.raises(gradclip.ConfigError, match="own options"):
        gca.Clipper(acc, gct.Clipper("zclip"), nonfinite="skip")
    with pytest.raises(gradclip.ConfigError):
        gca.clip_grad_norm_(acc, model.parameters(), -1.0)


_WORKER = """
import json, os, sys, torch

def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    import gradclip.accelerate as gca
    acc = Accelerator(cpu=True, gradient_accumulation_steps=2,
                      fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), 1e-2))
    clipper = gca.Clipper(acc, "norm:0.5")
    res = {"type": str(acc.distributed_type), "wrapper": type(model).__name__, "same": [], "none": []}
    for step in range(4):
        torch.manual_seed(10 * step + rank)
        with acc.accumulate(model):
            acc.backward(model(torch.randn(5, 8)).pow(2).sum())
            if acc.sync_gradients:
                saved = [p.grad.clone() for p in model.parameters()]
                theirs = acc.clip_grad_norm_(model.parameters(), 0.5)
                expected = [p.grad.clone() for p in model.parameters()]
                for p, g in zip(model.parameters(), saved):
                    p.grad.copy_(g)
                ours = gca.clip_grad_norm_(acc, model.parameters(), 0.5)
                ok = torch.equal(ours, theirs) and all(torch.equal(p.grad, e) for p, e in zip(model.parameters(), expected))
                for p, g in zip(model.parameters(), saved):
                    p.grad.copy_(g)
                stats = clipper.step(model)
                ok = ok and torch.equal(stats.norm, theirs) and all(
                    torch.equal(p.grad, e) for p, e in zip(model.parameters(), expected))
                res["same"].append(ok)
            else:
                res["none"].append(clipper.step(model) is None)
            opt.step()
            opt.zero_grad()
    res["weights"] = [p.detach().sum().item() for p in model.parameters()]
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(res, f)

worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
"""


@pytest.mark.slow
def test_two_gloo_processes_match_accelerate(tmp_path):
    # Accelerate 1.15 enables FSDP only for GPU-like multi-device types (state.py: MULTI_GPU, NPU,
    # XPU...), not MULTI_CPU: on 2 gloo CPU processes the FSDP2 plugin is ignored and the model is
    # DDP-wrapped. The DTensor (FSDP2) path of the norm is tested in tests/test_distributed.py.
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(port), str(tmp_path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-2000:] for e in errors)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for res in ranks:
        assert res["type"] in ("DistributedType.MULTI_CPU", "DistributedType.FSDP"), res["type"]
        assert res["same"] == [True, True] and res["none"] == [True, True]
    assert ranks[0]["weights"] == ranks[1]["weights"], "replicas must stay identical"


def test_missing_package_names_the_extra():
    code = ("import sys; sys.modules['accelerate'] = None\n"
            "try:\n    import gradclip.accelerate\nexcept ModuleNotFoundError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "gradclip.accelerate needs accelerate, which is not installed: pip install 'gradclip[accelerate]'."


def test_public_api_is_frozen():
    assert gca.__all__ == ["Clipper", "clip_grad_norm_"]
