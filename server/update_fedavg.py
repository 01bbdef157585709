"""FedAvg over client *updates*: the new global model is w + the mean of the valid Δ.

Flower's FedAvg averages whatever arrays clients return and makes that the model; fedssl
clients return clipped updates Δ (never weights), so this strategy keeps the current global
weights, checks each Δ (finite, expected keys and shapes, norm ≤ S), and adds their mean:
FedAvg's num-examples-weighted mean, or with client-level DP the noisy fixed-denominator mean
of server/client_level_dp.py. Every reply's ledger and status go into the RoundRecord, and
`coverage` learns which nodes' spend the server has seen (server/ledger_sync.py).

Client sampling (with `client-sampling=poisson`) and the client-level noise are drawn from
secret sources (common/privacy/dp_randomness.py): amplification by sampling and the noise both assume
that nobody who sees the aggregate can reproduce them.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections.abc import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.model_updates import State, apply_update, clip_to_bound, update_norm
from common.privacy.dp_randomness import secret_generator, secret_sampler, seeded_generator
from common.protocol import (
    STATUS_REFUSED,
    STATUS_TRAINED,
    ClientReply,
    RoundInstruction,
    canonical_content,
    update_of,
)
from server.client_level_dp import ClientDpSettings, noisy_mean_update, poisson_sample
from server.flower_internals import DEAD_WORKER_ERRORS, construct_messages
from server.ledger_sync import LedgerCoverage, ledger_entries
from server.round_record import RoundRecord

NORM_TOLERANCE = 1e-4  # float32 rounding when the client rescales Δ to exactly S
# DEAD_WORKER_ERRORS (server/flower_internals.py): Flower 1.42's Ray backend puts a dead ClientApp
# actor back into its pool, so every later message routed to it fails the same way, healthy
# nodes' included: a run that goes on loses nodes silently. Stop it instead; a rerun resumes.
# Only in simulation: an error reply's reason is whatever the replying node wrote, so in a
# deployment any registered node could name a Ray error and stop the federation at will.


class SimulationWorkerDied(RuntimeError):
    """A simulation worker process died; the run cannot continue in this process tree."""


def ray_runs_here() -> bool:
    """True when this process runs Ray, i.e. the ServerApp is part of a simulation.

    Flower 1.42's simulation runs the ServerApp as a thread of the process that starts the Ray
    backend (`flwr-simulation`); a deployed ServerApp (`flwr-serverapp`) never starts Ray. The
    answer comes from this process alone, so no node's reply can change it.
    """
    ray = sys.modules.get("ray")  # never import Ray just to ask
    return ray is not None and bool(ray.is_initialized())


class UpdateFedAvg(FedAvg):
    """FedAvg whose clients reply with clipped updates instead of weights."""

    def __init__(
        self, *, update_clip_norm: float, on_round: Callable[[RoundRecord, State], None],
        client_dp: ClientDpSettings | None = None, poisson_rate: float | None = None,
        expected_clients: int = 1, seed: int = 0, round_offset: int = 0,
        min_clients: int = 1, robust: FedAvg | None = None, round_retries: int = 0,
        round_timeout: float = 3600.0, reproducible_noise: bool = False,
        coverage: LedgerCoverage | None = None,
        in_simulation: Callable[[], bool] = ray_runs_here, **fedavg_kwargs: object,
    ) -> None:
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        # Asked when a dead-worker error arrives (Ray is up by then in a simulation).
        self.in_simulation = in_simulation
        self.update_clip_norm = update_clip_norm
        self.on_round = on_round
        self.client_dp = client_dp
        self.poisson_rate = poisson_rate  # None: FedAvg's fixed-size sampling
        self.expected_clients = expected_clients
        # A resumed run continues the round numbering (clients seed and ledger by it).
        self.round_offset = round_offset
        self.min_clients = min_clients
        self.round_retries = round_retries  # short rounds re-run this often before a skip
        self.round_timeout = round_timeout  # also the wait of a retried attempt
        self._round_inputs: tuple[ArrayRecord, ConfigRecord, Grid] | None = None
        # Flower's FedMedian / FedTrimmedAvg aggregate whatever arrays replies carry; ours
        # are updates Δ, so their robust statistic of the Δ is applied like the mean.
        self.robust = robust
        # Secret unless the simulation switch asks for reproducible draws (no DP guarantee);
        # a seeded resume continues past the finished rounds' draws, never replays them.
        self._rng: random.Random = random.Random(seed * 1_000_003 + round_offset) \
            if reproducible_noise else secret_sampler()
        self._noise: torch.Generator = seeded_generator(seed * 1_000_003 + round_offset) \
            if reproducible_noise else secret_generator()
        self.coverage = coverage if coverage is not None else LedgerCoverage()
        self._global: State = {}
        self._started = 0.0
        self._sampled = 0
        self._sampled_nodes: set[int] = set()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the weights the round starts from, then sample (fixed-size or Poisson)."""
        server_round += self.round_offset
        self._global = arrays.to_torch_state_dict()
        self._started = time.monotonic()
        self._round_inputs = (arrays, config, grid)  # a retried attempt re-samples with these
        return self._sample(server_round, attempt=1)

    def _sample(self, server_round: int, attempt: int) -> list[Message]:
        """One attempt's messages: fresh sample, the round's weights and config + attempt."""
        assert self._round_inputs is not None, "configure_train starts every round"
        arrays, config, grid = self._round_inputs
        # Clients seed by the attempt. The round is also what FedAvg.configure_train writes.
        config = dataclasses.replace(RoundInstruction.from_config_record(config),
                                     server_round=server_round, attempt=attempt
                                     ).to_config_record()
        if self.poisson_rate is None:
            messages = list(super().configure_train(server_round, arrays, config, grid))
        else:
            nodes = poisson_sample(list(grid.get_node_ids()), self.poisson_rate, self._rng)
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            messages = construct_messages(self, record, nodes, MessageType.TRAIN)
        self._sampled = len(messages)
        self._sampled_nodes = {msg.metadata.dst_node_id for msg in messages}
        self.coverage.sending(self._sampled_nodes, server_round)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, keep its ledger, and apply the mean of the valid updates.

        A round with fewer than min-clients usable updates is re-run with a fresh sample up
        to `round_retries` times (short-round=retry), then skipped with the model unchanged.
        Updates of a short attempt are discarded; the spend of every attempt is kept (its
        clients recorded it in their own ledgers, and their entries go into the run ledger).
        """
        server_round += self.round_offset
        record = RoundRecord(server_round=server_round, sampled=self._sampled)
        valid = self._collect(list(replies), record)
        # With client-level DP there is never a retry: DP-FedAvg releases (and the ledger
        # accounts) a noisy aggregate on the first attempt whatever the participation, and
        # choosing to re-run by the count of usable updates would itself depend on who took
        # part. RunConfig refuses short-round=retry with client-dp; the check here keeps a
        # misconfigured strategy from releasing twice while accounting once.
        while (self.client_dp is None and len(valid) < self.min_clients
               and record.attempts <= self.round_retries):
            log(30, "round %d: attempt %d had only %d usable update(s), min-clients is %d: "
                "retrying with a fresh sample (%d of %d retries)", server_round,
                record.attempts, len(valid), self.min_clients, record.attempts,
                self.round_retries)
            messages = self._sample(server_round, attempt=record.attempts + 1)
            grid = self._round_inputs[2] if self._round_inputs else None
            assert grid is not None
            replies = grid.send_and_receive(messages, timeout=self.round_timeout)
            record.attempts += 1
            record.sampled = self._sampled
            record.clients = []  # a short attempt's updates are discarded, never averaged
            valid = self._collect(list(replies), record)
        metrics = None
        if valid:
            metrics = self.train_metrics_aggr_fn(
                [msg.content for msg in valid], self.weighted_by_key
            )
        mean: State | None = None
        if self.client_dp is not None:
            # DP-FedAvg releases every round, even with no usable update: skipping when few
            # clients took part would let participation change what is released.
            denominator = (self.client_dp.sample_rate * self.expected_clients
                           if self.client_dp.poisson else max(self._sampled, 1))
            updates = [update_of(msg.content).to_torch_state_dict() for msg in valid]
            mean = noisy_mean_update(updates, self._global, denominator, self.client_dp,
                                     self._noise)
            record.client_dp = self.client_dp
        elif len(valid) < self.min_clients:
            log(30, "round %d: only %d usable update(s) after %d attempt(s), min-clients is "
                "%d: round skipped, model unchanged", server_round, len(valid),
                record.attempts, self.min_clients)
            record.skipped = True
        else:
            aggregate = self.robust.aggregate_train if self.robust else super().aggregate_train
            combined, _ = aggregate(server_round, valid)
            mean = combined.to_torch_state_dict() if combined is not None else None
        new_state = apply_update(self._global, mean) if mean is not None else self._global
        record.seconds = time.monotonic() - self._started
        self.on_round(record, new_state)  # ledger first, then the model leaves this method
        return (ArrayRecord(new_state) if mean is not None else None), metrics

    def _collect(self, replies: list[Message], record: RoundRecord) -> list[Message]:
        """One attempt's replies into `record` (ledgers, statuses, dropouts); the usable ones."""
        valid = [msg for msg in replies if self._accept(msg, record)]
        dead = [msg.error.reason for msg in replies if msg.has_error()
                and any(name in msg.error.reason for name in DEAD_WORKER_ERRORS)]
        # In a deployment such a reply is a failed reply like any other (`_accept` logged it).
        if dead and self.in_simulation():
            raise SimulationWorkerDied(
                f"round {record.server_round}: a simulation worker (a Ray ClientApp actor) "
                "died, killed or out of memory; Flower does not replace it, so every later "
                "message it gets would fail too. The run stops here: rerun the same command "
                "to continue after the last committed round (this round is trained again and "
                f"its spend counted twice, an over-count). Flower's error: {dead[0][:300]}")
        replied = {msg.metadata.src_node_id for msg in replies}
        dropouts = sorted(f"node-{n}" for n in self._sampled_nodes - replied)
        if dropouts:
            log(30, "round %d: no reply within round-timeout from %s", record.server_round,
                ", ".join(dropouts))
        record.dropouts += dropouts
        record.attempt_log.append({"attempt": record.attempts, "sampled": self._sampled,
                                   "usable": len(valid), "dropouts": dropouts})
        return valid

    def _accept(self, msg: Message, record: RoundRecord) -> bool:
        """Record what the reply says (ledger, spend, status); True if its Δ is usable.

        Nothing a reply carries is used before it passed the schema (`ClientReply.parse`):
        a malformed reply is rejected and logged like a bad update, never fatal. An accepted
        reply is rebuilt in the one canonical shape Flower aggregates.
        """
        flower_id = msg.metadata.src_node_id
        if msg.has_error():
            log(30, "round %d: node-%d failed: %s", record.server_round, flower_id,
                msg.error.reason)
            record.rejected.append({"node": f"node-{flower_id}", "reason": msg.error.reason,
                                    "attempt": record.attempts})
            return False
        reply = ClientReply.parse(msg.content)
        if isinstance(reply, str):
            log(30, "round %d: rejected reply from node-%d: %s", record.server_round,
                flower_id, reply)
            record.rejected.append({"node": f"node-{flower_id}", "reason": reply,
                                    "attempt": record.attempts})
            return False
        node = reply.node or f"node-{flower_id}"
        record.ledger.extend(ledger_entries(reply.ledger, node))
        self.coverage.replied(flower_id, reply.node, record.server_round,
                              spent=reply.status == STATUS_TRAINED or reply.spent)
        if reply.status == STATUS_REFUSED:
            log(30, "round %d: node %s refused: %s", record.server_round, node, reply.reason)
            record.refused.append({"node": node, "reason": reply.reason,
                                   "attempt": record.attempts})
            return False
        if reply.status != STATUS_TRAINED:
            log(30, "round %d: node %s failed: %s", record.server_round, node, reply.reason)
            record.rejected.append({"node": node, "reason": reply.reason or reply.status,
                                    "attempt": record.attempts})
            return False
        # the schema requires both in a trained reply
        assert reply.metrics is not None and reply.arrays is not None
        metrics = {**reply.metrics, "node": node, "attempt": record.attempts}
        record.spend.append(metrics)  # spent whether or not its update is used
        update = reply.arrays.to_torch_state_dict()
        problem = update_problem(update, self._global, self.update_clip_norm)
        if problem:
            log(30, "round %d: rejected update from node %s: %s", record.server_round, node,
                problem)
            record.rejected.append({"node": node, "reason": problem,
                                    "attempt": record.attempts})
            return False
        received = update_norm(update)
        # Accepted up to float rounding above S; the accountant assumes exactly ≤ S.
        clipped = ArrayRecord(clip_to_bound(update, self.update_clip_norm))
        msg.content = canonical_content(clipped, reply.metrics)
        record.clients.append({**metrics, "received-norm": received})
        return True


def update_problem(update: State, reference: State, max_norm: float) -> str:
    """Why `update` cannot be aggregated against model `reference`, or '' if it can.

    Checks keys, shapes, dtypes, finiteness and the clipping bound ‖Δ‖ ≤ S.
    """
    if update.keys() != reference.keys():
        diff = sorted(set(update) ^ set(reference))[:3]
        return f"update keys differ from the model's (e.g. {diff})"
    for key, tensor in update.items():
        if tensor.shape != reference[key].shape:
            expected = tuple(reference[key].shape)
            return f"shape of {key} is {tuple(tensor.shape)}, expected {expected}"
        if not tensor.is_floating_point():
            return f"{key} has non-float dtype {tensor.dtype}"
        if not torch.isfinite(tensor).all():
            return f"non-finite values in {key}"
    norm = update_norm(update)
    if norm > max_norm * (1 + NORM_TOLERANCE):
        return f"update norm {norm:.4g} exceeds update-clip-norm {max_norm}"
    return ""
