"""The node's side of secure aggregation (run setting `secure-aggregation=true`).

Flower's own `secaggplus_mod` (flwr.client.mod) runs the SecAgg+ protocol on the node: key
set-up, key shares, then — in its "collect masked vectors" stage — it calls the ClientApp's
train function, quantises the update it returns, adds the pairwise and private masks and sends
only the masked integers; every ArrayRecord of the reply is emptied. fedssl writes no
cryptography of its own.

Flower 1.42's mod speaks the legacy FitIns/FitRes records. `secure_aggregation_mod` translates
between them and fedssl's own train message and reply, so `client/app.py`'s train function —
budget guard, ledger written before training, DP-SGD, clipping — runs unchanged:
* in: the legacy `fitins.parameters` (the global weights, in the order the server's
  `fedssl.array-keys` names) and `fitins.config` (the RoundInstruction) become fedssl's train
  content;
* out: the clipped update Δ becomes the legacy `fitres.parameters` (float64, weight 1, so that
  the protocol sums updates unweighted), and fedssl's own ArrayRecord is removed. A node that
  refused or failed contributes a zero vector (the sum is unchanged; the server learns its
  status from the clear part, as without secure aggregation).
The reply's ConfigRecord/MetricRecord (status, ledger entries, ε, record count) are not the
update: the mod leaves them as they are and they reach the server in the clear — except the
node's `update-norm` (‖Δ‖ before clipping), a statistic of its own update, which is dropped.

A node refuses (error reply, nothing sent) a train message whose run asks for secure
aggregation but which does not run the protocol, so it never sends a plaintext update to a
server that skipped it — and the reverse, a protocol message in a run that did not ask for it.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from client.flower_internals import (
    RECORD_KEY_CONFIGS,
    ClientAppCallable,
    fitres_to_recorddict,
    secaggplus_threshold,
)
from common.privacy.dp_randomness import secret_generator
from common.protocol import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, UPDATE_NORM
from common.protocol.secure_aggregation import (
    ARRAY_KEYS,
    FITINS_CONFIG,
    FITINS_PARAMETERS,
    SECURE_AGGREGATION_SETTING,
    distributed_noise_declared,
    legacy_arrays,
    noise_share_std,
    secure_aggregation_declared,
)


def secure_aggregation_mod(msg: Message, context: Context,
                           call_next: ClientAppCallable) -> Message:
    """SecAgg+ when the run asks for it (Flower's mod), else the message unchanged."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    wanted = secure_aggregation_declared(context.run_config)
    protocol = RECORD_KEY_CONFIGS in msg.content.config_records
    if wanted != protocol:
        raise RuntimeError(
            f"run setting {SECURE_AGGREGATION_SETTING}={str(wanted).lower()} but the train "
            f"message {'does not run' if wanted else 'runs'} the SecAgg+ protocol: refused "
            "(no update sent)")
    if not wanted:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, _legacy_train(call_next))


def _legacy_train(call_next: ClientAppCallable) -> ClientAppCallable:
    """fedssl's train function behind the legacy FitIns/FitRes records the mod speaks."""

    def train(msg: Message, context: Context) -> Message:
        weights, config = fitins_to_train_content(msg.content)
        msg.content = RecordDict({ARRAYS_KEY: weights, CONFIG_KEY: config})
        reply = call_next(msg, context)
        reply.content = reply_to_fitres(reply.content, weights, _share_std(context))
        return reply

    return train


def _share_std(context: Context) -> float:
    """σ of this node's share of the client-level noise (0 unless client-noise=distributed).

    t is the reconstruction threshold this node's own SecAgg+ state holds from the protocol's
    set-up (Flower's mod keeps it in `context.state`): the node refuses to help unmask with
    fewer than t live neighbours, so no sum of fewer than t shares can be revealed.
    """
    run = context.run_config
    if not distributed_noise_declared(run):
        return 0.0
    threshold = secaggplus_threshold(context.state)
    return noise_share_std(float(run["client-noise-multiplier"]),  # type: ignore[arg-type]
                           float(run["update-clip-norm"]), threshold)  # type: ignore[arg-type]


def fitins_to_train_content(content: RecordDict) -> tuple[ArrayRecord, ConfigRecord]:
    """The global weights (named again) and the RoundInstruction of a legacy FitIns."""
    config = content.config_records[FITINS_CONFIG]
    keys = [str(k) for k in config[ARRAY_KEYS]]  # type: ignore[union-attr]
    arrays = legacy_arrays(content.array_records[FITINS_PARAMETERS])
    if len(keys) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for {len(keys)} names in the train message")
    named = ArrayRecord({k: Array(a) for k, a in zip(keys, arrays, strict=True)})
    instruction = ConfigRecord({k: v for k, v in config.items() if k != ARRAY_KEYS})
    return named, instruction


def reply_to_fitres(content: RecordDict, weights: ArrayRecord,
                    share_std: float = 0.0) -> RecordDict:
    """fedssl's reply with its Δ moved into the legacy FitRes records the mod masks.

    Δ in the weights' order, as float64 (quantisation then works on exact values); a zero
    vector when the node did not train. With `share_std` > 0 every node — trained or not —
    adds its share of the client-level noise, drawn from the node's secret source. Weight 1:
    the protocol's weighted mean becomes the plain mean of the contributions, from which the
    server takes the sum.
    """
    update = content.array_records.get(ARRAYS_KEY)
    if update is not None and len(update) > 0:
        if list(update.keys()) != list(weights.keys()):
            raise ValueError("the update's tensors are not the global model's")
        delta = [update[k].numpy().astype(np.float64) for k in weights.keys()]
    else:
        delta = [np.zeros(weights[k].numpy().shape, dtype=np.float64) for k in weights.keys()]
    if share_std > 0:
        generator = secret_generator()
        delta = [d + torch.normal(0.0, share_std, size=d.shape, generator=generator,
                                  dtype=torch.float64).numpy() for d in delta]
    out = RecordDict({key: record for key, record in content.items() if key != ARRAYS_KEY})
    if METRICS_KEY in out.metric_records:  # ‖Δ‖ describes this node's update: not sent
        metrics = dict(out.metric_records[METRICS_KEY])
        metrics.pop(UPDATE_NORM, None)
        out[METRICS_KEY] = MetricRecord(metrics)
    fitres = FitRes(status=Status(code=Code.OK, message=""),
                    parameters=ndarrays_to_parameters(delta), num_examples=1, metrics={})
    for key, record in fitres_to_recorddict(fitres, keep_input=False).items():
        out[key] = record
    return out
