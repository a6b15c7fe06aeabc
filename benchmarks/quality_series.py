"""Detection quality on keyed series (issue 12): windowed autoencoders against a point model,
IsolationForest on flattened causal windows, a rolling z-score, and PyOD 3's AutoEncoder and
LSTMAD on the same causal windows.

Two families of generated series (`trainer.builtin_machines`): ``machines`` (periodic load,
per-machine levels and rhythms) and ``machines-ar`` (mean-reverting pressure and flow with
regime switches). Each key's first 70 % of ticks is the fit part, the last 30 % the test part;
the test rows are scored with their causal windows, which reach back into the fit part as a live
worker's would. The windowed models train as ``anomaly-trainer fit --window`` does (time split
into train, validation and calibration inside the fit part, labelled windows left out, per-key
normalisation and thresholds). IsolationForest and the rolling z-score get the same per-key
normalisation, the same training windows and per-key thresholds by the same rule from the same
calibration windows, and so do PyOD's AutoEncoder (its defaults, on the flattened window) and
LSTMAD (the window's newest row predicted from the W-1 rows before it; its defaults but
``--lstmad-epochs``) when the ``bench`` extra is installed (`make bench-setup`; without it one
line says so and their rows are left out). The point model is `anomaly-trainer fit` without
``--window`` (one pooled threshold).

Metrics on the test rows: ROC-AUC and PR-AUC of the score relative to its key's threshold; F1
of the rows flagged at the default thresholds (issue 18's second target); event
recall (share of labelled ranges with a flagged row) and normal-row FPR at the default
thresholds, and the FPR of the normal rows whose window holds no labelled row (the rows right
after an anomaly see it in their window; calibration never does); and event recall at a normal-row FPR of 2 % (one cut on the relative score, chosen on
the test normals: the same oracle for every method).

    python benchmarks/quality_series.py                           # both families, 3 seeds
    python benchmarks/quality_series.py --families machines --seeds 1 --architectures dense,lstm
    python benchmarks/quality_series.py --only-windowed --architectures conv1d,sparse-conv1d
    python benchmarks/quality_series.py --only-windowed --architectures conv1d,conv1d:16x8
        # (conv1d:16x8 is conv1d with --hidden 16,8)
    python benchmarks/quality_series.py --baselines rolling-z,pyod-lstmad --lstmad-epochs 10
    python benchmarks/quality_series.py --series-scores channel-max --score-variants \
        --baselines rolling-z,pyod-lstmad --lstmad-epochs 20   # the score rules on one network
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score  # noqa: E402

from anomaly_contract.key_normaliser import KeyNormaliser  # noqa: E402
from anomaly_contract.key_thresholds import fit_key_thresholds  # noqa: E402
from anomaly_contract.model_dir import load_bundle  # noqa: E402
from anomaly_contract.series import channel_errors  # noqa: E402
from anomaly_contract.windows import index_windows  # noqa: E402
from benchmarks import baselines  # noqa: E402
from trainer.data_series import SeriesData, load_series  # noqa: E402
from trainer.evaluate_series import labelled_ranges  # noqa: E402
from trainer.fit import FitOptions, fit_model  # noqa: E402
from trainer.fit_series import (  # noqa: E402
    DEFAULT_SCORE_STEPS,
    DEFAULT_WINDOW_ARCHITECTURE,
    even_subsample,
    fit_series_model,
    split_series,
)
from trainer.history_clip import (  # noqa: E402
    DEFAULT_HISTORY_CLIP,
    HistoryClipOption,
    history_clip_option,
)
from trainer.publish import publish_model  # noqa: E402
from trainer.series_score_scales import (  # noqa: E402
    DEFAULT_SERIES_SCORE,
    SERIES_SCORES,
    SeriesScore,
    blend_scales,
    fit_channel_scales,
    fit_key_channel_scales,
)

FIT_SHARE = 0.7
TARGET_FPR = 0.02


@dataclass(frozen=True)
class Run:
    """One family and seed: the data, which rows fit and which test, and the options."""

    data: SeriesData
    fit: np.ndarray  # bool per row
    window: int
    seed: int
    epochs: int
    max_train_windows: int
    score_steps: int

    @property
    def fit_data(self) -> SeriesData:
        return _rows(self.data, self.fit)


@dataclass(frozen=True)
class Scores:
    relative: np.ndarray  # score / its key's threshold, per row (NaN while warming)
    seconds: float  # fit time
    # The same model's scores under another rule (name -> relative scores), e.g. one threshold.
    variants: dict[str, np.ndarray] = field(default_factory=dict)


def _rows(data: SeriesData, mask: np.ndarray) -> SeriesData:
    return replace(
        data,
        x=data.x[mask],
        keys=data.keys[mask],
        times=None if data.times is None else data.times[mask],
        labels=None if data.labels is None else data.labels[mask],
        ids=None,
    )


SPARSITY = 1e-3  # "sparse-conv1d" etc.: the architecture with --sparsity (the sparse autoencoder)


def network_options(name: str, **fit: object) -> FitOptions:
    """`FitOptions` for an architecture ``name``: ``sparse-`` before it adds ``--sparsity
    SPARSITY``, ``:16x8`` after it sets ``--hidden 16,8`` (conv filters or layer widths)."""
    name, _, hidden = name.partition(":")
    return FitOptions(
        architecture=name.removeprefix("sparse-"),  # type: ignore[arg-type]
        sparsity=SPARSITY if name.startswith("sparse-") else None,
        hidden=tuple(int(h) for h in hidden.split("x")) if hidden else None,
        **fit,  # type: ignore[arg-type]
    )


def windowed(
    run: Run,
    name: str,
    series_score: SeriesScore,
    score_variants: bool = False,
    history_clip: HistoryClipOption = DEFAULT_HISTORY_CLIP,
) -> Scores:
    """``name`` is an architecture as `network_options` reads it; ``series_score`` how
    `fit --window --series-score` turns element errors into the score. With
    ``score_variants``, the same network's test rows are also scored under the other rules of
    `SCORE_RULES`, each with per-key thresholds refitted on its calibration scores."""
    options = network_options(name, epochs=run.epochs, seed=run.seed)
    started = time.perf_counter()
    trained = fit_series_model(
        run.fit_data,
        run.window,
        options,
        quiet=True,
        max_train_windows=run.max_train_windows,
        score_steps=run.score_steps,
        series_score=series_score,
        history_clip=history_clip,
    )
    seconds = time.perf_counter() - started
    parts = split_series(run.fit_data, run.window, options)
    calibration_keys = parts.index.key_names[parts.index.window_keys[parts.calibration]]
    with tempfile.TemporaryDirectory() as model_dir:
        bundle = load_bundle(model_dir, publish_model(trained, model_dir))
        result = bundle.series.score_rows(run.data.x, run.data.keys, run.data.times)
        validation_keys = parts.index.key_names[parts.index.window_keys[parts.validation]]
        calibration = validation = None
        if score_variants:
            windows = run.fit_data.x[parts.index.rows[parts.calibration]]
            calibration = bundle.series.score_windows(windows, list(calibration_keys))
            windows = run.fit_data.x[parts.index.rows[parts.validation]]
            validation = bundle.series.score_windows(windows, list(validation_keys))
    thresholds = bundle.series.thresholds
    variants = {}
    if not score_variants:
        # Per-key thresholds from fewer calibration windows than the default minimum (which
        # keys with 1,400 fit ticks do not reach): calibration errors in `split_series` order.
        own = fit_key_thresholds(trained.calibration_errors, calibration_keys, 99.0, min_windows=50)
        variants = {
            "one pooled threshold": result.scores / thresholds.pooled,
            "per-key thresholds from >= 50 windows": result.scores
            / own.thresholds_for(result.keys),
        }
    else:
        assert calibration is not None and validation is not None
        steps = bundle.series.score_steps
        test_keys = result.keys[result.scored_rows]
        sets = ChannelSets(
            channel_errors(calibration.element_errors, steps),
            calibration_keys,
            channel_errors(validation.element_errors, steps),
            validation_keys,
            channel_errors(result.element_errors, steps),
            test_keys,
        )
        for rule, reduce in SCORE_RULES.items():
            cal_scores, test_scores = reduce(sets)
            own_thresholds = fit_key_thresholds(cal_scores, calibration_keys, 99.0)
            relative = np.full(result.scores.shape[0], np.nan)
            relative[result.scored_rows] = own_thresholds.relative_scores(test_scores, test_keys)
            variants[f"score {rule}"] = relative
    return Scores(result.scores / result.thresholds, seconds, variants)


@dataclass(frozen=True)
class ChannelSets:
    """Channel errors (n, C) of the scored rows of one network's calibration, validation and
    test windows, and each window's key."""

    cal: np.ndarray
    cal_keys: np.ndarray
    val: np.ndarray
    val_keys: np.ndarray
    test: np.ndarray
    test_keys: np.ndarray


