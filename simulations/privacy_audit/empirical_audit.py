"""One trial of the empirical audit: train a node with canaries, score them, bound ε.

**The setting.** One simulated node (partition 0 of the run's split, plus m canary slots)
trains every round with the real DP-SGD loop (`client.dp_training.train_locally`: Opacus,
Poisson sampling, Adam) at the run's record-level settings: σ as the node plans it for its
budget (`client.local_round.plan_round`), C, expected batch B, local steps, rounds, learning
rate, task and model. The node is the only client, so the server's global model each round is
the previous one plus the node's released (update-clipped) Δ: the server sees exactly the
sequence of global models and updates, and that is what the white-box scores read. The
canaries' loss terms carry a large weight (canaries.py: a per-record loss still, invisible
through working clipping, decisive where clipping is bypassed).

**The claim.** The accountant's ε for the node's history (σ, q, steps per round) under
replace-one at the node's δ: what its ledger would state. A planted bug changes what is
trained, never the claim (simulations/privacy_audit/planted_bugs.py).

**The bound.** For each score (canary_scores.py) the audit guesses "in" for the k₊ highest and
"out" for the k₋ lowest scores over a grid of (k₊, k₋) fixed before looking, and takes the
best one-run lower bound with `best_lower_bound`, which tests every pair at β / |grid|. The
scores split β once more (β / 3 each for the three; tests may compute fewer), so the
headline — the largest of them — holds at confidence 1 − β, and each per-score bound at
1 − β/3.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from client.dp_training import DpSettings, PerRecordLoss, poisson_sample_rate, train_locally
from client.local_round import plan_round, round_seed
from client.node_settings import node_settings
from common.model_updates import State, clip_update, compute_update
from common.privacy.accounting import REPLACE_ONE, HistoryEntry, epsilon_of
from common.privacy.one_run_bound import best_lower_bound, guesses_from_scores
from common.run_config import RunConfig
from common.tasks import (
    TASK_MODULES,
    SslTask,
    federated_state,
    freeze_vocabulary,
    get_task,
    grad_sample_mode,
    load_federated_state,
)
from simulations.privacy_audit.canaries import (
    CANARY_LOSS_WEIGHT,
    CanaryPlan,
    canary_weighted_loss,
    node_records,
    plan_canaries,
    secret_coins,
    text_canaries,
)
from simulations.privacy_audit.canary_scores import (
    EMBEDDING_ROWS,
    VOCABULARY_ROWS,
    canary_losses,
    update_projections,
)
from simulations.privacy_audit.planted_bugs import (
    PlantedBug,
    attacker_generator,
    trained_settings,
    training_generator,
)

WHITE_BOX, REPLAY, BLACK_BOX = "white-box", "replay", "black-box"
SCORES = (WHITE_BOX, REPLAY, BLACK_BOX)
# Guess counts as shares of m, fixed before any score is seen: "in" for the top k, alone or
# with "out" for the bottom k. Small shares matter when only the canaries that Poisson
# sampling happened to pick leave a trace.
K_SHARES = (0.02, 0.05, 0.1, 0.2, 0.3)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class AuditSettings:
    """What an empirical audit runs: a run's settings plus the canary experiment's own."""

    config: RunConfig
    canaries: int = 1000  # m
    real_records: int = 0  # real records of the node kept beside the slots; 0 = all
    trials: int = 1
    beta: float = 0.05
    bug: PlantedBug = PlantedBug.NONE
    # The scores computed (β is split among them). Without REPLAY the attacker's replay
    # training is skipped: about half a trial's training time.
    scores: tuple[str, ...] = SCORES

    def problems(self) -> list[str]:
        """Every reason these settings cannot be audited (empty: fine)."""
        found = []
        if self.canaries < 10:
            found.append(f"--canaries must be at least 10, got {self.canaries}")
        if self.real_records < 0:
            found.append(f"--records must be >= 0 (0 = all), got {self.real_records}")
        if self.trials < 1:
            found.append(f"--trials must be at least 1, got {self.trials}")
        if not 0 < self.beta < 1:
            found.append(f"--beta must be in (0, 1), got {self.beta}")
        if not get_task(self.config.task).text_canaries:
            supported = ", ".join(f"task={name}" for name in TASK_MODULES
                                  if get_task(name).text_canaries)
            found.append(f"the empirical audit supports {supported} (text canaries), not "
                         f"task={self.config.task}")
        if self.config.reproducible_noise:
            found.append("reproducible-noise=true claims no DP guarantee, so there is no ε to "
                         "audit (--plant-bug known-seed shows what it exposes)")
        if self.config.num_rounds < 1:
            found.append("num-rounds must be at least 1 for an audit")
        if self.config.init != "none":
            found.append(f"init={self.config.init}: the audit trains the from-config model "
                         "only (with the public encoder one trial of 50 canaries took 12 min "
                         "on a shared 2-core machine, and so few canaries cannot resolve the claim); add --set "
                         "init=none to audit the same privacy settings (ε, δ, q, steps, rounds)")
        if not self.scores or set(self.scores) - set(SCORES):
            found.append(f"scores must be a non-empty subset of {', '.join(SCORES)}, got "
                         f"{', '.join(self.scores) or 'none'}")
        return found


@dataclass(frozen=True)
class ScoreBound:
    """The best lower bound one score reached, and the guesses behind it."""

    score: str
    epsilon: float
    k_pos: int
    k_neg: int
    guesses: int
    correct: int


@dataclass(frozen=True)
class TrialResult:
    """One trial: the claim, and the lower bound per score."""

    claimed_epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    canaries: int
    num_records: int
    included: int  # coins that landed "in"
    bug: str
    beta: float
    seconds: float
    bounds: list[ScoreBound] = field(default_factory=list)

    @property
    def lower_bound(self) -> float:
        """The headline: the largest per-score bound (each at β / the number of scores, so
        this holds at 1 − β)."""
        return max(b.epsilon for b in self.bounds)

    @property
    def refutes_claim(self) -> bool:
        """The measured lower bound exceeds the claim: the mechanism is not what it claims."""
        return self.lower_bound > self.claimed_epsilon


def resolvable_epsilon(canaries: int, delta: float, beta: float) -> float:
    """The largest lower bound m canaries can give at all (every guess right, at `beta`):
    a claim at or above it cannot be refuted by this audit, however broken the mechanism."""
    coins = np.arange(canaries) % 2 == 0
    return best_lower_bound(coins.astype(float), coins, delta, beta, k_grid(canaries))[0]


def expected_claim(settings: AuditSettings) -> tuple[float, float] | None:
    """(ε, δ) the node will claim, known before training when σ is calibrated to its cap
    (None with an explicit noise multiplier: the claim is then known after the rounds)."""
    if settings.config.fixed_noise_multiplier is not None:
        return None
    node = node_settings({"partition-id": 0}, 0, settings.config, sim_state_dir="/audit")
    return node.max_epsilon, node.delta


def unresolvable_claim_warning(settings: AuditSettings) -> str:
    """A line when the claim is beyond what the canaries can resolve ("" otherwise)."""
    claim = expected_claim(settings)
    if claim is None:
        return ""
    epsilon, delta = claim
    cap = resolvable_epsilon(settings.canaries, delta, settings.beta / len(settings.scores))
    if epsilon < cap:
        return ""
    return (f"warning: with {settings.canaries} canaries no lower bound can exceed "
            f"{cap:.2f} (every guess right), so this audit cannot refute the claimed "
            f"ε={epsilon:g} even for a broken mechanism: audit a smaller claim (--set "
            "target-epsilon); more canaries raise this ceiling only slowly "
            "(docs/privacy-audit.md)")


def k_grid(canaries: int) -> list[tuple[int, int]]:
    """The (k₊, k₋) pairs tested, fixed by m alone."""
    ks = sorted({max(1, math.floor(share * canaries)) for share in K_SHARES})
    return [*((k, 0) for k in ks), *((k, k) for k in ks if 2 * k <= canaries)]


def node_real_records(settings: AuditSettings) -> tuple[torch.Tensor, ...]:
    """The node's own records: partition 0 of the run's split (the first `real_records`)."""
    real = get_task(settings.config.task).client_tensors(settings.config, 0)
    if settings.real_records:
        real = tuple(t[: settings.real_records] for t in real)
    return real


def run_trial(settings: AuditSettings, trial: int, real: tuple[torch.Tensor, ...],
              progress: Progress = lambda line: None) -> TrialResult:
    """Train the node with canaries by secret coins, score them from the server's view,
    bound ε. `trial` varies the public canaries and slots between trials."""
    started = time.perf_counter()
    config = settings.config
    task = get_task(config.task)
    public = torch.Generator().manual_seed(config.seed * 1_000_003 + trial)
    torch.manual_seed(config.seed)
    global_model = task.build_model(config)
    plan = _plan(global_model, real, settings.canaries, public)
    coins = secret_coins(plan.size)
    records = node_records(real, plan, coins)
    replay_records = node_records(real, plan, np.zeros(plan.size, dtype=bool))
    tokens = plan.canaries[0][:, 1]
    # Canaries with large gradients (canaries.py): invisible through working clipping.
    loss = canary_weighted_loss(task.per_record_loss, tokens,
                                CANARY_LOSS_WEIGHT * config.clip_norm)
    rate = poisson_sample_rate(plan.num_records, config.batch_size)
    node = node_settings({"partition-id": 0}, 0, config, sim_state_dir="/audit")
    mask_seed = config.seed * 7 + 11 + trial
    global_state = federated_state(global_model)
    wanted = set(settings.scores)
    initial_loss = canary_losses(global_model, task.per_record_loss, plan.canaries,
                                 mask_seed) if BLACK_BOX in wanted else None
    history: list[HistoryEntry] = []
    white = np.zeros(plan.size)
    replay = np.zeros(plan.size)
    for server_round in range(1, config.num_rounds + 1):
        seed = round_seed(config.seed, server_round, 1, 0)
        round_plan = plan_round(config, node, rate, history, server_round)
        if round_plan.noise_multiplier is None:
            raise ValueError(f"the node refuses round {server_round}: {round_plan.refusal}")
        sigma = round_plan.noise_multiplier
        history.append((sigma, rate, config.local_steps))
        intended = _dp_settings(task, config, sigma)
        progress(f"  round {server_round}/{config.num_rounds}: σ={sigma:.3f}, q={rate:.4f}: "
                 f"the node trains {config.local_steps} DP-SGD steps "
                 f"({time.perf_counter() - started:.0f}s)")
        update = _released_update(task, config, global_state, records, loss,
                                  trained_settings(settings.bug, intended), seed,
                                  training_generator(settings.bug, config, seed))
        requests: list[tuple[State, str]] = []
        if WHITE_BOX in wanted:
            requests.append((update, EMBEDDING_ROWS))
        if REPLAY in wanted:
            progress(f"  round {server_round}/{config.num_rounds}: the attacker replays it "
                     f"from the public seed ({time.perf_counter() - started:.0f}s)")
            replayed = _released_update(task, config, global_state, replay_records, loss,
                                        intended, seed, attacker_generator(config, seed))
            requests.append(({k: update[k] - replayed[k] for k in update}, VOCABULARY_ROWS))
        if requests:
            projections = iter(update_projections(_model_at(task, config, global_state),
                                                  task.per_record_loss, plan.canaries, tokens,
                                                  requests, mask_seed))
            if WHITE_BOX in wanted:
                white += next(projections)
            if REPLAY in wanted:
                replay += next(projections)
        global_state = {k: global_state[k] + update[k].to(global_state[k].dtype)
                        for k in global_state}
        progress(f"  round {server_round}/{config.num_rounds}: scored "
                 f"({time.perf_counter() - started:.0f}s)")
    scores = {WHITE_BOX: white, REPLAY: replay}
    if initial_loss is not None:
        final_loss = canary_losses(_model_at(task, config, global_state),
                                   task.per_record_loss, plan.canaries, mask_seed)
        scores[BLACK_BOX] = initial_loss - final_loss
    claimed = epsilon_of(history, node.delta, REPLACE_ONE)
    return TrialResult(
        claimed_epsilon=claimed, delta=node.delta, noise_multiplier=history[0][0],
        sample_rate=rate, steps_per_round=config.local_steps, rounds=config.num_rounds,
        canaries=plan.size, num_records=plan.num_records, included=int(coins.sum()),
        bug=settings.bug.value, beta=settings.beta,
        seconds=time.perf_counter() - started,
        bounds=[_bound(name, scores[name], coins, node.delta,
                       settings.beta / len(settings.scores))
                for name in SCORES if name in wanted],
    )


def _plan(model: torch.nn.Module, real: tuple[torch.Tensor, ...], count: int,
          public: torch.Generator) -> CanaryPlan:
    """Text canaries as long as the node's records, in the model's vocabulary."""
    special = model.special_ids
    canaries = text_canaries(count, real[0].shape[1], int(model.vocab_size),
                             special.first_ordinary, special.cls, special.sep, real[0],
                             public)
    return plan_canaries(real, canaries, public)


def _dp_settings(task: SslTask, config: RunConfig, sigma: float) -> DpSettings:
    """The node's DP-SGD settings for a round (as client/local_round.py builds them)."""
    return DpSettings(noise_multiplier=sigma, clip_norm=config.clip_norm,
                      batch_size=config.batch_size, local_steps=config.local_steps,
                      learning_rate=config.learning_rate,
                      grad_sample_mode=grad_sample_mode(task, config))


