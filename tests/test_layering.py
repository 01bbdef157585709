"""The design's layering: common imports neither client nor server; they never import each other.

Also: every RUN_DIR file name is spelled once, in common/run_layout.py.
"""

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


# --- RUN_DIR names are spelled once, in common/run_layout.py ---------------------------------
LAYOUT_MODULE = "common/run_layout.py"
PRODUCT_PACKAGES = ("client", "common", "server", "simulations")
# A name with a dot is a file name wherever it appears; a bare folder word ("nodes", "audit")
# is also an ordinary word, so it counts only where it builds a path (`x / "nodes"`,
# `Path("models")`) or is a module constant's value (`AUDIT_DIR = "audit"`).
PATH_CALLS = {"Path", "PurePath", "joinpath", "glob", "rglob", "with_name", "open"}
# The same spelling in another folder's layout: (file, name) -> why it is not a RUN_DIR name.
NOT_RUN_DIR = {
    ("common/public_checkpoints.py", "config.json"):
        "a public checkpoint folder's files, named by Hugging Face",
    ("common/public_checkpoints.py", "tokenizer.json"):
        "a public checkpoint folder's files, named by Hugging Face",
    ("server/compression/finished_run.py", "config.json"):
        "models/finetuned-hf/config.json, named by transformers' save_pretrained",
    ("server/compression/hf_export.py", "tokenizer.json"):
        "compressed/hf/, the plain-transformers folder: Hugging Face's names",
    ("server/compression/compression_report.py", "report.md"):
        "compressed/report.md: compressed/ names its own files (it can move with --out)",
    ("server/deployment/certs_command.py", "nodes"):
        "the node-credentials folder `fedssl certs` writes, not a RUN_DIR",
    ("server/deployment/local_deployment.py", "superlink.log"):
        "the loopback deployment's own logs folder, not a RUN_DIR",
}


def _run_dir_names() -> set[str]:
    """Every name common/run_layout.py defines, and the files its path functions build."""
    import common.run_layout as layout

    names = {value for key, value in vars(layout).items()
             if key.endswith(("_FILE", "_DIR", "_LOG", "_GLOB")) and isinstance(value, str)}
    return names | {layout.model_file(arm) for arm in ("finetuned", "baseline", "pruned")}


def _path_strings(tree: ast.AST) -> set[int]:
    """ids of the string constants that build a path or name a module constant."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found.update(id(side) for side in (node.left, node.right))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in PATH_CALLS:
                found.update(id(arg) for arg in node.args)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id.isupper() for t in targets):
                found.add(id(node.value))
    return found


def _spelled_in(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every RUN_DIR name the module spells."""
    in_paths = _path_strings(tree)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in names
                  and ("." in node.value or id(node) in in_paths))


def _spelled_names() -> list[tuple[str, int, str]]:
    """(file, line, name) of every RUN_DIR name spelled outside run_layout.py."""
    names = _run_dir_names()
    hits = []
    for package in PRODUCT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative != LAYOUT_MODULE:
                hits += [(relative, line, name)
                         for line, name in _spelled_in(ast.parse(path.read_text()), names)]
    return hits


def test_run_dir_names_are_spelled_only_in_run_layout():
    hits = [f"{file}:{line}: {name!r}" for file, line, name in _spelled_names()
            if (file, name) not in NOT_RUN_DIR]
    assert not hits, ("RUN_DIR names spelled outside common/run_layout.py (import them from "
                      "there):\n" + "\n".join(hits))


def test_every_exception_to_the_run_dir_names_is_still_needed():
    spelled = {(file, name) for file, _, name in _spelled_names()}
    assert sorted(set(NOT_RUN_DIR) - spelled) == []


def test_the_run_dir_name_check_sees_a_spelled_name():
    """A file name counts anywhere; a folder word only where it builds a path or a constant."""
    source = ('A = run_dir / "summary.json"\nb = {"nodes": 1}\nc = out / "nodes"\n'
              'AUDIT = "audit"\nd = "report.md"\ne = Path("models")\nprint("audit")\n')
    assert _spelled_in(ast.parse(source), _run_dir_names()) == [
        (1, "summary.json"), (3, "nodes"), (4, "audit"), (5, "report.md"), (6, "models")]
