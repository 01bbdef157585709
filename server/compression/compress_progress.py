"""Progress lines for `fedssl compress`'s long steps: at most one every few seconds, with an ETA.

A 22M-parameter encoder labels thousands of texts, recovers and is scored for minutes on a few
cores; a silent terminal for that long reads as a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_GAP_S = 15.0
Say = Callable[[str], None]


def throttled(name: str, say: Say, unit: str = "records", gap_s: float = PROGRESS_GAP_S,
              clock: Callable[[], float] = time.monotonic) -> Callable[[int, int], None]:
    """A `(done, total)` hook that says `name done/total unit, elapsed, about N s left` at
    most every `gap_s` seconds (never for the last one: the step's own "done" line follows)."""
    began = last = clock()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = clock()
        if now - last >= gap_s and 0 < done < total:
            last = now
            eta = (now - began) / done * (total - done)
            say(f"[fedssl] compress: {name} {done:,}/{total:,} {unit}, "
                f"{now - began:.0f} s, about {eta:.0f} s left")

    return report
