"""fedssl ClientApp: receives global weights, trains the SSL task under DP, replies with Δ.

Every reply (trained, refused or error) carries a ConfigRecord "fedssl" with the node's status,
its ledger id and its ledger entries of this run (the first one's `prev_hash` commits to the
node's earlier chain, which stays on the node), so the server's RUN_DIR ledger can verify this
run's spend. A query message (`ledger-sync`, sent by the server after the last round) returns
the same, without training: spend whose reply was lost still reaches the run's reports.

What leaves the node, in full: Δ (clipped, DP-SGD output), its record count and the DP
parameters derived from it (public under the replace-one relation ε is stated for), its ε
claims and budget, and this run's ledger entries (timestamps to the hour). Not: the training
loss (unless the simulation switch `release-train-loss` is on), timings, or the DP seed.
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from client import worker_cache
from client.dp_training import train_locally
from client.local_round import RoundOutput, run_client_round
from client.message_timing import MessageTiming
from client.node_settings import NodeSettings, node_settings
from common.data.data_folders import DataFolderError
from common.privacy.dp_randomness import secret_generator, seeded_generator
from common.privacy.ledger import LedgerError, PrivacyLedger, unconfirmed
from common.protocol import (
    LEDGER_SYNC,
    QUERY_KEY,
    REPLY_KEY,
    STATUS_ERROR,
    STATUS_LEDGER,
    STATUS_REFUSED,
    STATUS_TRAINED,
)
from common.run_config import ConfigError, RunConfig
from common.tasks import SslTask, get_task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round on this node's records (or a refusal / error status)."""
    timing = MessageTiming()
    round_config = msg.content["config"]
    run_id = _run_id(round_config, context)
    with timing.phase("setup"):
        ready = _setup_or_error(msg, context)
    if isinstance(ready, Message):
        return ready
    config, node, ledger, task, records = ready
    server_round = int(round_config["server-round"])
    # A retried attempt of a short round (short-round=retry) is a new release: fresh masks,
    # and a new ledger entry for the same round. The seed is public (masks, augmentation).
    attempt = int(round_config.get("attempt", 1))
    seed = (config.seed * 1_000_003 + server_round * 1_009 + (attempt - 1) * 100_003
            + (node.partition_id or 0))
    # Poisson masks and noise: secret, unless the simulation switch makes them reproducible.
    dp_generator = seeded_generator(seed + 2) if config.reproducible_noise \
        else secret_generator()
    try:
        # "round": ledger, σ and accounting, model build ("build"), DP-SGD ("train"), clipping
        with timing.phase("round"):
            output = run_client_round(
                config=config,
                task=dataclasses.replace(task,
                                         build_model=timing.timed("build", task.build_model)),
                global_state=msg.content["arrays"].to_torch_state_dict(),
                records=records, node=node, ledger=ledger, run_id=run_id,
                server_round=server_round, seed=seed, dp_generator=dp_generator,
                train=timing.timed("train", train_locally),
            )
    except Exception as err:  # noqa: BLE001 - the reply must still carry the ledger
        log(40, "fedssl node %s: round %d failed:\n%s", node.node_id, server_round,
            traceback.format_exc())
        # Did this attempt record its spend before failing? The server counts on it.
        spent = any(e.round == server_round and not e.is_confirmation
                    for e in unconfirmed(ledger.run_entries(node.node_id, run_id)))
        # Only the exception's type leaves the node: its text could describe the data.
        return _reply(msg, status=STATUS_ERROR, reason=f"training failed: {type(err).__name__} "
                      "(details in the node's log)", node=node, ledger=ledger, run_id=run_id,
                      spent=spent)
    if output.refusal:
        log(30, "fedssl node %s refuses round %d: %s", node.node_id, server_round,
            output.refusal)
    with timing.phase("reply"):
        reply_msg = _reply(msg, status=STATUS_REFUSED if output.refusal else STATUS_TRAINED,
                           reason=output.refusal, node=node, ledger=ledger, run_id=run_id,
                           output=output)
    timing.write(node=node.node_id, round=server_round, records=len(records[0]),
                 local_steps=config.local_steps)
    return reply_msg


@app.query()
def query(msg: Message, context: Context) -> Message:
    """`ledger-sync`: this run's ledger entries, without training (or an error status)."""
    request = msg.content.config_records.get(QUERY_KEY)
    if request is None or request.get("query") != LEDGER_SYNC:
        return _reply(msg, status=STATUS_ERROR, reason="unknown query")
    node: NodeSettings | None = None
    try:
        _, node = _settings(context, request)
        ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)
    except (ConfigError, LedgerError) as err:
        log(40, "fedssl node cannot answer the ledger sync: %s", err)
        return _reply(msg, status=STATUS_ERROR, reason=_public_reason(err), node=node)
    return _reply(msg, status=STATUS_LEDGER, node=node, ledger=ledger,
                  run_id=_run_id(request, context))


