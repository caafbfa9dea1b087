"""DP-SGD step cost: gradclip.privacy (ghost / materialised norms) vs torch.func.vmap vs Opacus 1.6.

One DP step = forward + per-example clipping + noise + ``optimizer.step()``, noise multiplier 1,
C = 1, SGD, on CPU. Implementations (each on its own copy of the same model, same batch):

* ``gradclip ghost``: ``PrivateStep(..., ghost=True)`` (Lee & Kifer ghost norms, no per-example
  gradients built);
* ``gradclip mat.``: ``PrivateStep(..., ghost=False)`` (every layer's per-example gradients built);
* ``vmap``: plain ``torch.func.vmap(grad)`` per-example gradients, their norms, clip, sum, noise;
* ``opacus hooks``: ``PrivacyEngine.make_private(..., grad_sample_mode="hooks")``;
* ``opacus ghost``: ``grad_sample_mode="ghost"`` with its ``DPLossFastGradientClipping`` criterion.

Time: all implementations interleaved in one process, round after round (``--steps`` steps of
each per round, first round dropped as warm-up); the median ms/step over rounds is reported.
Memory: each (model, batch, implementation) runs again in a fresh subprocess (same imports, model
and batch; glibc's mmap threshold fixed so freed tensors go back to the OS), which runs one warm-up
step, resets the kernel's RSS high-water mark (``/proc/self/clear_refs``), runs ``--mem-steps``
steps and reads ``VmHWM``: "peak MiB" is the process's peak RSS during those steps, "over floor"
that minus the smallest RSS any implementation had before its steps (imports, model and batch:
the floor they share), i.e. what the DP step costs at its peak, persistent state included.

    .venv/bin/python benchmarks/bench_privacy.py [--quick] [--rounds 5] [--steps 3] [--threads 1]
                                                 [--batches 64,256] [--no-memory] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import nn

IMPLS = ("gradclip ghost", "gradclip mat.", "vmap", "opacus hooks", "opacus ghost")
C, SIGMA, LR = 1.0, 1.0, 0.01


# --- models -------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention from Linear projections and softmax (no nn.MultiheadAttention)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(z):
            return z.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // h) ** 0.5, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Embedding, one pre-norm transformer block, mean pooling, a classification head."""

    def __init__(self, vocab: int, d: int, heads: int, classes: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.att(self.ln1(x))
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))
        return self.head(self.ln3(x).mean(1))


def workloads(quick: bool) -> dict[str, dict]:
    if quick:
        return {"mlp": {"width": 16, "classes": 4}, "transformer": {"vocab": 50, "d": 16, "t": 6, "classes": 4}}
    return {"mlp": {"width": 512, "classes": 10}, "transformer": {"vocab": 1000, "d": 128, "t": 32, "classes": 10}}


