"""One hostile or broken reply can neither poison the model nor abort the round.

Each case goes through the real strategy (`UpdateFedAvg.configure_train` to sample and
`aggregate_train` to aggregate) with replies built as Flower builds them. Before the reply
schema, a NaN `num-examples` turned the model into NaN, a weight of −99 beside an honest 100
moved every coordinate ~170× past the clip bound, all-zero weights raised ZeroDivisionError,
and an extra or missing metric key (or a second MetricRecord) raised Flower's
InconsistentMessageReplies. The Grid is a stand-in that lists node ids (the strategy's
sampling only asks it for them); everything else is fedssl's and Flower's own code.
"""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.model_updates import update_norm
from server.update_fedavg import UpdateFedAvg

CLIP = 1.0
NODES = (1, 2, 3)


class NodeList:
    """The only part of a Grid that sampling uses."""

    def get_node_ids(self) -> list[int]:
        return list(NODES)


def _metrics(**changes: object) -> dict[str, object]:
    honest: dict[str, object] = {"num-examples": 100, "epsilon": 1.0, "noise-multiplier": 1.0,
                                 "sample-rate": 0.1, "local-steps": 3, "update-norm": 0.5,
                                 "delta": 1e-5, "max-epsilon": 8.0}
    return {k: v for k, v in {**honest, **changes}.items() if v is not None}


def _reply(instruction: Message, metrics: dict[str, object] | None = None,
           value: float = 0.1, **content: object) -> Message:
    info = ConfigRecord({"status": "trained", "reason": "", "spent": False, "ledger": [],
                         "node": f"h{instruction.metadata.dst_node_id}"})
    record = RecordDict({"fedssl": info,
                         "arrays": ArrayRecord({"w": torch.full((4,), value)}),
                         "metrics": MetricRecord(metrics or _metrics())})
    for key, item in content.items():
        record[key] = item
    return Message(record, reply_to=instruction)


def _round(make_replies, **options: object) -> tuple[torch.Tensor | None, list]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    seen = []
    strategy = UpdateFedAvg(update_clip_norm=CLIP, on_round=lambda r, s: seen.append(r),
                           fraction_train=1.0, fraction_evaluate=0.0,
                           min_available_nodes=len(NODES), **options)  # type: ignore[arg-type]
    start = ArrayRecord({"w": torch.zeros(4)})
    instructions = {m.metadata.dst_node_id: m for m in
                    strategy.configure_train(1, start, ConfigRecord({}), NodeList())}
    arrays, _ = strategy.aggregate_train(1, make_replies(instructions))
    return (None if arrays is None else arrays.to_torch_state_dict()["w"]), seen


def _check_bounded(model: torch.Tensor | None) -> None:
    assert model is not None and torch.isfinite(model).all()
    assert update_norm({"w": model}) <= CLIP * (1 + 1e-6)  # a convex mix of ‖Δ‖ ≤ S


def test_honest_replies_are_averaged():
    model, (record,) = _round(lambda i: [_reply(i[n]) for n in NODES])
    assert torch.allclose(model, torch.full((4,), 0.1)) and len(record.clients) == 3


@pytest.mark.parametrize("weight", [math.nan, -99, 0, 10**12, 2.5, [100], math.inf, -1.0])
def test_a_bad_weight_is_rejected_and_the_round_goes_on(weight):
    def replies(i):
        return [_reply(i[1], _metrics(**{"num-examples": weight}), value=0.4),
                _reply(i[2]), _reply(i[3])]

    model, (record,) = _round(replies)
    _check_bounded(model)
    assert torch.allclose(model, torch.full((4,), 0.1))  # only the two honest updates count
    (rejected,) = record.rejected
    assert rejected["node"] == "node-1" and "num-examples" in rejected["reason"]


def test_all_zero_weights_skip_the_round_instead_of_crashing():
    model, (record,) = _round(lambda i: [_reply(i[n], _metrics(**{"num-examples": 0}))
                                         for n in NODES])
    assert model is None and record.skipped and len(record.rejected) == 3


def test_a_run_without_noise_reports_infinite_epsilon_and_still_trains():
    model, (record,) = _round(lambda i: [_reply(i[n], _metrics(epsilon=math.inf))
                                         for n in NODES])
    _check_bounded(model)
    assert len(record.clients) == 3 and not record.rejected


