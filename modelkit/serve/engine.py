"""The decoding engine the server drives: sequences join, one step advances every one of them.

:class:`Decoder` is the whole contract the scheduler (:mod:`modelkit.serve.scheduler`) relies on.
It is the interface of the library's batched decoder (:class:`modelkit.generation.batch.BatchDecoder`),
which decodes all active sequences in one forward, each with its own cache, position and sampler;
a test or an embedding application may hand the scheduler another implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence

from ..generation.batch import BatchDecoder
from ..generation.sequence import TokenEvent

if TYPE_CHECKING:
    from ..model import Cache, Model

__all__ = ["Decoder", "TokenEvent", "default_decoder"]


class Decoder(Protocol):
    """What the scheduler drives. ``add`` prefills a prompt (continuing ``cache`` when given) and
    returns the new sequence's id; ``step`` picks one token for every active sequence and feeds
    it back; a finished sequence leaves ``active`` but its cache stays readable through
    ``cache_of`` until the next ``step``; ``remove`` drops a sequence at once (a client gone).
    A decoder may also have ``add_many(prompts, caches, options) -> [seq_id]``, which reads
    several prompts in one batched prefill (an error adds none of them), as the library's does:
    the scheduler then admits the prompts of a turn together, else one ``add`` at a time."""

    active: list[int]

    def add(self, prompt_ids: Sequence[int], *, cache: Cache | None = None, **options: Any) -> int: ...

    def step(self) -> list[TokenEvent]: ...

    def remove(self, seq_id: int) -> None: ...

    def cache_of(self, seq_id: int) -> Cache: ...


def default_decoder(model: Model, max_batch: int) -> Decoder:
    """The decoder the server drives: the library's batched decoder (a block kind without a
    batched path of its own is stepped row by row inside the same forward)."""
    return BatchDecoder(model, max_batch)
