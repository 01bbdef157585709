"""Settings: defaults match pyproject, impossible values fail fast naming the setting."""

from __future__ import annotations

import tomllib

import pytest
from simulation_runs import ROOT, fedssl_in_process

from common.run_config import ConfigError, RunConfig, parse_overrides


def test_pyproject_defaults_equal_runconfig_defaults():
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app_config["config"] == RunConfig().to_mapping()
    assert RunConfig.from_mapping(app_config["config"]) == RunConfig()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("noise-multiplier", "-0.5"),
        ("noise-multiplier", "lots"),
        ("delta", 0.0),
        ("delta", 1.0),
        ("clip-norm", 0.0),
        ("clip-norm", -1.0),
        ("update-clip-norm", 0),
        ("label-fraction", 0.0),
        ("label-fraction", 1.5),
        ("test-fraction", 1.0),
        ("num-clients", 0),
        ("num-rounds", -1),
        ("batch-size", 0),
        ("target-epsilon", 0),
        ("target-epsilon", float("inf")),
        ("dirichlet-alpha", 0),
        ("prune-amount", 1.0),
        ("num-heads", 3),  # hidden-size 128 is not divisible by 3
        ("task", "nonsense"),
        ("num-rounds", 2.5),
        ("num-rounds", "many"),
        ("tokenizer", "/no/such/tokenizer.json"),
        # Values validation used to let through and the run then died on or wasted hours on
        # (issue "Hardening", §4): each is now refused up front, naming the setting.
        ("target-epsilon", 1e300),
        ("local-steps", 1e15),
        ("learning-rate", float("inf")),
        ("clip-norm", float("inf")),
        ("update-clip-norm", float("inf")),
        ("hidden-size", 1e9),
        ("max-length", 1e9),
        ("dirichlet-alpha", 1e-300),
        ("seed", 1e30),
        ("noise-multiplier", "1e9"),
    ],
)
def test_impossible_settings_name_the_setting(key, value):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({key: value})
    expected_key = "hidden-size" if key == "num-heads" else key
    assert err.value.key == expected_key
    assert f"'{expected_key}'" in str(err.value)


def test_unknown_setting_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown setting.*num-rounds"):
        RunConfig.from_mapping({"num-round": 3})


def test_explicit_noise_and_numbers_from_strings():
    config = RunConfig.from_mapping({"noise-multiplier": "0.8", "num-rounds": "4"})
    assert config.fixed_noise_multiplier == 0.8
    assert config.num_rounds == 4
    assert RunConfig().fixed_noise_multiplier is None  # "auto": calibrate to target ε


def test_parse_overrides():
    assert parse_overrides(["a=1", "b = 'x'"]) == {"a": "1", "b": "x"}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--set", "noise-multiplier=-1"], "noise-multiplier"),
        (["--set", "delta=2"], "delta"),
        (["--set", "num-clients=60000", "--set", "max-records=500"], "num-clients"),
        (["--set", "bogus=1"], "bogus"),
    ],
)
def test_cli_rejects_bad_settings_without_traceback(args, key, tmp_path):
    # In this process: a bad setting stops the command before anything starts.
    code, _, err = fedssl_in_process("simulate", "--out", str(tmp_path / "run"), *args)
    assert code == 2
    assert f"setting '{key}'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"min-clients": 6}, "min-clients"),  # more than num-clients (5)
        ({"min-clients": 0}, "min-clients"),
        ({"round-timeout": 0}, "round-timeout"),
        ({"aggregator": "krum"}, "aggregator"),
        ({"trim-fraction": 0.5}, "trim-fraction"),
        ({"client-dp": "true", "aggregator": "median"}, "aggregator"),
        ({"client-dp": "true", "min-clients": 2}, "min-clients"),
        ({"client-dp": "maybe"}, "client-dp"),
        ({"short-round": "wait"}, "short-round"),
        ({"round-retries": -1}, "round-retries"),
        ({"round-retries": 1.5}, "round-retries"),
        ({"client-dp": "true", "short-round": "retry"}, "short-round"),
    ],
)
def test_reliability_and_client_dp_settings_are_checked(values, key):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    assert info.value.key == key


def test_new_study_settings_validate():
    assert RunConfig.from_mapping({"num-rounds": 0}).num_rounds == 0  # warm-start-only control
    assert RunConfig.from_mapping({"warm-start-steps": 10}).warm_start_steps == 10
    with pytest.raises(ConfigError, match="warm-start-steps.*no public corpus"):
        RunConfig.from_mapping({"task": "mae", "warm-start-steps": 10})
    with pytest.raises(ConfigError, match="finetune-min-steps"):
        RunConfig.from_mapping({"finetune-min-steps": -1})
