"""Real data for validation: scikit-learn's bundled 8x8 digits (no download).

Why digits: it ships inside scikit-learn, so tests and benches stay offline,
and a 64-64-10 MLP trains in about a second yet is accurate enough (~97 %)
that device non-idealities show up clearly in accuracy.
"""

from __future__ import annotations

import warnings

from compute.lazynumpy import np

from compute.mlp import Layer


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test, y_test); X rows are samples (n, 64), float32 in [0, 1].

    Transpose X for the engine's column convention (W @ X with X (64, B)).
    Stratified 75/25 split, fixed by ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def train_digits_mlp(seed: int = 0, hidden: int = 64) -> list[Layer]:
    """Deterministic 64-hidden-10 ReLU MLP trained with scikit-learn (Adam)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    xtr, ytr, _, _ = load_digits_split(seed)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu", solver="adam",
                        alpha=1e-4, learning_rate_init=1e-2, max_iter=200, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    return [
        Layer(clf.coefs_[0].T.astype(np.float32), clf.intercepts_[0].astype(np.float32), "relu"),
        Layer(clf.coefs_[1].T.astype(np.float32), clf.intercepts_[1].astype(np.float32), "softmax"),
    ]
