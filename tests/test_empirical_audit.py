"""The empirical privacy audit (simulations/privacy_audit/): correct code is not refuted, each
planted bug is, the bugs cannot be reached from a run's settings, bad input is one line.

Tiny model, m=128 canaries, claimed ε=0.5: with 8 steps × 3 rounds at q=1/4 nearly every "in"
canary is sampled, so a broken mechanism leaves a trace the bound can resolve (its cap here
is about 2.4). The ≥95% refutation rate is measured in benchmarks/empirical_audit.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from simulation_runs import ROOT, fedssl_in_process

from common.run_config import ConfigError, RunConfig
from simulations.privacy_audit.canaries import node_records, plan_canaries
from simulations.privacy_audit.empirical_audit import (
    AuditSettings,
    node_real_records,
    run_trial,
)
from simulations.privacy_audit.planted_bugs import PlantedBug, bug_names

AUDIT_RUN = {
    "max-records": 4000, "local-steps": 8, "batch-size": 64, "hidden-size": 32,
    "num-layers": 1, "intermediate-size": 64, "max-length": 32, "target-epsilon": 0.5,
    "num-rounds": 3,
}
CANARIES = 128


def _settings(bug: PlantedBug, **extra: object) -> AuditSettings:
    return AuditSettings(config=RunConfig.from_mapping({**AUDIT_RUN, **extra}),
                         canaries=CANARIES, real_records=CANARIES, bug=bug)


@pytest.fixture(scope="module")
def real_records() -> tuple[torch.Tensor, ...]:
    return node_real_records(_settings(PlantedBug.NONE))


def test_correct_code_is_not_refuted(real_records):
    result = run_trial(_settings(PlantedBug.NONE), 0, real_records)
    assert 0.45 < result.claimed_epsilon <= 0.5  # σ calibrated to the target, as a node does
    assert {b.score for b in result.bounds} == {"white-box", "replay", "black-box"}
    assert result.lower_bound <= result.claimed_epsilon, result.bounds


@pytest.mark.parametrize(("bug", "extra"), [
    (PlantedBug.NO_NOISE, {}),
    (PlantedBug.KNOWN_SEED, {}),
    # At C=1 this tiny model's per-record gradients stay below C, so removing the clipping
    # changes nothing an audit could see; at C=0.01 every record is clipped hard.
    (PlantedBug.NO_CLIPPING, {"clip-norm": 0.01}),
])
def test_planted_bug_is_refuted(real_records, bug, extra):
    result = run_trial(_settings(bug, **extra), 0, real_records)
    assert result.claimed_epsilon <= 0.5
    assert result.refutes_claim, result.bounds
    assert result.bug == bug.value


def test_slots_keep_n_and_differ_only_where_the_coins_differ(real_records):
    real = tuple(t[:50] for t in real_records)
    canaries = tuple(torch.full((20, t.shape[1]), 7, dtype=t.dtype) for t in real)
    plan = plan_canaries(real, canaries, torch.Generator().manual_seed(0))
    coins = np.zeros(20, dtype=bool)
    flipped = coins.copy()
    flipped[3] = True
    before, after = node_records(real, plan, coins), node_records(real, plan, flipped)
    assert len(before[0]) == len(after[0]) == 70  # replace-one: n does not depend on coins
    changed = (before[0] != after[0]).any(dim=1).nonzero().flatten().tolist()
    assert changed == [int(plan.slots[3])]


def test_bugs_are_not_run_settings():
    names = {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)}
    assert not names & {"plant-bug", "planted-bug", "bug", *bug_names()}
    with pytest.raises(ConfigError, match="unknown setting"):
        RunConfig.from_mapping({"plant-bug": "no-noise"})
    # Only the audit's own modules import the planted bugs.
    importers = [p.relative_to(ROOT).as_posix() for package in ("client", "common", "server",
                 "simulations") for p in (ROOT / package).rglob("*.py")
                 if "planted_bugs" in p.read_text()]
    assert all(p.startswith("simulations/privacy_audit/") for p in importers), importers


@pytest.mark.parametrize(("args", "message"), [
    (["--canaries", "5"], "--canaries must be at least 10"),
    (["--plant-bug", "off-by-one"], "--plant-bug must be one of"),
    (["--beta", "1.5"], "--beta must be in (0, 1)"),
    (["--set", "task=mae"], "supports task=mlm"),
    (["--set", "reproducible-noise=true"], "claims no DP guarantee"),
    (["--set", "plant-bug=no-noise"], "unknown setting"),
])
def test_bad_input_is_one_line(args, message):
    code, out, err = fedssl_in_process("audit-empirical", *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out
