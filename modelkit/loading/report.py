"""What does not fit: the planner's report of missing, unexpected, mis-shaped and mis-typed tensors."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """Every missing, unexpected, mis-shaped and mis-typed tensor, by checkpoint name."""

    missing: list[tuple[str, str, tuple]] = field(default_factory=list)  # source, canonical, shape
    unexpected: list[tuple[str, tuple]] = field(default_factory=list)  # source, shape
    misshaped: list[tuple[str, str, tuple, tuple, str]] = field(default_factory=list)
    mistyped: list[tuple[str, str, str]] = field(default_factory=list)  # source, canonical, dtype

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped or self.mistyped)

    def lines(self) -> list[str]:
        """The full report, one tensor a line."""
        out = []
        for src, canon, shape in self.missing:
            out.append(f"missing     {src}  (canonical {canon}, expected shape {list(shape)})")
        for src, shape in self.unexpected:
            out.append(f"unexpected  {src}  (shape {list(shape)}; neither mapped nor ignored)")
        for src, canon, got, want, note in self.misshaped:
            extra = f"; {note}" if note else ""
            out.append(f"mis-shaped  {src}  (canonical {canon}): shape {list(got)}, "
                       f"expected {list(want)}{extra}")
        for src, canon, dtype in self.mistyped:
            out.append(f"mis-typed   {src}  (canonical {canon}): dtype {dtype}, which modelkit does not read "
                       f"as weights")
        return out

    def counts(self) -> str:
        """'N missing, N unexpected, N mis-shaped' (and mis-typed, when there are any)."""
        parts = [f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected",
                 f"{len(self.misshaped)} mis-shaped"]
        if self.mistyped:
            parts.append(f"{len(self.mistyped)} mis-typed")
        return ", ".join(parts)

    def summary(self, where: str) -> str:
        """At most five lines for ``load``/``run``; ``modelkit validate`` prints the rest."""
        lines = self.lines()
        head = f"{where}: checkpoint does not fit the mapping ({self.counts()} tensors)"
        shown = lines[:3]
        tail = (f"... and {len(lines) - 3} more; " if len(lines) > 3 else "") + \
            "run `modelkit validate` for the full report"
        return "\n".join([head, *("  " + s for s in shown), tail])
