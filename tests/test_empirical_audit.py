"""The empirical privacy audit (simulations/privacy_audit/): correct code is not refuted, each
planted bug is, the bugs cannot be reached from a run's settings, bad input is one line.

Tiny model, m=128 canaries, claimed ε=0.5, every bug at the run's default clip norm C=1: with
8 steps × 2 rounds at q=1/4 an "in" canary is sampled with probability 1 − 0.75¹⁶ ≈ 99%, so a
broken mechanism leaves a trace the bound can resolve (its cap here is about 2.4). A bug test
computes only the scores it needs (the bound then splits β among fewer scores; it is as valid),
which skips the attacker's replay training where the replay score is not read. One torch
thread: on a shared 2-core machine two threads of this tiny model mostly wait on each other.
The ≥95% refutation rate is measured in benchmarks/empirical_audit.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from simulation_runs import ROOT, fedssl_in_process

from common.run_config import ConfigError, RunConfig
from common.tasks import get_task
from simulations.privacy_audit.canaries import (
    CANARY_LOSS_WEIGHT,
    canary_weighted_loss,
    is_canary,
    node_records,
    plan_canaries,
)
from simulations.privacy_audit.empirical_audit import (
    BLACK_BOX,
    REPLAY,
    SCORES,
    WHITE_BOX,
    AuditSettings,
    _plan,
    node_real_records,
    resolvable_epsilon,
    run_trial,
    unresolvable_claim_warning,
)
from simulations.privacy_audit.planted_bugs import PlantedBug, bug_names

AUDIT_RUN = {
    "max-records": 4000, "local-steps": 8, "batch-size": 64, "hidden-size": 32,
    "num-layers": 1, "intermediate-size": 64, "max-length": 32, "target-epsilon": 0.5,
    "num-rounds": 2,
}
CANARIES = 128


def _settings(bug: PlantedBug, scores: tuple[str, ...] = SCORES) -> AuditSettings:
    return AuditSettings(config=RunConfig.from_mapping(AUDIT_RUN), canaries=CANARIES,
                         real_records=CANARIES, bug=bug, scores=scores)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real_records() -> tuple[torch.Tensor, ...]:
    return node_real_records(_settings(PlantedBug.NONE))


def test_correct_code_is_not_refuted(real_records):
    result = run_trial(_settings(PlantedBug.NONE), 0, real_records)
    assert 0.45 < result.claimed_epsilon <= 0.5  # σ calibrated to the target, as a node does
    assert [b.score for b in result.bounds] == list(SCORES)
    assert result.lower_bound <= result.claimed_epsilon, result.bounds


@pytest.mark.parametrize(("bug", "scores"), [
    (PlantedBug.NO_NOISE, (WHITE_BOX, BLACK_BOX)),
    (PlantedBug.NO_CLIPPING, (WHITE_BOX, BLACK_BOX)),  # at the run's C=1 (canaries.py)
    (PlantedBug.KNOWN_SEED, (REPLAY,)),  # only the replay can cancel the noise
])
def test_planted_bug_is_refuted(real_records, bug, scores):
    result = run_trial(_settings(bug, scores), 0, real_records)
    assert result.claimed_epsilon <= 0.5
    assert [b.score for b in result.bounds] == list(scores)
    assert result.refutes_claim, result.bounds
    assert result.bug == bug.value


@pytest.mark.filterwarnings("ignore:Full backward hook")  # Opacus on integer inputs
def test_canary_weight_is_invisible_through_clipping(real_records):
    """A canary's large loss weight changes its clipped gradient not at all: only bypassed
    clipping lets it through (the no-clipping bug's premise)."""
    config = RunConfig.from_mapping(AUDIT_RUN)
    task = get_task("mlm")
    torch.manual_seed(0)
    model = task.build_model(config)
    plan = _plan(model, real_records, 8, torch.Generator().manual_seed(0))
    tokens = plan.canaries[0][:, 1]
    batch = tuple(torch.cat([c, r[:8]]) for c, r in zip(plan.canaries, real_records,
                                                         strict=True))
    assert is_canary(batch[0], tokens).tolist() == [True] * 8 + [False] * 8
    weight = CANARY_LOSS_WEIGHT * config.clip_norm
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum")

    def per_record_gradients(loss) -> torch.Tensor:
        wrapped.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad_sample = None
        loss(wrapped, batch, torch.Generator().manual_seed(1)).sum().backward()
        return torch.cat([p.grad_sample.reshape(16, -1) for p in model.parameters()], dim=1)

    plain = per_record_gradients(task.per_record_loss)
    weighted = per_record_gradients(canary_weighted_loss(task.per_record_loss, tokens, weight))
    wrapped.remove_hooks()
    torch.testing.assert_close(weighted[:8] / weight, plain[:8], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weighted[8:], plain[8:])
    assert (plain.norm(dim=1) > config.clip_norm).all()  # every record is clipped anyway
    clipped = [g * (config.clip_norm / g.norm(dim=1, keepdim=True)).clamp(max=1.0)
               for g in (plain, weighted)]
    torch.testing.assert_close(clipped[1], clipped[0], rtol=1e-4, atol=1e-6)


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


def test_a_claim_beyond_what_the_canaries_resolve_is_flagged():
    assert unresolvable_claim_warning(_settings(PlantedBug.NONE)) == ""  # ε=0.5, m=128
    demo_privacy = dataclasses.replace(_settings(PlantedBug.NONE), config=RunConfig.from_mapping(
        {**AUDIT_RUN, "target-epsilon": 8}))
    assert "cannot refute the claimed ε=8" in unresolvable_claim_warning(demo_privacy)
    assert 2.3 < resolvable_epsilon(CANARIES, 1e-5, 0.05 / 3) < 2.5


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
    (["--preset", "demo"], "add --set init=none"),
])
def test_bad_input_is_one_line(args, message):
    code, out, err = fedssl_in_process("audit-empirical", *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out
