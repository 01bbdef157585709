"""Progress of the federated rounds: round r/N, clients done k/n as replies arrive, elapsed, ETA.

`ProgressGrid` wraps the ServerApp's Flower Grid and does `send_and_receive` itself with the
Grid's own `push_messages`/`pull_messages` (what Flower's implementation does; the loop is in
server/flower_internals.py), so it sees each reply as it arrives without touching the strategy.
For each training round it prints `[fedssl]` lines, which `fedssl simulate` echoes: one when the
round's replies are all in (or its timeout passed) and, while a round is slow, one every
`interval_s` seconds. A round that sampled nobody (Poisson client sampling) sends nothing; the
round's own line reports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from common.protocol import RoundInstruction
from server.flower_internals import DelegatingGrid, pull_replies, push_messages
from server.progress_text import duration

PULL_INTERVAL_S = 0.5  # Flower's HTTP grid waits 3 s between pulls; a local pull is cheap
PROGRESS_INTERVAL_S = 10.0
RECENT_ROUNDS = 3  # ETA from the mean duration of the last few rounds


class RoundProgress:
    """Clock of the federated rounds: formats progress lines with elapsed time and ETA."""

    def __init__(self, num_rounds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.num_rounds = num_rounds
        self.clock = clock
        self.started = clock()
        self.round_started = self.started
        self.durations: list[float] = []

    def start_round(self) -> None:
        """A round's messages are about to be sent."""
        self.round_started = self.clock()

    def finish_round(self) -> None:
        """A round's replies are all in (or its timeout passed)."""
        self.durations.append(self.clock() - self.round_started)

    def eta(self, server_round: int, done: int, sampled: int, finished: bool
            ) -> float | None:
        """Seconds until the last round's replies are in; None before a round has finished.

        Later rounds take the mean of the last few rounds, leaving out the first once there
        are others (it includes Ray's and the ClientApps' start-up). The running round takes
        the larger of what that mean leaves and what its own reply rate needs.
        """
        rounds_after = self.num_rounds - server_round
        recent = (self.durations[1:] or self.durations)[-RECENT_ROUNDS:]
        if not recent:
            return None
        per_round = sum(recent) / len(recent)
        if finished:
            return rounds_after * per_round
        in_round = self.clock() - self.round_started
        left = per_round - in_round
        if done > 0:
            left = max(left, in_round * (sampled - done) / done)
        return max(left, 0.0) + rounds_after * per_round

    def line(self, server_round: int, done: int, sampled: int, finished: bool) -> str:
        """`[fedssl] round r/N | clients done k/n | elapsed | ETA`."""
        eta = self.eta(server_round, done, sampled, finished)
        return (f"[fedssl] round {server_round}/{self.num_rounds} | clients done "
                f"{done}/{sampled} | elapsed {duration(self.clock() - self.started)} | "
                f"ETA {'?' if eta is None else duration(eta)}")


class ProgressGrid(DelegatingGrid):
    """A Grid that reports round progress; everything else goes to the wrapped Grid."""

    def __init__(
        self, grid: Grid, num_rounds: int, say: Callable[[str], None] | None = None,
        interval_s: float = PROGRESS_INTERVAL_S, pull_interval_s: float = PULL_INTERVAL_S,
    ) -> None:
        super().__init__(grid)
        self.progress = RoundProgress(num_rounds)
        self.say = say or (lambda line: print(line, flush=True))
        self.interval_s = interval_s
        self.pull_interval_s = pull_interval_s
        self.last_round = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until every reply is in or `timeout` passed (as Flower does)."""
        messages = list(messages)
        if not messages or messages[0].metadata.message_type != MessageType.TRAIN:
            # Evaluation rounds (none in fedssl) and rounds that sampled nobody: no progress.
            return self.grid.send_and_receive(messages, timeout=timeout)
        server_round = self._round_of(messages)
        self.progress.start_round()
        pending = push_messages(self.grid, messages)
        sampled = len(pending)
        last_line = time.monotonic()

        def waiting(done: int) -> None:
            nonlocal last_line
            if time.monotonic() - last_line >= self.interval_s:
                self.say(self.progress.line(server_round, done, sampled, False))
                last_line = time.monotonic()

        replies = pull_replies(self.grid, pending, timeout, self.pull_interval_s, waiting)
        self.progress.finish_round()
        self.say(self.progress.line(server_round, len(replies), sampled, True))
        return replies

    def _round_of(self, messages: list[Message]) -> int:
        """The server round the messages carry (fedssl sends it in their instruction)."""
        server_round = RoundInstruction.round_of(messages[0].content)
        if server_round is not None:
            self.last_round = server_round
        else:
            self.last_round += 1
        return self.last_round
