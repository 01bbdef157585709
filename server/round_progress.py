"""Progress of the federated rounds: round r/N, clients done k/n as replies arrive, elapsed, ETA.

`ProgressGrid` wraps the ServerApp's Flower Grid and does `send_and_receive` itself with the
Grid's own `push_messages`/`pull_messages` (what Flower's implementation does), so it sees each
reply as it arrives without touching the strategy. For each training round it prints
`[fedssl]` lines, which `fedssl simulate` echoes: one when the round's replies are all in (or
its timeout passed) and, while a round is slow, one every `interval_s` seconds. A round that
sampled nobody (Poisson client sampling) sends nothing; the round's own line reports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

PULL_INTERVAL_S = 0.5  # Flower's HTTP grid waits 3 s between pulls; a local pull is cheap
PROGRESS_INTERVAL_S = 10.0
RECENT_ROUNDS = 3  # ETA from the mean duration of the last few rounds


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s` or `42s`."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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


class ProgressGrid(Grid):
    """A Grid that reports round progress; everything else goes to the wrapped Grid."""

    def __init__(
        self, grid: Grid, num_rounds: int, say: Callable[[str], None] | None = None,
        interval_s: float = PROGRESS_INTERVAL_S, pull_interval_s: float = PULL_INTERVAL_S,
    ) -> None:
        self.grid = grid
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
        pending = set(self.grid.push_messages(messages))
        sampled = len(pending)
        replies: list[Message] = []
        end = None if timeout is None else time.monotonic() + timeout
        last_line = time.monotonic()
        while pending and (end is None or time.monotonic() < end):
            pulled = list(self.grid.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not pending:
                break
            if time.monotonic() - last_line >= self.interval_s:
                self.say(self.progress.line(server_round, len(replies), sampled, False))
                last_line = time.monotonic()
            time.sleep(self.pull_interval_s)
        self.progress.finish_round()
        self.say(self.progress.line(server_round, len(replies), sampled, True))
        return replies

    def _round_of(self, messages: list[Message]) -> int:
        """The server round the messages carry (fedssl sends it in their config)."""
        config = messages[0].content.config_records.get("config")
        if config is not None and "server-round" in config:
            self.last_round = int(config["server-round"])
        else:
            self.last_round += 1
        return self.last_round

    # --- delegation to the wrapped Grid ------------------------------------------------

    def set_run(self, run: object) -> None:
        self.grid.set_run(run)  # type: ignore[arg-type]

    @property
    def run(self) -> object:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[object]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)
