"""What a node decides for itself: its name, where its durable state lives, and its budget.

These come from the node's own config (`flower-supernode --node-config "..."`), never from the
server: the run config may only *lower* a node's budget (`client-max-epsilon`), and it cannot
change the δ a node accounts at. Simulated nodes have no node config of their own, so they
keep their state under the run's `sim-state-dir` (default RUN_DIR/nodes), one folder per
partition.

Node config keys: `data-dir` (the node's private records; required outside simulation),
`state-dir` (folder for ledger.sqlite; required outside simulation),
`node-name` (the node's id in ledgers; default `node-<flower node id>`; `federation` is
reserved for the server's own client-level events), `max-epsilon` (record-level budget over
the node's lifetime; absent or 0 = none), `delta` (δ the node calibrates, accounts and is
budgeted at; default min(run δ, 1e-5)), `deid` (de-identify the node's text records before
they are tokenised: "off", "presidio" or "philter"; default "off", and for a simulated node
without the key the run's `sim-deid`, which never reaches a deployed node).

The node's cap is the smallest of its own `max-epsilon`, the run's `client-max-epsilon` and,
when σ is calibrated (`noise-multiplier=auto`), the run's `target-epsilon`: a node never
spends past the target it was asked to calibrate to, also not through retried or redone
rounds, and a simulated node always has a budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.deidentification import DEID_OFF, check_engine
from common.privacy.ledger import FEDERATION_NODE
from common.run_config import ConfigError, RunConfig
from common.run_layout import LEDGER_FILE

DEFAULT_NODE_DELTA = 1e-5


@dataclass(frozen=True)
class NodeSettings:
    """A node's identity, state folder and record-level privacy budget."""

    node_id: str
    state_dir: Path
    max_epsilon: float  # the cap (see the module doc); 0 = none
    delta: float
    partition_id: int | None  # simulation only
    data_dir: Path | None = None  # deployment: the node's own records
    deid: str = DEID_OFF  # de-identification engine for its text records ("off": none)

    @property
    def simulated(self) -> bool:
        """A simulated node (a partition, no data folder of its own): only these honour the
        simulation switches `reproducible-noise` and `release-train-loss`."""
        return self.partition_id is not None and self.data_dir is None

    @property
    def ledger_path(self) -> Path:
        """The node's own durable privacy ledger."""
        return self.state_dir / LEDGER_FILE


def node_settings(
    node_config: Mapping[str, Any], flower_node_id: int, config: RunConfig,
    sim_state_dir: str | None,
) -> NodeSettings:
    """Resolve a node's settings; ConfigError (naming the node-config key) if impossible.

    `sim_state_dir` is the simulation state root the server announced (absolute), used only
    by simulated nodes (those with a `partition-id`).
    """
    partition = _partition_id(node_config, config)
    if "state-dir" in node_config:
        state_dir = Path(str(node_config["state-dir"])).expanduser().resolve()
    elif partition is not None and sim_state_dir:
        state_dir = Path(sim_state_dir) / f"partition-{partition}"
    else:
        raise ConfigError("state-dir", "node config has no state-dir: a node needs a folder "
                          "for its durable privacy ledger (--node-config \"state-dir=...\")")
    data_dir = None
    if "data-dir" in node_config:
        data_dir = Path(str(node_config["data-dir"])).expanduser().resolve()
    elif partition is None:
        raise ConfigError("data-dir", "node config has no data-dir: a deployed node trains on "
                          "the records in its own folder (--node-config \"data-dir=...\")")
    default_name = f"partition-{partition}" if partition is not None else f"node-{flower_node_id}"
    node_id = str(node_config.get("node-name", default_name)).strip()
    if not node_id:
        raise ConfigError("node-name", "must not be empty")
    if node_id == FEDERATION_NODE:
        raise ConfigError("node-name", f"'{FEDERATION_NODE}' is reserved for the server's "
                          "client-level DP events; choose another name")
    own_budget = _number(node_config, "max-epsilon", 0.0)
    target = config.target_epsilon if config.fixed_noise_multiplier is None else 0.0
    budgets = [b for b in (own_budget, config.client_max_epsilon, target) if b > 0]
    delta = _number(node_config, "delta", min(config.delta, DEFAULT_NODE_DELTA))
    if not 0 < delta < 1:
        raise ConfigError("delta", f"node config delta must be in (0, 1), got {delta}")
    return NodeSettings(
        node_id=node_id,
        state_dir=state_dir,
        max_epsilon=min(budgets, default=0.0),
        delta=delta,
        partition_id=partition,
        data_dir=data_dir,
        deid=_deid(node_config, config, simulated=partition is not None and data_dir is None),
    )


def _deid(node_config: Mapping[str, Any], config: RunConfig, simulated: bool) -> str:
    """The node's own `deid`; a simulated node without one takes the run's `sim-deid` (a
    deployed node never takes anything from the run here: it decides, like its budget)."""
    if "deid" in node_config:
        return check_engine(node_config["deid"], "deid")
    return config.sim_deid if simulated else DEID_OFF


def _number(node_config: Mapping[str, Any], key: str, default: float) -> float:
    if key not in node_config:
        return default
    try:
        value = float(node_config[key])
    except (TypeError, ValueError):
        raise ConfigError(key, f"node config {key} must be a number, "
                          f"got {node_config[key]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(key, f"node config {key} must be a finite number >= 0")
    return value


def _partition_id(node_config: Mapping[str, Any], config: RunConfig) -> int | None:
    """The simulated node's partition (None in deployment), checked against num-clients."""
    if "partition-id" not in node_config:
        return None
    partitions = int(node_config.get("num-partitions", config.num_clients))
    if partitions != config.num_clients:
        raise ConfigError(
            "num-clients",
            f"run config says {config.num_clients} clients but the federation has "
            f"{partitions} SuperNodes; pass --federation-config "
            f"'num-supernodes={config.num_clients}' to flwr run",
        )
    return int(node_config["partition-id"])
