"""The plugin contract: every hook a modelkit plugin can implement.

Plugins are modules (or objects) with functions marked ``@modelkit.hookimpl`` named after the
hooks below, exposed through the ``modelkit`` entry-point group::

    [project.entry-points.modelkit]
    myplugin = "my_package.modelkit_plugin"

modelkit's own blocks, transforms, weight sources and architectures arrive through these same
hooks (the ``core`` plugin is ``modelkit.builtin``), so a third-party plugin is a peer of the
built-in ones. Each hook receives a ``register`` callback and returns nothing; every
implementation is called (none "wins"), in the order the plugins were loaded, the core first;
registering a name twice is an error. The registry is built once, on first use, after all
plugins are loaded.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("modelkit")
hookimpl = pluggy.HookimplMarker("modelkit")


@hookspec
def register_architectures(register: Callable[..., None]) -> None:
    """Register architectures: a name and the YAML mapping file that describes it.

    Called once when the registry is built. Call ``register(name, mapping)`` for each
    architecture, where ``mapping`` is a path (``str`` or ``pathlib.Path``) or an
    ``importlib.resources`` traversable pointing at a YAML mapping file (see docs/mappings.md).
    The mapping's ``match`` section decides which checkpoints it serves.
    """


@hookspec
def register_block_kinds(register: Callable[..., None]) -> None:
    """Register block kinds that mapping files can use in ``layers.blocks.*.kind``.

    Called once when the registry is built. Call ``register(kind, cls)`` where ``cls`` is a
    subclass of :class:`modelkit.Block`: it declares its options (:class:`modelkit.Option`)
    and parameters (:class:`modelkit.ParamSpec`) and implements ``forward(x, state, ctx)``
    over float32 arrays ``[T, hidden]``.
    """


@hookspec
def register_transforms(register: Callable[..., None]) -> None:
    """Register named weight transforms that mapping files can apply to checkpoint tensors.

    Called once when the registry is built. Call ``register(name, apply, shape=None)``:
    ``apply(array, **args) -> array`` turns a checkpoint tensor into the canonical tensor, and
    ``shape(shape_tuple, **args) -> shape_tuple`` predicts the result's shape without reading
    data, so the loader can check every tensor before any compute. ``shape`` may be omitted
    for transforms that keep the shape. ``inverse`` (a :class:`modelkit.Inverse`, optional) says
    how ``modelkit convert`` writes a tensor back in the form the transform reads it from;
    without one, a checkpoint needing that form is refused there.
    """


@hookspec
def register_weight_sources(register: Callable[..., None]) -> None:
    """Register weight sources: readers for a checkpoint format (safetensors folders, GGUF files).

    Called once when the registry is built. Call ``register(name, cls)`` where ``cls`` is a
    subclass of :class:`modelkit.WeightSource` with ``can_open(path) -> bool`` and
    ``open(path) -> WeightSource`` class methods. The first source whose ``can_open`` accepts
    a path is used; sources are tried in registration order (the core's safetensors first).
    """


@hookspec
def register_commands(register: Callable[..., None]) -> None:
    """Register subcommands of the ``modelkit`` command line.

    Called each time the command line is built. Call ``register(name, configure, run,
    help="...")``: ``configure(parser)`` adds the command's arguments to its
    ``argparse.ArgumentParser``; ``run(args) -> int`` carries it out and returns the exit code.
    A :class:`modelkit.ModelkitError` raised by ``run`` is printed as one line, as for the
    built-in commands. Names of built-in commands cannot be taken.
    """
