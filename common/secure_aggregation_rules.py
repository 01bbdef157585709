"""Which run settings secure aggregation (SecAgg+) can work with, checked once at the edge.

SecAgg+ reveals only the sum of a round's updates, so nothing that needs an individual update
can run beside it, and it needs at least 2 nodes per round (docs/secure-aggregation.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.config_error import ConfigError

if TYPE_CHECKING:
    from common.run_config import RunConfig

# The mod-2^32 sum over 2^22 quantisation levels holds this many contributions.
MAX_SECAGG_CLIENTS = 1024


def _require(key: str, ok: bool, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def require_secure_aggregation(config: RunConfig) -> None:
    """ConfigError naming the first setting secure aggregation (or distributed noise) refuses."""
    _require("secagg-threshold", 0.5 < config.secagg_threshold <= 1,
             "must be in (0.5, 1]: the share of a round's sample needed to unmask the sum")
    _require("client-noise", config.client_noise in ("server", "distributed"),
             "must be server or distributed")
    _require("client-noise", config.client_noise == "server" or (
        config.secure_aggregation and config.client_dp),
             "distributed client-level noise needs client-dp=true and "
             "secure-aggregation=true (each node's share is hidden only inside the sum)")
    if not config.secure_aggregation:
        return
    _require("aggregator", config.aggregator == "mean",
             "secure aggregation reveals only the sum of updates: a robust aggregate "
             "(median, trimmed-mean) needs each update; use aggregator=mean")
    _require("short-round", config.short_round == "skip",
             "secure aggregation runs each round once: use short-round=skip")
    _require("num-clients", config.num_clients >= 2,
             "secure aggregation needs at least 2 clients per round")
    _require("fraction-train", config.client_sampling == "poisson"
             or int(config.num_clients * config.fraction_train) >= 2,
             "secure aggregation needs at least 2 sampled clients per round "
             "(num-clients x fraction-train >= 2)")
    _require("num-clients", config.num_clients <= MAX_SECAGG_CLIENTS,
             f"secure aggregation sums at most {MAX_SECAGG_CLIENTS} clients without overflow "
             "(modulus 2^32 over 2^22 quantisation levels)")
