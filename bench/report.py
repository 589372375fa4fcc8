"""The benchmark's tables: medians with modelkit's ratios, each round's figures, and each
engine's decoding speed as a fraction of the machine's matrix-vector bandwidth.

``results`` is ``{model: {engine: {group: {"runs": [...], "median": {...}}}}}`` and
``bandwidth`` the list of ``bench/bandwidth.py`` measurements, one per round.
"""

from __future__ import annotations

import statistics
from typing import Any

LABELS = {"modelkit": "modelkit", "modelkit-gguf": "modelkit (GGUF)", "transformers": "transformers",
          "llamacpp": "llama.cpp"}


def figures(prefill: list[int], long: int) -> list[tuple[str, str, str, bool]]:
    """(label, group, key, higher_is_better) of every figure the workers report."""
    rows = [("load (s)", "load", "load_s", False),
            ("RSS after load (MB)", "load", "load_rss_mb", False),
            ("peak RSS after load (MB)", "load", "load_peak_rss_mb", False),
            ("first token, 16-token prompt (ms)", "load", "ttft_ms", False),
            ("first token, first call after load (ms)", "load", "ttft_cold_ms", False)]
    rows += [(f"prefill {n} (tok/s)", "prefill", f"prefill_{n}_tok_s", True) for n in prefill]
    rows += [(f"peak RSS, prefill up to {max(prefill)} (MB)", "prefill", "peak_rss_mb", False),
             ("decode (tok/s)", "decode", "decode_tok_s", True),
             ("decode, share of matvec bandwidth", "decode", "bandwidth_share", True),
             ("peak RSS, decode (MB)", "decode", "peak_rss_mb", False),
             (f"prefill {long} (s)", "long", f"long_{long}_s", False),
             (f"peak RSS, prefill {long} (MB)", "long", "peak_rss_mb", False)]
    return rows


def fmt(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _markdown(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def add_bandwidth_shares(results: dict, decode_bytes: dict[str, int], bandwidth: list[dict]) -> None:
    """Each decode run's tokens/s times the bytes a token reads, over that round's measured
    matrix-vector bandwidth: ``bandwidth_share`` in the run (1.0 = at the machine's limit)."""
    for model, engines in results.items():
        nbytes = decode_bytes.get(model, 0)
        for groups in engines.values():
            for i, run in enumerate(groups.get("decode", {}).get("runs", [])):
                bw = bandwidth[i].get("matvec_gbps") if i < len(bandwidth) else None
                if nbytes and bw and isinstance(run.get("decode_tok_s"), (int, float)):
                    run["bandwidth_share"] = run["decode_tok_s"] * nbytes / (bw * 1e9)


def _value(results: dict, model: str, engine: str, group: str, key: str, run: int | None = None) -> Any:
    g = results[model].get(engine, {}).get(group, {})
    if run is None:
        return g.get("median", {}).get(key)
    runs = g.get("runs", [])
    return runs[run].get(key) if run < len(runs) else None


def _ratio(mk: Any, ref: Any, higher: bool) -> str:
    """modelkit's advantage: mk / ref for throughputs, ref / mk for times and memory (above 1: modelkit better)."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mk, ref)) and ref and mk
    return (f"{mk / ref:.2f}x" if higher else f"{ref / mk:.2f}x") if ok else "-"


def table(benches: list[Any], results: dict, engines: list[str], prefill: list[int], long: int,
          threads: int, bandwidth: list[dict]) -> str:
    """Medians per model (modelkit's ratio to each reference), then each round's figures."""
    refs = [e for e in engines if e != "modelkit"]
    lines: list[str] = []
    bws = [b.get("matvec_gbps") for b in bandwidth if isinstance(b.get("matvec_gbps"), (int, float))]
    if bws:
        lines.append("")
        lines.append(f"matrix-vector bandwidth ({threads} threads): median {statistics.median(bws):.1f} GB/s; "
                     "per round " + " / ".join(f"{v:.1f}" for v in bws) + " (load average "
                     + " / ".join(fmt(b.get("loadavg")) for b in bandwidth) + ")")
    for b in benches:
        lines.append("")
        lines.append(f"## {b.name}: {b.note}; float32 weights {b.f32_bytes / 2**20:,.0f} MB "
                     f"({b.decode_bytes / 2**20:,.0f} MB read per decoded token)")
        head = ["figure"] + [LABELS[e] for e in engines]
        head += [f"vs {LABELS[e]}" for e in refs if "modelkit" in engines]
        rows = [head]
        for label, group, key, higher in figures(prefill, long):
            if group not in b.groups:
                continue
            vals = [_value(results, b.name, e, group, key) for e in engines]
            if all(v is None for v in vals):
                continue
            row = [label] + [fmt(v) for v in vals]
            if "modelkit" in engines:
                mk = vals[engines.index("modelkit")]
                row += [_ratio(mk, vals[engines.index(e)], higher) for e in refs]
            rows.append(row)
        lines += _markdown(rows)
        lines += _rounds(b, results, engines, prefill, long)
    lines.append("")
    n = max((len(g["runs"]) for r in results.values() for e in r.values() for g in e.values()), default=0)
    lines.append(f"medians of {n} alternating rounds; {threads} threads per engine; ratios are modelkit's "
                 "advantage (throughputs modelkit / reference, times and memory reference / modelkit: above 1, "
                 "modelkit is better); per round: each "
                 "round's figures, r1 / r2 / ..., and the load average when each worker started")
    return "\n".join(lines)


def _rounds(b: Any, results: dict, engines: list[str], prefill: list[int], long: int) -> list[str]:
    """Per-round figures of the speed figures (and the ratios of that round)."""
    n = max((len(results[b.name][e][g]["runs"]) for e in engines for g in b.groups), default=0)
    if n < 2:
        return []
    refs = [e for e in engines if e != "modelkit"]
    rows = [["per round", *(LABELS[e] for e in engines), *(f"vs {LABELS[e]}" for e in refs if "modelkit" in engines)]]
    for label, group, key, higher in figures(prefill, long):
        if group not in b.groups or "RSS" in label:
            continue
        per = {e: [_value(results, b.name, e, group, key, i) for i in range(n)] for e in engines}
        if all(v is None for vals in per.values() for v in vals):
            continue
        row = [label] + [" / ".join(fmt(v) for v in per[e]) for e in engines]
        if "modelkit" in engines:
            row += [" / ".join(_ratio(mk, ref, higher) for mk, ref in zip(per["modelkit"], per[e])) for e in refs]
        rows.append(row)
    load = {e: [_value(results, b.name, e, "decode" if "decode" in b.groups else b.groups[0], "loadavg", i)
                for i in range(n)] for e in engines}
    rows.append(["load average at start"] + [" / ".join(fmt(v) for v in load[e]) for e in engines]
                + ["" for e in refs if "modelkit" in engines])
    return [""] + _markdown(rows)
