"""`modelkit compare`, `modelkit perplexity` and `modelkit run --logprobs`: output equal to the
library's, exit codes, and one-line errors for input that does not fit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, copy_fixture, load_cached, read_tensors, run_cli, write_tensors

from modelkit.cli import main as cli_main
from modelkit.evaluation.perplexity import perplexity

COMPARE = FIXTURES / "compare_llama"
LLAMA = FIXTURES / "llama_gqa"
TEXT = ("Once upon a time, in a small village by the sea, there lived an old fisherman and his wife. "
        "Every morning the fisherman went out in his boat, and every evening he came home with fish.\n")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelkit: error: ") and needle in lines[0], err


# ---- compare -------------------------------------------------------------------------------

def test_compare_with_a_reference_file(capsys) -> None:
    code, out, _ = cli(capsys, "compare", "--model", COMPARE, "--reference", COMPARE / "ref.npz")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("llama (") and "against transformers 5." in lines[0] and "24 tokens" in lines[0]
    assert lines[1].split() == ["state", "max", "|diff|", "NMSE"]
    assert any(re.match(r"^layer 3 attn\s+\S+e-\d\d\s+\S+e-\d\d$", line) for line in lines)
    assert lines[-1].startswith("no divergence: every compared state agrees")


def test_compare_names_the_layer_where_q_and_k_are_swapped(tmp_path: Path, capsys) -> None:
    folder = copy_fixture("compare_llama", tmp_path / "swapped")
    tensors = read_tensors(folder)
    q, k = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"
    tensors[q], tensors[k] = tensors[k], tensors[q]
    write_tensors(folder, tensors)
    code, out, _ = cli(capsys, "compare", "--model", folder, "--reference", COMPARE / "ref.npz")
    assert code == 1
    assert re.search(r"^layer 1 attn .*<- first divergence$", out, re.MULTILINE)
    assert re.search(r"^first divergence: layer 1, block attn: NMSE \S+, max \|diff\| \S+; layer 0 agrees to \S+$",
                     out, re.MULTILINE)


def test_compare_tolerance_and_prompt(capsys) -> None:
    code, out, _ = cli(capsys, "compare", "-m", COMPARE, "--reference", COMPARE / "ref.npz", "--tolerance", "1e-16")
    assert code == 1 and "first divergence" in out
    code, _, err = cli(capsys, "compare", "-m", COMPARE, "--reference", COMPARE / "ref.npz", "--prompt", "Hello")
    assert code == 1
    one_line_error(err, "the reference was computed on other token ids than --prompt gives")


def test_compare_needs_transformers_or_a_file(capsys) -> None:
    # the test suite has no torch: asking for transformers says so in one line
    code, _, err = cli(capsys, "compare", "--model", COMPARE)
    assert code == 1
    one_line_error(err, "transformers and torch are not importable here")
    assert "--reference FILE.npz" in err


@pytest.mark.parametrize("extra, needle", [
    (["--save-reference", "x.npz"], "with --reference FILE there is nothing new to save"),
    (["--attention", "sdpa"], "a reference file's numbers are fixed"),
    (["--tolerance", "-1"], "--tolerance must be a finite NMSE >= 0"),
])
def test_compare_flag_errors(capsys, extra: list[str], needle: str) -> None:
    code, _, err = cli(capsys, "compare", "-m", COMPARE, "--reference", COMPARE / "ref.npz", *extra)
    assert code == 1
    one_line_error(err, needle)


def test_compare_with_a_reference_for_another_model(tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.npz"
    np.savez(other, ids=np.arange(24), logits=np.zeros((24, 100), np.float32))
    code, _, err = cli(capsys, "compare", "-m", COMPARE, "--reference", other)
    assert code == 1
    one_line_error(err, "logits have 100 columns but this model's vocabulary has 320")
    short = tmp_path / "short.npz"
    np.savez(short, ids=np.arange(24), logits=np.zeros((20, 320), np.float32))
    code, _, err = cli(capsys, "compare", "-m", COMPARE, "--reference", short)
    one_line_error(err, "'logits' has 20 rows but 'ids' has 24 tokens")
    deeper = tmp_path / "deeper.npz"
    np.savez(deeper, ids=np.arange(24), **{"layer.9": np.zeros((24, 32), np.float32)})
    code, _, err = cli(capsys, "compare", "-m", COMPARE, "--reference", deeper)
    one_line_error(err, "has 'layer.9' but this model has 4 layers")


# ---- perplexity ----------------------------------------------------------------------------

@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT * 2, encoding="utf-8")
    return path


@pytest.mark.parametrize("flags, options", [
    ([], dict(method="llama.cpp", ctx=16)),
    (["--method", "sliding", "--stride", "5"], dict(method="sliding", ctx=16, stride=5)),
    (["--method", "sliding", "--batch", "3"], dict(method="sliding", ctx=16)),
])
def test_perplexity_equals_the_library(capsys, text_file: Path, flags: list[str], options: dict) -> None:
    code, out, err = cli(capsys, "perplexity", "-m", LLAMA, "--file", text_file, "--ctx", "16", *flags)
    assert code == 0
    model = load_cached("llama_gqa")
    want = perplexity(model, model.tokenizer.encode(TEXT * 2), **options)
    match = re.match(r"^perplexity (\S+) \+/- (\S+)  \((\S+) method, ctx 16(, stride \d+)?: (\d+) of (\d+) tokens "
                     r"scored in (\d+) windows\)$", out.strip())
    assert match, out
    assert float(match.group(1)) == pytest.approx(want.value, abs=1e-4)
    assert match.group(3) == options["method"] and int(match.group(5)) == want.scored
    # not a terminal: the running value as plain lines, one per window
    progress = err.strip().splitlines()
    assert len(progress) == want.windows and progress[-1].startswith(f"[{want.windows}/{want.windows}] ppl ")


def test_perplexity_quiet(capsys, text_file: Path) -> None:
    code, out, err = cli(capsys, "perplexity", "-m", LLAMA, "-f", text_file, "-c", "16", "-q")
    assert code == 0 and err == "" and out.startswith("perplexity ")


def test_perplexity_of_a_file_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    code, _, err = cli(capsys, "perplexity", "-m", LLAMA, "--file", bad)
    assert code == 1
    one_line_error(err, "the perplexity text is not UTF-8 text (byte 0xe9 at offset 3)")


@pytest.mark.parametrize("flags, needle", [
    (["--ctx", "100"], "--ctx 100 is larger than the 64 positions this model was trained for"),
    (["--stride", "4", "--ctx", "16"], "--stride belongs to the sliding method"),
    (["--method", "sliding", "--stride", "99", "--ctx", "8"], "--stride must be between 1 and --ctx (8)"),
    (["--batch", "0", "--ctx", "16"], "--batch must be at least 1"),
])
def test_perplexity_settings_that_do_not_fit(capsys, text_file: Path, flags: list[str], needle: str) -> None:
    code, _, err = cli(capsys, "perplexity", "-m", LLAMA, "--file", text_file, *flags)
    assert code == 1
    one_line_error(err, needle)


def test_perplexity_of_a_text_too_short(tmp_path: Path, capsys) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Hello there.", encoding="utf-8")
    code, _, err = cli(capsys, "perplexity", "-m", LLAMA, "--file", short, "--ctx", "32")
    assert code == 1
    one_line_error(err, "the llama.cpp method needs at least 2 x --ctx = 64 (two chunks)")


def test_perplexity_context_beyond_learned_positions(capsys, text_file: Path) -> None:
    code, _, err = cli(capsys, "perplexity", "-m", FIXTURES / "gpt2", "--file", text_file, "--ctx", "65")
    assert code == 1
    one_line_error(err, "--ctx 65 is larger than this model's 64 learned positions")


def test_perplexity_missing_file(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "perplexity", "-m", LLAMA, "--file", tmp_path / "none.txt")
    one_line_error(err, "text file not found")


# ---- run --logprobs ------------------------------------------------------------------------

def test_run_logprobs_prints_a_table_of_the_generated_tokens(capsys) -> None:
    code, out, _ = cli(capsys, "run", "-m", LLAMA, "-p", "Once upon", "-n", "5", "-t", "0", "-q", "--logprobs", "2")
    assert code == 0
    model = load_cached("llama_gqa")
    ids, scored = model.generate(model.tokenizer.encode("Once upon"), max_new_tokens=5, temperature=0.0, logprobs=2)
    table = out.split("\n\n#\ttoken\tlogprob\ttop 2\n", 1)[1].strip().splitlines()
    assert len(table) == len(ids)
    for n, (line, s) in enumerate(zip(table, scored), 1):
        cells = line.split("\t")
        assert cells[0] == str(n) and float(cells[2]) == pytest.approx(s.logprob, abs=1e-4)
        assert len(cells[3].split(" | ")) == 2


def test_run_without_logprobs_prints_no_table(capsys) -> None:
    code, out, _ = cli(capsys, "run", "-m", LLAMA, "-p", "Once upon", "-n", "3", "-t", "0", "-q")
    assert code == 0 and "\t" not in out


def test_run_logprobs_errors(capsys) -> None:
    code, _, err = cli(capsys, "run", "-m", LLAMA, "-p", "x", "--logprobs", "-2")
    assert code == 1
    one_line_error(err, "--logprobs must be at least 0, got -2")


def test_new_commands_run_as_a_process() -> None:
    result = run_cli("compare", "--model", COMPARE, "--reference", COMPARE / "ref.npz")
    assert result.returncode == 0 and "no divergence" in result.stdout


def test_compare_without_a_tokenizer_uses_the_reference_ids(tmp_path: Path, capsys) -> None:
    folder = copy_fixture("compare_llama", tmp_path / "notok")
    (folder / "tokenizer.json").unlink()
    code, out, _ = cli(capsys, "compare", "-m", folder, "--reference", COMPARE / "ref.npz")
    assert code == 0 and "no divergence" in out
    code, _, err = cli(capsys, "compare", "-m", folder)
    one_line_error(err, "no tokenizer.json, so the prompt cannot be encoded")
