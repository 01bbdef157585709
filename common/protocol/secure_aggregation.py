"""What both sides of secure aggregation share: the run setting's name and the legacy records
Flower 1.42's SecAgg+ speaks (its workflow and mod exist only in the legacy FitIns/FitRes API).

A secure-aggregation train message is Flower's legacy FitIns: the global weights as
`fitins.parameters` (unnamed, in order) and the config as `fitins.config`, which carries the
RoundInstruction plus `fedssl.array-keys`, the weights' names in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.common import bytes_to_ndarray

SECURE_AGGREGATION_SETTING = "secure-aggregation"
# Flower's legacy record names (flwr/compat/common/recorddict_compat.py)
FITINS_PARAMETERS = "fitins.parameters"
FITINS_CONFIG = "fitins.config"
EMPTY_TENSOR_KEY = "_empty"
ARRAY_KEYS = "fedssl.array-keys"  # in fitins.config: the weights' names, in order


def secure_aggregation_declared(run_config: Mapping[str, Any]) -> bool:
    """Whether the run's config asks for secure aggregation (a node reads only this key)."""
    return run_flag(run_config, SECURE_AGGREGATION_SETTING)


def distributed_noise_declared(run_config: Mapping[str, Any]) -> bool:
    """Whether nodes add the client-level noise themselves (client-dp, client-noise)."""
    return run_flag(run_config, "client-dp") and run_flag(run_config, SECURE_AGGREGATION_SETTING) \
        and str(run_config.get("client-noise", "server")) == "distributed"


def run_flag(run_config: Mapping[str, Any], key: str) -> bool:
    """A boolean run setting as Flower delivers it (bool, or its text form)."""
    value = run_config.get(key, False)
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def legacy_arrays(record: ArrayRecord) -> list[np.ndarray]:
    """The numpy arrays of a legacy Parameters ArrayRecord ("0", "1", ... in order)."""
    keys = sorted((k for k in record.keys() if k != EMPTY_TENSOR_KEY), key=int)
    return [bytes_to_ndarray(record[k].data) for k in keys]


# Distributed client-level noise (`client-noise=distributed`): every node that contributes to
# the masked sum adds N(0, σ_s²) per coordinate with σ_s = z·S/√t, t the protocol's
# reconstruction threshold. SecAgg+ unmasks only with at least t contributions, so every sum
# the server can see carries noise of std ≥ z·S, the std the client-level accountant assumes.
NOISE_SHARE_CLIP = 8.0  # quantisation range: S + this many σ_s (P(|N| > 8σ) ≈ 1e-15)


def noise_share_std(noise_multiplier: float, clip_norm: float, threshold: int) -> float:
    """σ_s of one node's noise share: t shares sum to std z·S."""
    return noise_multiplier * clip_norm / threshold ** 0.5


def quantisation_clip(clip_norm: float, share_std: float) -> float:
    """Each coordinate's range [−R, R]: S for a clipped Δ, plus the noise share's tail."""
    return clip_norm + NOISE_SHARE_CLIP * share_std
