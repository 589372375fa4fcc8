"""The plugin manager and the registry built from every plugin's registrations."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError

pm = pluggy.PluginManager("modelkit")
pm.add_hookspecs(hookspecs)

_loaded_entry_points = False
_registry: "Registry | None" = None
_lock = threading.Lock()


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its name, the plugin that registered it and its mapping file."""

    name: str
    plugin: str
    mapping: Any  # str | Path | importlib.resources.abc.Traversable


@dataclass(frozen=True)
class Transform:
    """A named weight transform: ``apply`` on data and ``shape`` on shapes alone."""

    name: str
    plugin: str
    apply: Callable[..., Any]
    shape: Callable[..., tuple] | None = None


@dataclass
class Registry:
    """Everything the plugins registered, by name."""

    architectures: dict[str, Architecture] = field(default_factory=dict)
    block_kinds: dict[str, type] = field(default_factory=dict)
    block_plugins: dict[str, str] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)
    weight_sources: dict[str, type] = field(default_factory=dict)
    source_plugins: dict[str, str] = field(default_factory=dict)


def _load_entry_points() -> None:
    global _loaded_entry_points
    if not _loaded_entry_points:
        try:
            pm.load_setuptools_entrypoints("modelkit")
            if pm.get_plugin("core") is None:
                # running from a source tree that was never installed: the core still loads
                from . import builtin

                pm.register(builtin, name="core")
            pm.check_pending()  # a misspelled hook name in an installed plugin
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"invalid modelkit plugin: {exc}") from None
        _loaded_entry_points = True


def _call_each(hook_name: str, make_register: Callable[[str], Callable[..., None]]) -> None:
    hook = getattr(pm.hook, hook_name)
    # call the implementations one by one so every registration knows its plugin's name;
    # pluggy lists them last-registered first, so reverse to keep the core first
    for impl in reversed(hook.get_hookimpls()):
        impl.function(register=make_register(impl.plugin_name))


def _build() -> Registry:
    reg = Registry()

    def arch_register(plugin: str) -> Callable[..., None]:
        def register(name: str, mapping: Any) -> None:
            if name in reg.architectures:
                raise PluginError(
                    f"architecture '{name}' registered twice "
                    f"(by {reg.architectures[name].plugin} and {plugin})")
            reg.architectures[name] = Architecture(name, plugin, mapping)
        return register

    def block_register(plugin: str) -> Callable[..., None]:
        def register(kind: str, cls: type) -> None:
            if kind in reg.block_kinds:
                raise PluginError(f"block kind '{kind}' registered twice "
                                  f"(by {reg.block_plugins[kind]} and {plugin})")
            reg.block_kinds[kind] = cls
            reg.block_plugins[kind] = plugin
        return register

    def transform_register(plugin: str) -> Callable[..., None]:
        def register(name: str, apply: Callable[..., Any], shape: Callable[..., tuple] | None = None) -> None:
            if name in reg.transforms:
                raise PluginError(f"transform '{name}' registered twice "
                                  f"(by {reg.transforms[name].plugin} and {plugin})")
            reg.transforms[name] = Transform(name, plugin, apply, shape)
        return register

    def source_register(plugin: str) -> Callable[..., None]:
        def register(name: str, cls: type) -> None:
            if name in reg.weight_sources:
                raise PluginError(f"weight source '{name}' registered twice")
            reg.weight_sources[name] = cls
            reg.source_plugins[name] = plugin
        return register

    _call_each("register_architectures", arch_register)
    _call_each("register_block_kinds", block_register)
    _call_each("register_transforms", transform_register)
    _call_each("register_weight_sources", source_register)
    return reg


def registry() -> Registry:
    """The registry of all loaded plugins (built on first use)."""
    global _registry
    with _lock:
        if _registry is None:
            _load_entry_points()
            _registry = _build()
        return _registry


def reset() -> None:
    """Forget the built registry so the next use rebuilds it (after registering a plugin)."""
    global _registry
    with _lock:
        _registry = None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time (tests, notebooks) and rebuild the registry.

    A name already in use, or a hook implementation that is not a modelkit hook (a misspelled
    name, wrong arguments), raises :class:`PluginError` and leaves nothing registered.
    """
    _load_entry_points()
    try:
        registered = pm.register(plugin, name=name)
    except ValueError as exc:  # pluggy: this plugin or its name is registered already
        raise PluginError(f"cannot register plugin {name or plugin!r}: "
                          f"{str(exc).splitlines()[0]}") from None
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise PluginError(f"invalid modelkit plugin: {exc}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"invalid modelkit plugin: {exc}") from None
    reset()
    return registered


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin` and rebuild the registry."""
    pm.unregister(name=name)
    reset()


def mapping_path_text(mapping: Any) -> str:
    """A printable location for a registered mapping (a path or a package resource)."""
    return str(mapping) if not isinstance(mapping, Path) else str(mapping)
