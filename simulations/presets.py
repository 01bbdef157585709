"""Ready-made simulation presets: plain run settings, chosen with `fedssl simulate --preset NAME`.

A preset is only a mapping of run-config keys (those of pyproject.toml) to values. `--preset`
applies it over the defaults, then every `--set key=value` wins, key by key. Each preset sets
its own RUN_DIR (`runs/<name>`) unless `--out` or `--set run-dir=...` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.run_config import ConfigError


@dataclass(frozen=True)
class Preset:
    """A named set of run settings with a one-line description."""

    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="demo",
            description="what `make demo` runs: the public MiniLM encoder, LoRA adapters "
                        "trained by 5 hospitals with DP-SGD (mlm, ε=8), 8,000 records",
            settings={
                # The path the evidence supports (docs/label-efficiency.md, "Starting from a
                # public encoder"): start from the public checkpoint, adapt it privately with
                # low-rank updates; sized to finish in under 10 minutes on 2 cores.
                "run-dir": "runs/demo",
                "init": "minilm",
                "task": "mlm",
                "max-records": 8000,  # 1,600 test records, ~1,270 per hospital, ~63 labels
                "local-steps": 5,
                # ~65 labels: 3 steps an epoch. A fine-tuning step of the 22M encoder takes
                # ~0.6 s on 2 cores: the default 300-step floor would take the run past 10
                # minutes; at 60 the small scratch BERT (same recipe) stayed untrained
                # (macro-F1 0.03), an unfair baseline. 200 trains it.
                "finetune-min-steps": 200,
                "target-epsilon": 8.0,
            },
        ),
        Preset(
            name="hospitals",
            description="10 hospitals, all train every round, non-IID (Dirichlet 0.3), "
                        "thousands of records each; record-level DP ε=8",
            settings={
                "run-dir": "runs/hospitals",
                "num-clients": 10,
                "num-rounds": 5,
                "fraction-train": 1.0,
                "client-sampling": "fixed",  # everyone takes part: no sampling to amplify
                "partition": "dirichlet",
                "dirichlet-alpha": 0.3,  # each hospital sees a few dominant chapters
                "local-steps": 20,
                "batch-size": 64,
                "target-epsilon": 8.0,
                "label-fraction": 0.01,
            },
        ),
        Preset(
            name="devices",
            description="1000 devices with ~16 records each (2-86), Poisson client sampling "
                        "q=0.02 (~20 per round), small local batches",
            settings={
                "run-dir": "runs/devices",
                "num-clients": 1000,
                "num-rounds": 10,
                # Each device independently with probability 0.02: the sampling that client-level
                # DP amplification needs (turn that on with --set client-dp=true; with ~20
                # updates per round its noise z·S/20 per coordinate swamps the model).
                "client-sampling": "poisson",
                "fraction-train": 0.02,
                "max-records": 20000,  # 20% test, 1% labeled, ~15.8k left: ~16 per device
                "partition": "dirichlet",
                "dirichlet-alpha": 0.5,
                # A device holds 2-86 records: batch size 8 gives q = 1/ceil(n/8), an expected
                # batch of n/ceil(n/8) (q = 1 for the smallest ones), 5 steps touch each record
                # ~1-5 times a round.
                "batch-size": 8,
                "local-steps": 5,
                "target-epsilon": 8.0,
                "label-fraction": 0.01,
                "finetune-epochs": 10,
            },
        ),
    )
}


def preset_settings(name: str) -> dict[str, Any]:
    """The settings of preset `name` (a copy); ConfigError listing the presets if unknown."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset '{name}'; presets: {', '.join(PRESETS)} "
                          "(fedssl simulate --list-presets)")
    return dict(PRESETS[name].settings)


def preset_listing() -> str:
    """One block per preset: its name, description and settings (for --list-presets)."""
    blocks = []
    for preset in PRESETS.values():
        values = " ".join(f"{k}={v}" for k, v in preset.settings.items())
        blocks.append(f"{preset.name}: {preset.description}\n  {values}")
    return "\n".join(blocks)
