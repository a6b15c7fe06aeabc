"""The ``--report DIR`` of a windowed model: loss curves, the error histogram relative to each
key's threshold, and a few series drawn with their score, threshold and labelled ranges shaded.

Files: ``loss.png`` (fit only), ``errors.png`` (score / key threshold, so 1 is every key's
threshold), ``series.png`` (up to four keys, those with labelled ranges first), for sparse
models (``--sparsity``) ``code_activity.png`` (active code units per window, normal vs
anomalous), ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.series import SeriesRowScores
from trainer.data_series import SeriesData
from trainer.report import (
    ANOMALY_COLOR,
    NORMAL_COLOR,
    THRESHOLD_COLOR,
    _plt,
    plot_code_activity,
    plot_errors,
    plot_loss,
)

SERIES_SHOWN = 4


def write_series_report(
    out_dir: str | Path,
    bundle: artifact.ModelBundle,
    data: SeriesData,
    history: dict[str, list[float]] | None,
    metrics: dict[str, Any] | None = None,
) -> list[Path]:
    """Score ``data`` with ``bundle`` and write the report's files; returns their paths."""
    from trainer.evaluate_series import score_series

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = bundle.manifest
    result = score_series(bundle, data)
    labels = np.zeros(data.n_rows, np.int64) if data.labels is None else data.labels
    written: list[Path] = []
    if history:
        best = int(np.argmin(history.get("val_loss", history["loss"]))) + 1
        plot_loss(out / "loss.png", history, best, manifest.loss)
        written.append(out / "loss.png")
    scored = ~result.warming
    relative = result.scores[scored] / np.maximum(result.thresholds[scored], 1e-12)
    plot_errors(
        out / "errors.png",
        relative,
        labels[scored] != 0,
        1.0,
        manifest.percentile,
        manifest.error,
    )
    written.append(out / "errors.png")
    plot_series(out / "series.png", data, result, labels)
    written.append(out / "series.png")
    if manifest.hyperparameters.get("sparsity"):
        found = bundle.series.row_windows(data.x, data.keys, data.times)
        codes = bundle.series.encode(found.normalised())
        plot_code_activity(out / "code_activity.png", codes, labels[found.scored_rows])
        written.append(out / "code_activity.png")
    summary = {
        "version": manifest.version,
        "architecture": manifest.architecture,
        "window": bundle.series.window,
        "channels": manifest.feature_names,
        "pooled_threshold": manifest.threshold,
        "keys_with_own_threshold": len(bundle.series.thresholds.per_key),
        "validation_metrics": manifest.validation_metrics,
        "metrics": metrics,
        "files": [p.name for p in written],
        "notes": manifest.notes,
        "feedback": manifest.feedback.model_dump() if manifest.feedback else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return [*written, out / "summary.json"]


def _shown_keys(result: SeriesRowScores, labels: np.ndarray) -> list[int]:
    """Key codes to draw: those with labelled rows first, at most `SERIES_SHOWN`."""
    codes = result.index.key_codes
    labelled = np.unique(codes[labels != 0])
    others = np.setdiff1d(np.arange(len(result.index.key_names)), labelled)
    return [int(c) for c in np.concatenate([labelled, others])[:SERIES_SHOWN]]


def plot_series(path: Path, data: SeriesData, result: SeriesRowScores, labels: np.ndarray) -> None:
    """Per key: its channels (standardised for one axis) over time, and below them its score
    against its threshold, with the labelled ranges shaded in both."""
    plt = _plt()
    shown = _shown_keys(result, labels)
    fig, axes = plt.subplots(
        2 * len(shown), 1, figsize=(11, 2.6 * len(shown)), sharex=False, squeeze=False
    )
    index = result.index
    for n, code in enumerate(shown):
        rows = np.flatnonzero(index.key_codes == code)
        rows = rows[np.argsort(index.position[rows], kind="stable")]
        steps = np.arange(rows.size)
        values = data.x[rows]
        spread = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)
        top, bottom = axes[2 * n, 0], axes[2 * n + 1, 0]
        for j, name in enumerate(data.channel_names):
            top.plot(steps, (values[:, j] - values[:, j].mean()) / spread[j], lw=0.7, label=name)
        bottom.plot(steps, result.scores[rows], color=NORMAL_COLOR, lw=0.8, label="score")
        bottom.plot(
            steps, result.thresholds[rows], color=THRESHOLD_COLOR, ls="--", lw=1, label="threshold"
        )
        flagged = result.is_anomaly[rows]
        bottom.scatter(steps[flagged], result.scores[rows][flagged], s=6, color=ANOMALY_COLOR)
        for ax in (top, bottom):
            _shade(ax, labels[rows] != 0)
            ax.grid(alpha=0.3)
        bottom.set_yscale("log")
        bottom.set_xlim(top.get_xlim())
        top.set_title(f"key {index.key_names[code]}: channels (standardised)", fontsize=9)
        bottom.set_title("score vs its key's threshold; labelled ranges shaded", fontsize=9)
        top.legend(fontsize=7, loc="upper right")
        bottom.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _shade(ax: Any, labelled: np.ndarray) -> None:
    edges = np.diff(np.concatenate(([0], labelled.astype(np.int8), [0])))
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        ax.axvspan(start - 0.5, stop - 0.5, color=ANOMALY_COLOR, alpha=0.15, lw=0)
