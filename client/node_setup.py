"""What a node needs before a round: its settings, ledger, task and records; or the public
reason it cannot take part (the "error" reply, which still carries its ledger)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import Context
from flwr.common import log

from client import worker_cache
from client.node_reply import node_reply
from client.node_settings import NodeSettings, node_settings
from common.data.data_folders import DataFolderError
from common.privacy.ledger import LedgerError, PrivacyLedger
from common.protocol import STATUS_ERROR, ClientReply, RoundInstruction
from common.run_config import ConfigError, RunConfig
from common.tasks import SslTask, get_task


@dataclass(frozen=True)
class NodeSetup:
    """A node ready to train: the run's settings, its own, its ledger, the task, its records."""

    config: RunConfig
    node: NodeSettings
    ledger: PrivacyLedger
    task: SslTask
    records: tuple[Any, ...]


def setup_node(instruction: RoundInstruction, context: Context, run_id: str
               ) -> NodeSetup | ClientReply:
    """The node's settings, ledger, task and records; or the "error" reply when unusable."""
    node: NodeSettings | None = None
    ledger: PrivacyLedger | None = None
    try:
        config, node = run_settings(context, instruction.sim_state_dir)
        ledger = PrivacyLedger.open(node.ledger_path, owner=node.node_id)
        if config.reproducible_noise and not node.simulated:
            raise ConfigError("reproducible-noise", "a deployed node never draws its DP noise "
                              "from the run seed (the server knows it: no DP guarantee); "
                              "this switch is for simulations only")
        task = get_task(config.task)
        check_public_inputs(task, config, instruction.public_inputs_sha256)
        records = node_records(task, config, node)
    except (ConfigError, LedgerError, DataFolderError) as err:
        log(40, "fedssl node cannot take part: %s", err)
        return node_reply(status=STATUS_ERROR, reason=public_reason(err), node=node,
                          ledger=ledger, run_id=run_id)
    if node.delta > 1 / max(len(records[0]), 1):
        log(30, "fedssl node %s: delta %g is above 1/n = 1/%d: a guarantee that fails with "
            "probability delta could expose a whole record", node.node_id, node.delta,
            len(records[0]))
    return NodeSetup(config, node, ledger, task, records)


def public_reason(err: Exception) -> str:
    """What an error reply says: the setting at fault, or only the kind of data or ledger
    problem. File names, line numbers and record sizes stay in the node's own log."""
    if isinstance(err, DataFolderError):
        return f"data-dir {err.kind} (details in the node's log)"
    if isinstance(err, LedgerError):
        return "cannot use privacy ledger (details in the node's log)"
    return str(err)  # ConfigError: names a setting and its rule, never data


def run_settings(context: Context, sim_state_dir: str | None
                 ) -> tuple[RunConfig, NodeSettings]:
    """The run's settings and this node's own (ConfigError when either is unusable)."""
    config = RunConfig.from_mapping(context.run_config)
    return config, node_settings(context.node_config, context.node_id, config, sim_state_dir)


def node_run_id(announced: str, context: Context) -> str:
    """The fedssl run a message belongs to: the id the server keeps in its RUN_DIR ledger
    (stable across server restarts), else Flower's run id."""
    value = announced.strip()
    return value if value.isalnum() and len(value) <= 64 else str(context.run_id)


def check_public_inputs(task: SslTask, config: RunConfig, expected: str | None) -> None:
    """Refuse to train with public inputs (vocabulary, checkpoint, public corpus) other than
    the server's."""
    own = task.public_inputs_sha256(config)
    if expected is not None and str(expected) != own:
        raise ConfigError("tokenizer", f"this node's public inputs (sha256 {own[:12]}…) differ "
                          f"from the server's ({str(expected)[:12]}…): install the same "
                          "fedssl version, and hold the same tokenizer file, init checkpoint "
                          "and public-corpus as the server")


def node_records(task: SslTask, config: RunConfig, node: NodeSettings) -> tuple[Any, ...]:
    """The node's own records: its data folder when it has one, else its simulated partition.

    The one way a node's records reach training, in deployment and simulation alike; both
    branches de-identify with the node's own `deid` engine before tokenizing.
    """
    if node.data_dir is not None:
        return task.folder_tensors(config, node.data_dir, node.deid)
    assert node.partition_id is not None  # node_settings requires one of the two
    return worker_cache.partition_records(task, config, node.partition_id, node.deid)
