"""How much `fedssl compress` trains: pruning ratios, recovery and distillation budgets.

One typed object, validated once at the command line (compress_command.settings_from_options), then passed down. The
defaults are fixed in advance for the demo's MiniLM run (about 25 minutes on 2 CPU cores,
docs/compression.md); nothing here is tuned on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PRUNE_RATIOS = (0.25, 0.5)


class CompressionSettingsError(ValueError):
    """A compression option out of range; the message names it."""


@dataclass(frozen=True)
class CompressionSettings:
    """What to build beyond quantization and export (which always run)."""

    # Share of attention heads and of feed-forward neurons removed in every layer, one
    # pruned model per ratio; () skips structured pruning.
    prune_ratios: tuple[float, ...] = DEFAULT_PRUNE_RATIOS
    # Passes over labeled + public texts that repair a pruned model (distilled from fp32).
    recover_epochs: int = 2
    # Passes over labeled + public texts that train the small student; 0 skips students.
    distill_epochs: int = 10
    # Public-corpus texts used as the transfer set (0: labels only).
    transfer_records: int = 8000
    # Records whose teacher agreement scores head and neuron importance.
    importance_records: int = 512

    def __post_init__(self) -> None:
        for ratio in self.prune_ratios:
            if not 0.0 < ratio < 1.0:
                raise CompressionSettingsError(
                    f"--prune-ratios: {ratio:g} is not in (0, 1): the share of heads and "
                    "neurons removed per layer")
        if len(set(self.prune_ratios)) != len(self.prune_ratios):
            raise CompressionSettingsError("--prune-ratios: a ratio is repeated")
        for name in ("recover_epochs", "distill_epochs", "transfer_records"):
            if getattr(self, name) < 0:
                raise CompressionSettingsError(
                    f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")
        if self.importance_records < 1:
            raise CompressionSettingsError("--importance-records: must be >= 1")
