"""Durations as an operator reads them, for every view (the UI, ``top --once``)."""

from __future__ import annotations


def seconds(value: float | None) -> str:
    """A duration the way an operator reads it: 0.8ms, 21ms, 4.2 s, 3 min; ``—`` for one
    not known."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.1f}ms" if value < 0.01 else f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min"
