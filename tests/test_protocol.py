"""The wire format (common/protocol): each type round-trips, and its wire shape is pinned, so
that a change to a key fails here before a node and a server of different versions disagree."""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from common.protocol import (
    STATUS_ERROR,
    STATUS_LEDGER,
    STATUS_REFUSED,
    STATUS_TRAINED,
    ClientReply,
    LedgerSyncAnswer,
    LedgerSyncQuery,
    RoundInstruction,
    canonical_content,
)

METRICS = {"num-examples": 100, "epsilon": 1.0, "noise-multiplier": 1.0, "sample-rate": 0.1,
           "local-steps": 3, "update-norm": 0.5, "delta": 1e-5, "max-epsilon": 8.0,
           "partition-id": 2}


def test_round_instruction_wire_shape_and_round_trip():
    run = RoundInstruction(run_id="abc", task="mlm", sim_state_dir="/s",
                           public_inputs_sha256="f00")
    # What the server hands Flower's strategy once per run: no round, no attempt yet.
    assert dict(run.to_config_record()) == {"run-id": "abc", "task": "mlm",
                                            "sim-state-dir": "/s", "public-inputs-sha256": "f00"}
    sent = dataclasses.replace(run, server_round=4, attempt=2)
    record = sent.to_config_record()
    assert dict(record) == {**dict(run.to_config_record()), "attempt": 2, "server-round": 4}
    assert RoundInstruction.from_config_record(record) == sent
    content = RecordDict({"config": record, "arrays": ArrayRecord({"w": torch.zeros(1)})})
    assert RoundInstruction.from_record_dict(content).round == 4
    assert RoundInstruction.round_of(content) == 4 and RoundInstruction.round_of(RecordDict()) is None


def test_a_bare_instruction_reads_as_attempt_one_and_has_no_round():
    bare = RoundInstruction.from_config_record(ConfigRecord({"server-round": 1}))
    assert (bare.round, bare.attempt_number, bare.run_id, bare.sim_state_dir,
            bare.public_inputs_sha256) == (1, 1, "", None, None)
    try:
        _ = RoundInstruction().round
    except KeyError as err:
        assert "server-round" in str(err)
    else:
        raise AssertionError("an instruction without a round must not pass for one")


def test_client_reply_wire_shape_and_parse():
    update = ArrayRecord({"w": torch.ones(2)})
    sent = ClientReply(status=STATUS_TRAINED, node="h1", ledger=["{}"], metrics=METRICS,
                       arrays=update)
    content = sent.to_record_dict()
    assert sorted(content) == ["arrays", "fedssl", "metrics"]
    assert dict(content["fedssl"]) == {"status": "trained", "reason": "", "node": "h1",
                                       "ledger": ["{}"], "spent": False}
    assert ClientReply.parse(content) == sent
    refused = ClientReply(status=STATUS_REFUSED, reason="budget", node="h1",
                          metrics={"epsilon": 1.0}).to_record_dict()
    assert sorted(refused) == ["fedssl", "metrics"]
    parsed = ClientReply.parse(refused)
    assert isinstance(parsed, ClientReply) and parsed.metrics is None  # only trained ones used
    error = ClientReply(status=STATUS_ERROR, reason="x", spent=True).to_record_dict()
    assert sorted(error) == ["fedssl"] and ClientReply.parse(error).spent is True
    assert ClientReply.parse(RecordDict()) == "not a fedssl reply (no ledger)"
    canonical = canonical_content(update, METRICS)
    assert dict(canonical["metrics"]) == {"num-examples": 100, "epsilon": 1.0}


def test_ledger_sync_query_and_answer():
    query = LedgerSyncQuery(run_id="abc", sim_state_dir="/s")
    content = query.to_record_dict()
    assert dict(content["fedssl-query"]) == {"query": "ledger-sync", "run-id": "abc",
                                             "sim-state-dir": "/s"}
    assert LedgerSyncQuery.from_record_dict(content) == query
    other = RecordDict({"fedssl-query": ConfigRecord({"query": "other"})})
    assert LedgerSyncQuery.from_record_dict(other) is None
    answer = LedgerSyncAnswer(node="h1", ledger=["{}"])
    wire = answer.to_record_dict()
    assert dict(wire["fedssl"])["status"] == STATUS_LEDGER
    assert LedgerSyncAnswer.from_record_dict(wire) == answer
    # A training reply is no ledger answer (and a ledger answer is no training reply).
    trained = ClientReply(status=STATUS_TRAINED).to_record_dict()
    assert LedgerSyncAnswer.from_record_dict(trained) is None
    assert ClientReply.parse(wire) == "malformed fedssl record: unknown status 'ledger'"
