"""The design's layering: common imports neither client nor server; they never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from simulation_runs import ROOT

FORBIDDEN = {"common": {"client", "server", "simulations"}, "client": {"server", "simulations"},
             "server": {"client", "simulations"}}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_layering(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
