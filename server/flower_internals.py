"""Every use of Flower internals in fedssl, in one place (Flower 1.42.x, pinned in pyproject.toml).

"Internal" means: not covered by Flower's documented Message API (ServerApp, Grid.
send_and_receive, Strategy.start and its configure/aggregate hooks), so a Flower release may
change it without notice. tests/test_flower_internals.py checks each item below against the
installed Flower and fails naming the Flower version and the symbol.

* `FedAvg._construct_messages(record, node_ids, message_type)` (private): one Message per node,
  all carrying the same RecordDict. With `client-sampling=poisson`, UpdateFedAvg draws its own
  sample but must send exactly what FedAvg.configure_train sends for a fixed-size one, so it
  calls the method FedAvg itself uses (`construct_messages`) instead of a copy.
* `Grid.push_messages` / `Grid.pull_messages` and the loop over them that Flower's Grids run in
  `send_and_receive` (push; pull until every message has a reply, matched by
  `reply.metadata.reply_to_message_id`, or the timeout passed): fedssl runs that loop itself
  (`push_messages`, `pull_replies`) to report round progress as replies arrive
  (server/round_progress.py). The two methods are abstract methods of Grid; that their
  ids match the replies' `reply_to_message_id` is Flower's implementation.
* `DelegatingGrid`: a Grid that hands every abstract method of Flower's Grid to the Grid it
  wraps. Subclassing Grid depends on its set of abstract methods, which Flower may extend.
* `DEAD_WORKER_ERRORS`: how a dead Ray ClientApp actor shows in an error reply. Flower 1.42's
  Ray backend puts a dead actor back into its pool (raybackend.process_message), so every later
  message routed to it fails the same way, healthy nodes' included; UpdateFedAvg stops the run
  when it sees one (a rerun resumes), but only when Ray runs in the ServerApp's own process
  (`update_fedavg.ray_runs_here`): Flower 1.42's simulation runs the ServerApp as a thread of
  the process that starts Ray, a deployed ServerApp never starts Ray, so a deployed node that
  names a Ray error in its reply is rejected like any other failed reply and cannot stop the
  run. The slow test that SIGKILLs a real actor (tests/test_simulation_scale.py) checks it.
* `compute_stdv` (flwr.supercore.differential_privacy): the std of the Gaussian noise on a
  mean of clipped updates, z·S/n; client-level DP (server/client_level_dp.py) reuses it.
* SecAgg+ through the legacy workflow API (server/secure_aggregation.py), the only way Flower
  1.42 offers it: `GridClientProxy` (flwr.server.compat) is how the legacy workflow reaches a
  node through a Grid, one per node the round strategy's `configure_fit` returns;
  `ClientProxy` (flwr.server.client_proxy) is the type the legacy Strategy hooks name;
  `MAIN_CONFIGS_RECORD`, `MAIN_PARAMS_RECORD` and `WorkflowKey` (flwr.server.workflow.constant)
  are where `SecAggPlusWorkflow` reads the current round and the global parameters in the
  LegacyContext's state; `RECORD_KEY_CONFIGS` and `SecAggPlusKey`
  (flwr.common.secure_aggregation.secaggplus_constants) name the protocol's ConfigRecord and
  its stage and masked-vector fields, which tell protocol messages and masked replies apart.

The node's side of SecAgg+ uses Flower internals too; the layering keeps client/ from importing
server/, so they sit in client/flower_internals.py, checked by the same test module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggPlusKey
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.differential_privacy import compute_stdv

__all__ = [
    "DEAD_WORKER_ERRORS", "MAIN_CONFIGS_RECORD", "MAIN_PARAMS_RECORD", "RECORD_KEY_CONFIGS",
    "ClientProxy", "DelegatingGrid", "GridClientProxy", "SecAggPlusKey", "WorkflowKey",
    "compute_stdv", "construct_messages", "pull_replies", "push_messages",
]

# Ray's exception names as Flower's Ray backend writes them into an error reply's reason.
DEAD_WORKER_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError")


def construct_messages(strategy: FedAvg, record: RecordDict, node_ids: list[int],
                       message_type: str) -> list[Message]:
    """FedAvg's own messages for `node_ids`, each carrying `record` (FedAvg's private method)."""
    return list(strategy._construct_messages(record, node_ids, message_type))


def push_messages(grid: Grid, messages: list[Message]) -> set[str]:
    """Send `messages`; the ids their replies will name as `reply_to_message_id`."""
    return set(grid.push_messages(messages))


def pull_replies(grid: Grid, pending: set[str], timeout: float | None, pull_interval_s: float,
                 waiting: Callable[[int], None]) -> list[Message]:
    """Pull until every id in `pending` has its reply or `timeout` passed (as Flower's Grids
    do in send_and_receive). `waiting(replies so far)` runs after each pull that left some
    pending, before the next wait. Empties `pending` of the ids that got their reply."""
    replies: list[Message] = []
    end = None if timeout is None else time.monotonic() + timeout
    while pending and (end is None or time.monotonic() < end):
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if not pending:
            break
        waiting(len(replies))
        time.sleep(pull_interval_s)
    return replies


class DelegatingGrid(Grid):
    """A Grid that hands every method of Flower's Grid to the Grid it wraps (`self.grid`)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: object) -> None:
        self.grid.set_run(run)  # type: ignore[arg-type]

    @property
    def run(self) -> object:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[object]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)
