"""The `modelkit` command: archs, validate, run, and one-line user errors (run in subprocesses)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_env, copy_fixture, edit_config, fixture_path, load_cached, read_tensors, \
    run_cli, write_tensors

from modelkit.cli import main as cli_main

from modelkit.builtin import SHIPPED  # noqa: E402


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modelkit: error: "), proc.stderr
    return lines[0]


def test_help_does_not_import_numpy_or_plugin_blocks() -> None:
    code = (
        "import sys\n"
        "from modelkit.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['validate', '--help'], ['archs', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        # plugins are loaded (they may add commands) but import nothing heavy to do so
        "heavy = ['numpy', 'yaml', 'safetensors', 'tokenizers', 'jinja2', 'huggingface_hub', 'gguf',\n"
        "         'modelkit.loading', 'modelkit.nn', 'modelkit_granite.mamba2', 'modelkit_gguf.source']\n"
        "print('IMPORTED:' + ','.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(),
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = proc.stdout.strip().splitlines()[-1]
    assert imported == "IMPORTED:", f"imported by --help: {imported}"


def test_python_dash_m_and_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("modelkit ")
    proc = run_cli()
    assert proc.returncode == 0 and "archs" in proc.stdout and "validate" in proc.stdout


def test_archs() -> None:
    proc = run_cli("archs")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for arch in SHIPPED:
        assert arch in rows, proc.stdout
        assert f"{arch}.yaml" in rows[arch] and "core" in rows[arch]


@pytest.mark.skipif(shutil.which("modelkit") is None, reason="console script not installed")
def test_console_script() -> None:
    proc = subprocess.run(["modelkit", "archs"], capture_output=True, text=True, env=cli_env(),
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "llama" in proc.stdout


def test_validate_ok() -> None:
    proc = run_cli("validate", "--model", fixture_path("mistral_window"))
    assert proc.returncode == 0, proc.stderr
    assert "architecture mistral" in proc.stdout and "mistral.yaml" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("ok")


@pytest.mark.parametrize("name", ["gpt2", "falcon_7b"])
def test_run_prints_greedy_text(name: str) -> None:
    model = load_cached(name)
    prompt = "Hello world"
    ids = model.tokenizer.encode(prompt)
    expected = model.tokenizer.decode(model.generate(ids, max_new_tokens=5, temperature=0.0))
    proc = run_cli("run", "--model", fixture_path(name), "--prompt", prompt, "--max-tokens", "5",
                   "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"
    assert "Traceback" not in proc.stderr


def test_missing_folder_error(tmp_path: Path) -> None:
    line = _one_line_error(run_cli("run", "--model", tmp_path / "absent", "--prompt", "hi"))
    assert str(tmp_path / "absent") in line


def test_unknown_arch_error() -> None:
    line = _one_line_error(run_cli("validate", "--model", fixture_path("gpt2"), "--arch", "nonesuch"))
    assert "nonesuch" in line and "llama" in line


def test_bad_config_error(tmp_path: Path) -> None:
    folder = copy_fixture("gpt2", tmp_path / "m")
    edit_config(folder, n_head=5)
    line = _one_line_error(run_cli("run", "--model", folder, "--prompt", "hi", "--max-tokens", "2"))
    assert str(folder / "config.json") in line


# in-process: the same main() the console script calls, for the remaining user errors

@pytest.mark.parametrize("setup, argv_tail, needle", [
    ("json", ["validate"], "not valid JSON"),
    ("model_type", ["validate"], "no architecture matches"),
    ("mapping", ["validate", "--mapping", "{tmp}/absent.yaml"], "mapping file not found"),
    ("zero", ["run", "--prompt", "hi"], "vocab_size"),
])
def test_user_errors_in_process(tmp_path: Path, capsys: pytest.CaptureFixture, setup: str,
                                argv_tail: list[str], needle: str) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    if setup == "json":
        (folder / "config.json").write_text("{")
    elif setup == "model_type":
        edit_config(folder, model_type="nonesuch", architectures=["Nonesuch"])
    elif setup == "zero":
        edit_config(folder, vocab_size=0)
    command, *rest = [a.replace("{tmp}", str(tmp_path)) for a in argv_tail]
    assert cli_main([command, "--model", str(folder), *rest]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelkit: error: ") and len(err.splitlines()) == 1, err
    assert needle in err


def test_weight_mismatch_in_run_is_short_and_points_to_validate(tmp_path: Path, capsys) -> None:
    tensors = {k: v for k, v in read_tensors(fixture_path("llama_gqa")).items() if "layers.0." not in k}
    tensors["extra.weight"] = np.zeros(2, np.float32)
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    write_tensors(folder, tensors)
    assert cli_main(["run", "--model", str(folder), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelkit: error: ")
    assert 1 < len(err.splitlines()) <= 5 and "modelkit validate" in err
    assert cli_main(["validate", "--model", str(folder)]) == 1
    out = capsys.readouterr().out
    assert out.count("missing ") == 9 and "extra.weight" in out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["run", "--prompt", "hi"])  # --model missing
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli_main(["nonesuch-command"])
    assert info.value.code == 2


def test_validate_into_a_closed_pipe_keeps_its_failure(tmp_path) -> None:
    """`modelkit validate ... | head` exits non-zero when validation fails, even though the
    report's writer finds the pipe closed."""
    import numpy as np
    from conftest import copy_fixture, read_tensors, write_tensors

    folder = copy_fixture("llama_gqa", tmp_path / "m")
    tensors = read_tensors(folder)
    tensors.update({f"extra.{n}.weight": np.zeros(1, np.float32) for n in range(4000)})  # > a pipe's buffer
    write_tensors(folder, tensors)
    cmd = f"set -o pipefail; {sys.executable} -m modelkit validate --model {folder} | head -n 2"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-500:])
    assert proc.stdout.splitlines()[0].startswith("architecture llama")
    assert "Traceback" not in proc.stderr
