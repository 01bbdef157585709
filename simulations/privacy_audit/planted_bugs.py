"""Deliberately broken DP mechanisms, so the audit can show it catches them.

Reachable only from the audit's `--plant-bug` option and from tests: nothing here is a run
setting, and RunConfig has no field that selects one (tests/test_empirical_audit.py checks
that `--set` cannot name them). Each bug changes what the node *trains with*; the claim stays
what the node's ledger would state for the intended mechanism, which is exactly the situation
an accountant cannot see.
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from client.dp_training import DpSettings
from client.local_round import dp_generator
from common.run_config import RunConfig

# NO_CLIPPING: the clip norm is multiplied by this (and σ divided by it, so the noise std σ·C
# is still the claimed one): no per-record gradient comes near 10⁶·C, so nothing is clipped.
#
# Why the bug is visible at the run's own C. Bypassed clipping only leaks through a record
# whose gradient exceeds C: clipping only ever shrinks a gradient, so a record already below C
# is the same with or without it. With the MLM loss a text record's gradient is bounded by the
# model (the tiny model's are 5-14 at initialisation; LayerNorm'd hidden states and a softmax
# keep them there), so at C=1 no text record, canary or not, can exceed C by much, and an
# audit at a small claimed ε did not resolve the difference (the first version of this audit
# needed C=0.01). DP-SGD's guarantee, though, is for any per-record loss, and the audit's
# canaries use that: each canary's loss counts CANARY_LOSS_WEIGHT × C times
# (simulations/privacy_audit/canaries.py), the worst-case record clipping exists for. Through
# working clipping the weight is invisible (the clipped gradient is C·g/‖g‖ either way);
# with clipping bypassed, an included canary moves the model a hundred times more than the
# C the claim assumes. So this bug is planted at the run's real C, not at an artificially small one.
NO_CLIPPING_FACTOR = 1e6

WARNING = ("*** PLANTED BUG '{bug}': this audit trains a DELIBERATELY BROKEN DP mechanism "
           "({what}); its claimed ε is false by construction, and the lower bound should "
           "refute it ***")


class PlantedBug(enum.Enum):
    """A mechanism bug the audit can plant (NONE: the code as it ships)."""

    NONE = "none"
    NO_NOISE = "no-noise"  # DP-SGD with σ = 0, claimed with the calibrated σ
    NO_CLIPPING = "no-clipping"  # per-record clipping bypassed (a sensitivity bug)
    KNOWN_SEED = "known-seed"  # noise and Poisson masks from the public round seed

    @property
    def description(self) -> str:
        """What the bug breaks, in words."""
        return {
            PlantedBug.NONE: "the shipped mechanism",
            PlantedBug.NO_NOISE: "DP-SGD adds no noise, the claim assumes the calibrated σ",
            PlantedBug.NO_CLIPPING: f"per-record clip norm ×{NO_CLIPPING_FACTOR:g}, the claim "
                                    "assumes clipping to C",
            PlantedBug.KNOWN_SEED: "noise and Poisson masks drawn from the public round seed, "
                                   "which the attacker replays",
        }[self]


def bug_names() -> tuple[str, ...]:
    """The names `--plant-bug` accepts."""
    return tuple(bug.value for bug in PlantedBug)


def parse_bug(name: str) -> PlantedBug:
    """The bug called `name`; ValueError (one line) naming the choices otherwise."""
    for bug in PlantedBug:
        if bug.value == name:
            return bug
    raise ValueError(f"--plant-bug must be one of {', '.join(bug_names())}, got {name!r}")


def warning_line(bug: PlantedBug) -> str:
    """The loud line every planted-bug audit prints and writes ("" for NONE)."""
    return "" if bug is PlantedBug.NONE else WARNING.format(bug=bug.value,
                                                            what=bug.description)


def trained_settings(bug: PlantedBug, intended: DpSettings) -> DpSettings:
    """What DP-SGD actually runs with, given the settings the node intended (and claims)."""
    if bug is PlantedBug.NO_NOISE:
        return dataclasses.replace(intended, noise_multiplier=0.0)
    if bug is PlantedBug.NO_CLIPPING:
        # Opacus adds noise of std σ·max_grad_norm: scale σ down by the same factor, so only
        # the clipping is broken, not the noise.
        return dataclasses.replace(
            intended, clip_norm=intended.clip_norm * NO_CLIPPING_FACTOR,
            noise_multiplier=intended.noise_multiplier / NO_CLIPPING_FACTOR)
    return intended


def training_generator(bug: PlantedBug, config: RunConfig, round_seed: int) -> torch.Generator:
    """The DP generator the node trains with: the node's own choice (client/local_round.py,
    secret), except under KNOWN_SEED, where it is what `reproducible-noise` would use."""
    if bug is PlantedBug.KNOWN_SEED:
        config = dataclasses.replace(config, reproducible_noise=True)
    return dp_generator(config, round_seed)


def attacker_generator(config: RunConfig, round_seed: int) -> torch.Generator:
    """The attacker's guess of the DP generator: the one the public round seed gives (as
    reproducible-noise seeds it). Right only under KNOWN_SEED; against secret noise it shares
    nothing with the node's."""
    return dp_generator(dataclasses.replace(config, reproducible_noise=True), round_seed)
