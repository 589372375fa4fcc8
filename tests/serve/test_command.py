"""`modelkit serve`'s command line: registered through the core plugin's hook, loopback by
default, bad flags refused in one line."""

from __future__ import annotations

from conftest import FIXTURES, run_cli

from modelkit.cli import build_parser


def test_serve_is_registered_and_binds_loopback_by_default() -> None:
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1" and args.port == 8000
    assert (args.max_batch, args.queue_size, args.max_n) == (16, 64, 8)


def test_bad_flags_are_one_line_errors() -> None:
    out = run_cli("serve", "--model", FIXTURES / "llama_gqa", "--max-batch", "0", timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == "modelkit: error: --max-batch must be at least 1, got 0"
