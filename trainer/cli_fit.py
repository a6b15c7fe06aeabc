"""The command line of ``fit``'s model, training and output options (the data, series, Kafka
and feedback options are shared with other commands: `trainer.cli`, `trainer.cli_feedback`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anomaly_contract import artifact


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def fit_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (defaults follow the data)")
    g.add_argument(
        "--architecture",
        choices=["dense", "conv", "vae", "lstm", "conv1d"],
        help="dense, conv (images) or vae (variational, dense; the score is the reconstruction "
        "error of the mean code); default: dense. With --window: lstm, conv1d or dense (on the "
        "flattened window)",
    )
    g.add_argument(
        "--hidden", type=int_list, help="dense layer widths (or conv filters), e.g. 64,16"
    )
    g.add_argument("--latent", type=int, help="size of the latent code")
    g.add_argument(
        "--activation",
        choices=["tanh", "relu", "elu"],
        help="hidden-layer activation of dense models (default: tanh for tables, relu for images)",
    )
    g.add_argument(
        "--denoise",
        type=float,
        metavar="NOISE_FACTOR",
        help="train as a denoising autoencoder: Gaussian noise of this std on the scaled inputs "
        "(default: 0.1 for images, off for tables; 0 turns it off)",
    )
    g.add_argument(
        "--sparsity",
        type=float,
        metavar="L1",
        help="sparse autoencoder: an L1 activity penalty of this weight on the code (default: off)",
    )
    g.add_argument(
        "--kl-weight",
        type=float,
        help="vae only: weight of the KL term against the reconstruction loss (default: 0.05)",
    )
    g.add_argument(
        "--loss",
        choices=["mse", "bce"],
        default="mse",
        help="bce implies --scaler minmax (default: mse)",
    )
    g.add_argument(
        "--scaler",
        choices=["minmax", "standard"],
        help="default: minmax for images and bce, standard otherwise",
    )
    g.add_argument(
        "--error",
        choices=["mse", "mae"],
        help="per-feature error the score averages: squared or absolute "
        "(default: mae for images, mse otherwise)",
    )


def fit_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    # (flag, type, default, help): the numeric knobs of training and calibration
    knobs: list[tuple[str, type, Any, str]] = [
        ("--epochs", int, 150, "maximum epochs; early stopping usually ends sooner (default 150)"),
        ("--batch-size", int, None, "default: grows with the data, 16 to 256"),
        ("--learning-rate", float, 1e-3, "Adam learning rate (default 0.001)"),
        (
            "--patience",
            int,
            12,
            "epochs without validation improvement before stopping (default 12)",
        ),
        (
            "--validation-split",
            float,
            0.15,
            "share of normal rows for early stopping (default 0.15)",
        ),
        (
            "--calibration-split",
            float,
            0.15,
            "share of normal rows held out for the threshold (default 0.15)",
        ),
        ("--seed", int, 0, "random seed: same data and seed, same model (default 0)"),
        (
            "--percentile",
            float,
            99.0,
            "threshold percentile of held-out normal errors (default 99)",
        ),
        (
            "--outlier-fence",
            float,
            3.0,
            "leave normal rows whose error is beyond Q3 + K IQR of the log errors (anomalies "
            "hiding in the training data) out of the percentile; 0 keeps them (default 3)",
        ),
    ]
    for flag, kind, default, text in knobs:
        g.add_argument(flag, type=kind, default=default, help=text)
    g.add_argument(
        "--point-score",
        choices=("auto", "mean", "feature-max"),
        default="auto",
        help="how a row's per-feature errors become its score: their mean, or feature-max: each "
        "feature's error over its mean error on the training rows, then the largest (ODDS "
        "breast-cancer ROC-AUC 0.937 -> 0.960); auto: feature-max for tables, mean for images "
        "(default auto)",
    )
    g.add_argument(
        "--short-fit",
        choices=("off", "auto", "on"),
        default="off",
        help="stop training after 20 epochs: a briefly fitted network reconstructs rows outside "
        "the normal range worse, so they score higher (ODDS breast-cancer ROC-AUC 0.937 -> 0.951, "
        "builtin:sensors 0.997 -> 0.993); auto: tables below 2,000 normal rows only "
        "(default off)",
    )
    g.add_argument(
        "--calibration",
        choices=("auto", "holdout", "cross_fit"),
        default="auto",
        help="where the threshold's errors come from: the held-out calibration rows, or "
        "out-of-fold errors of every normal row from 3 extra trainings (auto: cross-fit below "
        "2,000 normal rows, where the held-out share is too small for a steady percentile)",
    )


def fit_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write loss, error, latent and reconstruction plots here",
    )
    g.add_argument(
        "--keep",
        type=int,
        default=artifact.DEFAULT_KEEP,
        help=f"versions to keep (default {artifact.DEFAULT_KEEP})",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress output")
