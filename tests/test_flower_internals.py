"""The Flower internals fedssl relies on (server/flower_internals.py, and the node's in
client/flower_internals.py) are still what it expects, and no other module uses any.

A Flower upgrade that changes one of them fails here, loudly, naming the Flower version and the
symbol, instead of somewhere inside a federated run: the private `FedAvg._construct_messages`
(signature and the Messages it builds), Grid's `push_messages` / `pull_messages` /
`send_and_receive` (signatures, and the reply matching our pull loop copies), Grid's abstract
interface (what `DelegatingGrid` must implement), `compute_stdv`, the legacy SecAgg+ workflow's
and mod's names and records, and the installed version against the range pinned in
pyproject.toml. A module outside the two flower_internals modules that imports a Flower name
outside Flower's public API fails the registration test.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import tomllib
from pathlib import Path

import flwr
import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from packaging.requirements import Requirement
from packaging.version import Version

try:
    from client import flower_internals as client_internals
    from common.protocol.secure_aggregation import FITINS_CONFIG, FITINS_PARAMETERS
    from server import flower_internals
    from server.flower_internals import DelegatingGrid, construct_messages, pull_replies
    from server.round_progress import ProgressGrid
except ImportError as err:  # a Flower upgrade removed a symbol the internals modules import
    raise ImportError(f"Flower {flwr.__version__}: {err}; fedssl imports it in "
                      "server/flower_internals.py or client/flower_internals.py") from err

ROOT = Path(__file__).resolve().parent.parent


def _problem(symbol: str, detail: str, where: str = "server/flower_internals.py") -> str:
    return (f"Flower {flwr.__version__}: {symbol} changed: {detail}. fedssl uses it in "
            f"{where}; adapt that module (and this test) to the new Flower, "
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


# --------------------------------------------------- client-level DP and SecAgg+ (legacy API)

def test_compute_stdv_is_the_noise_std_on_a_mean():
    symbol = "flwr.supercore.differential_privacy.compute_stdv"
    expected = [("noise_multiplier", "POSITIONAL_OR_KEYWORD"),
                ("clipping_norm", "POSITIONAL_OR_KEYWORD"),
                ("num_sampled_clients", "POSITIONAL_OR_KEYWORD")]
    stdv = flower_internals.compute_stdv
    assert _parameters(stdv) == expected, _problem(
        symbol, f"signature is now {inspect.signature(stdv)}")
    assert stdv(1.5, 2.0, 4) == pytest.approx(0.75), _problem(symbol, "it is no longer z·S/n")


def test_grid_client_proxy_is_a_client_proxy_for_one_node_of_a_grid():
    symbol = "flwr.server.compat.grid_client_proxy.GridClientProxy"
    proxy_class = flower_internals.GridClientProxy
    assert issubclass(proxy_class, flower_internals.ClientProxy), _problem(
        symbol, "it is no longer a flwr.server.client_proxy.ClientProxy")
    expected = [("self", "POSITIONAL_OR_KEYWORD"), ("node_id", "POSITIONAL_OR_KEYWORD"),
                ("grid", "POSITIONAL_OR_KEYWORD"), ("run_id", "POSITIONAL_OR_KEYWORD")]
    assert _parameters(proxy_class.__init__) == expected, _problem(
        symbol, f"signature is now {inspect.signature(proxy_class.__init__)}")
    grid = object()
    proxy = proxy_class(7, grid, 0)  # type: ignore[arg-type]
    assert (proxy.node_id, proxy.grid) == (7, grid), _problem(symbol, "node_id/grid not kept")


SECAGGPLUS_WORKFLOW = "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
SECAGGPLUS_MOD = "flwr.client.mod.secure_aggregation.secaggplus_mod"


def _source(module_name: str) -> str:
    try:
        return inspect.getsource(importlib.import_module(module_name))
    except ImportError as err:
        pytest.fail(_problem(module_name, f"cannot import it ({err})"))


@pytest.mark.parametrize("read", [
    r"context\.state\.config_records\[MAIN_CONFIGS_RECORD\]",
    r"cfg\[WorkflowKey\.CURRENT_ROUND\]",
    r"context\.state\.array_records\[MAIN_PARAMS_RECORD\]",
    r"proxy\.node_id",
])
def test_secaggplus_workflow_reads_the_legacy_state_where_we_write_it(read):
    """server/secure_aggregation.py writes the round and the parameters into the
    LegacyContext's state under these names, and hands the workflow GridClientProxies."""
    workflow = importlib.import_module(SECAGGPLUS_WORKFLOW)
    for name in ("MAIN_CONFIGS_RECORD", "MAIN_PARAMS_RECORD"):
        assert getattr(workflow, name, None) == getattr(flower_internals, name), _problem(
            f"flwr.server.workflow.constant.{name}", "SecAggPlusWorkflow reads another name")
    assert getattr(workflow, "WorkflowKey", None) is flower_internals.WorkflowKey, _problem(
        "flwr.server.workflow.constant.Key", "SecAggPlusWorkflow reads another Key")
    assert re.search(read, _source(SECAGGPLUS_WORKFLOW)), _problem(
        "SecAggPlusWorkflow", f"it no longer reads {read!r}")