def build(name: str, cfg: dict, batch: int, seed: int = 0):
    """The model (seeded) and one batch ``(x, y)``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if name == "mlp":
        w = cfg["width"]
        model = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                              nn.Linear(w, cfg["classes"]))
        x = torch.randn(batch, w, generator=g)
    else:
        model = Block(cfg["vocab"], cfg["d"], 4, cfg["classes"])
        x = torch.randint(0, cfg["vocab"], (batch, cfg["t"]), generator=g)
    y = torch.randint(0, cfg["classes"], (batch,), generator=g)
    return model, x, y


def describe(name: str, cfg: dict) -> str:
    if name == "mlp":
        return f"MLP 4 x Linear, width {cfg['width']}"
    return f"transformer block, vocab {cfg['vocab']}, d {cfg['d']}, seq {cfg['t']}, 4 heads"


# --- one DP step per implementation -------------------------------------------------------------

def make_step(impl: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """A zero-argument callable running one DP step of ``impl`` on (x, y)."""
    batch = x.shape[0]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ce = torch.nn.functional.cross_entropy
    if impl.startswith("gradclip"):
        from gradclip.privacy import PrivateStep

        step = PrivateStep(model, opt, max_grad_norm=C, noise_multiplier=SIGMA, expected_batch_size=batch,
                           ghost=impl == "gradclip ghost", accountant=None)

        def run():
            step.backward(ce(model(x), y, reduction="none"))
            step.step()

        return run
    if impl == "vmap":
        from torch.func import functional_call, grad, vmap

        names = [n for n, _ in model.named_parameters()]

        def loss_one(params, xi, yi):
            out = functional_call(model, dict(zip(names, params)), (xi.unsqueeze(0),))
            return ce(out, yi.unsqueeze(0))

        per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))

        def run():
            params = [p.detach() for p in model.parameters()]
            grads = per_example(params, x, y)
            norms = torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in grads], 1), dim=1)
            coef = (C / (norms + 1e-6)).clamp(max=1.0)
            for p, g in zip(model.parameters(), grads):
                summed = torch.einsum("b,b...->...", coef, g)
                p.grad = (summed + torch.normal(0, SIGMA * C, summed.shape)) / batch
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run
    import opacus

    mode = impl.split()[1]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = opacus.PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=SIGMA, max_grad_norm=C,
            poisson_sampling=False, grad_sample_mode=mode, criterion=nn.CrossEntropyLoss())
    dp_model, dp_opt = out[0], out[1]
    criterion = out[2] if mode == "ghost" else nn.CrossEntropyLoss()
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    def run():
        dp_opt.zero_grad()
        criterion(dp_model(x), y).backward()
        dp_opt.step()

    return run


# --- memory: one configuration in a fresh process -----------------------------------------------

def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(impl: str, name: str, batch: int, quick: bool, steps: int, threads: int, reset: bool = True) -> dict:
    """Peak RSS of DP steps of one configuration (run it in a fresh process: see ``memory``).

    One warm-up step first (it maps the libraries' code and builds what persists between steps),
    then the kernel's high-water mark is reset (``/proc/self/clear_refs`` = 5) and ``steps`` steps
    run: ``peak_mib`` = VmHWM after them, ``step_mib`` = that - VmRSS before them (what persists
    between steps, such as Opacus's ``grad_sample`` until the next ``zero_grad``, is in the
    latter). ``cold_peak_mib`` is VmHWM before the reset (imports, model, batch, first step).
    """
    torch.set_num_threads(threads)
    import gc

    import opacus  # noqa: F401  # every worker imports the same modules, so the baselines match

    import gradclip.privacy  # noqa: F401

    model, x, y = build(name, workloads(quick)[name], batch)
    run = make_step(impl, model, x, y)
    run()
    gc.collect()
    cold = _status_mib("VmHWM")  # not ru_maxrss: after fork + exec that starts at the parent's peak
    if reset:  # False only in the smoke test, which runs it inside pytest's process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    before = _status_mib("VmRSS")
    for _ in range(steps):
        run()
    peak = max(_status_mib("VmHWM"), _status_mib("VmRSS"))
    return {"impl": impl, "model": name, "batch": batch, "rss_before_mib": before, "peak_mib": peak,
            "step_mib": max(peak - before, 0.0), "cold_peak_mib": cold}


def memory(impl: str, name: str, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, name, str(batch), "--mem-steps", str(args.mem_steps),
           "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    # A fixed mmap threshold: glibc then returns every large tensor to the OS on free instead of
    # caching it (its adaptive threshold would hide a step's peak behind the warm-up's pages).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- time: all implementations interleaved ------------------------------------------------------

def timing(name: str, cfg: dict, batch: int, args) -> dict[str, dict]:
    runs, errors = {}, {}
    for impl in args.impls:
        model, x, y = build(name, cfg, batch)
        try:
            runs[impl] = make_step(impl, model, x, y)
            runs[impl]()  # first call outside the rounds (hook set-up, allocator)
        except Exception as exc:  # noqa: BLE001  # reported in the table, not hidden
            errors[impl] = f"{type(exc).__name__}: {exc}"[:120]
            runs.pop(impl, None)
    samples: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(args.rounds + 1):  # round 0 warms up and is dropped
        for impl in order[r % len(order):] + order[: r % len(order)] if order else []:
            start = time.perf_counter()
            for _ in range(args.steps):
                runs[impl]()
            if r:
                samples[impl].append((time.perf_counter() - start) * 1000 / args.steps)
    out = {impl: {"ms": statistics.median(s), "samples": s} for impl, s in samples.items()}
    out.update({impl: {"error": e} for impl, e in errors.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models and batch 8 (a smoke run)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per implementation per round")
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 64,256; --quick: 8)")
    ap.add_argument("--models", default="mlp,transformer")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--no-memory", action="store_true", help="skip the per-configuration subprocesses")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        impl, name, batch = args.worker
        print(json.dumps(worker(impl, name, int(batch), args.quick, args.mem_steps, args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    args.impls = [i.strip() for i in args.impls.split(",")]
    batches = [int(b) for b in (args.batches or ("8" if args.quick else "64,256")).split(",")]
    import opacus

    specs = workloads(args.quick)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                           "torch": torch.__version__, "opacus": opacus.__version__, "threads": args.threads},
               "settings": {"rounds": args.rounds, "steps": args.steps, "mem_steps": args.mem_steps,
                            "quick": args.quick},
               "rows": []}
    print(f"DP step (forward + clip + noise + SGD), C={C}, sigma={SIGMA}, CPU, {args.threads} thread(s), "
          f"torch {torch.__version__}, opacus {opacus.__version__}; median of {args.rounds} rounds x {args.steps} steps")
    for name in [m.strip() for m in args.models.split(",")]:
        cfg = specs[name]
        for batch in batches:
            sys.stdout.flush()
            t = timing(name, cfg, batch, args)
            print(f"\n{describe(name, cfg)}, batch {batch}")
            print(f"{'implementation':16} {'ms/step':>9} {'vs opacus hooks':>16} {'vs opacus ghost':>16}"
                  f" {'peak MiB':>9} {'over floor':>10}")
            rows = []
            for impl in args.impls:
                row = {"model": name, "batch": batch, "impl": impl, **t.get(impl, {"error": "not run"})}
                if not args.no_memory:
                    row["memory"] = memory(impl, name, batch, args)
                rows.append(row)
            befores = [r["memory"]["rss_before_mib"] for r in rows if "rss_before_mib" in r.get("memory", {})]
            for row in rows:
                if befores and "peak_mib" in row["memory"]:
                    row["memory"]["over_floor_mib"] = row["memory"]["peak_mib"] - min(befores)
                results["rows"].append(row)
                impl, ms = row["impl"], row.get("ms")

                def ratio(ref: str, t=t, ms=ms) -> str:
                    base = t.get(ref, {}).get("ms")
                    return f"{ms / base:15.2f}x" if ms is not None and base else f"{'-':>16}"

                mem = row.get("memory", {})
                peak_mib = f"{mem['peak_mib']:9.0f}" if "peak_mib" in mem else f"{'-':>9}"
                floor_mib = f"{mem['over_floor_mib']:10.0f}" if "over_floor_mib" in mem else f"{'-':>10}"
                if ms is None:
                    print(f"{impl:16} {'error':>9}  {row.get('error', '')}")
                else:
                    print(f"{impl:16} {ms:9.2f} {ratio('opacus hooks')} {ratio('opacus ghost')} {peak_mib} {floor_mib}")
                if "error" in mem:
                    print(f"{'':16} memory run failed: {mem['error']}")
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
