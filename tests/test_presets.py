"""Presets resolve to valid runs; --set wins key by key; progress lines and their ETA."""

from __future__ import annotations

import pytest
from simulation_runs import fedssl_command

from common.run_config import ConfigError, RunConfig
from common.tasks import check_run_data
from server.round_progress import RoundProgress, duration
from simulations.presets import PRESETS, preset_settings
from simulations.simulate_command import resolve_config

# Presets on the public checkpoint read the 83 MB MiniLM package: checked in the slow tier.
NEEDS_CHECKPOINT = {name for name, preset in PRESETS.items()
                    if preset.settings.get("init", "none") != "none"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in NEEDS_CHECKPOINT else name
    for name in sorted(PRESETS)])
def test_every_preset_is_a_valid_run_with_a_feasible_split(name):
    config = resolve_config(name, [], None)
    assert config.run_dir.endswith(f"runs/{name}")
    for key, value in PRESETS[name].settings.items():
        if key != "run-dir":
            assert config.to_mapping()[key] == RunConfig.from_mapping({key: value}) \
                .to_mapping()[key]
    check_run_data(config)  # the split plan exists (enough records per client, labels...)


def test_the_presets_are_what_the_issue_asks_for():
    demo = RunConfig.from_mapping({**RunConfig().to_mapping(), **preset_settings("demo")})
    assert demo.init == "minilm" and demo.task == "mlm" and demo.adapter == "lora"
    assert demo.target_epsilon == 8.0 and demo.max_records == 8000
    hospitals, devices = resolve_config("hospitals", [], None), resolve_config("devices", [], None)
    assert hospitals.num_clients == 10 and hospitals.fraction_train == 1.0
    assert hospitals.partition == "dirichlet"
    assert devices.num_clients == 1000 and devices.client_sampling == "poisson"
    assert devices.fraction_train == pytest.approx(0.02)
    from common.data.demo_text import demo_splits

    sizes = sorted(len(c) for c in demo_splits(devices).client_texts)
    assert sizes[0] >= 2 and sizes[len(sizes) // 2] <= 20  # few records per device
    assert devices.batch_size <= sizes[len(sizes) // 2]  # so q = 1/ceil(n/B) is mostly < 1


def test_set_overrides_the_preset_key_by_key_and_out_wins(tmp_path):
    config = resolve_config("devices", ["num-rounds=2", "fraction-train=0.05"],
                            str(tmp_path / "run"))
    assert (config.num_rounds, config.fraction_train) == (2, 0.05)
    assert config.num_clients == 1000  # the rest of the preset stays
    assert config.run_dir == str(tmp_path / "run")
    with pytest.raises(ConfigError, match="unknown preset 'nope'; presets: demo, hospitals, devices"):
        preset_settings("nope")


def test_cli_lists_presets_and_rejects_an_unknown_one():
    # As a command of its own: the console entry point's exit codes (0 and 2).
    listing = fedssl_command("simulate", "--list-presets")
    assert listing.returncode == 0
    for name, preset in PRESETS.items():
        assert f"{name}: {preset.description}" in listing.stdout
    assert "num-clients=1000" in listing.stdout
    bad = fedssl_command("simulate", "--preset", "nope")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "presets: demo, hospitals, devices" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_round_progress_eta():
    now = [100.0]
    progress = RoundProgress(num_rounds=5, clock=lambda: now[0])
    progress.start_round()
    now[0] += 10
    assert progress.eta(1, 0, 20, finished=False) is None  # no round finished: nothing known
    assert progress.line(1, 3, 20, finished=False).endswith("clients done 3/20 | "
                                                            "elapsed 10s | ETA ?")
    now[0] += 90  # round 1 (with start-up): 100 s
    progress.finish_round()
    assert progress.eta(1, 20, 20, finished=True) == pytest.approx(4 * 100)
    progress.start_round()
    now[0] += 40
    progress.finish_round()
    # Round 1's start-up no longer counts once another round finished.
    assert progress.eta(2, 20, 20, finished=True) == pytest.approx(3 * 40)
    progress.start_round()
    now[0] += 10
    assert progress.eta(3, 10, 20, finished=False) == pytest.approx(30 + 2 * 40)
    now[0] += 50  # longer than the mean (40 s): the round's own reply rate takes over
    assert progress.eta(3, 15, 20, finished=False) == pytest.approx(60 / 15 * 5 + 2 * 40)
    assert progress.eta(3, 0, 20, finished=False) == pytest.approx(2 * 40)
    now[0] += 20
    progress.finish_round()
    assert progress.eta(3, 20, 20, finished=True) == pytest.approx(2 * 60)  # mean(40, 80)
    assert progress.line(3, 20, 20, finished=True) == (
        "[fedssl] round 3/5 | clients done 20/20 | elapsed 3m40s | ETA 2m00s")
    assert (duration(3725), duration(59.6), duration(61)) == ("1h02m", "1m00s", "1m01s")
