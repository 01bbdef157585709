"""The server's side of the privacy ledger (RUN_DIR/ledger.sqlite).

Each round, before the new global model is saved or sent anywhere: keep every ledger entry
the nodes sent (verbatim, so the audit can check each node's own hash chain), then record the
round's client-level DP release, if any, as the federation's own event.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from flwr.common import log

from common.privacy.accounting import ACCOUNTANT, ADD_REMOVE, epsilon_of
from common.privacy.ledger import (
    CLIENT_LEVEL,
    FEDERATION_NODE,
    SECRET_NOISE,
    SEEDED_NOISE,
    LedgerEntry,
    PrivacyLedger,
)
from common.run_layout import LEDGER_FILE, RUN_OWNER
from server.round_record import RoundRecord


def open_run_ledger(run_dir: Path) -> tuple[PrivacyLedger, str]:
    """The run's ledger (never reset: privacy records are not thrown away) and the run's id.

    The id is drawn once, when the ledger is created, and kept in it: every ledger entry of
    this run carries it, on the server and in the nodes' own ledgers, across server restarts
    (each restart is a new Flower run, but the same fedssl run, continuing the same RUN_DIR).
    """
    ledger = PrivacyLedger.open(run_dir / LEDGER_FILE, owner=RUN_OWNER)
    return ledger, ledger.meta("run-id", secrets.token_hex(16))


def record_round(
    ledger: PrivacyLedger, record: RoundRecord, run_id: str, delta: float,
    reproducible_noise: bool = False,
) -> LedgerEntry | None:
    """Store the round's received entries, then its client-level event (returned, if any).

    Client-level ε is stated for add/remove-one client (the denominator is fixed in advance),
    with the same PLD accountant as record-level claims.
    """
    for entry in record.ledger:
        if entry.computed_hash() != entry.hash:
            # Kept anyway (the audit names it); dropping it could hide a node's spend.
            log(30, "node %s sent a ledger entry whose hash does not match its content",
                entry.node_id)
    ledger.add_many(record.ledger)
    dp = record.client_dp
    if dp is None:
        return None
    history = ledger.history(FEDERATION_NODE, CLIENT_LEVEL)
    return ledger.append(
        run_id=run_id, round=record.server_round, node_id=FEDERATION_NODE,
        guarantee=CLIENT_LEVEL, mechanism=dp.mechanism, noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate, steps=1, delta=delta, accountant=ACCOUNTANT,
        epsilon=epsilon_of([*history, (dp.noise_multiplier, dp.sample_rate, 1)], delta,
                           ADD_REMOVE),
        max_epsilon=0.0, relation=ADD_REMOVE,
        noise=SEEDED_NOISE if reproducible_noise else SECRET_NOISE,
    )
