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
    value = run_config.get(SECURE_AGGREGATION_SETTING, False)
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def legacy_arrays(record: ArrayRecord) -> list[np.ndarray]:
    """The numpy arrays of a legacy Parameters ArrayRecord ("0", "1", ... in order)."""
    keys = sorted((k for k in record.keys() if k != EMPTY_TENSOR_KEY), key=int)
    return [bytes_to_ndarray(record[k].data) for k in keys]
