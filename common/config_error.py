"""The error every bad setting raises: it names the setting (the CLI prints it and exits 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting has an impossible value; the message names the setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"setting '{key}': {problem}")
        self.key = key
