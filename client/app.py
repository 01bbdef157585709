"""fedssl ClientApp: receives global weights, trains the SSL task under DP, replies with Δ.

Every reply carries a ConfigRecord "fedssl" with the node's status ("trained", "refused" or
"error"), its ledger id and its whole ledger (JSON entries), so the server's RUN_DIR ledger
holds each node's complete, verifiable chain.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from client import worker_cache
from client.dp_training import train_locally
from client.local_round import RoundOutput, choose_noise_multiplier, run_client_round
from client.message_timing import MessageTiming
from client.node_settings import NodeSettings, node_settings
from client.privacy_state import load_noise_multiplier, save_noise_multiplier
from common.local_data import DataFolderError
from common.privacy_ledger import LedgerError, PrivacyLedger
from common.run_config import ConfigError, RunConfig
from common.tasks import SslTask, get_task

app = ClientApp()
REPLY_KEY = "fedssl"


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round on this node's records (or a refusal / error status)."""
    timing = MessageTiming()
    round_config = msg.content["config"]
    with timing.phase("setup"):
        ready = _setup_or_error(msg, context)
    if isinstance(ready, Message):
        return ready
    config, node, ledger, task, records = ready
    with timing.phase("sigma"):
        sigma = load_noise_multiplier(context.state)
        if sigma is None:
            sigma = choose_noise_multiplier(config, len(records[0]))
            save_noise_multiplier(context.state, sigma)
    server_round = int(round_config["server-round"])
    # A retried attempt of a short round (short-round=retry) is a new release: fresh batches
    # and noise, and a new ledger entry for the same round.
    attempt = int(round_config.get("attempt", 1))
    # "round": ledger and accounting, model build ("build"), DP-SGD ("train"), update clipping
    with timing.phase("round"):
        output = run_client_round(
            config=config,
            task=dataclasses.replace(task, build_model=timing.timed("build", task.build_model)),
            global_state=msg.content["arrays"].to_torch_state_dict(),
            records=records,
            node=node,
            ledger=ledger,
            noise_multiplier=sigma,
            run_id=str(context.run_id),
            server_round=server_round,
            seed=(config.seed * 1_000_003 + server_round * 1_009 + (attempt - 1) * 100_003
                  + (node.partition_id or 0)),
            train=timing.timed("train", train_locally),
        )
    if output.refusal:
        log(30, "fedssl node %s refuses round %d: %s", node.node_id, server_round,
            output.refusal)
    with timing.phase("reply"):
        reply_msg = _reply(msg, status="refused" if output.refusal else "trained",
                           reason=output.refusal, node=node, ledger=ledger, output=output)
    timing.write(node=node.node_id, round=server_round, records=len(records[0]),
                 local_steps=config.local_steps)
    return reply_msg


def _setup_or_error(
    msg: Message, context: Context
) -> Message | tuple[RunConfig, NodeSettings, PrivacyLedger, SslTask, tuple[Any, ...]]:
    """The node's settings, ledger, task and records; or the "error" reply when unusable."""
    round_config = msg.content["config"]
    node: NodeSettings | None = None
    try:
        config = RunConfig.from_mapping(context.run_config)
        node = node_settings(context.node_config, context.node_id, config,
                             round_config.get("sim-state-dir"))
        ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)
        task = get_task(config.task)
        _check_public_inputs(task, config, round_config.get("public-inputs-sha256"))
        records = _node_records(task, config, node)
    except (ConfigError, LedgerError, DataFolderError) as err:
        reason = f"data-dir {err.kind}: {err}" if isinstance(err, DataFolderError) else str(err)
        log(40, "fedssl node cannot take part: %s", reason)
        return _reply(msg, status="error", reason=reason, node=node)
    return config, node, ledger, task, records


def _reply(
    msg: Message, status: str, reason: str = "", node: NodeSettings | None = None,
    ledger: PrivacyLedger | None = None, output: RoundOutput | None = None,
) -> Message:
    info = ConfigRecord({
        "status": status,
        "reason": reason,
        "node": node.node_id if node else "",
        "ledger": [e.to_json() for e in ledger.entries()] if ledger else [],
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
