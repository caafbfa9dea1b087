"""Rows to a table, targets to a verdict, everything to JSON (no timing happens here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradclip._render import table

# (target, workload prefix, op, metric, bound): metric "floor" is x floor of the best gradclip
# implementation, "torch" its speed-up over torch foreach, "base" each implementation / the base.
TARGETS = [
    ("global-norm clip when clipping <= 1.10x floor", "gpt2 fp32", "clip (clipping)", "floor", 1.10),
    ("global-norm clip when clipping <= 1.5x floor", "small fp32", "clip (clipping)", "floor", 1.5),
    ("no clipping needed <= 1.3x floor (one read)", "gpt2 fp32", "clip (no clipping needed)", "floor", 1.3),
    ("no clipping needed <= 1.3x floor (one read)", "small fp32", "clip (no clipping needed)", "floor", 1.3),
    ("no clipping needed >= 2.5x faster than torch", "gpt2 fp32", "clip (no clipping needed)", "torch", 2.5),
    ("no clipping needed >= 2.5x faster than torch", "small fp32", "clip (no clipping needed)", "torch", 2.5),
    ("value clip <= 1.2x floor", "gpt2 fp32", "value clip", "floor", 1.2),
    ("value clip <= 1.2x floor", "small fp32", "value clip", "floor", 1.2),
    ("bf16 grads, fp32 norm (Clipper) <= 1.3x floor", "gpt2 bf16", "clip (clipping)", "floor_clipper", 1.3),
    ("each adaptive policy <= 1.05x global-norm Clipper", "gpt2 fp32", "adaptive policies", "base", 1.05),
    ("fused clip + AdamW >= 1.2x faster than clip + AdamW(foreach)", "gpt2/2", "clip + AdamW step", "fused", 1.2),
]


def rows_for(threads: int, workload: str, op: Any, result: Any) -> list[dict[str, Any]]:
    """One row per implementation: median ms, floor ms, x floor and speed-up over the op's base."""
    floor_ms = op.floor_bytes / (result.floor_gbps * 1e9) * 1e3
    base = result.ms[op.base]
    return [{
        "threads": threads, "workload": workload, "op": op.name, "impl": name, "ms": ms,
        "floor_ms": floor_ms, "floor_gbps": result.floor_gbps, "x_floor": ms / floor_ms,
        "vs_base": base / ms, "base": op.base, "samples_ms": result.samples[name], "load": result.load,
    } for name, ms in result.ms.items()]


def render(rows: list[dict[str, Any]]) -> str:
    """The text table: one block per thread count, workload and operation."""
    out, last = [], None
    body: list[list[str]] = []
    for r in rows:
        key = (r["threads"], r["workload"], r["op"])
        label = ["", "", ""] if key == last else [str(r["threads"]), r["workload"], r["op"]]
        last = key
        mark = " (base)" if r["impl"] == r["base"] else ""
        body.append([*label, r["impl"] + mark, f"{r['ms']:.2f}", f"{r['floor_ms']:.2f}", f"{r['x_floor']:.2f}",
                     f"{r['vs_base']:.2f}"])
    out.append(table(["threads", "workload", "operation", "implementation", "ms", "floor ms", "x floor",
                      "speed-up vs base"], body))
    return "\n".join(out)


def _is_ours(name: str) -> bool:
    return name.startswith(("gradclip", "Clipper"))


def evaluate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target, for each thread count measured: the value, the implementation and met/not met."""
    verdicts = []
    for label, workload, op, metric, bound in TARGETS:
        for threads in sorted({r["threads"] for r in rows}):
            for name in dict.fromkeys(r["workload"] for r in rows if workload in r["workload"]):
                mine = [r for r in rows if r["threads"] == threads and r["op"] == op and r["workload"] == name]
                if mine:
                    verdicts.extend(_verdict(label, threads, mine, metric, bound))
    return verdicts


def _verdict(label: str, threads: int, rows: list[dict[str, Any]], metric: str, bound: float) -> list[dict]:
    def v(impl: str, value: float, met: bool) -> dict:
        return {"target": label, "threads": threads, "workload": rows[0]["workload"], "impl": impl,
                "value": value, "bound": bound, "met": met}

    if metric == "base":
        return [v(r["impl"], 1 / r["vs_base"], 1 / r["vs_base"] <= bound) for r in rows if r["impl"] != r["base"]]
    if metric == "fused":
        (r,) = [r for r in rows if r["impl"].startswith("gradclip")]
        return [v(r["impl"], r["vs_base"], r["vs_base"] >= bound)]
    if metric == "floor_clipper":
        r = min((r for r in rows if r["impl"].startswith("Clipper")), key=lambda r: r["ms"])
        return [v(r["impl"], r["x_floor"], r["x_floor"] <= bound)]
    best = min((r for r in rows if _is_ours(r["impl"])), key=lambda r: r["ms"])
    value = best["x_floor"] if metric == "floor" else best["vs_base"]
    return [v(best["impl"], value, value <= bound if metric == "floor" else value >= bound)]


def render_targets(verdicts: list[dict[str, Any]]) -> str:
    body = [[v["target"], v["workload"], str(v["threads"]), v["impl"], f"{v['value']:.2f}",
             "met" if v["met"] else "NOT met"] for v in verdicts]
    return table(["target", "workload", "threads", "best gradclip implementation", "value", "verdict"], body)


def markdown(result: dict[str, Any]) -> str:
    """The run as Markdown: the machine, one table per thread count, then the targets."""
    m = result["machine"]
    out = [f"Machine: {m['processor']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, "
           f"gradclip {m['gradclip']}; {result['reps']} repetitions per operation (medians).", ""]
    for threads in sorted({r["threads"] for r in result["rows"]}):
        out += [f"### {threads} thread{'s' if threads > 1 else ''}", "",
                "| workload | operation | implementation | ms | floor ms | x floor | speed-up vs base |",
                "|---|---|---|--:|--:|--:|--:|"]
        last = None
        for r in (r for r in result["rows"] if r["threads"] == threads):
            key = (r["workload"], r["op"])
            w, op = ("", "") if key == last else key
            last = key
            name = f"**{r['impl']}** (base)" if r["impl"] == r["base"] else r["impl"]
            out.append(f"| {w} | {op} | {name} | {r['ms']:.2f} | {r['floor_ms']:.2f} | {r['x_floor']:.2f} | "
                       f"{r['vs_base']:.2f} |")
        out.append("")
    out += ["| target | workload | threads | best gradclip implementation | value | verdict |", "|---|---|--:|---|--:|---|"]
    out += [f"| {v['target']} | {v['workload']} | {v['threads']} | {v['impl']} | {v['value']:.2f} | "
            f"{'met' if v['met'] else '**not met**'} |" for v in result["targets"]]
    return "\n".join(out) + "\n"


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path
