"""`fedssl simulate --help` lists every run setting with its default."""

from __future__ import annotations

import contextlib
import io

import pytest

from common.run_config import RunConfig
from simulations.cli import main
from simulations.settings_help import show_value


def test_simulate_help_lists_every_setting_with_its_default():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as caught:
        main(["simulate", "--help"])
    assert caught.value.code == 0
    text = out.getvalue()
    listed = text.split("with their defaults")[1].split()
    for key, value in RunConfig().to_mapping().items():
        assert f"{key}={show_value(value)}" in listed, key
    assert "data=\"\"" in listed and "max-length=48" in listed and "delta=1e-05" in listed
    # What the help shows is what --set accepts: every pair parses back to the default.
    pairs = dict(item.split("=", 1) for item in listed if "=" in item and item[0].islower())
    parsed = RunConfig.from_mapping({k: v.strip('"') for k, v in pairs.items()})
    assert parsed == RunConfig()
    assert max(len(line) for line in text.splitlines()) <= 90
