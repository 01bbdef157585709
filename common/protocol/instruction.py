"""The round instruction: what a train message tells a node about its round.

A train message's content is Flower's FedAvg shape: the global weights under ARRAYS_KEY and
this instruction, as a ConfigRecord, under CONFIG_KEY. The server fixes the run's part once
(server/federation_setup.py); the strategy adds the round and attempt of every message it
sends (server/update_fedavg.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from common.protocol.keys import (
    ARRAYS_KEY,
    ATTEMPT,
    CONFIG_KEY,
    PUBLIC_INPUTS_SHA256,
    RUN_ID,
    SERVER_ROUND,
    SIM_STATE_DIR,
    TASK,
)


@dataclass(frozen=True)
class RoundInstruction:
    """The ConfigRecord of a train message."""

    run_id: str = ""  # the server's RUN_DIR ledger run id (nodes check it, server/run_ledger.py)
    task: str = ""
    sim_state_dir: str | None = None  # simulation: the root of simulated nodes' state
    public_inputs_sha256: str | None = None  # None: nothing to compare with
    server_round: int | None = None  # None until the strategy sends the round
    # A retried attempt of a short round is a new release (new seed, new ledger entry).
    attempt: int | None = None  # None until the strategy sends it; nodes read None as 1

    def to_config_record(self) -> ConfigRecord:
        """The wire form; fields that are None are left out."""
        values = {RUN_ID: self.run_id, TASK: self.task, SIM_STATE_DIR: self.sim_state_dir,
                  PUBLIC_INPUTS_SHA256: self.public_inputs_sha256, ATTEMPT: self.attempt,
                  SERVER_ROUND: self.server_round}
        return ConfigRecord({key: value for key, value in values.items() if value is not None})

    @classmethod
    def from_config_record(cls, record: ConfigRecord) -> RoundInstruction:
        """The instruction a ConfigRecord carries (absent fields take their defaults)."""
        return cls(
            run_id=str(record.get(RUN_ID, "")),
            task=str(record.get(TASK, "")),
            sim_state_dir=_optional_str(record.get(SIM_STATE_DIR)),
            public_inputs_sha256=_optional_str(record.get(PUBLIC_INPUTS_SHA256)),
            server_round=int(record[SERVER_ROUND]) if SERVER_ROUND in record else None,
            attempt=int(record[ATTEMPT]) if ATTEMPT in record else None,
        )

    @classmethod
    def from_record_dict(cls, content: RecordDict) -> RoundInstruction:
        """The instruction of a train message (KeyError when it has none)."""
        return cls.from_config_record(content[CONFIG_KEY])

    @property
    def round(self) -> int:
        """The server round; a train message always carries it (KeyError when not)."""
        if self.server_round is None:
            raise KeyError(SERVER_ROUND)
        return self.server_round

    @property
    def attempt_number(self) -> int:
        """The attempt of the round: 1 unless the message says otherwise."""
        return 1 if self.attempt is None else self.attempt

    @staticmethod
    def round_of(content: RecordDict) -> int | None:
        """The server round a train message's content names, if it names one."""
        config = content.config_records.get(CONFIG_KEY)
        if config is not None and SERVER_ROUND in config:
            return int(config[SERVER_ROUND])
        return None


def global_arrays(content: RecordDict) -> ArrayRecord:
    """The global weights a train message carries (KeyError when it has none)."""
    return content[ARRAYS_KEY]  # type: ignore[return-value]


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)
