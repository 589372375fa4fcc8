"""Plugins are called in the documented order (the core first), and may add commands."""

from __future__ import annotations

import argparse
from typing import Callable

import pytest
from conftest import fixture_path, run_cli

import modelkit
from modelkit import hookimpl, plugins
from modelkit.cli import main


class Recorder:
    """Registers nothing; notes that it was called."""

    calls: list[str] = []

    @hookimpl
    def register_architectures(self, register: Callable[..., None]) -> None:
        Recorder.calls.append("recorder")


def test_hooks_run_core_first_then_in_loading_order() -> None:
    reg = plugins.registry()
    assert list(reg.architectures)[:5] == ["gpt2", "llama", "mistral", "falcon", "granite3"]
    assert [a.plugin for a in reg.architectures.values()][0] == "core"
    assert list(reg.weight_sources) == ["safetensors", "gguf"]  # tried in that order
    plugins.register_plugin(Recorder(), name="recorder")
    try:
        hook = plugins.pm.hook.register_architectures
        names = [impl.plugin_name for impl in hook.get_hookimpls()]
        assert names[0] == "core" and names[-1] == "recorder"
        plugins.registry()
        assert Recorder.calls == ["recorder"]
    finally:
        plugins.unregister_plugin("recorder")


class CommandPlugin:
    @hookimpl
    def register_commands(self, register: Callable[..., None]) -> None:
        def configure(p: argparse.ArgumentParser) -> None:
            p.add_argument("--name", default="world")

        def run(args: argparse.Namespace) -> int:
            if args.name == "error":
                raise modelkit.GenerationError("a plugin's user error")
            print(f"hello {args.name}")
            return 3

        register("hello", configure, run, help="say hello")


def test_a_plugin_adds_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    plugins.register_plugin(CommandPlugin(), name="hello_plugin")
    try:
        assert main(["hello", "--name", "you"]) == 3
        assert capsys.readouterr().out == "hello you\n"
        assert main(["hello", "--name", "error"]) == 1
        assert capsys.readouterr().err == "modelkit: error: a plugin's user error\n"
    finally:
        plugins.unregister_plugin("hello_plugin")


def test_a_plugin_cannot_take_a_builtin_command(capsys: pytest.CaptureFixture[str]) -> None:
    class Thief:
        @hookimpl
        def register_commands(self, register: Callable[..., None]) -> None:
            register("run", lambda p: None, lambda a: 0)

    plugins.register_plugin(Thief(), name="thief")
    try:
        assert main(["archs"]) == 1
        assert "registered command 'run', a built-in command" in capsys.readouterr().err
    finally:
        plugins.unregister_plugin("thief")


def test_convert_is_the_gguf_plugins_command() -> None:
    commands = plugins.commands({"archs"})
    assert commands["convert"].plugin == "gguf"
    proc = run_cli("--help")
    assert proc.returncode == 0 and "convert" in proc.stdout


def test_bundled_plugins_import_only_the_public_api() -> None:
    """A third-party plugin can do what the bundled ones do: they use only `modelkit`'s exports."""
    import ast
    from pathlib import Path

    root = Path(modelkit.__file__).resolve().parent.parent / "plugins"
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modelkit"):
                assert node.module == "modelkit" or node.level, f"{path.name} imports {node.module}"
                if node.module == "modelkit":
                    for alias in node.names:
                        assert alias.name in modelkit.__all__, f"{path.name}: {alias.name} is not exported"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("modelkit."), f"{path.name} imports {alias.name}"


def test_architectures_includes_user_mappings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from conftest import mapping_data

    data = {**mapping_data("llama"), "name": "my_own_llama"}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(tmp_path))
    assert "my_own_llama" in modelkit.architectures()
    proc = run_cli("archs", env={**__import__("conftest").cli_env(), "MODELKIT_MAPPINGS": str(tmp_path)})
    assert "my_own_llama" in proc.stdout


def test_arch_of_another_family_names_the_right_one() -> None:
    proc = run_cli("validate", "--model", fixture_path("llama_gqa"), "--arch", "granite")
    assert proc.returncode == 1
    assert ("the checkpoint has model_type 'llama', which architecture 'llama' serves, not 'granite'"
            in proc.stderr), proc.stderr
