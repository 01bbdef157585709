"""Linear probes: logistic regression on frozen features (also the pixel baseline's model).

A probe on self-supervised features means something only next to the same probe on a
*random-init* encoder (in a trial, 150 MAE steps gave features no better than random ones),
so every task reports both.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

LOGREG_MAX_ITER = 2000


def logreg_predict(
    train: np.ndarray, labels: np.ndarray, test: np.ndarray, seed: int
) -> np.ndarray:
    """Standardised features, multinomial logistic regression; predicted test classes.

    A labeled set with a single class cannot fit a logistic regression; it predicts that class.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return np.full(len(test), labels[0], dtype=np.int64)
    scaler = StandardScaler().fit(train)
    model = LogisticRegression(max_iter=LOGREG_MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        # At one label per class sklearn guesses "regression problem?": it is not.
        warnings.filterwarnings("ignore", message="The number of unique classes is greater")
        model.fit(scaler.transform(train), labels)
    return model.predict(scaler.transform(test)).astype(np.int64)
