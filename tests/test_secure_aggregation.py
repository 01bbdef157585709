"""Secure aggregation (SecAgg+): fedssl's server code holds only the sum of the updates.

In process: the real server round (server/secure_aggregation.py driving Flower's
SecAggPlusWorkflow) talks through a Grid that hands each message, serialised and back, to the
real node side (client/secure_aggregation.py around Flower's secaggplus_mod) of several nodes
whose train function replies with a known Δ. Dropouts are nodes that stop answering at a stage.
The real-process simulation is in test_secure_aggregation_simulation.py.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid

from client.secure_aggregation import secure_aggregation_mod
from common.config_error import ConfigError
from common.model_updates import update_norm
from common.protocol import (
    ARRAYS_KEY,
    STATUS_REFUSED,
    STATUS_TRAINED,
    ClientReply,
    RoundInstruction,
)
from common.run_config import RunConfig
from server.client_level_dp import ClientDpSettings
from server.ledger_sync import LedgerCoverage
from server.secure_aggregation import SecureAggregationRounds, reconstruction_threshold

S = 2.0
KEYS = ("w", "b")
SHAPES = {"w": (40, 5), "b": (7,)}
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
METRICS = {"num-examples": 100, "epsilon": 1.0, "noise-multiplier": 1.1, "sample-rate": 0.1,
           "local-steps": 3, "update-norm": 1.0, "delta": 1e-5, "max-epsilon": 8.0}


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message() needs the process's run identity (set by its runtime in a run)."""
    from flwr.supercore.task_identity import TaskIdentity
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def _update(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    raw = {k: torch.randn(SHAPES[k], generator=gen) for k in KEYS}
    scale = 0.9 * S / update_norm(raw)
    return {k: v * scale for k, v in raw.items()}


class FakeNodes(Grid):
    """In-process nodes behind the mod chain; messages cross a serialised copy both ways."""

    def __init__(self, updates: dict[int, dict[str, torch.Tensor] | None],
                 silent_from: dict[int, str] | None = None, secure: bool = True,
                 run_config: dict | None = None) -> None:
        self.updates = updates  # None: the node refuses (budget)
        self.silent_from = silent_from or {}  # node → first stage it no longer answers
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                                    run_config={"secure-aggregation": secure,
                                                **(run_config or {})})
                         for n in updates}
        self.sent_to_server: list[Message] = []
        self._ids = itertools.count(1)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.updates)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            stage = str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
            silent = self.silent_from.get(node)
            if silent is not None and STAGES.index(stage) >= STAGES.index(silent):
                continue  # no reply before the timeout: a dropout
            incoming = Message(_wire(msg.content), dst_node_id=node,
                               message_type=msg.metadata.message_type)
            incoming.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            reply = secure_aggregation_mod(incoming, self.contexts[node], self._train)
            out = Message(_wire(reply.content), reply_to=incoming)
            self.sent_to_server.append(out)
            replies.append(out)
        return replies

    def _train(self, msg: Message, context: Context) -> Message:
        """Stands for fedssl's train function: checks what it got, replies with a known Δ."""
        instruction = RoundInstruction.from_record_dict(msg.content)
        weights = msg.content[ARRAYS_KEY].to_torch_state_dict()
        assert list(weights) == list(KEYS) and instruction.server_round is not None
        update = self.updates[context.node_id]
        if update is None:
            reply = ClientReply(status=STATUS_REFUSED, reason="budget", node=f"n{context.node_id}",
                                metrics={"epsilon": 8.0})
        else:
            reply = ClientReply(status=STATUS_TRAINED, node=f"n{context.node_id}",
                                metrics=dict(METRICS), arrays=ArrayRecord(update))
        return Message(reply.to_record_dict(), reply_to=msg)

    # Grid's other abstract methods: not used by the workflow
    def set_run(self, run_id: int) -> None: ...
    @property
    def run(self):  # type: ignore[no-untyped-def]
        return None
    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def get_nodes(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        raise NotImplementedError
    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _wire(content: RecordDict) -> RecordDict:
    """A RecordDict as the receiver gets it: through Flower's own serialisation."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    return recorddict_from_proto(recorddict_to_proto(content))


class Recorder:
    def __init__(self) -> None:
        self.records = []
        self.run_id = "run-1"

    def __call__(self, record, state) -> None:  # type: ignore[no-untyped-def]
        self.records.append((record, state))


def _rounds(num_clients: int, client_dp: ClientDpSettings | None = None,
            threshold: float = 0.67, client_noise: str = "server",
            ) -> tuple[SecureAggregationRounds, Recorder]:
    config = RunConfig(num_clients=num_clients, num_rounds=1, update_clip_norm=S,
                       secure_aggregation=True, secagg_threshold=threshold,
                       round_timeout=5.0, client_dp=client_dp is not None,
                       client_noise=client_noise,
                       client_noise_multiplier=client_dp.noise_multiplier if client_dp else 1.0)
    recorder = Recorder()
    rounds = SecureAggregationRounds(config, recorder, LedgerCoverage(), client_dp,  # type: ignore[arg-type]
                                     RoundInstruction(run_id="run-1", task="mlm"))
    return rounds, recorder


GLOBAL = {k: torch.zeros(SHAPES[k]) for k in KEYS}


def test_server_code_holds_only_the_sum():
    updates = {n: _update(n) for n in range(1, 6)}
    nodes = FakeNodes(updates)
    rounds, recorder = _rounds(5)
    new_state = rounds.run_round(nodes, 1, GLOBAL)
    outcome = rounds.outcomes[0]
    total = {k: sum(u[k] for u in updates.values()) for k in KEYS}
    # The one array list fedssl's aggregation entry point received is the mean of all five
    # (Flower's unmasked aggregate), from which the server takes the sum; nothing else.
    assert outcome.aggregate_calls == 1 and outcome.contributors == 5
    assert len(outcome.seen_arrays) == 1
    for key, seen in zip(KEYS, outcome.seen_arrays[0], strict=True):
        np.testing.assert_allclose(seen * 5, total[key].numpy(), atol=1e-4)
    # Plain mean over the 5 trained nodes (quantisation step 2S/2^22 ≈ 1e-6).
    for key in KEYS:
        torch.testing.assert_close(new_state[key], total[key] / 5, atol=1e-5, rtol=0)
    # No reply carried an update in the clear: every ArrayRecord empty, and no masked vector
    # equals (or correlates with) its node's quantised update.
    assert outcome.plaintext_arrays == 0
    for reply in nodes.sent_to_server:
        assert all(len(r) == 0 for r in reply.content.array_records.values())
    masked = [r for r in nodes.sent_to_server
              if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == 5
    from flwr.common import bytes_to_ndarray
    for reply in masked:
        vectors = [bytes_to_ndarray(b) for b in
                   reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        node = reply.metadata.src_node_id
        quantised = (updates[node]["w"].numpy().astype(np.float64) + S) * 2**22 / (2 * S)
        corr = np.corrcoef(vectors[1].ravel().astype(np.float64), quantised.ravel())[0, 1]
        assert abs(corr) < 0.3, corr  # masks are uniform on [0, 2^32): no trace of Δ
    # The clear part (status, ε, ledger) reached the round record as without SecAgg.
    record, _ = recorder.records[0]
    assert len(record.clients) == 5 and not record.skipped and record.dropouts == []
    assert all("received-norm" not in c and "update-norm" not in c for c in record.clients)


def test_refusing_node_adds_zero_and_is_recorded():
    updates = {1: _update(1), 2: _update(2), 3: None, 4: _update(4)}
    rounds, recorder = _rounds(4)
    new_state = rounds.run_round(FakeNodes(updates), 1, GLOBAL)
    record, _ = recorder.records[0]
    assert [r["node"] for r in record.refused] == ["n3"] and len(record.clients) == 3
    mean = {k: sum(updates[n][k] for n in (1, 2, 4)) / 3 for k in KEYS}
    for key in KEYS:
        torch.testing.assert_close(new_state[key], mean[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", ["collect_masked_vectors", "unmask"])
def test_dropouts_below_the_threshold_survive(stage):
    """5 nodes, threshold 3 (0.67 × 5): two nodes silent from `stage` on, the round completes.

    A node silent from the masked-vector stage never trained into the sum (its pairwise masks
    are removed from its neighbours' shares); one silent only in unmask is in the sum."""
    updates = {n: _update(n) for n in range(1, 6)}
    assert reconstruction_threshold(5, 0.67) == 3
    rounds, recorder = _rounds(5)
    new_state = rounds.run_round(FakeNodes(updates, {4: stage, 5: stage}), 1, GLOBAL)
    record, _ = recorder.records[0]
    assert not record.skipped
    in_sum = (1, 2, 3) if stage == "collect_masked_vectors" else (1, 2, 3, 4, 5)
    mean = {k: sum(updates[n][k] for n in in_sum) / len(in_sum) for k in KEYS}
    for key in KEYS:
        torch.testing.assert_close(new_state[key], mean[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", ["share_keys", "collect_masked_vectors", "unmask"])
def test_dropouts_above_the_threshold_skip_the_round(stage, caplog):
    updates = {n: _update(n) for n in range(1, 6)}
    rounds, recorder = _rounds(5)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        new_state = rounds.run_round(FakeNodes(updates, {3: stage, 4: stage, 5: stage}), 1,
                                     GLOBAL)
    record, _ = recorder.records[0]
    assert record.skipped and rounds.outcomes[0].aggregate_calls == 0
    assert all(torch.equal(new_state[k], GLOBAL[k]) for k in KEYS)
    assert "secure aggregation halted" in caplog.text and "reconstruction threshold 3" in \
        caplog.text and "round skipped, model unchanged" in caplog.text
    if stage == "unmask":  # they trained: their spend still reached the round record
        assert len(record.clients) == 5


def test_client_level_dp_noise_on_the_sum():
    updates = {n: _update(n) for n in range(1, 5)}
    dp = ClientDpSettings(noise_multiplier=1.0, clip_norm=S, sample_rate=1.0, poisson=False)
    rounds, recorder = _rounds(4, dp)
    new_state = rounds.run_round(FakeNodes(updates), 1, GLOBAL)
    record, _ = recorder.records[0]
    assert record.client_dp == dp
    noise = torch.cat([(new_state[k] - sum(updates[n][k] for n in updates) / 4).ravel()
                       for k in KEYS])
    assert noise.std().item() == pytest.approx(1.0 * S / 4, rel=0.15)


DISTRIBUTED = {"client-dp": True, "client-noise": "distributed",
               "client-noise-multiplier": 1.0, "update-clip-norm": S}


def test_distributed_noise_every_unmaskable_sum_has_std_at_least_z_s():
    """Each node adds N(0, (zS)²/t), t = 3 of 4: the server adds nothing, and the noise on the
    sum of the 4 contributions has std zS·√(4/3) ≥ zS (t contributions alone: exactly zS)."""
    shapes = {"w": (400, 50), "b": (7,)}
    updates = {n: {k: torch.zeros(shapes[k]) for k in KEYS} for n in range(1, 5)}
    reference = {k: torch.zeros(shapes[k]) for k in KEYS}
    dp = ClientDpSettings(noise_multiplier=1.0, clip_norm=S, sample_rate=1.0, poisson=False)
    rounds, recorder = _rounds(4, dp, client_noise="distributed")
    assert rounds.distributed_noise and reconstruction_threshold(4, 0.67) == 3
    rounds._noise = None  # the server must not draw noise at all  # type: ignore[assignment]
    nodes = FakeNodes(updates, run_config=DISTRIBUTED)
    new_state = rounds.run_round(nodes, 1, reference)
    record, _ = recorder.records[0]
    assert record.client_dp == dp and not record.skipped
    assert record.attempt_log[0]["secure_aggregation"]["client_noise"] == "distributed"
    noise_on_sum = new_state["w"] * 4  # denominator: the 4 sampled (fixed-size sampling)
    assert noise_on_sum.std().item() == pytest.approx(S * (4 / 3) ** 0.5, rel=0.03)
    assert abs(noise_on_sum.mean().item()) < 0.08  # 5 sd of the mean of 20,000 draws


def test_a_noisy_sum_the_server_saw_is_spent_even_when_the_round_is_skipped():
    """Distributed noise: once the sum is unmasked the server has seen a client-level release;
    a round skipped afterwards (here: a non-finite sum) still writes its ledger event."""
    from server.round_record import RoundRecord
    from server.secure_aggregation import SecureRoundOutcome

    dp = ClientDpSettings(noise_multiplier=1.0, clip_norm=S, sample_rate=1.0, poisson=False)
    for noise, spent in (("distributed", True), ("server", False)):
        rounds, _ = _rounds(4, dp, client_noise=noise)
        record = RoundRecord(server_round=1, sampled=4,
                             clients=[{"node": f"n{i}"} for i in range(4)])
        broken = [np.full(SHAPES[k], np.nan, dtype=np.float32) for k in KEYS]
        assert rounds._mean(broken, record, GLOBAL, 3, SecureRoundOutcome()) is None
        assert record.skipped
        # server noise: the skipped round released nothing noisy (no model, no noisy mean)
        assert (record.client_dp == dp) is spent


def test_distributed_noise_needs_secure_aggregation_and_client_dp():
    for changes in ({"client-noise": "distributed"},
                    {"client-noise": "distributed", "client-dp": True},
                    {"client-noise": "distributed", "secure-aggregation": True}):
        with pytest.raises(ConfigError, match="client-noise"):
            RunConfig.from_mapping(changes)
    RunConfig.from_mapping({"client-noise": "distributed", "client-dp": True,
                            "secure-aggregation": True})


def test_node_refuses_a_mismatched_protocol():
    """A run that asks for SecAgg never sends a plaintext update, and the reverse."""
    msg = Message(RecordDict({"config": RoundInstruction(server_round=1).to_config_record()}),
                  dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={"secure-aggregation": True})
    with pytest.raises(RuntimeError, match="does not run the SecAgg"):
        secure_aggregation_mod(msg, context, lambda m, c: m)
    context.run_config = {"secure-aggregation": False}
    assert secure_aggregation_mod(msg, context, lambda m, c: m) is msg


@pytest.mark.parametrize("changes, key", [
    ({"aggregator": "median"}, "aggregator"),
    ({"short-round": "retry"}, "short-round"),
    ({"num-clients": 1}, "num-clients"),
    ({"num-clients": 3, "fraction-train": 0.5}, "fraction-train"),
    ({"num-clients": 2000}, "num-clients"),
    ({"secagg-threshold": 0.4}, "secagg-threshold"),
])
def test_incompatible_settings_are_refused(changes, key):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"secure-aggregation": True, **changes})
    assert key in str(err.value)


def test_setting_defaults_off():
    assert RunConfig().secure_aggregation is False
    assert Path(__file__).parent.parent.joinpath("docs", "secure-aggregation.md").is_file()
