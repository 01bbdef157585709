"""What the reports call each downstream arm; the federated arms' names say what is true of the run.

"SSL pretrained (federated, DP)" on a run without DP noise (noise-multiplier = 0, ε = ∞), or
with reproducible noise (no DP guarantee), would claim a privacy the run did not have. So the
two arms that start from the federated model get a privacy tag built from the run's privacy
section (server/privacy_summary.py, the ledger), once the ledger is known: `relabel_arms` in
server/run_report.py's summary. The evaluation stage itself names them plainly "(federated)".
Plain module (no torch): the report imports it.
"""

from __future__ import annotations

import math
from typing import Any

# The arms that start from the federated model: key -> label template ({} = privacy tag).
FEDERATED_ARMS = {
    "finetuned": "SSL pretrained ({}) + fine-tune",
    "probe": "SSL encoder ({}), linear probe",
}
PLAIN_TAG = "federated"


def federated_label(key: str, tag: str = PLAIN_TAG) -> str:
    """The label of federated arm `key` with privacy tag `tag`."""
    return FEDERATED_ARMS[key].format(tag)


def privacy_tag(privacy: dict[str, Any]) -> str:
    """"federated, DP ε=8", "federated, no DP noise", "federated, NO DP guarantee…", from the
    run's privacy section: record-level ε is the largest node's at the run's δ ("≥" where the
    server may not have seen all spend), plus client-level ε when the federation added noise."""
    clients = privacy.get("clients", [])
    if not clients and not privacy.get("unknown_nodes"):
        return "no federated training"  # e.g. num-rounds = 0: the start model only
    epsilon = float(privacy["max_epsilon"])
    if math.isinf(epsilon) or (clients and all(c["noise_multiplier"] == 0 for c in clients)):
        tag = "federated, no DP noise"
    elif not privacy["dp_guarantee"]:
        tag = "federated, NO DP guarantee: reproducible noise"
    else:
        bound = "≥" if privacy["max_epsilon_lower_bound"] else "="
        tag = f"federated, DP ε{bound}{epsilon:.3g}"
    level = privacy.get("client_level")
    if level is not None:
        tag += f", client-level ε={float(level['epsilon']):.3g}"
    return tag


def relabel_arms(arms: list[list[str]], privacy: dict[str, Any]) -> list[list[str]]:
    """`[key, label]` pairs with the federated arms' labels carrying the run's privacy tag."""
    tag = privacy_tag(privacy)
    return [[key, federated_label(key, tag) if key in FEDERATED_ARMS else label]
            for key, label in arms]