def _model_at(task: SslTask, config: RunConfig, state: State) -> torch.nn.Module:
    """A fresh model holding `state` (vocabulary frozen when the run freezes it)."""
    model = task.build_model(config)
    load_federated_state(model, state)
    if config.freeze_embeddings:
        freeze_vocabulary(task, model)
    return model


def _released_update(task: SslTask, config: RunConfig, global_state: State,
                     records: tuple[torch.Tensor, ...], loss: PerRecordLoss, dp: DpSettings,
                     seed: int, generator: torch.Generator) -> State:
    """One round of the node: DP-SGD from the global model, then the update clipped to S,
    exactly what `client.local_round.run_client_round` sends."""
    model = _model_at(task, config, global_state)
    train_locally(model, records, loss, dp, seed, generator)
    update, _ = clip_update(compute_update(federated_state(model), global_state),
                            config.update_clip_norm)
    return update


def _bound(name: str, scores: np.ndarray, coins: np.ndarray, delta: float,
           beta: float) -> ScoreBound:
    epsilon, k_pos, k_neg = best_lower_bound(scores, coins, delta, beta, k_grid(len(scores)))
    outcome = guesses_from_scores(scores, coins, k_pos, k_neg)
    return ScoreBound(score=name, epsilon=epsilon, k_pos=k_pos, k_neg=k_neg,
                      guesses=outcome.guesses, correct=outcome.correct)
