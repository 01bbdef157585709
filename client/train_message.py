"""A node's work for one message, as plain functions of decoded inputs: a training round
(`train_round`) and the ledger-sync answer (`answer_ledger_sync`). client/app.py decodes the
Flower message, calls one of them and encodes the `ClientReply` they return.

A training round is timed phase by phase (client/message_timing.py; the timings stay on the
node): "setup", then "round" (ledger, σ and accounting, model "build", DP-SGD "train",
clipping), then "reply".
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable

from flwr.app import Context
from flwr.common import log

from client.dp_training import train_locally
from client.local_round import dp_generator, round_seed, run_client_round
from client.message_timing import MessageTiming
from client.node_reply import node_reply
from client.node_settings import NodeSettings
from client.node_setup import node_run_id, public_reason, run_settings, setup_node
from common.model_updates import State
from common.privacy.ledger import LedgerError, PrivacyLedger, unconfirmed
from common.protocol import (
    STATUS_ERROR,
    STATUS_REFUSED,
    STATUS_TRAINED,
    ClientReply,
    LedgerSyncAnswer,
    LedgerSyncQuery,
    RoundInstruction,
)
from common.run_config import ConfigError


def train_round(instruction: RoundInstruction, global_state: Callable[[], State],
                context: Context) -> ClientReply:
    """One federated round on this node's records (or a refusal / error status).

    `global_state` reads the global weights the message carries, when the round needs them.
    """
    timing = MessageTiming()
    run_id = node_run_id(instruction.run_id, context)
    with timing.phase("setup"):
        ready = setup_node(instruction, context, run_id)
    if isinstance(ready, ClientReply):
        return ready
    config, node, ledger, task, records = (ready.config, ready.node, ready.ledger, ready.task,
                                           ready.records)
    server_round = instruction.round
    seed = round_seed(config.seed, server_round, instruction.attempt_number,
                      node.partition_id)
    generator = dp_generator(config, seed)
    try:
        # "round": ledger, σ and accounting, model build ("build"), DP-SGD ("train"), clipping
        with timing.phase("round"):
            output = run_client_round(
                config=config,
                task=dataclasses.replace(task,
                                         build_model=timing.timed("build", task.build_model)),
                global_state=global_state(),
                records=records, node=node, ledger=ledger, run_id=run_id,
                server_round=server_round, seed=seed, dp_generator=generator,
                train=timing.timed("train", train_locally),
            )
    except Exception as err:  # noqa: BLE001 - the reply must still carry the ledger
        log(40, "fedssl node %s: round %d failed:\n%s", node.node_id, server_round,
            traceback.format_exc())
        # Did this attempt record its spend before failing? The server counts on it.
        spent = any(e.round == server_round and not e.is_confirmation
                    for e in unconfirmed(ledger.run_entries(node.node_id, run_id)))
        # Only the exception's type leaves the node: its text could describe the data.
        return node_reply(status=STATUS_ERROR, reason=f"training failed: {type(err).__name__} "
                          "(details in the node's log)", node=node, ledger=ledger,
                          run_id=run_id, spent=spent)
    if output.refusal:
        log(30, "fedssl node %s refuses round %d: %s", node.node_id, server_round,
            output.refusal)
    with timing.phase("reply"):
        reply = node_reply(status=STATUS_REFUSED if output.refusal else STATUS_TRAINED,
                           reason=output.refusal, node=node, ledger=ledger, run_id=run_id,
                           output=output)
    timing.write(node=node.node_id, round=server_round, records=len(records[0]),
                 local_steps=config.local_steps)
    return reply


def answer_ledger_sync(request: LedgerSyncQuery | None,
                       context: Context) -> ClientReply | LedgerSyncAnswer:
    """`ledger-sync`: this run's ledger entries, without training (or an error status)."""
    if request is None:
        return ClientReply(status=STATUS_ERROR, reason="unknown query")
    node: NodeSettings | None = None
    try:
        _, node = run_settings(context, request.sim_state_dir)
        ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)
    except (ConfigError, LedgerError) as err:
        log(40, "fedssl node cannot answer the ledger sync: %s", err)
        return node_reply(status=STATUS_ERROR, reason=public_reason(err), node=node)
    run_id = node_run_id(request.run_id, context)
    return LedgerSyncAnswer(node=node.node_id,
                            ledger=[e.to_json() for e in ledger.run_entries(node.node_id,
                                                                            run_id)])

