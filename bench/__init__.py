"""modelkit's benchmark suite: ``python3 -m bench`` (see docs/performance.md)."""
