"""Outside baselines for the quality benchmarks, each fitted on normal rows only.

Every detector here is a function ``fit(train_rows, seed) -> score``: it fits on the rows it is
given and returns a function mapping rows to anomaly scores (higher is more anomalous), so the
benchmarks can threshold it by the same rule as the trainer (the percentile of held-out or
cross-fitted scores). Windowed scorers take windows of shape (n, W, channels).

- `isolation_forest`: scikit-learn's IsolationForest.
- `seeds_recipe`: the plain Keras autoencoder of the project's seeds (issue 18): MinMax scaling
  to [0, 1], a dense ReLU encoder (features/2, then a bottleneck of features/4), the mirror
  decoder with a sigmoid output, MSE, Adam, up to 100 epochs with early stopping on a 10 %
  validation split (patience 10, best weights kept); score = the row's mean squared error.
- `pyod_autoencoder`, `pyod_lstmad`: PyOD 3's AutoEncoder (its defaults) and LSTMAD (the
  newest row predicted from the W-1 rows before it, Mahalanobis distance of the prediction
  error). PyOD and torch come with the optional ``bench`` extra (`make bench-setup`);
  `pyod_missing` says why they cannot run. torch runs on the CPU with `TORCH_THREADS` threads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]
Detector = Callable[[np.ndarray, int], Scorer]

# torch's intra-op threads: the machine has 2 CPUs shared with the broker and other jobs, and
# these networks are small enough that more threads mostly spin.
TORCH_THREADS = 1
RECIPE_EPOCHS = 100
RECIPE_PATIENCE = 10
RECIPE_VALIDATION_SPLIT = 0.1


def isolation_forest(n_estimators: int = 100) -> Detector:
    def fit(train: np.ndarray, seed: int) -> Scorer:
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(_flat(train))
        return lambda x: -forest.score_samples(_flat(x))

    return fit


def seeds_recipe(train: np.ndarray, seed: int) -> Scorer:
    """The seeds' plain Keras autoencoder (module docstring); windows are flattened."""
    import keras
    from sklearn.preprocessing import MinMaxScaler

    rows = _flat(train)
    scaler = MinMaxScaler().fit(rows)
    n = rows.shape[1]
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(n,))
    hidden = keras.layers.Dense(max(1, n // 2), activation="relu")(inputs)
    code = keras.layers.Dense(max(1, n // 4), activation="relu")(hidden)
    hidden = keras.layers.Dense(max(1, n // 2), activation="relu")(code)
    outputs = keras.layers.Dense(n, activation="sigmoid")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    scaled = scaler.transform(rows)
    model.fit(
        scaled,
        scaled,
        epochs=RECIPE_EPOCHS,
        validation_split=RECIPE_VALIDATION_SPLIT,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=RECIPE_PATIENCE, restore_best_weights=True
            )
        ],
        verbose=0,
    )

    def score(x: np.ndarray) -> np.ndarray:
        xs = scaler.transform(_flat(x))
        rebuilt = model.predict(xs, batch_size=1024, verbose=0)
        return np.mean((xs - rebuilt) ** 2, axis=1)

    return score


def pyod_missing() -> str | None:
    """Why PyOD's detectors cannot run here (None when they can)."""
    try:
        import pyod  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (make bench-setup installs the bench extra)"
    return None


def choose(text: str, known: Collection[str], needs_pyod: Collection[str]) -> tuple[str, ...]:
    """The comma-separated names of ``text``, those in ``needs_pyod`` left out (with one line on
    stderr saying why) when PyOD cannot run. Raises ValueError naming unknown names."""
    chosen = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown {unknown}: choose from {', '.join(known)}")
    missing = pyod_missing()
    if missing and any(name in needs_pyod for name in chosen):
        print(f"PyOD baselines left out: {missing}", file=sys.stderr)
        chosen = tuple(name for name in chosen if name not in needs_pyod)
    if any(name in needs_pyod for name in chosen):
        warm_up_torch()
    return chosen


def warm_up_torch() -> None:
    """Train a tiny PyOD AutoEncoder and LSTMAD once, before any TensorFlow training.

    With TensorFlow 2.20 and torch 2.15 in one process, torch's first training step after
    TensorFlow has trained a model aborts the process ("LLVM ERROR: inconsistency in registered
    CommandLine options": both carry LLVM); after a first torch step both run side by side."""
    rows = np.random.default_rng(0).normal(size=(64, 8, 3))
    pyod_lstmad(epochs=1)(rows, 0)(rows)
    pyod_autoencoder(rows, 0)(rows)


def _torch(seed: int):  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(seed)
    return torch


def pyod_autoencoder(train: np.ndarray, seed: int) -> Scorer:
    """PyOD's AutoEncoder with its defaults (seeded; no progress bar); windows are flattened."""
    from pyod.models.auto_encoder import AutoEncoder

    _torch(seed)
    detector = AutoEncoder(random_state=seed, verbose=0)
    detector.fit(_flat(train))
    return lambda x: np.asarray(detector.decision_function(_flat(x)), dtype=float)


def pyod_lstmad(epochs: int | None = None) -> Detector:
    """PyOD's LSTMAD on causal windows: the W-1 rows before the newest predict it.

    LSTMAD builds its own windows from one series; here every key's windows come from the
    benchmark (per-key normalisation, the same windows as the other baselines), so its own
    training, prediction and Mahalanobis steps run on them. ``epochs`` None: its default (50)."""

    def fit(train: np.ndarray, seed: int) -> Scorer:
        from pyod.models.ts_lstm import LSTMAD

        _torch(seed)
        window = train.shape[1]
        detector = LSTMAD(window_size=window - 1, **({} if epochs is None else {"epochs": epochs}))
        context, newest = train[:, :-1, :], train[:, -1, :]
        model = detector._train_model(context, newest, train.shape[2])
        errors = newest - detector._predict_model(model, context)
        _, mean, inverse = detector._mahalanobis_scores(errors)

        def score(windows: np.ndarray) -> np.ndarray:
            diff = windows[:, -1, :] - detector._predict_model(model, windows[:, :-1, :]) - mean
            return np.sum(diff @ inverse * diff, axis=1)

        return score

    return fit


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)
