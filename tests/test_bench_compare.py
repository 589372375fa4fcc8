"""The benchmark's regression check and its bandwidth shares (arithmetic only: no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import compare  # noqa: E402
from bench.report import add_bandwidth_shares  # noqa: E402


def _run(decode: float, load: float, rss: float) -> dict:
    groups = {"decode": {"median": {"decode_tok_s": decode, "peak_rss_mb": rss, "loadavg": 3.0}},
              "load": {"median": {"load_s": load, "ttft_ms": 100.0}}}
    return {"bandwidth": [{"matvec_gbps": 20.0}], "models": {"m": {"results": {"modelkit": groups}}}}


def test_compare_flags_only_figures_worse_by_more_than_the_threshold():
    rows, text = compare(_run(20.0, 1.0, 500.0), _run(17.0, 1.05, 560.0))
    worse = {r["figure"] for r in rows if r["worse"]}
    # decode 15% slower and 12% more memory are flagged; a load 5% slower is not; the load
    # average is not a figure
    assert worse == {"decode_tok_s", "decode: peak_rss_mb"}
    assert "loadavg" not in {r["figure"] for r in rows}
    assert "2 worse by more than 10%" in text


def test_compare_faster_is_never_worse():
    rows, _ = compare(_run(20.0, 1.0, 500.0), _run(30.0, 0.5, 400.0))
    assert rows and not any(r["worse"] for r in rows)
    assert all(r["ratio"] > 1 for r in rows if r["figure"] != "ttft_ms")


def test_bandwidth_share_is_bytes_per_second_over_the_rounds_bandwidth():
    results = {"m": {"modelkit": {"decode": {"runs": [{"decode_tok_s": 10.0}, {"decode_tok_s": 12.0}]}}}}
    add_bandwidth_shares(results, {"m": 10**9}, [{"matvec_gbps": 20.0}, {"matvec_gbps": 24.0}])
    runs = results["m"]["modelkit"]["decode"]["runs"]
    assert [round(r["bandwidth_share"], 6) for r in runs] == [0.5, 0.5]


def test_interleaved_batch_measurement_steps_every_decoder_in_turn():
    """``python -m bench.batch --interleave``: one row per decoder size (no timing asserted)."""
    from conftest import fixture_path

    import modelkit
    from bench.batch import interleaved

    models = [modelkit.load(fixture_path("gh_hybrid")) for _ in range(2)]
    rows = interleaved(models, [1, 3], prompt=4, rounds=3)
    assert [r["streams"] for r in rows] == [1, 3]
    assert all(r["step_ms"] > 0 and r["tok_s"] > 0 for r in rows)


def test_the_largest_cache_is_read_from_sysfs_and_instruction_caches_are_left_out(tmp_path: Path) -> None:
    from bench.run import largest_cache

    for name, kind, size in (("index0", "Data", "48K"), ("index1", "Instruction", "512M"),
                             ("index2", "Unified", "2048K"), ("index3", "Unified", "260M"),
                             ("index4", "Unified", "junk")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text(kind + "\n")
        (tmp_path / name / "size").write_text(size + "\n")
    assert largest_cache(tmp_path) == 260 << 20
    assert largest_cache(tmp_path / "missing") == 0


def test_the_benchmarks_warm_up_through_the_head_layout_trial() -> None:
    from bench import serve_throughput, worker
    from modelkit.nn.trial import TRIAL_PRODUCTS

    # the prompt's last row is a one-row product too, so these many tokens are enough
    assert worker.DECODE_WARM_TOKENS >= TRIAL_PRODUCTS and serve_throughput.WARM_TOKENS >= TRIAL_PRODUCTS
