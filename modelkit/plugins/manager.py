"""The plugin manager: loading plugins from entry points, and the registry built from them."""

from __future__ import annotations

import threading

import pluggy

from ..errors import PluginError
from . import hookspecs
from .registry import Command, Registry, build_registry, collect_commands

pm = pluggy.PluginManager("modelkit")
pm.add_hookspecs(hookspecs)

_loaded_entry_points = False
_registry: Registry | None = None
_lock = threading.RLock()


def load_plugins() -> pluggy.PluginManager:
    """Load every plugin of the ``modelkit`` entry-point group once (the core included)."""
    global _loaded_entry_points
    with _lock:
        if not _loaded_entry_points:
            try:
                if pm.get_plugin("core") is None:
                    # the core first, so its registrations come first whatever the install order
                    from .. import builtin

                    pm.register(builtin, name="core")
                pm.load_setuptools_entrypoints("modelkit")
                pm.check_pending()  # a misspelled hook name in an installed plugin
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"invalid modelkit plugin: {exc}") from None
            _loaded_entry_points = True
    return pm


def registry() -> Registry:
    """The registry of all loaded plugins (built on first use)."""
    global _registry
    with _lock:
        if _registry is None:
            load_plugins()
            _registry = build_registry(pm)
        return _registry


def commands(reserved: set[str]) -> dict[str, Command]:
    """The subcommands plugins register (``reserved``: the built-in command names)."""
    with _lock:
        return collect_commands(load_plugins(), reserved)


def reset() -> None:
    """Forget the built registry so the next use rebuilds it (after registering a plugin)."""
    global _registry
    with _lock:
        _registry = None
    from ..loading.choose import forget_mappings

    forget_mappings()


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time (tests, notebooks) and rebuild the registry.

    A name already in use, or a hook implementation that is not a modelkit hook (a misspelled
    name, wrong arguments), raises :class:`PluginError` and leaves nothing registered.
    """
    load_plugins()
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
