"""Federated rounds under secure aggregation (`secure-aggregation=true`): the server learns only
the sum of the round's updates, through Flower's own SecAgg+ (`SecAggPlusWorkflow`).

Flower 1.42 offers SecAgg+ only in the legacy workflow API: the workflow wants a
`LegacyContext` holding a legacy `flwr.server.strategy.Strategy`, and it calls only that
strategy's `configure_fit` (who takes part, with what) and `aggregate_fit` (which receives the
unmasked *aggregate*, never a client's vector). fedssl keeps its own round loop and calls the
workflow once per round, as a function, for the fit phase only (docs/secure-aggregation.md):

* `_RoundStrategy` is the legacy strategy of one round: its `configure_fit` returns the nodes
  fedssl sampled (fixed-size or Poisson, secret sampler, as UpdateFedAvg) with the global
  weights and the RoundInstruction; its `aggregate_fit` keeps the aggregate, the only arrays
  fedssl's server code ever holds;
* `_ClearReplies` wraps the Grid the workflow talks through and reads the *clear* part of each
  node's masked-vector reply (status, ledger entries, ε, record count: what the node sends
  beside its update, as without secure aggregation) into the round's RoundRecord. It holds no
  update: the node's mod empties every ArrayRecord and sends only masked integers; should an
  ArrayRecord arrive with data, it is dropped and counted (`plaintext_arrays`);
* the aggregate is the mean over the nodes whose masked vectors arrived (each weighs 1;
  nodes that refused send a zero vector), so the sum is mean × contributors. Then as today:
  the plain mean over the nodes that trained, or with client-level DP the noisy
  fixed-denominator mean (server/client_level_dp.py).

Quantisation: the protocol works on integers. Each node's Δ has ‖Δ‖₂ ≤ S (update-clip-norm),
so every coordinate lies in [−S, S]: `clipping_range = S` never clips a clipped update, and
`quantization_range = 2^22` levels give a step of 2S/2^22 with unbiased stochastic rounding
(docs/secure-aggregation.md has the error against the DP noise). Flower's modulus 2^32 holds
the sum of up to 2^32/2^22 = 1024 nodes per round without overflow (RunConfig checks).

Dropouts: with `num_shares` = every sampled node and `reconstruction_threshold` t (setting
`secagg-threshold`, a fraction of the sample), the round survives as long as every node keeps at
least t live neighbours at each stage; otherwise Flower halts the protocol and fedssl skips the
round (model unchanged) with a log line naming the counts.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager, LegacyContext, SimpleClientManager
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid

from common.model_updates import State, apply_update, update_norm
from common.privacy.dp_randomness import secret_generator, secret_sampler, seeded_generator
from common.protocol import STATUS_REFUSED, STATUS_TRAINED, ClientReply, RoundInstruction
from common.protocol.secure_aggregation import ARRAY_KEYS, noise_share_std, quantisation_clip
from common.run_config import RunConfig
from server.client_level_dp import ClientDpSettings, noisy_mean_update, poisson_sample
from server.flower_internals import (
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
    RECORD_KEY_CONFIGS,
    ClientProxy,
    DelegatingGrid,
    GridClientProxy,
    SecAggPlusKey,
    WorkflowKey,
)
from server.ledger_sync import LedgerCoverage, ledger_entries
from server.round_record import RoundRecord
from server.run_directory import RoundRecorder

QUANTIZATION_RANGE = 2**22  # Flower's default: levels per coordinate
MODULUS_RANGE = 2**32  # Flower's default: the masks' ring
MAX_SECAGG_CLIENTS = MODULUS_RANGE // QUANTIZATION_RANGE  # sum of this many never wraps
SUM_TOLERANCE = 1e-3  # ‖sum‖ may exceed n·S by quantisation rounding only


def reconstruction_threshold(sampled: int, fraction: float) -> int:
    """The shares needed to unmask, as Flower computes it from a float threshold with
    num_shares = the whole sample (secaggplus_workflow.py, setup_stage)."""
    return max(round(fraction * sampled), 2)


@dataclass
class SecureRoundOutcome:
    """What the server code of one round held: for tests and the round's log."""

    aggregate_calls: int = 0
    contributors: int = 0  # nodes whose masked vectors entered the sum
    plaintext_arrays: int = 0  # ArrayRecords with data seen in replies (must stay 0)
    seen_arrays: list[list[np.ndarray]] = field(default_factory=list)  # what aggregate_fit got