Reduce = Callable[[ChannelSets], tuple[np.ndarray, np.ndarray]]  # -> calibration, test scores


def _scaled(
    quantile: float,
    combine: Callable[[np.ndarray], np.ndarray],
    per_key: bool = False,
    from_validation: bool = False,
) -> Reduce:
    """Channel errors over their ``quantile`` on the calibration windows (pooled, or each key's
    own), or with ``from_validation`` the trainer's ``channel_max_per_key`` rule at that
    quantile (`fit_key_channel_scales` on the validation windows); then ``combine`` over
    channels (n, C) -> (n,)."""

    def reduce(c: ChannelSets) -> tuple[np.ndarray, np.ndarray]:
        if from_validation:
            pooled, own = fit_key_channel_scales(c.val, c.val_keys, quantile)
        else:
            pooled = fit_channel_scales(c.cal, quantile)
            own = {}
            if per_key:
                own = {
                    str(k): fit_channel_scales(c.cal[c.cal_keys == k], quantile)
                    for k in np.unique(c.cal_keys)
                }
        if not own:
            return combine(c.cal / pooled), combine(c.test / pooled)
        cal_scales = np.stack([own.get(str(k), pooled) for k in c.cal_keys])
        test_scales = np.stack([own.get(str(k), pooled) for k in c.test_keys])
        return combine(c.cal / cal_scales), combine(c.test / test_scales)

    return reduce


