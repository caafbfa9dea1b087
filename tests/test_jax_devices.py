"""gradclip.jax on 8 (virtual CPU) devices gives the single-device numbers.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts, so the check
runs in a subprocess. Two layouts: ``jax.jit`` over ``NamedSharding``-sharded arrays (no option
needed: norms are global), and ``shard_map`` where each device holds a shard of every leaf, with
``axis_name=`` (each leaf's norm is the psum of the shards' p-th powers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    import gradclip.jax as gjax

    assert len(jax.devices()) == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("x",))
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(16, 4)).astype(np.float32), "b": rng.normal(size=(8,)).astype(np.float32)}
    grads = [jax.tree.map(lambda p: (s * rng.normal(size=p.shape)).astype(np.float32), params)
             for s in (1.0, 2.0, 1.5, 40.0, 1.0)]
    shard = NamedSharding(mesh, P("x"))
    put = lambda tree: jax.tree.map(lambda x: jax.device_put(x, shard), tree)

    def close(a, b, what):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=2e-6, atol=1e-7,
                                   err_msg=what)

    for spec in ["zclip:warmup_steps=2+pertensor:0.5", "autoclip:30,window=3+norm:1.0,norm_type=inf",
                 "spikeguard:window=4,min_history=2,sigma=1.0+adagc:warmup_steps=2", "agc:0.05", "value:0.3"]:
        tx = gjax.transform(spec)
        update = jax.jit(tx.update)
        state = tx.init(params)
        ref = []
        for g in grads:
            out, state = update(g, state, params)
            ref.append((out, gjax.stats(state)))
        # 1. jit over sharded arrays: nothing to pass
        state = tx.init(params)
        for i, g in enumerate(grads):
            out, state = update(put(g), state, put(params))
            assert out["w"].sharding.is_equivalent_to(shard, 2), out["w"].sharding
            close(gjax.stats(state).norm, ref[i][1].norm, f"{spec} jit norm {i}")
            jax.tree.map(lambda a, b: close(a, b, f"{spec} jit out {i}"), out, ref[i][0])
        # 2. shard_map, each device a shard of every leaf: axis_name makes the norms global
        txa = gjax.transform(spec, axis_name="x")
        step = jax.jit(jax.shard_map(lambda g, s, p: txa.update(g, s, p), mesh=mesh,
                                     in_specs=(P("x"), P(), P("x")), out_specs=(P("x"), P())))
        state = txa.init(params)
        for i, g in enumerate(grads):
            out, state = step(put(g), state, put(params))
            s, r = gjax.stats(state), ref[i][1]
            close(s.norm, r.norm, f"{spec} shard_map norm {i}")
            close(s.clipped_norm, r.clipped_norm, f"{spec} shard_map clipped_norm {i}")
            close(s.tensor_norms, r.tensor_norms, f"{spec} shard_map tensor_norms {i}")
            assert bool(s.clipped) == bool(r.clipped), (spec, i)
            jax.tree.map(lambda a, b: close(a, b, f"{spec} shard_map out {i}"), out, ref[i][0])
        print("ok", spec)
    print("ALL OK")
    """
)


@pytest.mark.slow
def test_eight_devices_give_the_single_device_numbers():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ALL OK" in done.stdout, done.stdout[-3000:] + done.stderr[-6000:]