class _RoundStrategy(Strategy):
    """The legacy strategy SecAggPlusWorkflow needs, for one round's fit phase only."""

    def __init__(self, grid: Grid, nodes: list[int], content: FitIns,
                 outcome: SecureRoundOutcome) -> None:
        self.grid = grid
        self.nodes = nodes
        self.content = content
        self.outcome = outcome
        self.aggregate: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return [(GridClientProxy(node, self.grid, 0), self.content) for node in self.nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Every result carries the same parameters: the unmasked mean of the contributions."""
        self.outcome.aggregate_calls += 1
        self.outcome.contributors = len(results)
        if results:
            mean = parameters_to_ndarrays(results[0][1].parameters)
            self.outcome.seen_arrays.append(mean)
            self.aggregate = [array * len(results) for array in mean]  # the sum
        return None, {}  # fedssl applies the update itself

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, server_round: int,
                           results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
                           ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _ClearReplies(DelegatingGrid):
    """The workflow's Grid: keeps the clear part of every masked-vector reply, no update."""

    def __init__(self, grid: Grid, outcome: SecureRoundOutcome) -> None:
        super().__init__(grid)
        self.outcome = outcome
        self.masked_replies: list[Message] = []  # stage "collect masked vectors"
        self.stage_failures: dict[str, int] = {}

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        stage = _stage_of(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.stage_failures[stage] = len(messages) - sum(not r.has_error() for r in replies)
        for reply in replies:
            if reply.has_error():
                continue
            for record in reply.content.array_records.values():
                if len(record) > 0:  # a node that sent data in the clear: never kept
                    self.outcome.plaintext_arrays += 1
                    record.clear()
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and SecAggPlusKey.MASKED_PARAMETERS in configs:
                self.masked_replies.append(reply)
        if stage == "collect_masked_vectors":
            # errored replies of this stage are the round's training failures
            self.masked_replies += [r for r in replies if r.has_error()]
        return replies


def _stage_of(messages: list[Message]) -> str:
    for msg in messages:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and SecAggPlusKey.STAGE in configs:
            return str(configs[SecAggPlusKey.STAGE])
    return ""


class SecureAggregationRounds:
    """fedssl's rounds with the update summed by SecAgg+; ledger and metrics as today."""

    def __init__(self, config: RunConfig, on_round: RoundRecorder, coverage: LedgerCoverage,
                 client_dp: ClientDpSettings | None, instruction: RoundInstruction,
                 round_offset: int = 0) -> None:
        self.config = config
        self.on_round = on_round
        self.coverage = coverage
        self.client_dp = client_dp
        self.instruction = instruction
        seed = config.seed * 1_000_003 + round_offset
        self._rng = random.Random(seed) if config.reproducible_noise else secret_sampler()
        self._noise = seeded_generator(seed) if config.reproducible_noise \
            else secret_generator()
        self.outcomes: list[SecureRoundOutcome] = []

    @property
    def distributed_noise(self) -> bool:
        """Nodes add the client-level noise (client-noise=distributed), the server none."""
        return self.client_dp is not None and self.config.client_noise == "distributed"

    def clipping_range(self, threshold: int) -> float:
        """Per-coordinate quantisation range: S, plus the noise share's tail when nodes add it."""
        if not self.distributed_noise:
            return float(self.config.update_clip_norm)
        share = noise_share_std(self.config.client_noise_multiplier,
                                self.config.update_clip_norm, threshold)
        return quantisation_clip(self.config.update_clip_norm, share)

    def workflow(self, threshold: int) -> SecAggPlusWorkflow:
        return SecAggPlusWorkflow(
            num_shares=1.0,  # every sampled node holds a share of every other's secrets
            reconstruction_threshold=float(self.config.secagg_threshold),
            max_weight=1.0,  # every node weighs 1: the unmasked aggregate is a plain mean
            clipping_range=self.clipping_range(threshold),
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=self.config.round_timeout,
        )

    def sample(self, grid: Grid) -> list[int]:
        nodes = sorted(grid.get_node_ids())
        if self.config.client_sampling == "poisson":
            return poisson_sample(nodes, self.config.fraction_train, self._rng)
        size = max(int(len(nodes) * self.config.fraction_train), min(2, len(nodes)))
        return sorted(self._rng.sample(nodes, size))

    def run_round(self, grid: Grid, server_round: int, global_state: State) -> State:
        """One round; returns the new global weights (unchanged when it was skipped)."""
        started = time.monotonic()
        outcome = SecureRoundOutcome()
        self.outcomes.append(outcome)
        nodes = self.sample(grid)
        record = RoundRecord(server_round=server_round, sampled=len(nodes))
        self.coverage.sending(set(nodes), server_round)
        keys = list(global_state)
        instruction = RoundInstruction(**{**self.instruction.__dict__,
                                          "server_round": server_round, "attempt": 1})
        config = dict(instruction.to_config_record())
        config[ARRAY_KEYS] = keys
        fitins = FitIns(ndarrays_to_parameters([global_state[k].numpy() for k in keys]),
                        config)  # type: ignore[arg-type]
        strategy = _RoundStrategy(grid, nodes, fitins, outcome)
        observed = _ClearReplies(grid, outcome)
        context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                        run_config={}), strategy=strategy,
                                client_manager=SimpleClientManager())
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        threshold = reconstruction_threshold(len(nodes), self.config.secagg_threshold)
        if len(nodes) >= 2:
            self.workflow(threshold)(observed, context)
        for reply in observed.masked_replies:
            self._record_reply(reply, record)
        replied = {m.metadata.src_node_id for m in observed.masked_replies}
        record.dropouts = sorted(f"node-{n}" for n in set(nodes) - replied)
        record.attempt_log.append({"attempt": 1, "sampled": len(nodes),
                                   "usable": len(record.clients), "dropouts": record.dropouts,
                                   "secure_aggregation": {
                                       "threshold": threshold,
                                       "contributors": outcome.contributors,
                                       "client_noise": "distributed" if self.distributed_noise
                                       else "server",
                                       "failures_by_stage": observed.stage_failures}})
        mean = self._mean(strategy.aggregate, record, global_state, threshold, outcome)
        new_state = apply_update(global_state, mean) if mean is not None else global_state
        record.seconds = time.monotonic() - started
        print(f"[fedssl] round {server_round}/{self.config.num_rounds} | secure aggregation | "
              f"clients done {len(record.clients)}/{len(nodes)} | "
              f"{record.seconds:.1f}s{' | SKIPPED' if record.skipped else ''}", flush=True)
        self.on_round(record, new_state)  # ledger first, then the model leaves this method
        return new_state

    def _mean(self, aggregate: list[np.ndarray] | None, record: RoundRecord,
              reference: State, threshold: int, outcome: SecureRoundOutcome) -> State | None:
        """The update to apply, from the sum only; None: the round is skipped."""
        if aggregate is None:
            log(WARNING, "round %d: secure aggregation halted (%d sampled, %d masked vector(s) "
                "arrived, %s; reconstruction threshold %d: fewer live nodes than that cannot "
                "be unmasked): round skipped, model unchanged", record.server_round,
                record.sampled, len([c for c in record.clients]),
                "dropouts: " + (", ".join(record.dropouts) or "none"), threshold)
            record.skipped = True
            return None
        total = dict(zip(reference, (torch.from_numpy(np.asarray(a, dtype=np.float32))
                                     for a in aggregate), strict=True))
        if self.distributed_noise:
            # The server has now seen a sum carrying the nodes' noise shares: that is a
            # client-level release even if the round is skipped below, so it is spent.
            record.client_dp = self.client_dp
        trained = len(record.clients)
        bound = trained * self.config.update_clip_norm * (1 + SUM_TOLERANCE)
        finite = all(bool(torch.isfinite(t).all()) for t in total.values())
        too_large = not self.distributed_noise and update_norm(total) > bound + 1e-6
        if not finite or too_large:
            log(WARNING, "round %d: the securely aggregated sum (norm %.4g) exceeds %d × "
                "update-clip-norm or is not finite: round skipped, model unchanged",
                record.server_round, update_norm(total) if finite else float("nan"), trained)
            record.skipped = True
            return None
        log(INFO, "round %d: secure aggregation summed %d masked vector(s) (%d trained)",
            record.server_round, outcome.contributors, trained)
        if self.client_dp is not None:
            denominator = (self.client_dp.sample_rate * self.config.num_clients
                           if self.client_dp.poisson else max(record.sampled, 1))
            record.client_dp = self.client_dp
            if self.distributed_noise:  # the nodes' shares are in the sum already
                return {k: (v / denominator if reference[k].is_floating_point()
                            else torch.zeros_like(reference[k])) for k, v in total.items()}
            return noisy_mean_update([total], reference, denominator, self.client_dp,
                                     self._noise)
        if trained < self.config.min_clients:
            log(WARNING, "round %d: only %d node(s) trained, min-clients is %d: round skipped, "
                "model unchanged", record.server_round, trained, self.config.min_clients)
            record.skipped = True
            return None
        return {k: (v / trained if reference[k].is_floating_point() else torch.zeros_like(
            reference[k])) for k, v in total.items()}

    def _record_reply(self, msg: Message, record: RoundRecord) -> None:
        """The clear part of a node's reply into the round record (as UpdateFedAvg._accept)."""
        flower_id = msg.metadata.src_node_id
        if msg.has_error():
            log(WARNING, "round %d: node-%d failed: %s", record.server_round, flower_id,
                msg.error.reason)
            record.rejected.append({"node": f"node-{flower_id}", "reason": msg.error.reason,
                                    "attempt": 1})
            return
        reply = ClientReply.parse(msg.content, update_sent=False)
        if isinstance(reply, str):
            log(WARNING, "round %d: rejected reply from node-%d: %s", record.server_round,
                flower_id, reply)
            record.rejected.append({"node": f"node-{flower_id}", "reason": reply,
                                    "attempt": 1})
            return
        node = reply.node or f"node-{flower_id}"
        record.ledger.extend(ledger_entries(reply.ledger, node))
        self.coverage.replied(flower_id, reply.node, record.server_round,
                              spent=reply.status == STATUS_TRAINED or reply.spent)
        if reply.status == STATUS_REFUSED:
            log(WARNING, "round %d: node %s refused: %s", record.server_round, node,
                reply.reason)
            record.refused.append({"node": node, "reason": reply.reason, "attempt": 1})
            return
        if reply.status != STATUS_TRAINED:
            record.rejected.append({"node": node, "reason": reply.reason or reply.status,
                                    "attempt": 1})
            return
        assert reply.metrics is not None
        metrics = {**reply.metrics, "node": node, "attempt": 1}
        record.spend.append(metrics)
        record.clients.append(metrics)


def secure_federated_rounds(grid: Grid, config: RunConfig, rounds: SecureAggregationRounds,
                            global_state: State, done: int) -> State:
    """Rounds done+1 .. num-rounds under secure aggregation; the final global weights."""
    for server_round in range(done + 1, config.num_rounds + 1):
        global_state = rounds.run_round(grid, server_round, global_state)
    return global_state
