"""The regression check: every median of a new benchmark run against a saved one.

    python3 -m bench --compare OLD.json [--against NEW.json] [--threshold 0.10]

Without ``--against`` the benchmark runs first and its results are compared; with it, two saved
files are. Each figure present in both (model, engine, figure) is shown with its change as a
speed ratio (new over old for throughputs, old over new for times and memory: below 1 is
worse) and flagged when it is worse by more than the threshold: a time more than 10% longer, a
throughput below 1/1.1 of the old one, a resident set more than 10% larger. The matrix-vector
bandwidth of both runs is shown too: a machine that ran slower reads slower everywhere.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

HIGHER_IS_BETTER = ("_tok_s", "bandwidth_share", "_gbps")
# medians that are not figures of the engines' speed or memory
SKIP = {"threads", "rss_mb", "loadavg", "decode_ms_per_token", "long_peak_before_mb", "load_rss_mb"}


def higher_is_better(key: str) -> bool:
    return key.endswith(HIGHER_IS_BETTER)


def _medians(data: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for model, entry in data.get("models", {}).items():
        for engine, groups in entry.get("results", {}).items():
            for group, g in groups.items():
                for key, value in g.get("median", {}).items():
                    if key in SKIP or not isinstance(value, (int, float)) or isinstance(value, bool):
                        continue
                    name = f"{group}: {key}" if key == "peak_rss_mb" else key
                    out[(model, engine, name)] = float(value)
    return out


def _bandwidth(data: dict[str, Any]) -> float | None:
    vals = [b["matvec_gbps"] for b in data.get("bandwidth", []) if isinstance(b.get("matvec_gbps"), (int, float))]
    return statistics.median(vals) if vals else None


def compare(old: dict[str, Any], new: dict[str, Any], threshold: float = 0.10) -> tuple[list[dict], str]:
    """Rows (model, engine, figure, old, new, ratio, worse) for the figures in both runs, and the
    report as text. ``ratio`` is a speed ratio (below 1: worse); ``worse`` is set when it is
    below 1 / (1 + threshold)."""
    a, b = _medians(old), _medians(new)
    rows = []
    for key in sorted(set(a) & set(b)):
        o, n = a[key], b[key]
        if o <= 0 or n <= 0:
            continue
        ratio = n / o if higher_is_better(key[2]) else o / n
        rows.append({"model": key[0], "engine": key[1], "figure": key[2], "old": o, "new": n,
                     "ratio": ratio, "worse": ratio < 1.0 / (1.0 + threshold)})
    lines = []
    bw_old, bw_new = _bandwidth(old), _bandwidth(new)
    if bw_old or bw_new:
        lines.append(f"matrix-vector bandwidth: old {bw_old or float('nan'):.1f} GB/s, new "
                     f"{bw_new or float('nan'):.1f} GB/s (a slower machine reads slower everywhere)")
    width = max((len(f"{r['model']} {r['engine']} {r['figure']}") for r in rows), default=10)
    for r in rows:
        name = f"{r['model']} {r['engine']} {r['figure']}"
        flag = "  WORSE by more than {:.0%}".format(threshold) if r["worse"] else ""
        lines.append(f"{name:{width}s}  {r['old']:12.4g} -> {r['new']:12.4g}   {r['ratio']:6.3f}{flag}")
    worse = [r for r in rows if r["worse"]]
    lines.append(f"{len(rows)} figures compared; {len(worse)} worse by more than {threshold:.0%}"
                 + (": " + ", ".join(f"{r['model']} {r['engine']} {r['figure']}" for r in worse) if worse else ""))
    return rows, "\n".join(lines)


def compare_files(old: Path, new: Path, threshold: float = 0.10) -> int:
    """Print the comparison of two saved runs; 1 when any figure is worse, else 0."""
    rows, text = compare(json.loads(Path(old).read_text()), json.loads(Path(new).read_text()), threshold)
    print(text)
    return 1 if any(r["worse"] for r in rows) else 0
