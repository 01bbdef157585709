"""How progress lines write a span of time; shared by the federated rounds and the evaluation.

Kept free of Flower imports so that the evaluation stage (and its tests) can use it alone.
"""

from __future__ import annotations


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s` or `42s`."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