def test_extra_metric_keys_are_dropped_and_never_abort_aggregation():
    model, (record,) = _round(lambda i: [
        _reply(i[1], _metrics(surprise=1.0)), _reply(i[2]), _reply(i[3])])
    _check_bounded(model)
    assert len(record.clients) == 3 and "surprise" not in record.clients[0]


@pytest.mark.parametrize("case", ["missing-metric", "second-metric-record", "no-node",
                                  "status-number", "nan-epsilon", "second-array-record"])
def test_a_malformed_reply_is_rejected_and_logged(case):
    def bad(instruction: Message) -> Message:
        if case == "missing-metric":
            return _reply(instruction, _metrics(epsilon=None))
        if case == "second-metric-record":
            return _reply(instruction, extra=MetricRecord({"x": 1.0}))
        if case == "second-array-record":
            return _reply(instruction, more=ArrayRecord({"w": torch.ones(4)}))
        if case == "nan-epsilon":
            return _reply(instruction, _metrics(epsilon=math.nan))
        reply = _reply(instruction)
        info = dict(reply.content["fedssl"])
        if case == "no-node":
            del info["node"]
        else:
            info["status"] = 7
        reply.content["fedssl"] = ConfigRecord(info)
        return reply

    model, (record,) = _round(lambda i: [bad(i[1]), _reply(i[2]), _reply(i[3])])
    _check_bounded(model)
    assert [r["node"] for r in record.rejected] == ["node-1"]
    assert len(record.clients) == 2


DEAD_ACTOR = ("<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before "
              "finishing this task.'>")


def _dead_actor_replies(i):
    from flwr.app import Error

    return [_reply(i[1]), _reply(i[2]), Message(Error(code=0, reason=DEAD_ACTOR), reply_to=i[3])]


def test_a_dead_simulation_worker_stops_the_run_with_a_clear_message():
    """Flower's Ray backend returns a dead actor to its pool, so later messages to it fail
    too (issue "Hardening" §4): in simulation the strategy stops the run and says how to
    resume."""
    from server.update_fedavg import SimulationWorkerDied

    with pytest.raises(SimulationWorkerDied, match="rerun the same command"):
        _round(_dead_actor_replies, in_simulation=lambda: True)


def test_a_deployed_node_naming_a_ray_error_cannot_stop_the_federation(caplog):
    """In a deployment an error reply's reason is whatever the node wrote: a registered node
    that names ActorDiedError only fails its own reply (logged); the round aggregates the
    others. The default check asks this process, which runs no Ray, as a deployment's."""
    from server.update_fedavg import ray_runs_here

    assert not ray_runs_here()
    with caplog.at_level("WARNING", logger="flwr"):
        model, (record,) = _round(_dead_actor_replies)
    assert model is not None and torch.allclose(model, torch.full((4,), 0.1))
    assert len(record.clients) == 2 and not record.skipped
    assert [(r["node"], r["reason"]) for r in record.rejected] == [("node-3", DEAD_ACTOR)]
    assert any("node-3 failed" in line and "ActorDiedError" in line
               for line in caplog.messages), caplog.messages


def test_an_ordinary_client_error_is_only_logged():
    from flwr.app import Error

    def replies(i):
        return [_reply(i[1]), _reply(i[2]),
                Message(Error(code=0, reason="<class 'ValueError'>:<'bad'>"), reply_to=i[3])]
    model, (record,) = _round(replies)
    assert model is not None and len(record.clients) == 2 and len(record.rejected) == 1


def test_an_update_a_float_rounding_above_the_bound_is_aggregated_at_exactly_the_bound():
    """Accepted up to S·(1+1e-4) (a client's float32 rescale can land a rounding above S),
    but the accountant assumes ‖Δ‖ ≤ S: what the strategy aggregates is re-clipped to S."""
    from common.protocol import update_of

    value = CLIP / 2 * (1 + 5e-5)  # ‖Δ‖ of four equal coordinates: 2·value = S·(1 + 5e-5)
    sent: list[Message] = []

    def replies(i):
        sent.extend(_reply(i[n], value=value) for n in NODES)
        return sent

    model, (record,) = _round(replies)
    assert not record.rejected and len(record.clients) == 3
    assert all(CLIP < c["received-norm"] <= CLIP * (1 + 1e-4) for c in record.clients)
    # The accepted replies now hold the re-clipped Δ (both FedAvg and DP-FedAvg read them).
    assert all(update_norm(update_of(msg.content).to_torch_state_dict()) <= CLIP
               for msg in sent)
    assert model is not None and update_norm({"w": model}) <= CLIP
