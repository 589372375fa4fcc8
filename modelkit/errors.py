"""The error types modelkit raises for problems a user can fix.

Every error here is a user error: the CLI prints its message as one line and exits non-zero.
Anything else escaping modelkit is a bug in modelkit.
"""

from __future__ import annotations


class ModelkitError(Exception):
    """Base class: a problem with the user's input (files, flags, mappings), never a modelkit bug."""


class ConfigError(ModelkitError):
    """config.json is missing, unreadable, or holds values the architecture cannot use."""


class MappingError(ModelkitError):
    """A YAML mapping file is malformed; the message names the file and the key."""


class CheckpointError(ModelkitError):
    """Weight files are missing, corrupt, unsafe, or do not fit the mapping."""


class WeightMismatchError(CheckpointError):
    """Tensors are missing, unexpected or mis-shaped; carries the full report for `modelkit validate`."""

    def __init__(self, report: "object", summary: str):
        super().__init__(summary)
        self.report = report


class UnknownArchitectureError(ModelkitError):
    """No registered architecture matches the checkpoint or the name given."""


class PluginError(ModelkitError):
    """A plugin registered something invalid (duplicate name, unknown block kind, ...)."""


class TokenizerError(ModelkitError):
    """The tokenizer or chat template is missing or invalid."""


class GenerationError(ModelkitError):
    """Generation options are out of range or the prompt cannot be generated from."""


class EvaluationError(ModelkitError):
    """A reference, a text or a setting of compare / perplexity does not fit the model."""


class OutOfMemoryError(ModelkitError, MemoryError):
    """The machine had no memory left for what modelkit was allocating; the message says what
    (a tensor being read, a block's work in one layer, the KV cache, the logits) and how much.

    It is a :class:`MemoryError` too, so ``except MemoryError`` still catches it. ``doing`` is
    the description without the "out of memory" lead, so an outer step can place it inside
    its own (:meth:`within`)."""

    def __init__(self, doing: str, detail: str = ""):
        self.doing, self.detail = doing, detail
        super().__init__(f"out of memory {doing}" + (f" ({detail})" if detail else ""))

    def within(self, outer: str) -> "OutOfMemoryError":
        """The same shortage, said as happening in ``outer`` ("in layer 3, block attn")."""
        return OutOfMemoryError(f"{outer}, {self.doing}", self.detail)


def out_of_memory(doing: str, exc: BaseException) -> OutOfMemoryError:
    """An :class:`OutOfMemoryError` for a MemoryError raised while ``doing`` something; an
    OutOfMemoryError already raised deeper down is placed inside ``doing`` instead. NumPy's own
    message ("Unable to allocate 3.2 GiB for an array with shape ...") is kept as the detail."""
    if isinstance(exc, OutOfMemoryError):
        return exc.within(doing)
    return OutOfMemoryError(doing, str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "")
