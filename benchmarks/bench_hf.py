"""Per-step cost of gradclip in the Hugging Face Trainer and in Accelerate, vs their built-in clipping.

Interleaved runs in one process (variants in rotating order, median over repetitions), CPU:

1. Trainer, whole optimizer step (forward, backward, clip, AdamW), tiny GPT-2, measured between
   ``on_step_begin`` and ``on_step_end``: ``max_grad_norm=c`` vs ``GradientClippingCallback("norm:c")``
   (and ``"zclip"``) with ``max_grad_norm=0``, and no clipping at all.
2. The clip alone, on the same gradients: what the Trainer runs per step with ``max_grad_norm=c``
   (``accelerator.clip_grad_norm_(params, c)``) vs with the callback (the Trainer's
   ``accelerator.clip_grad_norm_(params, inf)`` for its ``grad_norm`` log, then the callback).
3. Accelerate: ``accelerator.clip_grad_norm_`` vs ``gradclip.accelerate.clip_grad_norm_`` vs
   ``gradclip.accelerate.Clipper(...).step``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hf.py [--reps 15] [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def _model(width: int, layers: int):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=1000, n_positions=64,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _data(n: int):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": x, "labels": x} for x in torch.randint(0, 1000, (n, 32), generator=g)]


class _StepTimer:
    def __init__(self):
        import transformers

        class Timer(transformers.TrainerCallback):
            def on_step_begin(cb, *a, **k):
                cb.t0 = time.perf_counter()

            def on_step_end(cb, *a, **k):
                self.times.append(time.perf_counter() - cb.t0)

        self.times: list[float] = []
        self.callback = Timer()


def trainer_step_ms(variant: str, steps: int, width: int, layers: int) -> float:
    import transformers

    import gradclip.transformers as gctr

    timer = _StepTimer()
    args = transformers.TrainingArguments(
        "/tmp/gradclip-bench-hf", use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
        max_steps=steps, per_device_train_batch_size=4, logging_steps=10**6,
        max_grad_norm=0.1 if variant == "max_grad_norm=0.1" else 0.0, learning_rate=1e-3)
    trainer = transformers.Trainer(model=_model(width, layers), args=args, train_dataset=_data(4 * steps),
                                   callbacks=[timer.callback])
    trainer.remove_callback(transformers.PrinterCallback)
    if variant.startswith("callback"):
        gctr.attach(trainer, variant.split(" ", 1)[1])
    trainer.train()
    return 1e3 * statistics.median(timer.times[2:])  # the first steps warm up the allocator and kernels


def _interleave(variants: dict, reps: int) -> dict[str, tuple[float, float]]:
    """(median, min) of each variant, run in rotating order so that drifts hit every variant alike."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(variants[name]())
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def _timed(fn, saved, params) -> float:
    for p, g in zip(params, saved):
        p.grad.copy_(g)
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def clip_only(reps: int, width: int, layers: int) -> dict[str, float]:
    import accelerate

    import gradclip.accelerate as gca
    import gradclip.transformers as gctr

    acc = accelerate.Accelerator(cpu=True)
    model = acc.prepare(_model(width, layers))
    batch = torch.stack([d["input_ids"] for d in _data(4)])
    acc.backward(model(input_ids=batch, labels=batch).loss)
    params = list(model.parameters())
    saved = [p.grad.clone() for p in params]
    callbacks = {s: gctr.GradientClippingCallback(s) for s in ("norm:0.1", "zclip")}
    clippers = {s: gca.Clipper(acc, s) for s in ("norm:0.1", "zclip")}

    def trainer_with(spec):
        def run():
            acc.clip_grad_norm_(params, float("inf"))  # the Trainer's grad_norm log, max_grad_norm=0
            callbacks[spec].on_pre_optimizer_step(None, None, None, model=model)
        return run

    variants = {
        "Trainer max_grad_norm=0.1": lambda: _timed(lambda: acc.clip_grad_norm_(params, 0.1), saved, params),
        "Trainer + callback norm:0.1": lambda: _timed(trainer_with("norm:0.1"), saved, params),
        "Trainer + callback zclip": lambda: _timed(trainer_with("zclip"), saved, params),
        "accelerator.clip_grad_norm_": lambda: _timed(lambda: acc.clip_grad_norm_(params, 0.1), saved, params),
        "gca.clip_grad_norm_": lambda: _timed(lambda: gca.clip_grad_norm_(acc, params, 0.1), saved, params),
        "gca.Clipper(norm:0.1).step": lambda: _timed(lambda: clippers["norm:0.1"].step(model), saved, params),
        "gca.Clipper(zclip).step": lambda: _timed(lambda: clippers["zclip"].step(model), saved, params),
    }
    for fn in variants.values():  # warm-up
        fn()
    return _interleave(variants, reps), sum(p.numel() for p in params)


def _table(title: str, rows: dict[str, tuple[float, float]], base: str) -> str:
    lines = [title, f"  {'variant':34s} {'median ms':>10s} {'ratio':>6s} {'min ms':>8s} {'ratio':>6s}"]
    b = rows[base]
    lines += [f"  {k:34s} {m:10.3f} {m / b[0]:6.2f} {lo:8.3f} {lo / b[1]:6.2f}" for k, (m, lo) in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    clip, n = clip_only(a.reps * 10, a.width, a.layers)
    print(f"GPT-2 {a.layers} layers x {a.width}: {n:,} parameters, float32, CPU, {a.threads} thread(s)\n")
    trainer_rows = dict(list(clip.items())[:3])
    acc_rows = dict(list(clip.items())[3:])
    print(_table("Clip only, per optimizer step (interleaved runs; min is robust to preemption on a busy machine)",
                 trainer_rows,
                 "Trainer max_grad_norm=0.1"))
    print(_table("\nAccelerate, clip only", acc_rows, "accelerator.clip_grad_norm_"))
    steps = {v: (lambda v=v: trainer_step_ms(v, a.steps, a.width, a.layers))
             for v in ("no clipping", "max_grad_norm=0.1", "callback norm:0.1", "callback zclip")}
    whole = _interleave(steps, max(3, a.reps // 3))
    print(_table(f"\nTrainer, whole optimizer step (batch 4 x 32 tokens; per run the median of {a.steps - 2} steps; "
                 "median and min over interleaved runs)", whole, "max_grad_norm=0.1"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
