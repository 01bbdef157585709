"""A detected identifier's place in a record: what every de-identification engine returns.

Its own module so the engines (deid_presidio.py, deid_philter.py) and the planted-PHI
generator share the type without importing the pass that loads them (an import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """One detected identifier: characters [start, end) of a record, and its type."""

    start: int
    end: int
    phi_type: str
