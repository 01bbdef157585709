"""Where one ClientApp message's time goes, written to a local file when asked to.

Set `FEDSSL_TIMING_LOG=/abs/path.jsonl` (in the environment of the process that runs the
ClientApp; `fedssl simulate` passes its environment down to Flower's Ray actors) and every
train message appends one JSON line: wall-clock start/end, the worker's pid, and the seconds
spent in each phase. benchmarks/simulation_efficiency.py reads it.

The timings stay on the node: they are not put into the reply. DP-SGD's guarantee covers the
update, and the training time depends on the Poisson batch sizes actually drawn, which the
analysis assumes stay hidden.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ENV_VAR = "FEDSSL_TIMING_LOG"


class MessageTiming:
    """Accumulates named phase durations for one message."""

    def __init__(self) -> None:
        self.started = time.time()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside the `with` block to phase `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, with each call's duration added to phase `name`."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return function(*args, **kwargs)

        return wrapper

    def write(self, **labels: Any) -> None:
        """Append this message's line to $FEDSSL_TIMING_LOG (nothing when it is unset)."""
        path = os.environ.get(ENV_VAR)
        if not path:
            return
        line = json.dumps({**labels, "pid": os.getpid(), "start": self.started,
                           "end": time.time(), **{f"{k}_s": v for k, v in self.phases.items()}})
        with open(path, "a") as out:  # one short append per message: lines do not interleave
            out.write(line + "\n")
