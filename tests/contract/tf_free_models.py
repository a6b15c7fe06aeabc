"""One small published version per architecture, for the TensorFlow-free contract tests.

Tiny models and two epochs: what is tested is that the NumPy engine computes what Keras
computes, not how good the model is. Point models train on 300 rows of `builtin:digits`,
windowed ones on three keys of `builtin:machines`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainer.builtin_machines import machines_table  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.data_series import SeriesData  # noqa: E402
from trainer.fit import FitOptions, fit_model  # noqa: E402
from trainer.fit_series import fit_series_model  # noqa: E402
from trainer.publish import publish_model  # noqa: E402

WINDOW = 8
# Held-out calibration: cross-fitting would train several more networks per model.
_QUICK = FitOptions(epochs=2, patience=2, seed=5, calibration="holdout")
POINT_ARCHITECTURES: dict[str, FitOptions] = {
    "dense": replace(_QUICK, architecture="dense", hidden=(16,), latent=4),
    "denoising-dense": replace(_QUICK, architecture="dense", hidden=(16,), latent=4, denoise=0.2),
    "sparse-dense": replace(_QUICK, architecture="dense", hidden=(16,), latent=4, sparsity=1e-3),
    "vae": replace(_QUICK, architecture="vae", hidden=(16,), latent=4, denoise=0.0),
    "conv": replace(_QUICK, architecture="conv", hidden=(4, 8), latent=4, denoise=0.0),
    "denoising-conv-bce": replace(
        _QUICK, architecture="conv", hidden=(4, 8), latent=4, denoise=0.2, loss="bce"
    ),
    "sparse-conv": replace(
        _QUICK, architecture="conv", hidden=(4, 8), latent=4, denoise=0.0, sparsity=1e-3
    ),
}
SERIES_ARCHITECTURES: dict[str, FitOptions] = {
    "lstm": replace(_QUICK, architecture="lstm", hidden=(8,), latent=4),
    "conv1d": replace(_QUICK, architecture="conv1d", hidden=(8, 4), latent=4),
    "sparse-conv1d": replace(_QUICK, architecture="conv1d", hidden=(8, 4), latent=4, sparsity=1e-3),
    "windowed-dense": replace(_QUICK, architecture="dense", hidden=(16,), latent=4),
}
ALL_ARCHITECTURES = [*POINT_ARCHITECTURES, *SERIES_ARCHITECTURES]
# Published with NumPy layers and an ONNX graph (the dense family has dense weights only).
GRAPH_ARCHITECTURES = [
    "conv",
    "denoising-conv-bce",
    "sparse-conv",
    "lstm",
    "conv1d",
    "sparse-conv1d",
]


def digits_rows() -> tuple[np.ndarray, list[str]]:
    ds = load_dataset("builtin:digits")
    return ds.x[:300], ds.feature_names


def machines_series(keys: int = 3, length: int = 200) -> SeriesData:
    table = machines_table(keys=keys, length=length, seed=2)
    channels = ["temp", "load", "vibration"]
    return SeriesData(
        x=np.column_stack([table[c] for c in channels]).astype(np.float64),
        channel_names=channels,
        keys=np.asarray(table["key"], dtype=object),
        times=np.asarray(table["t"], dtype=np.float64),
        labels=None,
        ids=None,
        source="builtin:machines",
        key_column="key",
        time_column="t",
    )


def publish_architecture(name: str, model_dir: Path) -> Path:
    """Fit the small model ``name`` and publish it into ``model_dir``."""
    if name in SERIES_ARCHITECTURES:
        trained = fit_series_model(
            machines_series(), WINDOW, SERIES_ARCHITECTURES[name], quiet=True
        )
    else:
        x, names = digits_rows()
        opts = replace(POINT_ARCHITECTURES[name], image_shape=(8, 8))
        trained = fit_model(x, names, None, opts, source="builtin:digits", quiet=True)
    publish_model(trained, model_dir)
    return model_dir