def _setup_or_error(
    msg: Message, context: Context
) -> Message | tuple[RunConfig, NodeSettings, PrivacyLedger, SslTask, tuple[Any, ...]]:
    """The node's settings, ledger, task and records; or the "error" reply when unusable."""
    round_config = msg.content["config"]
    node: NodeSettings | None = None
    ledger: PrivacyLedger | None = None
    try:
        config, node = _settings(context, round_config)
        ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)
        if config.reproducible_noise and not node.simulated:
            raise ConfigError("reproducible-noise", "a deployed node never draws its DP noise "
                              "from the run seed (the server knows it: no DP guarantee); "
                              "this switch is for simulations only")
        task = get_task(config.task)
        _check_public_inputs(task, config, round_config.get("public-inputs-sha256"))
        records = _node_records(task, config, node)
    except (ConfigError, LedgerError, DataFolderError) as err:
        log(40, "fedssl node cannot take part: %s", err)
        return _reply(msg, status=STATUS_ERROR, reason=_public_reason(err), node=node,
                      ledger=ledger, run_id=_run_id(round_config, context))
    if node.delta > 1 / max(len(records[0]), 1):
        log(30, "fedssl node %s: delta %g is above 1/n = 1/%d: a guarantee that fails with "
            "probability delta could expose a whole record", node.node_id, node.delta,
            len(records[0]))
    return config, node, ledger, task, records


def _public_reason(err: Exception) -> str:
    """What an error reply says: the setting at fault, or only the kind of data or ledger
    problem. File names, line numbers and record sizes stay in the node's own log."""
    if isinstance(err, DataFolderError):
        return f"data-dir {err.kind} (details in the node's log)"
    if isinstance(err, LedgerError):
        return "cannot use privacy ledger (details in the node's log)"
    return str(err)  # ConfigError: names a setting and its rule, never data


def _settings(context: Context, message_config: ConfigRecord) -> tuple[RunConfig, NodeSettings]:
    """The run's settings and this node's own (ConfigError when either is unusable)."""
    config = RunConfig.from_mapping(context.run_config)
    return config, node_settings(context.node_config, context.node_id, config,
                                 message_config.get("sim-state-dir"))


def _run_id(config: ConfigRecord, context: Context) -> str:
    """The fedssl run this message belongs to: the id the server keeps in its RUN_DIR ledger
    (stable across server restarts), else Flower's run id."""
    value = str(config.get("run-id", "")).strip()
    return value if value.isalnum() and len(value) <= 64 else str(context.run_id)


def _reply(
    msg: Message, status: str, reason: str = "", node: NodeSettings | None = None,
    ledger: PrivacyLedger | None = None, run_id: str = "", output: RoundOutput | None = None,
    spent: bool = False,
) -> Message:
    entries = ledger.run_entries(node.node_id, run_id) if ledger and node else []
    info = ConfigRecord({
        "status": status,
        "reason": reason,
        "node": node.node_id if node else "",
        "ledger": [e.to_json() for e in entries],
        "spent": spent,  # an error reply whose round's spend was recorded before it failed
    })
    content = RecordDict({REPLY_KEY: info})
    if output is not None:
        extra = {"partition-id": node.partition_id} if node and node.partition_id is not None \
            else {}
        content["metrics"] = MetricRecord({**output.metrics, **extra})
        if output.update is not None:
            content["arrays"] = ArrayRecord(output.update)
    return Message(content=content, reply_to=msg)


def _check_public_inputs(task: SslTask, config: RunConfig, expected: object) -> None:
    """Refuse to train with public inputs (vocabulary) other than the server's."""
    own = task.public_inputs_sha256(config)
    if expected is not None and str(expected) != own:
        raise ConfigError("tokenizer", f"this node's public inputs (sha256 {own[:12]}…) differ "
                          f"from the server's ({str(expected)[:12]}…): install the same "
                          "fedssl version or pass the same tokenizer file")


def _node_records(task: SslTask, config: RunConfig, node: NodeSettings) -> tuple[Any, ...]:
    """The node's own records: its data folder when it has one, else its simulated partition."""
    if node.data_dir is not None:
        return task.folder_tensors(config, node.data_dir)
    assert node.partition_id is not None  # node_settings requires one of the two
    return worker_cache.partition_records(task, config, node.partition_id)
