"""The docs keep up with the code: every hook is documented in docs/hooks.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from modelkit.plugins import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs"


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, "modelkit_spec")]


def test_there_are_hooks() -> None:
    assert set(hook_names()) >= {"register_architectures", "register_block_kinds",
                                 "register_transforms", "register_weight_sources"}


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_documented(hook: str) -> None:
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {hook}\s*$", text, re.MULTILINE), f"docs/hooks.md has no '## {hook}' section"


@pytest.mark.parametrize("hook", hook_names())
def test_hookspec_has_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Called" in doc and "register(" in doc, f"{hook}: say when it is called and what register takes"


def test_core_transforms_are_documented() -> None:
    from modelkit.loading.transforms import CORE_TRANSFORMS

    text = (DOCS / "mappings.md").read_text(encoding="utf-8")
    for name in CORE_TRANSFORMS:
        assert re.search(rf"^### `{name}`", text, re.MULTILINE), f"docs/mappings.md lacks transform {name}"


def test_core_block_kinds_are_documented() -> None:
    from modelkit.plugins import registry

    text = (DOCS / "mappings.md").read_text(encoding="utf-8")
    for kind, plugin in registry().block_plugins.items():
        if plugin == "core":
            assert re.search(rf"^### `{kind}`", text, re.MULTILINE), f"docs/mappings.md lacks block kind {kind}"


# ---- the command line against docs/cli.md ------------------------------------------------------

def _subcommands() -> dict[str, "argparse.ArgumentParser"]:
    import argparse

    from modelkit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _cli_section(command: str) -> str:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    match = re.search(rf"^## `modelkit {command}`\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/cli.md has no '## `modelkit {command}`' section"
    return match.group(1)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_and_flag_is_documented(command: str) -> None:
    section = _cli_section(command)
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for action in _subcommands()[command]._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                # a flag shared by several commands may be documented once, in its own section
                assert f"`{flag}" in section or f"`{flag}" in text, f"docs/cli.md does not document {command} {flag}"


# ---- mapping keys, block names and options against docs/mappings.md ----------------------------

def _mappings_doc() -> str:
    return (DOCS / "mappings.md").read_text(encoding="utf-8")


def test_every_yaml_key_is_documented() -> None:
    from modelkit.schema import parse

    text = _mappings_doc()
    keys = (parse.TOP_KEYS | parse.MATCH_KEYS | parse.FIELD_KEYS | parse.MODEL_KEYS | parse.LAYER_KEYS
            | parse.FLOW_STEP_KEYS
            | parse.WEIGHT_KEYS | {"count", "variant", "variants"})
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/mappings.md does not document {missing}"


def test_every_canonical_name_is_documented() -> None:
    from modelkit.schema.vocabulary import BLOCK_NAMES, MODEL_TENSORS

    text = _mappings_doc()
    missing = sorted(n for n in [*BLOCK_NAMES, *MODEL_TENSORS] if f"`{n}`" not in text)
    assert not missing, f"docs/mappings.md does not list the canonical names {missing}"


def test_every_block_option_and_parameter_is_documented() -> None:
    """Each block kind's section names every option and parameter it declares (plugin kinds in
    their plugin's doc)."""
    from modelkit.plugins import registry

    docs = {"core": _mappings_doc(), "granite": (DOCS / "granite.md").read_text(encoding="utf-8"),
            "ssm": (DOCS / "ssm.md").read_text(encoding="utf-8")}
    bundled = {p.name.removeprefix("modelkit_") for p in (DOCS.parent / "plugins").iterdir() if p.is_dir()}
    for kind, cls in registry().block_kinds.items():
        plugin = registry().block_plugins[kind]
        assert plugin in docs or plugin not in bundled, f"bundled plugin {plugin}: which doc has its block kinds?"
        text = docs.get(plugin)
        if text is None:  # a plugin from outside this repository
            continue
        match = re.search(rf"^###? `{kind}`.*?$(.*?)(?=^###? |\Z)", text, re.MULTILINE | re.DOTALL)
        assert match, f"no section for block kind {kind}"
        section = match.group(1)
        for name in [*cls.OPTIONS, *cls.PARAMETERS]:
            assert f"`{name}`" in section, f"block kind {kind}: `{name}` is not documented in its section"


def test_every_architecture_is_in_the_families_table() -> None:
    import modelkit

    text = (DOCS / "families.md").read_text(encoding="utf-8")
    for arch in modelkit.architectures():
        assert f"| `{arch}` |" in text, f"docs/families.md has no row for {arch}"
