"""The registry: everything the plugins registered, by name, built by calling their hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from ..errors import PluginError


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its name, the plugin that registered it and its mapping file."""

    name: str
    plugin: str
    mapping: Any  # str | Path | importlib.resources.abc.Traversable


@dataclass(frozen=True)
class Inverse:
    """How to write a tensor back in the form a transform reads it from (``modelkit convert``).

    Either ``apply(array, **args)``, the stored tensor from the transformed one, or, for a
    transform that takes one piece of a stored tensor, ``place(whole, piece, **args)``, which
    writes the piece into that tensor in place. ``shape(shape, **args)`` gives the stored shape
    (for ``place``: the least shape of the whole); None keeps the shape. ``args`` are the
    transform's own."""

    apply: Callable[..., Any] | None = None
    place: Callable[..., None] | None = None
    shape: Callable[..., tuple] | None = None


@dataclass(frozen=True)
class Transform:
    """A named weight transform: ``apply`` on data and ``shape`` on shapes alone, and how to
    undo it (``inverse``; None: modelkit does not write its form back)."""

    name: str
    plugin: str
    apply: Callable[..., Any]
    shape: Callable[..., tuple] | None = None
    inverse: Inverse | None = None


@dataclass(frozen=True)
class Command:
    """A ``modelkit`` subcommand registered by a plugin."""

    name: str
    plugin: str
    configure: Callable[[Any], None]
    run: Callable[[Any], int]
    help: str = ""


@dataclass
class Registry:
    """Everything the plugins registered, by name, in registration order."""

    architectures: dict[str, Architecture] = field(default_factory=dict)
    block_kinds: dict[str, type] = field(default_factory=dict)
    block_plugins: dict[str, str] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)
    weight_sources: dict[str, type] = field(default_factory=dict)
    source_plugins: dict[str, str] = field(default_factory=dict)


def call_each(pm: pluggy.PluginManager, hook_name: str,
              make_register: Callable[[str], Callable[..., None]]) -> None:
    """Call every implementation of a hook in registration order (the core first), each with a
    ``register`` callback that knows the calling plugin's name."""
    hook = getattr(pm.hook, hook_name)
    # get_hookimpls() lists implementations in registration order (pluggy calls them in reverse)
    for impl in hook.get_hookimpls():
        impl.function(register=make_register(impl.plugin_name))


def _unique(table: dict[str, Any], what: str, name: str, plugin: str, owner: str) -> None:
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin} registered a {what} without a name ({name!r})")
    if name in table:
        raise PluginError(f"{what} '{name}' registered twice (by {owner} and {plugin})")


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every plugin's registration hooks and collect what they register."""
    reg = Registry()

    def arch_register(plugin: str) -> Callable[..., None]:
        def register(name: str, mapping: Any) -> None:
            owner = reg.architectures[name].plugin if name in reg.architectures else ""
            _unique(reg.architectures, "architecture", name, plugin, owner)
            reg.architectures[name] = Architecture(name, plugin, mapping)
        return register

    def block_register(plugin: str) -> Callable[..., None]:
        def register(kind: str, cls: type) -> None:
            _unique(reg.block_kinds, "block kind", kind, plugin, reg.block_plugins.get(kind, ""))
            from ..nn.block import Block

            if not (isinstance(cls, type) and issubclass(cls, Block)):
                raise PluginError(f"block kind '{kind}' (plugin {plugin}) is not a modelkit.Block subclass")
            reg.block_kinds[kind] = cls
            reg.block_plugins[kind] = plugin
        return register

    def transform_register(plugin: str) -> Callable[..., None]:
        def register(name: str, apply: Callable[..., Any], shape: Callable[..., tuple] | None = None,
                     inverse: Inverse | None = None) -> None:
            owner = reg.transforms[name].plugin if name in reg.transforms else ""
            _unique(reg.transforms, "transform", name, plugin, owner)
            if inverse is not None and (not isinstance(inverse, Inverse)
                                        or (inverse.apply is None) == (inverse.place is None)
                                        or (inverse.place is not None and inverse.shape is None)):
                raise PluginError(f"transform '{name}' (plugin {plugin}): inverse must be a modelkit.Inverse "
                                  f"with one of apply or place (place with the whole's shape)")
            reg.transforms[name] = Transform(name, plugin, apply, shape, inverse)
        return register

    def source_register(plugin: str) -> Callable[..., None]:
        def register(name: str, cls: type) -> None:
            _unique(reg.weight_sources, "weight source", name, plugin, reg.source_plugins.get(name, ""))
            reg.weight_sources[name] = cls
            reg.source_plugins[name] = plugin
        return register

    call_each(pm, "register_architectures", arch_register)
    call_each(pm, "register_block_kinds", block_register)
    call_each(pm, "register_transforms", transform_register)
    call_each(pm, "register_weight_sources", source_register)
    return reg


def collect_commands(pm: pluggy.PluginManager, reserved: set[str]) -> dict[str, Command]:
    """Every plugin's subcommands; a name taken by a built-in command or twice is an error."""
    commands: dict[str, Command] = {}

    def command_register(plugin: str) -> Callable[..., None]:
        def register(name: str, configure: Callable[[Any], None], run: Callable[[Any], int],
                     help: str = "") -> None:
            if name in reserved:
                raise PluginError(f"plugin {plugin} registered command '{name}', a built-in command")
            owner = commands[name].plugin if name in commands else ""
            _unique(commands, "command", name, plugin, owner)
            commands[name] = Command(name, plugin, configure, run, help)
        return register

    call_each(pm, "register_commands", command_register)
    return commands
