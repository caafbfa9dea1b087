"""gradclip.lightning under DDP and FSDP2: 2 CPU processes (gloo), launched here, each running four fits.

The test starts two copies of this file as a script with the variables Lightning's
``LightningEnvironment`` reads (``LOCAL_RANK``, ``WORLD_SIZE``...), so Lightning does not launch
processes itself and each process can run ``Trainer.fit`` four times on one process group: with
``Trainer(gradient_clip_val=c)`` and with ``GradientClipping(GlobalNorm(c))``, under DDP and under
FSDP2 (``ModelParallelStrategy`` + ``fully_shard``: DTensor parameters and gradients).
``strategy="fsdp"`` (FSDP1) is not tested: Lightning 2.6 refuses it on the CPU ("The strategy
`fsdp` requires a GPU accelerator"), and GradientClipping refuses it everywhere.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CLIP = 0.5


def _worker(out: Path) -> None:
    """One rank: fit with Lightning's clipping and with the callback, under DDP and FSDP2; save the weights."""
    t0 = time.perf_counter()
    import lightning.pytorch as pl
    import torch

    sys.path.insert(0, str(HERE))
    from lightning.pytorch.strategies import ModelParallelStrategy
    from test_lightning import Net, _data

    from gradclip.lightning import GradientClipping

    class Sharded(Net):  # FSDP2: parameters and gradients become DTensors sharded over the 2 ranks
        def configure_model(self):
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.body, mesh=self.device_mesh["data_parallel"])

    warnings.filterwarnings("ignore")
    rank = int(os.environ["LOCAL_RANK"])
    print(f"rank {rank}: imports {time.perf_counter() - t0:.1f} s", flush=True)
    data = _data().dataset  # rank r gets samples r, r+2, ...: a step's 8 samples are the single run's batch
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
    fits = {"theirs": ("ddp", {"gradient_clip_val": CLIP}),
            "ours": ("ddp", {"callbacks": [GradientClipping(f"norm:{CLIP}")]}),
            "fsdp2-theirs": ("fsdp2", {"gradient_clip_val": CLIP}),
            "fsdp2-ours": ("fsdp2", {"callbacks": [GradientClipping(f"norm:{CLIP}")]})}
    for name, (strategy, kw) in fits.items():
        torch.manual_seed(0)
        model = Net() if strategy == "ddp" else Sharded()
        if strategy == "fsdp2":
            strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=4, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             deterministic=True, use_distributed_sampler=False, **kw)
        t0 = time.perf_counter()
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler))
        print(f"rank {rank} {name}: fit {time.perf_counter() - t0:.1f} s", flush=True)
        weights = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        torch.save([w.detach() for w in weights], out / f"{name}{rank}.pt")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_ddp_and_fsdp2_ranks_agree_and_equal_lightning_clipping_and_the_single_process_run(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("lightning.pytorch")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "NODE_RANK": "0",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path)], env={**env, "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    load = lambda name: torch.load(tmp_path / f"{name}.pt", weights_only=True)
    ours0, ours1, theirs0 = load("ours0"), load("ours1"), load("theirs0")
    for a, b, c in zip(ours0, ours1, theirs0):
        assert torch.equal(a, b) and torch.equal(a, c)  # bitwise: same clipping on the same averaged gradients

    from test_lightning import _fit, _weights

    from gradclip.lightning import GradientClipping

    single, _ = _fit([GradientClipping(f"norm:{CLIP}")], steps=4, batch_size=8)  # the union of the ranks' batches
    for a, b in zip(ours0, _weights(single)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # gradient averaging rounds differently
    # FSDP2: both ranks hold the same full weights, within rounding of Lightning's clip_grad_norm_ on DTensors
    sharded0, sharded1, sharded_theirs = load("fsdp2-ours0"), load("fsdp2-ours1"), load("fsdp2-theirs0")
    for a, b, c, d in zip(sharded0, sharded1, sharded_theirs, ours0):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
