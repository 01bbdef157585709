"""The Flower internals fedssl relies on (server/flower_internals.py) are still what it expects.

A Flower upgrade that changes one of them fails here, loudly, naming the Flower version and the
symbol, instead of somewhere inside a federated run: the private `FedAvg._construct_messages`
(signature and the Messages it builds), Grid's `push_messages` / `pull_messages` /
`send_and_receive` (signatures, and the reply matching our pull loop copies), Grid's abstract
interface (what `DelegatingGrid` must implement), and the installed version against the range
pinned in pyproject.toml.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path

import flwr
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from packaging.requirements import Requirement
from packaging.version import Version

from server import flower_internals
from server.flower_internals import DelegatingGrid, construct_messages, pull_replies
from server.round_progress import ProgressGrid

ROOT = Path(__file__).resolve().parent.parent


def _problem(symbol: str, detail: str) -> str:
    return (f"Flower {flwr.__version__}: {symbol} changed: {detail}. fedssl uses it in "
            "server/flower_internals.py; adapt that module (and this test) to the new Flower, "
            "or pin the Flower version it was written for")


def _parameters(function: object) -> list[tuple[str, str]]:
    return [(p.name, p.kind.name) for p in inspect.signature(function).parameters.values()]


def test_installed_flower_is_in_the_pinned_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [Requirement(d) for d in project["dependencies"] if d.startswith("flwr")]
    assert Version(flwr.__version__) in pin.specifier, (
        f"Flower {flwr.__version__} is installed, but pyproject.toml pins '{pin}': "
        "server/flower_internals.py was checked against the pinned range only")


def test_fedavg_construct_messages_keeps_its_signature():
    method = getattr(FedAvg, "_construct_messages", None)
    assert callable(method), _problem("FedAvg._construct_messages", "the method is gone")
    expected = [("self", "POSITIONAL_OR_KEYWORD"), ("record", "POSITIONAL_OR_KEYWORD"),
                ("node_ids", "POSITIONAL_OR_KEYWORD"), ("message_type", "POSITIONAL_OR_KEYWORD")]
    assert _parameters(method) == expected, _problem(
        "FedAvg._construct_messages", f"signature is now {inspect.signature(method)}, "
        "expected (self, record, node_ids, message_type)")


def test_fedavg_construct_messages_builds_one_train_message_per_node():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    record = RecordDict({"config": ConfigRecord({"server-round": 3})})
    messages = construct_messages(FedAvg(), record, [7, 3, 11], MessageType.TRAIN)
    symbol = "FedAvg._construct_messages"
    assert all(isinstance(m, Message) for m in messages), _problem(
        symbol, f"returns {[type(m).__name__ for m in messages]}, expected Messages")
    assert [m.metadata.dst_node_id for m in messages] == [7, 3, 11], _problem(
        symbol, "messages no longer go to the given nodes, in their order")
    assert {m.metadata.message_type for m in messages} == {MessageType.TRAIN}, _problem(
        symbol, "the message type is not the one given")
    assert all(dict(m.content["config"]) == {"server-round": 3} for m in messages), _problem(
        symbol, "messages no longer carry the given RecordDict")


@pytest.mark.parametrize(("name", "expected"), [
    ("push_messages", [("self", "POSITIONAL_OR_KEYWORD"), ("messages", "POSITIONAL_OR_KEYWORD")]),
    ("pull_messages", [("self", "POSITIONAL_OR_KEYWORD"),
                       ("message_ids", "POSITIONAL_OR_KEYWORD")]),
    ("send_and_receive", [("self", "POSITIONAL_OR_KEYWORD"), ("messages", "POSITIONAL_OR_KEYWORD"),
                          ("timeout", "KEYWORD_ONLY")]),
])
def test_grid_keeps_the_methods_the_pull_loop_uses(name, expected):
    method = getattr(Grid, name, None)
    assert callable(method), _problem(f"Grid.{name}", "the method is gone")
    assert _parameters(method) == expected, _problem(
        f"Grid.{name}", f"signature is now {inspect.signature(method)}")


@pytest.mark.parametrize("grid", ["flwr.superlink.grid.inmemory_grid.InMemoryGrid",
                                  "flwr.superlink.grid.http_grid.HttpGrid"])
def test_flowers_own_send_and_receive_is_the_loop_we_copy(grid):
    """Flower's Grids (simulation: in-memory; deployment: HTTP) push, then pull and match
    replies by `reply_to_message_id`: what `pull_replies` does too."""
    module_name, _, class_name = grid.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        pytest.fail(_problem(grid, f"cannot import it ({err})"))
    source = inspect.getsource(cls.send_and_receive)
    for name in ("push_messages", "pull_messages", "reply_to_message_id"):
        assert re.search(rf"\b{name}\b", source), _problem(
            f"{class_name}.send_and_receive", f"it no longer uses {name}")


def test_delegating_grid_implements_every_abstract_method_of_grid():
    missing = set(Grid.__abstractmethods__) - set(vars(DelegatingGrid))
    assert not missing, _problem("Grid", f"new abstract method(s) {sorted(missing)}")
    assert not ProgressGrid.__abstractmethods__, _problem(
        "Grid", f"ProgressGrid is abstract: {sorted(ProgressGrid.__abstractmethods__)}")


class _Reply:
    """A pulled reply: only what the pull loop reads."""

    def __init__(self, reply_to: str) -> None:
        self.metadata = type("Metadata", (), {"reply_to_message_id": reply_to})()


class _ScriptedGrid:
    """A Grid whose pulls return a scripted sequence of replies."""

    def __init__(self, pulls: list[list[str]]) -> None:
        self.pulls = pulls
        self.asked: list[set[str]] = []

    def push_messages(self, messages: list[object]) -> list[str]:
        return [f"id-{i}" for i in range(len(messages))]

    def pull_messages(self, message_ids: set[str]) -> list[_Reply]:
        self.asked.append(set(message_ids))
        return [_Reply(i) for i in (self.pulls.pop(0) if self.pulls else [])]


def test_pull_loop_stops_when_every_reply_is_in_and_reports_while_waiting():
    grid = _ScriptedGrid([["id-1"], [], ["id-0", "id-2"]])
    pending = flower_internals.push_messages(grid, [object()] * 3)  # type: ignore[arg-type]
    seen: list[int] = []
    replies = pull_replies(grid, pending, timeout=10.0, pull_interval_s=0.0,  # type: ignore[arg-type]
                           waiting=seen.append)
    assert len(replies) == 3 and not pending and seen == [1, 1]
    assert grid.asked == [{"id-0", "id-1", "id-2"}, {"id-0", "id-2"}, {"id-0", "id-2"}]


def test_pull_loop_gives_up_at_the_timeout():
    grid = _ScriptedGrid([])
    pending = flower_internals.push_messages(grid, [object()] * 2)  # type: ignore[arg-type]
    replies = pull_replies(grid, pending, timeout=0.05, pull_interval_s=0.01,  # type: ignore[arg-type]
                           waiting=lambda done: None)
    assert replies == [] and pending == {"id-0", "id-1"}
