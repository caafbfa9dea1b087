"""Distributed clipping on gloo CPU worlds of 2 and 4 spawned ranks (FSDP2, TP, DTensor, hand, DDP).

Each world is started once (module fixture) and runs every check of :mod:`_dist_checks`; the
ranks save plain results and the asserts are here. Oracle: the single-process norm and clipped
gradients of the whole, unsharded gradients, in float64.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from _dist_workers import launch  # noqa: E402

slow = pytest.mark.slow  # a spawned world takes 10-20 s on 2 cores; the checks without one are fast

TOL = 1e-6
PS = (1.0, 2.0, math.inf)
COMMON = ["fsdp2", "hand", "meshes", "nonfinite", "value_agc", "replicas", "errors"]
CHECKS = {2: COMMON + ["policies"], 4: COMMON + ["fsdp_tp", "pipeline_fsdp", "policies_small"]}


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def world(request, tmp_path_factory):
    n = request.param
    return n, launch(n, tmp_path_factory.mktemp(f"world{n}"), CHECKS[n])


def results(world, check: str, ranks=None) -> list:
    n, per_rank = world
    if check not in CHECKS[n]:
        pytest.skip(f"{check} runs with {[k for k, v in CHECKS.items() if check in v]} ranks")
    out = []
    for r, res in enumerate(per_rank):
        assert check in res, f"rank {r} did not finish {check}"
        assert "_traceback" not in res[check], f"rank {r}:\n{res[check]['_traceback']}"
        out.append(res[check])
    return out


def everyone(n: int) -> tuple[int, ...]:
    return tuple(range(n))


@slow
@pytest.mark.parametrize("check", ["fsdp2", "fsdp_tp"])
def test_fsdp2_norm_and_clipped_grads_match_one_process(world, check):
    n = world[0]
    for rank, res in enumerate(results(world, check)):
        # FSDP2: the 1-D mesh. FSDP2 + TP on a (dp, tp) mesh: the 2-D mesh spans the world (one
        # group); the last layer, not tensor-parallel, lives on the "dp" sub-mesh (its group).
        groups = [everyone(n)] if check == "fsdp2" else [everyone(n), (rank % 2, rank % 2 + 2)]
        for p in PS:
            r = res[p]
            assert r["plain"], "the norm must be a plain tensor, not a DTensor"
            assert r["norm_err"] < TOL and r["total_err"] < TOL and r["grad_err"] < TOL, (p, r)
            assert r["calls"] == groups * 2, "one all-reduce per process group per call"
        assert res["with_norm_err"] < TOL and res["value_err"] < TOL, "clip_grads_with_norm_, clip_grad_value_"
        assert res["torch_raises"] == (check == "fsdp_tp"), "torch's own norm fails on two meshes; ours does not"
        c = res["clipper"]
        assert c["norm_err"] < TOL and c["tensor_err"] < TOL and c["clipped_err"] < TOL, c
        assert c["calls"] == groups


@slow
def test_hand_sharded_and_pipeline_match_one_process(world):
    n = world[0]
    for rank, res in enumerate(results(world, "hand")):
        groups = 1 if n == 2 else 2  # group=WORLD, or groups=(tp, pp)
        for p in PS:
            assert res[p]["norm_err"] < TOL and res[p]["grad_err"] < TOL, (p, res[p])
            assert len(res[p]["calls"]) == groups, res[p]["calls"]
        assert res["clipper"]["norm_err"] < TOL and res["clipper"]["grad_err"] < TOL
        assert res["unmarked_err"] > 1e-3, "replicated/tied tensors are counted once only when marked"
        if n == 4:
            tp, pp = res[2.0]["calls"]
            assert rank in tp and rank in pp and len(tp) == len(pp) == 2 and set(tp) & set(pp) == {rank}


@slow
def test_dtensors_on_two_meshes_mixed_with_plain_tensors(world):
    for res in results(world, "meshes"):
        for p in PS:
            assert res[p]["norm_err"] < TOL and res[p]["grad_err"] < TOL, (p, res[p])
            assert len(res[p]["calls"]) == res["expected_calls"] <= 2
        assert res["per_tensor_err"] < TOL, "per-tensor norms of DTensors are those of the whole tensors"


@slow
def test_pipeline_stages_of_fsdp2_models(world):
    for rank, res in enumerate(results(world, "pipeline_fsdp")):
        stage_group, pp_group = (2 * (rank // 2), 2 * (rank // 2) + 1), (rank % 2, rank % 2 + 2)
        for p in PS:
            assert res[p]["norm_err"] < TOL and res[p]["grad_err"] < TOL, (p, res[p])
            assert res[p]["calls"] == [stage_group, pp_group], "the stage's mesh, then group=pp"


@slow
def test_nan_on_rank_1_is_seen_and_named_on_every_rank(world):
    for res in results(world, "nonfinite"):
        skip = res["skip"]
        assert skip["skipped"] and skip["nonfinite"]
        assert skip["offenders"] == [(1, "s0.w", (3, 3), 1)], "rank, name, its local part's shape, NaN count"
        assert skip["grads_untouched"] and skip["params_untouched"], "no rank steps"
        assert res["error"]["offenders"] == [(1, "s0.w")]
        assert "s0.w shape=(3, 3) nan=1 inf=0 rank=1" in res["error"]["message"]
        assert math.isnan(res["inf_norm_nan"]), "a MAX reduction must not drop the NaN"
        assert res["two_norm_inf"] == math.inf
        assert res["value_untouched"]
        assert res["fsdp"]["skipped"] and res["fsdp"]["offenders"] == [(1, "0.weight", (5, 6))]


@slow
def test_policy_state_identical_across_ranks_and_resumable(world):
    check = "policies" if world[0] == 2 else "policies_small"
    per_rank = results(world, check)
    groups = {"dtensor": 1, "hand": 1 if world[0] == 2 else 2}
    for key, first in per_rank[0].items():
        for res in per_rank[1:]:
            assert res[key]["state"] == first["state"], f"{key}: state differs across ranks"
        assert first["resumed_state"] == first["state"], f"{key}: checkpoint/resume changed the state"
        assert first["norm_err"] < TOL, (key, first["norm_err"])
        assert first["calls"] == [groups[key.split("/")[1]]] * 50, (key, "one all-reduce per group per step")
        _assert_close_states(first["state"], first["ref_state"], key)


def _assert_close_states(got: dict, ref: dict, key: str) -> None:
    assert got.keys() == ref.keys(), key
    for name, ref_value in ref.items():
        a, b = got[name], ref_value
        if isinstance(b, list):
            scale = max([abs(v) for v in b if math.isfinite(v)] + [1.0])
            assert len(a) == len(b) and all(
                (x == y) or (math.isfinite(y) and abs(x - y) <= 1e-5 * scale) for x, y in zip(a, b)
            ), (key, name, a, b)
        else:
            assert a == b, (key, name)


@slow
def test_value_and_agc_on_dtensors(world):
    for res in results(world, "value_agc"):
        for name, calls in (("agc", 3), ("value", 2)):
            r = res[name]
            assert r["grad_err"] < TOL and r["norm_err"] < TOL and r["clipped_norm_err"] < TOL, (name, r)
            assert r["clipped"] == (True, True)
            assert r["calls"] == calls, (name, "measure, (split units,) post-clip norm")


@slow
def test_consistency_check_and_ddp(world):
    n = world[0]
    for res in results(world, "replicas"):
        assert res["same"]
        consistent, values, ranks = res["diff"]
        assert not consistent and values == tuple(1.0 + r for r in range(n)) and ranks == everyone(n)
        assert res["mismatch"]["ranks"] == everyone(n) and "check_every=0" in res["mismatch"]["message"]
        assert res["ddp"]["norm_err"] < TOL and res["ddp"]["calls"] == [], "DDP grads are replicated: no reduction"


@slow
def test_misuse_raises_typed_errors_on_every_rank(world):
    for res in results(world, "errors"):
        assert res["both"][0] == "ConfigError" and "not both" in res["both"][1]
        assert res["mesh"][0] == "InputTypeError" and "mesh.get_group()" in res["mesh"][1]
        assert res["partial"][0] == "ConfigError" and "Partial" in res["partial"][1]
        assert res["overlap"][0] == "ConfigError" and "already summed" in res["overlap"][1]
        assert res["copies"][0] == "ConfigError" and "int >= 1" in res["copies"][1]
        assert res["predicate"][0] == "ConfigError" and "Received: 2.5" in res["predicate"][1]


def test_offender_names_its_rank():
    assert gradclip.Offender("w", 0, (2,), 1, 0).describe() == "w shape=(2,) nan=1 inf=0"
    assert gradclip.Offender("w", 0, (2,), 1, 0, rank=3).describe() == "w shape=(2,) nan=1 inf=0 rank=3"


def test_distributed_options_are_checked_without_a_world():
    with pytest.raises(gradclip.ConfigError, match="not initialized"):
        gct.check_replicas(1.0)
    with pytest.raises(gradclip.ConfigError, match="check_every"):
        gct.Clipper("norm:1.0", check_every=-1)
    with pytest.raises(gradclip.InputTypeError, match="ProcessGroup"):
        gct.clip_grad_norm_([torch.nn.Parameter(torch.ones(2))], 1.0, group="world")
    with pytest.raises(gradclip.InputTypeError, match="list of parameter names"):
        gct.Clipper("norm:1.0", replicated="embed.weight")


@slow
def test_ddp_runner_reports_the_numbers_of_one_process(tmp_path):
    import dataclasses
    import json

    from gradclip.experiments import _torch, get_task
    from gradclip.experiments._ddp import Pool

    task = dataclasses.replace(get_task("regression"), epochs=5)  # 40 steps
    data = task.load()
    pool = Pool(2)
    try:  # one world for both runs; "none" diverges at step 4: every rank must stop there
        ddp = [pool.run(task, m, 0, data, tmp_path / f"{m}.jsonl") for m in ("norm:1.0", "none")]
    finally:
        pool.close()
    for a, method in zip(ddp, ("norm:1.0", "none")):
        b = _torch.run(task, method, 0, data)
        assert (a.steps, a.diverged, a.first_nonfinite_step, a.clipped_fraction) == (
            b.steps, b.diverged, b.first_nonfinite_step, b.clipped_fraction)
        assert abs(a.max_grad_norm - b.max_grad_norm) <= 1e-5 * b.max_grad_norm
        if not b.diverged:
            assert abs(a.final_loss - b.final_loss) <= 1e-5 * b.final_loss, "equal up to rounding"
    log = [json.loads(line) for line in (tmp_path / "norm:1.0.jsonl").read_text().splitlines()]
    assert [r["event"] for r in (log[0], log[-1])] == ["start", "end"]
    assert len(log) == ddp[0].steps + 2, "rank 0 alone writes the per-step log (start, steps, end)"


def test_cli_compare_passes_nproc(monkeypatch, capsys):
    import gradclip.experiments
    from gradclip import cli

    seen = {}

    def fake(task, methods, seeds, **kwargs):
        seen.update(kwargs)
        return {"task": task, "framework": "torch", "runs": []}

    monkeypatch.setattr(gradclip.experiments, "compare", fake)
    assert cli.main(["compare", "--method", "norm:1.0", "--seeds", "0", "--nproc", "2", "-q"]) == 0
    assert seen["nproc"] == 2


def test_compare_nproc_is_checked():
    from gradclip.experiments import compare

    with pytest.raises(gradclip.ConfigError, match="--nproc must be an int from 1"):
        compare("regression", ["norm:1.0"], [0], nproc=0)
    with pytest.raises(gradclip.ConfigError, match="needs --framework torch"):
        from gradclip.experiments._ddp import Pool

        Pool(2, "keras")
