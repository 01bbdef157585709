"""One client round as a plain function: records in, clipped update and metrics out.

The order is the privacy contract:
1. in one ledger transaction: read the node's history from its durable ledger, choose σ for
   what is left of its budget, project its ε after this round, refuse past the budget (or
   while another round of the node is still in flight), else append the round's spend —
   durable *before* any record is read, so a crash during training can only over-count;
2. train with DP-SGD (Poisson masks and noise from a secret generator), then build the
   clipped update that leaves the node;
3. confirm the write-ahead entry (durable) before the reply leaves. An entry without its
   confirmation is a round that crashed: still counted in full (an over-count), and reported
   as such by `fedssl audit`.

σ is a pure function of the ledger and the run settings (`plan_round`), recomputed every
round: the node's whole lifetime history (earlier runs, retried attempts, rounds redone after
a server restart) plus every round still planned in this run must land at or below the
node's cap, which defaults to `target-epsilon`. ε is stated for replace-one neighbours: the
node releases its record count, so n is public (common/privacy/accounting.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.common import log

from client.dp_training import DpSettings, LocalResult, poisson_sample_rate, train_locally
from client.node_settings import NodeSettings
from common.model_updates import State, clip_update, compute_update
from common.privacy.accounting import (
    ACCOUNTANT,
    MAX_SIGMA,
    REPLACE_ONE,
    HistoryEntry,
    calibrate_noise_multiplier,
    epsilon_of,
)
from common.privacy.dp_randomness import secret_generator, seeded_generator
from common.privacy.ledger import (
    POISSON_GAUSSIAN,
    RECORD_LEVEL,
    SECRET_NOISE,
    SEEDED_NOISE,
    LedgerEntry,
    PrivacyLedger,
)
from common.protocol import (
    DELTA,
    EPSILON,
    LOCAL_STEPS,
    MAX_EPSILON,
    NOISE_MULTIPLIER,
    NUM_EXAMPLES,
    PROJECTED_EPSILON,
    SAMPLE_RATE,
    TRAIN_LOSS,
    UPDATE_NORM,
)
from common.run_config import RunConfig
from common.tasks import (
    SslTask,
    federated_state,
    freeze_vocabulary,
    grad_sample_mode,
    load_federated_state,
)


@dataclass(frozen=True)
class RoundPlan:
    """What the node decided before touching its records."""

    noise_multiplier: float | None  # None when it refuses
    spent: float  # lifetime ε before this round (at the node's δ)
    projected: float  # lifetime ε after this round
    refusal: str = ""

    @property
    def metrics(self) -> dict[str, float]:
        """Budget figures a refusal reply carries."""
        return {EPSILON: self.spent, PROJECTED_EPSILON: self.projected}


@dataclass(frozen=True)
class RoundOutput:
    """What a client sends back: the clipped update and its metrics, or a refusal."""

    update: State | None  # None when the node refused the round
    metrics: dict[str, float | int]
    refusal: str = ""  # why the node did not train ("" when it did)
    entry: LedgerEntry | None = None  # this round's spend (None when refused)


def round_seed(run_seed: int, server_round: int, attempt: int,
               partition_id: int | None) -> int:
    """The round's seed (masks, augmentation; public, unlike the DP noise).

    A retried attempt of a short round (short-round=retry) is a new release: fresh masks, and a
    new ledger entry for the same round.
    """
    return (run_seed * 1_000_003 + server_round * 1_009 + (attempt - 1) * 100_003
            + (partition_id or 0))


def dp_generator(config: RunConfig, seed: int) -> torch.Generator:
    """Poisson masks and noise: secret, unless the simulation switch makes them reproducible."""
    return seeded_generator(seed + 2) if config.reproducible_noise else secret_generator()


def plan_round(config: RunConfig, node: NodeSettings, sample_rate: float,
               history: list[HistoryEntry], server_round: int) -> RoundPlan:
    """σ for this round, and whether the node's budget allows it (pure; see module doc).

    With `noise-multiplier=auto`, σ is calibrated so that the node's history plus every round
    still planned (this one included) spends at most its cap: min(node max-epsilon,
    client-max-epsilon, target-epsilon). An explicit σ is used as given; the cap then refuses
    the round that would cross it.
    """
    spent = epsilon_of(history, node.delta, REPLACE_ONE)
    sigma = config.fixed_noise_multiplier
    if sigma is None:
        remaining_rounds = max(config.num_rounds - server_round + 1, 1)
        sigma = _planned_sigma(config, node, sample_rate, history, remaining_rounds)
        if sigma is None and spent < node.max_epsilon:  # reachable only past the σ ceiling
            return RoundPlan(None, spent, spent, refusal=(
                f"budget: the cap ε={node.max_epsilon:g} (δ={node.delta:g}, {REPLACE_ONE}, "
                f"{spent:.4g} spent) cannot be kept over the {remaining_rounds} round(s) "
                f"still planned ({config.local_steps} steps each at sample rate "
                f"{sample_rate:.3g}): it would take a noise multiplier above {MAX_SIGMA:g}; "
                "raise target-epsilon (or the node's max-epsilon), or plan fewer rounds or "
                "local-steps"))
        if sigma is None:
            return RoundPlan(None, spent, spent, refusal=(
                f"budget: lifetime ε is already {spent:.4g} (δ={node.delta:g}, "
                f"{REPLACE_ONE}); the cap {node.max_epsilon:g} leaves no room for the "
                f"{remaining_rounds} round(s) still planned"))
    projected = epsilon_of([*history, (sigma, sample_rate, config.local_steps)], node.delta,
                           REPLACE_ONE)
    if node.max_epsilon > 0 and projected > node.max_epsilon:
        return RoundPlan(None, spent, projected, refusal=(
            f"budget: this round would take ε from {spent:.4g} to {projected:.4g} "
            f"(δ={node.delta:g}, {REPLACE_ONE}), past the node's cap {node.max_epsilon:g}"))
    return RoundPlan(sigma, spent, projected)


def _planned_sigma(config: RunConfig, node: NodeSettings, sample_rate: float,
                   history: list[HistoryEntry], remaining_rounds: int) -> float | None:
    """σ that lands history + the remaining rounds at the cap (None: nothing left).

    When nothing unplanned happened since the last round, the last round's σ is still the
    answer (history + plan is the same composition it was calibrated for) and one evaluation
    confirms it; otherwise, or when it would now waste more than 1% of the cap, calibrate.
    """
    if history and history[-1][1:] == (sample_rate, config.local_steps):
        previous = history[-1][0]
        planned = epsilon_of([*history, *[(previous, sample_rate, config.local_steps)]
                              * remaining_rounds], node.delta, REPLACE_ONE)
        if 0.99 * node.max_epsilon <= planned <= node.max_epsilon:
            return previous
    return calibrate_noise_multiplier(node.max_epsilon, node.delta, sample_rate,
                                      config.local_steps, REPLACE_ONE, prior=history,
                                      repeats=remaining_rounds)


def run_client_round(
    config: RunConfig,
    task: SslTask,
    global_state: State,
    records: tuple[torch.Tensor, ...],
    node: NodeSettings,
    ledger: PrivacyLedger,
    run_id: str,
    server_round: int,
    seed: int,
    dp_generator: torch.Generator,
    train: Callable[..., LocalResult] = train_locally,
) -> RoundOutput:
    """Train locally under DP from `global_state` and return the clipped update Δ.

    Refuses (trains nothing, records nothing) when this round would take the node's ε past
    its budget, or while another round of this node is still training. `train` is the DP-SGD
    loop (a parameter so tests can make it crash).
    """
    num_records = len(records[0])
    rate = poisson_sample_rate(num_records, config.batch_size)
    plans: list[RoundPlan] = []

    def decide(entries: list[LedgerEntry], busy: bool) -> dict[str, object] | str:
        if busy:
            return ("busy: another round of this node is still training (its write-ahead "
                    "entry is unconfirmed and its process alive)")
        history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries
                   if not e.is_confirmation and e.guarantee == RECORD_LEVEL]
        plan = plan_round(config, node, rate, history, server_round)
        plans.append(plan)
        if plan.noise_multiplier is None:
            return plan.refusal
        return {
            "run_id": run_id, "round": server_round, "guarantee": RECORD_LEVEL,
            "mechanism": POISSON_GAUSSIAN, "noise_multiplier": plan.noise_multiplier,
            "sample_rate": rate, "steps": config.local_steps, "delta": node.delta,
            "accountant": ACCOUNTANT, "epsilon": plan.projected,
            "max_epsilon": node.max_epsilon, "relation": REPLACE_ONE,
            "noise": SEEDED_NOISE if config.reproducible_noise else SECRET_NOISE,
        }

    reserved = ledger.reserve(node.node_id, decide)  # durable before any record is read
    budget = {MAX_EPSILON: node.max_epsilon, DELTA: node.delta}
    if isinstance(reserved, str):
        return RoundOutput(update=None, refusal=reserved,
                           metrics={**budget, **(plans[-1].metrics if plans else {})})
    entry = reserved
    try:
        model = task.build_model(config)
        load_federated_state(model, global_state)
        if config.freeze_embeddings:
            freeze_vocabulary(task, model)
        settings = DpSettings(
            noise_multiplier=entry.noise_multiplier,
            clip_norm=config.clip_norm,
            batch_size=config.batch_size,
            local_steps=config.local_steps,
            learning_rate=config.learning_rate,
            grad_sample_mode=grad_sample_mode(task, config),
        )
        result = train(model, records, task.per_record_loss, settings, seed, dp_generator)
        if (result.steps, result.sample_rate) != (entry.steps, entry.sample_rate):
            # The ledger must describe what ran; never release an update it does not cover.
            raise RuntimeError(f"DP-SGD ran {result.steps} steps at q={result.sample_rate}, "
                               f"but the ledger recorded {entry.steps} at q={entry.sample_rate}")
        update, raw_norm = clip_update(
            compute_update(federated_state(model), global_state), config.update_clip_norm
        )
    except BaseException:
        ledger.abandon(entry)  # stays unconfirmed: counted in full, reported as crashed
        raise
    if ledger.confirm(entry) is None:
        # Another entry was appended since ours (two processes sharing one state dir): the
        # round stays unconfirmed, i.e. over-counted in reports; the spend is recorded either way.
        log(30, "fedssl node %s: round %d's ledger entry is no longer the node's latest; "
            "left unconfirmed (reported as a crashed round)", node.node_id, server_round)
    metrics: dict[str, float | int] = {
        **budget,
        EPSILON: entry.epsilon,
        NUM_EXAMPLES: num_records,  # public under replace-one (it is what makes n public)
        NOISE_MULTIPLIER: entry.noise_multiplier,
        SAMPLE_RATE: rate,
        LOCAL_STEPS: result.steps,
        UPDATE_NORM: raw_norm,  # a function of the DP-SGD output: covered by its guarantee
    }
    if config.release_train_loss and node.simulated:
        # Simulation switch: the raw loss of the node's own batches, outside any DP guarantee.
        metrics[TRAIN_LOSS] = result.mean_loss
    return RoundOutput(update=update, entry=entry, metrics=metrics)
