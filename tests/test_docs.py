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
