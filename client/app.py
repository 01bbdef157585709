"""fedssl ClientApp: receives global weights, trains the SSL task under DP, replies with Δ."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_round import run_client_round
from client.privacy_state import load_privacy_state, save_privacy_state
from common.run_config import ConfigError, RunConfig
from common.tasks import get_task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round on this node's records."""
    config = RunConfig.from_mapping(context.run_config)
    task = get_task(config.task)
    partition_id = _partition_id(context, config)
    server_round = int(msg.content["config"]["server-round"])
    records = task.client_tensors(config, partition_id)
    privacy = load_privacy_state(context.state)
    output = run_client_round(
        config=config,
        task=task,
        global_state=msg.content["arrays"].to_torch_state_dict(),
        records=records,
        privacy=privacy,
        persist=lambda p: save_privacy_state(context.state, p),
        seed=config.seed * 1_000_003 + server_round * 1_009 + partition_id,
    )
    metrics = MetricRecord({**output.metrics, "partition-id": partition_id})
    content = RecordDict({"arrays": ArrayRecord(output.update), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def _partition_id(context: Context, config: RunConfig) -> int:
    """This simulated node's partition, checked against the run's client count."""
    node_config = context.node_config
    if "partition-id" not in node_config:
        raise ConfigError("partition-id", "node config has no partition-id (simulation only)")
    partitions = int(node_config.get("num-partitions", config.num_clients))
    if partitions != config.num_clients:
        raise ConfigError(
            "num-clients",
            f"run config says {config.num_clients} clients but the federation has "
            f"{partitions} SuperNodes; pass --federation-config "
            f"'num-supernodes={config.num_clients}' to flwr run",
        )
    return int(node_config["partition-id"])