@pytest.mark.parametrize("module_name", [SECAGGPLUS_WORKFLOW, SECAGGPLUS_MOD])
def test_secaggplus_records_are_named_as_the_protocol_names_them(module_name):
    """Both sides tell SecAgg+ messages apart by RECORD_KEY_CONFIGS and its stage field;
    the server finds masked vectors by MASKED_PARAMETERS."""
    symbol = "flwr.common.secure_aggregation.secaggplus_constants"
    module = importlib.import_module(module_name)
    assert getattr(module, "RECORD_KEY_CONFIGS", None) == flower_internals.RECORD_KEY_CONFIGS \
        == client_internals.RECORD_KEY_CONFIGS, _problem(f"{symbol}.RECORD_KEY_CONFIGS",
                                                         f"{module_name} uses another name")
    assert getattr(module, "Key", None) is flower_internals.SecAggPlusKey, _problem(
        f"{symbol}.Key", f"{module_name} uses another Key")
    source = _source(module_name)
    for field in ("STAGE", "MASKED_PARAMETERS"):
        assert re.search(rf"\bKey\.{field}\b", source), _problem(
            f"{symbol}.Key.{field}", f"{module_name} no longer uses it")


def test_secaggplus_threshold_reads_the_state_the_mod_keeps():
    symbol = "SecAggPlusState.threshold"
    where = "client/flower_internals.py"
    module = importlib.import_module(SECAGGPLUS_MOD)
    assert "threshold" in getattr(module.SecAggPlusState, "__annotations__", {}), _problem(
        symbol, "the field is gone", where)
    assert re.search(r"state\.threshold\s*=", _source(SECAGGPLUS_MOD)) and \
        re.search(r"config_records\[RECORD_KEY_STATE\]\s*=\s*ConfigRecord\(state\.to_dict\(\)\)",
                  _source(SECAGGPLUS_MOD)), _problem(
        symbol, "secaggplus_mod no longer keeps it in context.state", where)
    state = RecordDict({module.RECORD_KEY_STATE: ConfigRecord(
        module.SecAggPlusState(threshold=3, share_num=5).to_dict())})
    assert client_internals.secaggplus_threshold(state) == 3, _problem(symbol, "not read", where)


def test_fitres_records_are_what_secaggplus_mod_reads_back():
    symbol = "flwr.compat.common.recorddict_compat.fitres_to_recorddict"
    where = "client/flower_internals.py"
    from flwr.compat.common.recorddict_compat import recorddict_to_fitres

    delta = [np.arange(6.0).reshape(2, 3), np.array([-0.5])]
    fitres = FitRes(status=Status(code=Code.OK, message=""),
                    parameters=ndarrays_to_parameters(delta), num_examples=1, metrics={})
    records = client_internals.fitres_to_recorddict(fitres, keep_input=False)
    back = recorddict_to_fitres(records, keep_input=True)  # what secaggplus_mod does
    assert back.num_examples == 1, _problem(symbol, "num_examples lost", where)
    for got, sent in zip(parameters_to_ndarrays(back.parameters), delta, strict=True):
        assert np.array_equal(got, sent), _problem(symbol, "parameters do not round-trip", where)


def test_legacy_fitins_record_names_are_flowers():
    """common/protocol/secure_aggregation.py names the FitIns records the workflow sends."""
    symbol = "flwr.compat.common.recorddict_compat.fitins_to_recorddict"
    from flwr.compat.common.recorddict_compat import fitins_to_recorddict

    records = fitins_to_recorddict(FitIns(parameters=ndarrays_to_parameters([np.zeros(2)]),
                                          config={"server-round": 1}), keep_input=True)
    assert FITINS_PARAMETERS in records.array_records and FITINS_CONFIG in records.config_records, \
        _problem(symbol, f"records are now {sorted(records)}",
                 "common/protocol/secure_aggregation.py")


# ------------------------------------------ registration: nothing else uses Flower internals

# Flower's documented API: these modules' `__all__` (flwr.common: its top-level names). The
# legacy flwr.server and flwr.client.mod APIs are documented too; SecAgg+ exists only there.
PUBLIC_MODULES = ("flwr", "flwr.app", "flwr.clientapp", "flwr.serverapp",
                  "flwr.serverapp.strategy", "flwr.common", "flwr.client.mod", "flwr.server",
                  "flwr.server.strategy", "flwr.server.workflow", "flwr.simulation")
INTERNALS_MODULES = ("client/flower_internals.py", "server/flower_internals.py")


def _flower_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) of every Flower import, function-level ones included."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "flwr":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names
                      if alias.name.split(".")[0] == "flwr"]
    return found


def _public(module: str, name: str | None) -> bool:
    if module not in PUBLIC_MODULES:
        return False
    return name is None or name in getattr(importlib.import_module(module), "__all__", ())


def test_no_module_outside_the_internals_modules_uses_flower_internals():
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}:{line} {module}{'.' + name if name else ''}"
        for package in ("client", "common", "server", "simulations")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT).as_posix() not in INTERNALS_MODULES
        for line, module, name in _flower_imports(path) if not _public(module, name)
    ]
    assert not offenders, (
        f"Flower {flwr.__version__} internals used outside {' and '.join(INTERNALS_MODULES)}: "
        f"{offenders}; import them through the flower_internals module of that side and "
        "check them in this test module")


def test_the_registration_check_sees_internal_imports(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("from flwr.app import Message\nfrom flwr.common import log, serde\n"
                    "import flwr.server\n\n\ndef late():\n"
                    "    from flwr.supercore.differential_privacy import compute_stdv\n"
                    "    import flwr.server.compat\n")
    hidden = [(module, name) for _, module, name in _flower_imports(path)
              if not _public(module, name)]
    assert hidden == [("flwr.common", "serde"),
                      ("flwr.supercore.differential_privacy", "compute_stdv"),
                      ("flwr.server.compat", None)]
