"""Plugins: the hook contract, the manager that loads plugins, and the registry they fill."""

from .hookspecs import hookimpl, hookspec
from .manager import commands, load_plugins, pm, register_plugin, registry, reset, unregister_plugin
from .registry import Architecture, Command, Registry, Transform

__all__ = ["Architecture", "Command", "Registry", "Transform", "commands", "hookimpl", "hookspec",
           "load_plugins", "pm", "register_plugin", "registry", "reset", "unregister_plugin"]
