"""Detection quality of the default trainer against scikit-learn's IsolationForest, in one run.

Each set is split into normal rows to train on and a test set (the remaining normal rows plus the
anomalies). The autoencoder is trained with `trainer.fit.fit_model` and default options; the
IsolationForest is fitted on the same normal rows the trainer learns from (its train and validation
rows: a little more than the autoencoder's gradient steps see) and thresholded by the same rule on
the same rows: the 99th percentile of scores on the trainer's calibration rows, which neither model
saw, or, where the trainer cross-fits its threshold (fewer than 2,000 normal rows), the 99th
percentile of out-of-fold scores of all normal rows over the trainer's folds (one forest per fold),
in both cases leaving out scores beyond the far-out fence of their logs (`trainer.fit.outlier_fence`).
Both are scored on the same test rows and F1 is computed the same way (anomaly = positive).
Each set is repeated over several random splits; the table gives mean ± standard deviation, the
share of test normals flagged (FPR, the target is 1 %) and the F1 of flagging every test row: on
one-class digits 97 % of the test rows are anomalies, so F1 rewards any low threshold there and
that floor is ~0.98.

    python benchmarks/quality.py            # every set, markdown table on stdout
    python benchmarks/quality.py --quick    # fewer repeats, no 60,000 x 784 timing
    python benchmarks/quality.py --datasets "one-class (9),noise" --repeats 3
    python benchmarks/quality.py --variants vae,sparse   # more trainer variants on the same splits

``--series`` runs the time-series section instead (`benchmarks/quality_series.py`: windowed models
against a point model, IsolationForest on windows and a rolling z-score on keyed series; the
options after it go to that script).

``--variants`` adds trainer variants next to the default, each trained and thresholded exactly like
it on the same splits: ``vae`` (``--architecture vae``) and ``sparse`` (``--sparsity 1e-3``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402

from trainer.calibration import calibrate  # noqa: E402
from trainer.fit import (  # noqa: E402
    CROSS_FIT_FOLDS,
    FitOptions,
    calibration_method,
    cross_fit_folds,
    fit_model,
    outlier_fence,
    reconstruction_errors,
    split_normal_rows,
)

TEST_SHARE = 0.3  # share of normal rows kept for the test set
# Trainer variants --variants can add, as FitOptions fields on top of the defaults.
VARIANTS: dict[str, dict[str, object]] = {
    "vae": {"architecture": "vae"},
    "sparse": {"sparsity": 1e-3},
}


@dataclass
class Case:
    name: str
    x: np.ndarray
    labels: np.ndarray  # 0 normal, 1 anomaly
    image_shape: tuple[int, ...] | None = None


@dataclass
class Result:
    ae_auc: float
    if_auc: float
    ae_f1: float
    if_f1: float
    ae_fpr: float  # share of test normals above the threshold (the target is 1 - percentile)
    if_fpr: float
    all_f1: float  # F1 of flagging every test row: the floor a threshold has to beat
    variants: dict[str, tuple[float, float, float]] | None = None  # name -> (ROC-AUC, F1, FPR)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data / 16.0, d.target


def cases(quick: bool) -> Iterator[Case]:
    from sklearn.datasets import load_breast_cancer, load_wine

    try:
        from trainer.data import load_dataset

        ds = load_dataset("builtin:sensors")
        assert ds.labels is not None
        yield Case("builtin:sensors", ds.x, (ds.labels != 0).astype(int))
    except ImportError as exc:
        print(f"skipping builtin:sensors: {exc}", file=sys.stderr)

    x, y = digits()
    for k in range(10) if not quick else (0, 3, 8):
        yield Case(f"digits one-class ({k})", x, (y != k).astype(int), (8, 8))

    rng = np.random.default_rng(0)
    noise = rng.uniform(0.0, 1.0, size=(180, 64))
    yield Case(
        "digits + uniform noise",
        np.vstack([x, noise]),
        np.r_[np.zeros(len(x), int), np.ones(len(noise), int)],
        (8, 8),
    )

    # ODDS "wine": classes 2 and 3 are normal, 10 rows of class 1 are the outliers.
    w = load_wine()
    normal = np.flatnonzero(w.target != 0)
    outl = rng.choice(np.flatnonzero(w.target == 0), 10, replace=False)
    idx = np.r_[normal, outl]
    yield Case("ODDS wine", w.data[idx], (w.target[idx] == 0).astype(int))

    # ODDS "wbc": benign rows are normal, 21 malignant rows are the outliers.
    b = load_breast_cancer()
    benign = np.flatnonzero(b.target == 1)
    outl = rng.choice(np.flatnonzero(b.target == 0), 21, replace=False)
    idx = np.r_[benign, outl]
    yield Case("ODDS breast-cancer", b.data[idx], (b.target[idx] == 0).astype(int))


def _autoencoder(
    case: Case, fit_rows: np.ndarray, test: np.ndarray, opts: FitOptions
) -> tuple[float, float, float]:
    """Train on ``fit_rows`` with ``opts``; ROC-AUC, F1 and FPR at its own threshold on ``test``."""
    truth = case.labels[test]
    names = [f"f{i}" for i in range(case.x.shape[1])]
    trained = fit_model(case.x[fit_rows], names, None, opts, quiet=True)
    xs = trained.scaler.transform(case.x[test])
    scores = reconstruction_errors(
        trained.model, xs, trained.spec.input_shape, trained.manifest.error
    )
    pred = scores > trained.threshold
    return (
        float(roc_auc_score(truth, scores)),
        float(f1_score(truth, pred)),
        float(pred[truth == 0].mean()),
    )


def run_case(case: Case, seed: int, options: FitOptions, variants: tuple[str, ...] = ()) -> Result:
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(case.labels == 0))
    n_test = int(round(len(normal) * TEST_SHARE))
    fit_rows, test_normal = normal[n_test:], normal[:n_test]
    test = np.r_[test_normal, np.flatnonzero(case.labels != 0)]
    truth = case.labels[test]
    opts = FitOptions(**{**options.__dict__, "seed": seed, "image_shape": case.image_shape})
    ae_auc, ae_f1, ae_fpr = _autoencoder(case, fit_rows, test, opts)
    extra = {
        name: _autoencoder(case, fit_rows, test, FitOptions(**{**opts.__dict__, **VARIANTS[name]}))
        for name in variants
    }

    # IsolationForest: same training rows (train + validation), same threshold rule: the
    # percentile of the calibration rows' scores, or, where the trainer cross-fits, of the
    # out-of-fold scores of all normal rows over the trainer's folds; scores beyond the far-out
    # fence left out in both cases.
    tr, va, cal = split_normal_rows(
        len(fit_rows), opts.validation_split, opts.calibration_split, seed
    )
    forest = IsolationForest(random_state=seed).fit(case.x[fit_rows[np.r_[tr, va]]])
    if calibration_method(opts.calibration, len(fit_rows)) == "cross_fit":
        folds = cross_fit_folds(len(fit_rows), CROSS_FIT_FOLDS, seed)
        cal_scores = np.empty(len(fit_rows))
        for k in range(CROSS_FIT_FOLDS):
            fold = IsolationForest(random_state=seed).fit(case.x[fit_rows[folds != k]])
            cal_scores[folds == k] = -fold.score_samples(case.x[fit_rows[folds == k]])
    else:
        cal_scores = -forest.score_samples(case.x[fit_rows[cal]])
    if_scores = -forest.score_samples(case.x[test])
    if_threshold, _ = calibrate(
        cal_scores, opts.percentile, fence=outlier_fence(cal_scores, opts.outlier_fence)
    )
    if_pred = if_scores > if_threshold
    return Result(
        ae_auc=ae_auc,
        if_auc=roc_auc_score(truth, if_scores),
        ae_f1=ae_f1,
        if_f1=f1_score(truth, if_pred),
        ae_fpr=ae_fpr,
        if_fpr=float(if_pred[truth == 0].mean()),
        all_f1=f1_score(truth, np.ones_like(truth)),
        variants=extra,
    )


_SCALARS = tuple(f for f in Result.__dataclass_fields__ if f != "variants")


def _summarise(results: list[Result], stat) -> Result:  # type: ignore[no-untyped-def]
    names = results[0].variants or {}
    return Result(
        *(float(stat([getattr(r, f) for r in results])) for f in _SCALARS),
        variants={
            n: tuple(float(stat([(r.variants or {})[n][i] for r in results])) for i in range(3))  # type: ignore[misc]
            for n in names
        },
    )


def mean_result(results: list[Result]) -> Result:
    return _summarise(results, np.mean)


def spread_result(results: list[Result]) -> Result:
    """Standard deviation over the splits (0 for a single split)."""
    return _summarise(results, np.std)


def time_digits() -> str:
    x, _ = digits()
    started = time.perf_counter()
    trained = fit_model(
        x, [f"p{i}" for i in range(64)], None, FitOptions(image_shape=(8, 8)), quiet=True
    )
    took = time.perf_counter() - started
    epochs = len(trained.history["loss"])
    return (
        f"builtin:digits (1,797 x 64, defaults): {took:.1f} s total, {epochs} epochs, "
        f"{trained.train_seconds / epochs * 1000:.0f} ms per epoch"
    )


def time_large(architecture: str) -> str:
    rng = np.random.default_rng(0)
    # Low-rank structure plus noise, in [0, 1] like pixels.
    basis = rng.normal(size=(16, 784))
    x = 1.0 / (1.0 + np.exp(-(rng.normal(size=(60_000, 16)) @ basis) / 4.0))
    x = (x + rng.normal(scale=0.02, size=x.shape)).clip(0, 1)
    epochs = 2
    opts = FitOptions(image_shape=(28, 28), architecture=architecture, epochs=epochs)  # type: ignore[arg-type]
    trained = fit_model(x, [f"p{i}" for i in range(784)], None, opts, quiet=True)
    per_epoch = trained.train_seconds / len(trained.history["loss"])
    return (
        f"60,000 x 784 synthetic rows, {architecture} default model "
        f"({trained.spec.hidden} -> {trained.spec.latent}, batch "
        f"{trained.manifest.hyperparameters['batch_size']}): {per_epoch:.1f} s per epoch"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--series" in argv:
        from benchmarks.quality_series import main as series_main

        return series_main([a for a in argv if a != "--series"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sets and repeats, no large timing")
    ap.add_argument("--repeats", type=int, default=None, help="random splits per set (default 3)")
    ap.add_argument(
        "--datasets",
        "--only",
        default=None,
        help="comma-separated parts of set names to run, e.g. 'one-class (9),noise'",
    )
    ap.add_argument(
        "--variants",
        default="",
        help=f"comma-separated trainer variants to add: {', '.join(VARIANTS)}",
    )
    args = ap.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    wanted = [w.strip() for w in args.datasets.split(",")] if args.datasets else None
    repeats = args.repeats or (1 if args.quick else 3)
    options = FitOptions()
    started = time.perf_counter()
    rows = []
    for case in cases(args.quick):
        if wanted and not any(w in case.name for w in wanted):
            continue
        per_split = [run_case(case, seed, options, variants) for seed in range(repeats)]
        r, sd = mean_result(per_split), spread_result(per_split)
        ratio = r.ae_auc / r.if_auc if r.if_auc else float("nan")
        line = (
            f"| {case.name} | {r.ae_auc:.3f} ± {sd.ae_auc:.3f} | {r.if_auc:.3f} ± {sd.if_auc:.3f} "
            f"| {r.ae_f1:.3f} ± {sd.ae_f1:.3f} | {r.if_f1:.3f} ± {sd.if_f1:.3f} | {ratio:.3f} "
            f"| {r.ae_fpr:.3f} / {r.if_fpr:.3f} | {r.all_f1:.3f} |"
            + "".join(
                f" {r.variants[v][0]:.3f} ± {sd.variants[v][0]:.3f} "  # type: ignore[index]
                f"| {r.variants[v][1]:.3f} ± {sd.variants[v][1]:.3f} "  # type: ignore[index]
                f"| {r.variants[v][2]:.3f} |"  # type: ignore[index]
                for v in variants
            )
        )
        rows.append((r, line))
        print(line, file=sys.stderr, flush=True)
    timing: list[str] = []
    if not wanted:
        timing.append(time_digits())
        if not args.quick:
            timing += [time_large("dense"), time_large("conv")]
    day = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"Detection quality, default trainer vs IsolationForest ({day}; "
        f"mean ± standard deviation over {repeats} splits)\n"
    )
    print(
        "| dataset | AE ROC-AUC | IF ROC-AUC | AE F1 | IF F1 | ratio (AE/IF ROC-AUC) "
        "| test FPR (AE / IF) | F1 flagging all |"
        + "".join(f" {v} ROC-AUC | {v} F1 | {v} FPR |" for v in variants)
    )
    print("|---|---|---|---|---|---|---|---|" + "---|" * (3 * len(variants)))
    for _, line in rows:
        print(line)
    if rows:
        wins = sum(r.ae_auc >= r.if_auc and r.ae_f1 >= r.if_f1 for r, _ in rows)
        print(f"\nAE at or above IF on both ROC-AUC and F1: {wins} of {len(rows)} sets")
    for t in timing:
        print(f"\n- {t}")
    print(f"\n(benchmark run took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
