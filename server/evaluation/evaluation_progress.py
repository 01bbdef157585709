"""Progress of the downstream stage: which arm, epoch/step, elapsed and ETA, like the rounds.

Fine-tuning on a few hundred labels can take longer than the federated rounds; without these
lines the stage looks hung. `run_downstream` plans its arms up front (`ArmPlan`: what each one
does and, for the trained ones, how many optimizer steps), then reports through its `say`:

* one line when an arm starts (what it will do);
* while an arm trains, a line at each further tenth of its steps, but at most one every
  `min_gap_s` seconds (fast arms stay quiet) and at least one every `max_gap_s` (slow ones
  never go silent);
* one line when an arm is done, with its time and macro-F1.

ETAs: the running arm's from its own step rate; the stage's from the seconds per step measured
so far (every trained arm uses the same architecture and batch) and from the mean time of the
finished arms of each other kind. A kind not yet measured counts as 0 and the stage ETA is
then written "≥": a lower bound, never a guess.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.progress_text import duration

TENTHS = 10  # a line at each further tenth of an arm's steps
MIN_GAP_S = 3.0
MAX_GAP_S = 30.0
KINDS = ("train", "probe", "classical", "evaluate")


@dataclass(frozen=True)
class ArmPlan:
    """One arm of the stage: `kind` is what it costs (train: `steps` optimizer steps over
    `epochs` epochs; probe: embed and fit a logistic regression; classical; evaluate)."""

    key: str
    kind: str
    work: str  # what the start line says it does, e.g. "fine-tune on 95 labels, 30 epochs"
    steps: int = 0
    epochs: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown arm kind {self.kind!r}; known: {', '.join(KINDS)}")


class EvaluationProgress:
    """Clock of the downstream stage; `start` → `step`… → `finish`, one arm at a time."""

    def __init__(self, plan: list[ArmPlan], say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 min_gap_s: float = MIN_GAP_S, max_gap_s: float = MAX_GAP_S) -> None:
        self.plan = plan
        self.say = say
        self.clock = clock
        self.min_gap_s = min_gap_s
        self.max_gap_s = max_gap_s
        self.started = clock()
        self.index = -1  # the running arm's position in `plan`
        self.arm_started = self.started
        self.last_line = self.started
        self.next_tenth = 1
        self.trained_steps = 0  # of finished trained arms
        self.trained_seconds = 0.0
        self.seconds_by_kind: dict[str, list[float]] = {}

    @property
    def arm(self) -> ArmPlan:
        return self.plan[self.index]

    def _prefix(self) -> str:
        return f"[fedssl] evaluation arm {self.index + 1}/{len(self.plan)} {self.arm.key}"

    def start(self, key: str) -> None:
        """Arm `key` (the next one in the plan) begins."""
        self.index += 1
        if self.index >= len(self.plan) or self.plan[self.index].key != key:
            raise ValueError(f"arm {key!r} is not next in the plan")
        self.arm_started = self.last_line = self.clock()
        self.next_tenth = 1
        self.say(f"{self._prefix()}: {self.arm.work} | evaluation elapsed "
                 f"{duration(self.arm_started - self.started)}")

    def step(self, done: int, total: int) -> None:
        """`done` of the arm's `total` optimizer steps are finished (train_classifier's hook)."""
        now = self.clock()
        gap = now - self.last_line
        reached = done * TENTHS >= self.next_tenth * total  # integers: no rounding at 30%
        if done >= total or gap < self.min_gap_s or not (reached or gap >= self.max_gap_s):
            return  # the last step is the finish line's; otherwise throttled
        self.next_tenth = done * TENTHS // max(total, 1) + 1
        self.last_line = now
        self.say(self.line(done, total))

    def line(self, done: int, total: int) -> str:
        """`[fedssl] evaluation arm i/n key | epoch e/E, step s/S (p%) | arm … | evaluation …`."""
        epochs = max(self.arm.epochs, 1)
        per_epoch = max(total / epochs, 1)
        epoch = min(math.ceil(done / per_epoch), epochs)
        arm_eta = self.arm_eta(done, total)
        stage_eta, bound = self.stage_eta(done, total)
        return (f"{self._prefix()} | epoch {epoch}/{epochs}, step {done}/{total} "
                f"({done / max(total, 1):.0%}) | arm elapsed "
                f"{duration(self.clock() - self.arm_started)}, ETA "
                f"{'?' if arm_eta is None else duration(arm_eta)} | evaluation elapsed "
                f"{duration(self.clock() - self.started)}, ETA "
                f"{'?' if stage_eta is None else bound + duration(stage_eta)}")

    def arm_eta(self, done: int, total: int) -> float | None:
        """Seconds until the running arm's last step, from its own rate (None before one)."""
        if done <= 0:
            return None
        return (self.clock() - self.arm_started) * (total - done) / done

    def stage_eta(self, done: int, total: int) -> tuple[float | None, str]:
        """Seconds until the stage ends, and "≥ " when an arm kind is not measured yet."""
        rate = self._seconds_per_step(done)
        if rate is None:
            return None, ""
        left = max(total - done, 0) * rate
        bound = ""
        for arm in self.plan[self.index + 1:]:
            if arm.kind == "train":
                left += arm.steps * rate
            elif self.seconds_by_kind.get(arm.kind):
                times = self.seconds_by_kind[arm.kind]
                left += sum(times) / len(times)
            else:
                bound = "≥ "
        return left, bound

    def _seconds_per_step(self, done: int) -> float | None:
        """Seconds per optimizer step over the finished trained arms and the running one."""
        current = self.clock() - self.arm_started if done > 0 else 0.0
        steps = self.trained_steps + done
        return (self.trained_seconds + current) / steps if steps > 0 else None

    def finish(self, macro_f1: float | None) -> float:
        """The running arm is done; says so with its time and macro-F1; returns its seconds."""
        seconds = self.clock() - self.arm_started
        self.seconds_by_kind.setdefault(self.arm.kind, []).append(seconds)
        if self.arm.kind == "train":
            self.trained_steps += self.arm.steps
            self.trained_seconds += seconds
        score = "not applicable" if macro_f1 is None else f"macro-F1 {macro_f1:.3f}"
        self.say(f"{self._prefix()} done in {duration(seconds)}: {score} | evaluation "
                 f"elapsed {duration(self.clock() - self.started)}")
        return seconds