def _robust_z(c: ChannelSets) -> tuple[np.ndarray, np.ndarray]:
    """Largest (error - median) / MAD over channels, both from the calibration errors."""
    median = np.median(c.cal, axis=0)
    mad = np.maximum(np.median(np.abs(c.cal - median), axis=0), 1e-12)
    return ((c.cal - median) / mad).max(axis=1), ((c.test - median) / mad).max(axis=1)


def _top2(z: np.ndarray) -> np.ndarray:
    return np.sort(z, axis=1)[:, -2:].mean(axis=1)


def _soft_max(z: np.ndarray, temperature: float = 0.25) -> np.ndarray:
    peak = z.max(axis=1, keepdims=True)
    return (
        peak + temperature * np.log(np.exp((z - peak) / temperature).sum(axis=1, keepdims=True))
    )[:, 0]


def _max(z: np.ndarray) -> np.ndarray:
    return z.max(axis=1)


def _blend(combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Reduce:
    """The mean score and the per-key channel max (p90 of validation), each over its own
    pooled p99 of calibration (the trainer's `blend_scales`), then ``combine``d."""
    per_key = _scaled(0.90, _max, from_validation=True)

    def reduce(c: ChannelSets) -> tuple[np.ndarray, np.ndarray]:
        mean_cal, mean_test = c.cal.mean(axis=1), c.test.mean(axis=1)
        key_cal, key_test = per_key(c)
        mean_scale, key_scale = blend_scales(mean_cal, key_cal)
        return (
            combine(mean_cal / mean_scale, key_cal / key_scale),
            combine(mean_test / mean_scale, key_test / key_scale),
        )

    return reduce


# The rules --score-variants compares on one trained network (`ChannelSets` -> scores).
SCORE_RULES: dict[str, Reduce] = {
    "mean (as before)": lambda c: (c.cal.mean(axis=1), c.test.mean(axis=1)),
    "channel max, unscaled": lambda c: (c.cal.max(axis=1), c.test.max(axis=1)),
    "channel max / p99": _scaled(0.99, _max),
    "channel max / p95": _scaled(0.95, _max),
    "channel max / p90": _scaled(0.90, _max),
    "channel max / median": _scaled(0.5, _max),
    "channel max of (e - median) / MAD": _robust_z,
    "top-2 mean / p99": _scaled(0.99, _top2),
    "soft max (T = 0.25) / p99": _scaled(0.99, _soft_max),
    "channel max / per-key p99 of calibration": _scaled(0.99, _max, per_key=True),
    "channel max / per-key p90 of calibration": _scaled(0.90, _max, per_key=True),
    "channel max / per-key p90 of validation": _scaled(0.90, _max, from_validation=True),
    "channel max / per-key p95 of validation": _scaled(0.95, _max, from_validation=True),
    "channel max / per-key p75 of validation": _scaled(0.75, _max, from_validation=True),
    "channel max / per-key median of validation": _scaled(0.5, _max, from_validation=True),
    "soft max (T = 0.25) / per-key p90 of validation": _scaled(
        0.90, _soft_max, from_validation=True
    ),
    "mean and per-key channel max, averaged": _blend(lambda a, b: (a + b) / 2),
    "mean and per-key channel max, geometric mean": _blend(lambda a, b: np.sqrt(a * b)),
    "mean and per-key channel max, larger": _blend(np.maximum),
}


def point_model(run: Run) -> Scores:
    """The trainer's default point model on the fit part's rows, its own pooled threshold."""
    fit = run.fit_data
    options = FitOptions(epochs=run.epochs, seed=run.seed)
    started = time.perf_counter()
    trained = fit_model(fit.x, fit.channel_names, fit.labels, options, quiet=True)
    seconds = time.perf_counter() - started
    return Scores(trained.scores(run.data.x) / trained.threshold, seconds)


def window_baseline(run: Run, detector: baselines.Detector) -> Scores:
    """A detector on normalised causal windows, thresholded per key like the trainer.

    ``detector(train_windows, seed)`` returns the function scoring windows (n, W, C)."""
    started = time.perf_counter()
    fit = run.fit_data
    parts = split_series(fit, run.window, FitOptions())
    train_rows = np.unique(parts.index.rows[parts.train])
    normaliser = KeyNormaliser.fit(fit.x[train_rows], fit.keys[train_rows])
    fit_windows = normaliser.transform_rows(fit.x, fit.keys)[parts.index.rows]
    trained_on = even_subsample(parts.train, run.max_train_windows)
    fit_keys = parts.index.key_names[parts.index.window_keys].astype(str)
    score = detector(fit_windows[trained_on], run.seed)
    calibration = score(fit_windows[parts.calibration])
    thresholds = fit_key_thresholds(calibration, fit_keys[parts.calibration], 99.0)
    index = index_windows(run.data.keys, run.data.x.shape[0], run.window, run.data.times)
    windows = normaliser.transform_rows(run.data.x, run.data.keys)[index.rows]
    window_scores = score(windows)
    relative = np.full(run.data.x.shape[0], np.nan)
    relative[index.end_rows] = thresholds.relative_scores(
        window_scores, run.data.keys[index.end_rows]
    )
    return Scores(relative, time.perf_counter() - started)


def rolling_z(_train: np.ndarray, _seed: int) -> baselines.Scorer:
    """The newest row's largest |z| against the W-1 rows before it (of its key); no fitting."""

    def score(windows: np.ndarray) -> np.ndarray:
        before = windows[:, :-1, :]
        spread = np.maximum(before.std(axis=1), 1e-6)
        return (np.abs(windows[:, -1, :] - before.mean(axis=1)) / spread).max(axis=1)

    return score


def test_metrics(run: Run, scores: Scores) -> dict[str, float]:
    data, test = run.data, ~run.fit
    assert data.labels is not None
    truth = data.labels != 0
    relative = np.nan_to_num(scores.relative, nan=0.0)
    normal = test & ~truth
    cut = float(np.quantile(relative[normal], 1.0 - TARGET_FPR))
    index = index_windows(data.keys, data.x.shape[0], run.window, data.times)
    ranges = [r[test[r]] for r in labelled_ranges(data.labels, index)]
    ranges = [r for r in ranges if r.size]

    # Normal rows whose window holds no labelled row: the rows a threshold is calibrated for.
    clean = np.zeros(data.x.shape[0], dtype=bool)
    clean[index.end_rows] = ~truth[index.rows].any(axis=1)
    clean &= normal

    def recall(flags: np.ndarray) -> float:
        return float(np.mean([flags[r].any() for r in ranges]))

    return {
        "roc_auc": float(roc_auc_score(truth[test], relative[test])),
        "pr_auc": float(average_precision_score(truth[test], relative[test])),
        "f1": float(f1_score(truth[test], relative[test] > 1.0)),
        "event_recall": recall(relative > 1.0),
        "fpr": float(np.mean(relative[normal] > 1.0)),
        "fpr_clean": float(np.mean(relative[clean] > 1.0)),
        "event_recall_at_2pct": recall(relative > cut),
        "fit_seconds": scores.seconds,
    }


def family_runs(family: str, args: argparse.Namespace) -> list[Run]:
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        source = f"builtin:{family}?keys={args.keys}&length={args.length}&seed={seed}"
        data = load_series(source, key_column="key", time_column="t")
        assert data.times is not None
        fit = data.times < FIT_SHARE * args.length
        runs.append(
            Run(
                data,
                fit,
                args.window,
                seed,
                args.epochs,
                args.max_train_windows,
                args.score_steps,
            )
        )
    return runs


# Baselines on windows --baselines can choose from: the table's row name and whether it needs PyOD.
BASELINES: dict[str, tuple[str, bool]] = {
    "point": ("point model (dense)", False),
    "isolation-forest": ("IsolationForest on windows", False),
    "rolling-z": ("rolling z-score", False),
    "pyod-autoencoder": ("PyOD AutoEncoder on windows", True),
    "pyod-lstmad": ("PyOD LSTMAD on windows", True),
}


def methods(args: argparse.Namespace) -> dict[str, Callable[[Run], Scores]]:
    table: dict[str, Callable[[Run], Scores]] = {}
    for arch, score, clip in itertools.product(
        args.architectures, args.series_scores, args.history_clips
    ):
        label = f"windowed {arch}" + ("" if len(args.series_scores) == 1 else f", {score}")
        if len(args.history_clips) > 1:
            label += f", history clip {'off' if clip is None else clip}"
        table[label] = partial(
            windowed,
            name=arch,
            series_score=score,
            score_variants=args.score_variants,
            history_clip=clip,
        )
    if args.only_windowed:
        return table
    detectors: dict[str, baselines.Detector] = {
        "isolation-forest": baselines.isolation_forest(n_estimators=200),
        "rolling-z": rolling_z,
        "pyod-autoencoder": baselines.pyod_autoencoder,
        "pyod-lstmad": baselines.pyod_lstmad(args.lstmad_epochs),
    }
    for name in args.baselines:
        row = BASELINES[name][0]
        if name == "point":
            table[row] = point_model
        else:
            table[row] = partial(window_baseline, detector=detectors[name])
    return table


def scoring_speed(architecture: str, window: int, batch: int = 500, n: int = 20_000) -> float:
    """Windows scored per second by `SeriesModel.score_windows` in batches of ``batch`` (a
    worker's micro-batch), for a briefly trained model of ``architecture`` (3 channels)."""
    data = load_series("builtin:machines?keys=4&length=400", key_column="key", time_column="t")
    trained = fit_series_model(data, window, network_options(architecture, epochs=1), quiet=True)
    with tempfile.TemporaryDirectory() as model_dir:
        series = load_bundle(model_dir, publish_model(trained, model_dir)).series
        windows = np.random.default_rng(0).normal(size=(n, window, 3)) * 3 + 40
        keys = list(np.array(sorted(series.normaliser.trained_keys()))[np.arange(n) % 4])
        series.score_windows(windows[:batch], keys[:batch])  # traces TensorFlow's function
        started = time.perf_counter()
        for start in range(0, n, batch):
            series.score_windows(windows[start : start + batch], keys[start : start + batch])
        return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="machines,machines-ar")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed ... (other draws of the data)"
    )
    ap.add_argument("--keys", type=int, default=40)
    ap.add_argument("--length", type=int, default=2000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--max-train-windows", type=int, default=8000)
    ap.add_argument("--score-steps", type=int, default=DEFAULT_SCORE_STEPS)
    ap.add_argument("--only-windowed", action="store_true", help="leave the baselines out")
    ap.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated baselines (default all): {', '.join(BASELINES)}",
    )
    ap.add_argument(
        "--lstmad-epochs", type=int, default=None, help="PyOD LSTMAD's epochs (default its own, 50)"
    )
    ap.add_argument(
        "--speed", action="store_true", help="only time score_windows for each architecture"
    )
    ap.add_argument(
        "--architectures",
        type=lambda s: [a.strip() for a in s.split(",") if a.strip()],
        default=[DEFAULT_WINDOW_ARCHITECTURE],
    )
    ap.add_argument(
        "--series-scores",
        type=lambda s: [a.strip().replace("-", "_") for a in s.split(",") if a.strip()],
        default=[DEFAULT_SERIES_SCORE],
        help=f"comma-separated `fit --series-score` rules, a row each: {', '.join(SERIES_SCORES)}",
    )
    ap.add_argument(
        "--history-clips",
        type=lambda s: [history_clip_option(a.strip()) for a in s.split(",") if a.strip()],
        default=[DEFAULT_HISTORY_CLIP],
        help="comma-separated `fit --history-clip` values (auto, off, Z), a row each",
    )
    ap.add_argument(
        "--score-variants",
        action="store_true",
        help="also score each windowed network under the other rules of SCORE_RULES",
    )
    args = ap.parse_args(argv)
    try:
        args.baselines = baselines.choose(
            args.baselines, BASELINES, {name for name, (_, pyod) in BASELINES.items() if pyod}
        )
    except ValueError as exc:
        ap.error(f"--baselines: {exc}")
    unknown = [s for s in args.series_scores if s not in SERIES_SCORES]
    if unknown:
        ap.error(f"--series-scores: unknown {', '.join(unknown)}")
    if args.speed:
        for arch in args.architectures:
            rate = scoring_speed(arch, args.window)
            print(f"- windowed {arch}, W={args.window} x 3: {rate:,.0f} windows/s", flush=True)
        return 0
    started = time.perf_counter()
    day = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"Series quality ({day}; W={args.window}, {args.keys} keys x {args.length} ticks, "
        f"seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, mean ± sd; epochs <= {args.epochs}, score steps {args.score_steps}, "
        f"series scores {','.join(args.series_scores)}, history clips "
        f"{','.join('off' if c is None else str(c) for c in args.history_clips)}, "
        f"<= {args.max_train_windows} training windows; PyOD LSTMAD epochs "
        f"{args.lstmad_epochs or 'its default (50)'}; torch threads {baselines.TORCH_THREADS})\n"
    )
    for family in args.families.split(","):
        runs = family_runs(family, args)
        print(f"\n**builtin:{family}**\n")
        print(
            "| method | ROC-AUC | PR-AUC | F1 | event recall | normal FPR | FPR, clean windows "
            "| event recall at FPR 2 % | fit s |\n|---|---|---|---|---|---|---|---|---|"
        )
        for name, method in methods(args).items():
            scored = [(run, method(run)) for run in runs]
            print_row(name, [test_metrics(run, scores) for run, scores in scored])
            for variant in scored[0][1].variants:
                print_row(
                    f"{name}, {variant}",
                    [
                        test_metrics(run, replace(scores, relative=scores.variants[variant]))
                        for run, scores in scored
                    ],
                )
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")
    return 0


def print_row(name: str, results: list[dict[str, float]]) -> None:
    """One table row: mean ± sd over the seeds of each metric, and the mean fit time."""
    cells = []
    for metric in (
        "roc_auc",
        "pr_auc",
        "f1",
        "event_recall",
        "fpr",
        "fpr_clean",
        "event_recall_at_2pct",
    ):
        values = np.array([r[metric] for r in results])
        cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
    fit_s = np.mean([r["fit_seconds"] for r in results])
    print(f"| {name} | {' | '.join(cells)} | {fit_s:.0f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
