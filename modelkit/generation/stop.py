"""Stop strings in streamed text, found across piece boundaries."""

from __future__ import annotations

from typing import Sequence

from ..errors import GenerationError


class StopStrings:
    """Finds stop strings in streamed text, across piece boundaries.

    ``feed`` returns the text that is safe to show: everything before a stop string, holding
    back any tail that could be the start of one until the next piece decides.
    """

    def __init__(self, stops: Sequence[str]):
        if any(not isinstance(s, str) or not s for s in stops):
            raise GenerationError("stop strings must be non-empty text")
        self.stops = list(stops)
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text to show, True when a stop string was found)."""
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[:min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.buffer) - hold
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out
