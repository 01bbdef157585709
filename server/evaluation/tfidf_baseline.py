"""The honest non-neural baseline: TF-IDF (1-2 grams) + logistic regression on the same labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

# Fixed in advance, not tuned on test: weak regularisation suits short, sparse texts.
TFIDF_C = 10.0


def tfidf_logreg(
    train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str]
) -> np.ndarray:
    """Fit TF-IDF + logistic regression on the labeled texts; return predictions for `test_texts`.

    If the labeled set holds a single class (possible at very few labels with an extreme class
    imbalance), logistic regression cannot be fitted; that class is predicted everywhere, which
    is exactly what any classifier trained on those labels could do.
    """
    labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_texts) != len(labels) or len(labels) == 0:
        raise ValueError(f"need equal, non-zero lengths: {len(train_texts)}, {len(labels)}")
    classes = np.unique(labels)
    if len(classes) == 1:
        return np.full(len(test_texts), classes[0], dtype=np.int64)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(C=TFIDF_C, max_iter=2000)
    classifier.fit(features, labels)
    return classifier.predict(vectorizer.transform(test_texts)).astype(np.int64)
