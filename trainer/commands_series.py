"""The trainer's commands on windowed models (``fit --window``, and score, evaluate, encode,
decode, denoise with a version whose manifest has a ``series`` section).

`trainer.commands` hands over to these when the data or the model is windowed; the output
contract is PRODUCT.md's "Series per key": one line per input row, in input order, with ``key``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import ConfigError, DataError
from anomaly_contract.kafka_connection import KafkaConnection
from trainer.commands import write_lines
from trainer.data_series import SeriesData, default_series_columns, load_series


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _model_series(args: argparse.Namespace, bundle: artifact.ModelBundle) -> SeriesData:
    from trainer.evaluate_series import load_model_series

    return load_model_series(
        args.data,
        bundle,
        key_column=getattr(args, "key_column", None),
        time_column=getattr(args, "time_column", None),
        label_column=getattr(args, "label_column", None),
    )


def series_score_option(value: str | None) -> Any:
    """``--series-score`` (None: the default) as `fit_series_model` takes it."""
    from trainer.series_score_scales import DEFAULT_SERIES_SCORE

    return DEFAULT_SERIES_SCORE if value is None else value.replace("-", "_")


def fit_series(
    args: argparse.Namespace, options: Any, kafka: KafkaConnection, read: Any = None
) -> int:
    """``fit DATA --window W``: train, calibrate per key and publish a windowed version (to the
    model topic too with ``--publish-topic``)."""
    from trainer.fit_series import fit_series_model
    from trainer.history_clip import history_clip_option
    from trainer.publish import publish_from_model_dir, publish_model

    if args.exclude_flagged == "yes":
        raise ConfigError("--exclude-flagged is for point models; windowed fits leave it out")
    default_key, default_time = default_series_columns(args.data)
    data = load_series(
        args.data,
        key_column=args.key_column or default_key,
        time_column=args.time_column or default_time,
        label_column=args.label_column,
        features=args.features,
    )
    feedback = None
    if read is not None:
        from trainer.commands import feedback_labels
        from trainer.feedback_source import series_refs

        feedback = feedback_labels(read, series_refs(data), args)
    trained = fit_series_model(
        data,
        args.window,
        options,
        quiet=args.quiet,
        score_steps=args.score_steps,
        feedback=feedback,
        series_score=series_score_option(args.series_score),
        history_clip=history_clip_option(args.history_clip),
    )
    version = publish_model(trained, args.model_dir, keep=args.keep)
    if args.publish_topic:
        publish_from_model_dir(args.publish_topic, args.model_dir, version, connection=kafka)
        _err(f"sent {version} to model topic {args.publish_topic}")
    if args.report:
        from anomaly_contract.model_dir import load_bundle
        from trainer.report_series import write_series_report

        write_series_report(
            args.report, load_bundle(args.model_dir, version), data, trained.history
        )
    m = trained.manifest
    vm = m.validation_metrics
    extra = "".join(f", {k} {vm[k]:.4f}" for k in ("roc_auc", "pr_auc") if k in vm)
    assert m.series is not None
    keys = len(m.series.thresholds["per_key"])
    print(
        f"published {version} to {args.model_dir}: windowed {m.architecture}, W={args.window}, "
        f"{len(m.series.normaliser['keys'])} keys ({keys} with their own threshold, pooled "
        f"{m.threshold:.6g}), val_loss {vm['val_loss']:.5g}{extra}"
        + (f"; report in {args.report}" if args.report else "")
    )
    if m.feedback is not None:
        from trainer.commands import feedback_line

        print(feedback_line(m.feedback))
    return 0


def score_series_command(args: argparse.Namespace, bundle: artifact.ModelBundle) -> int:
    from trainer.evaluate_series import score_series, write_series_scores

    data = _model_series(args, bundle)
    result = score_series(bundle, data)
    write_lines(args.output, lambda fh: write_series_scores(fh, result, data.ids))
    _err(
        f"scored {data.n_rows} rows of {len(result.index.key_names)} keys with {bundle.version}: "
        f"{int(result.is_anomaly.sum())} above their key's threshold, "
        f"{int(result.warming.sum())} warming"
    )
    return 0


def evaluate_series_command(args: argparse.Namespace, bundle: artifact.ModelBundle) -> int:
    from trainer.evaluate_series import evaluate_series, format_series_metrics

    data = _model_series(args, bundle)
    if data.labels is None:
        raise ConfigError("evaluate needs labels: pass --label-column COL (0 = normal)")
    metrics, _ = evaluate_series(bundle, data, data.labels)
    if args.report:
        from trainer.report_series import write_series_report

        write_series_report(args.report, bundle, data, None, metrics)
    print(json.dumps(metrics) if args.json else format_series_metrics(metrics))
    return 0


def encode_series_command(args: argparse.Namespace, bundle: artifact.ModelBundle) -> int:
    """One code per row that closes a window (warming rows have none); ``row`` ids them."""
    from trainer.evaluate import write_table

    data = _model_series(args, bundle)
    found = _row_windows(bundle, data)
    codes = bundle.series.encode(found.normalised())
    ids = _row_ids(data, found.scored_rows)
    write_table(args.output, codes, [f"z{i}" for i in range(codes.shape[1])], ids)
    print(
        f"encoded {len(codes)} windows of W={bundle.series.window} to {args.output} "
        f"({data.n_rows - len(codes)} warming rows have none): "
        f"{bundle.manifest.input_size} -> {codes.shape[1]} values per window"
    )
    return 0


def decode_series_command(args: argparse.Namespace, bundle: artifact.ModelBundle) -> int:
    """Codes -> windows in the model's normalised units (a code carries no key, so no level)."""
    from trainer.data import load_dataset
    from trainer.evaluate import write_table

    ds = load_dataset(args.data, min_rows=1)
    latent = bundle.manifest.latent_dim
    if ds.x.shape[1] != latent or not np.all(np.isfinite(ds.x)):
        raise DataError(
            f"codes have {ds.x.shape[1]} values per row but model {bundle.version} has a latent "
            f"size of {latent}: use codes written by `anomaly-trainer encode` with this version"
        )
    series = bundle.series
    windows = series.decode(ds.x).reshape(ds.x.shape[0], -1)
    columns = [
        f"{name}@t-{series.window - 1 - step}"
        for step in range(series.window)
        for name in series.channel_names
    ]
    write_table(args.output, windows, columns, ds.ids)
    print(
        f"decoded {len(windows)} codes to {args.output}: windows of W={series.window} in the "
        "model's per-key normalised units"
    )
    return 0


def denoise_series_command(args: argparse.Namespace, bundle: artifact.ModelBundle) -> int:
    """Each row that closes a window replaced by its window's reconstruction of it (in data
    units, with its key's statistics), the one its score measures (history clipped, as the
    model scores); warming rows are written unchanged."""
    from trainer.evaluate import write_table

    data = _model_series(args, bundle)
    found = _row_windows(bundle, data)
    series = bundle.series
    rec = series.reconstruct(series.shown(found.normalised()))[:, -1, :]
    keys = found.keys[found.scored_rows]
    cleaned = data.x.copy()
    for key in np.unique(keys):
        mine = keys == key
        mean, std = found.normaliser.statistics(str(key))
        cleaned[found.scored_rows[mine]] = rec[mine] * std + mean
    write_table(args.output, cleaned, series.channel_names, data.ids)
    change = float(np.sqrt(np.mean(np.square(cleaned - data.x))))
    print(
        f"denoised {found.scored_rows.size} of {data.n_rows} rows to {args.output} with "
        f"{bundle.version} (warming rows unchanged): RMS change {change:.4g}"
    )
    return 0


def _row_windows(bundle: artifact.ModelBundle, data: SeriesData) -> Any:
    try:
        return bundle.series.row_windows(data.x, data.keys, data.times)
    except ValueError as exc:
        raise DataError(f"{data.source}: {exc}") from None


def _row_ids(data: SeriesData, rows: np.ndarray) -> list[Any]:
    if data.ids is not None:
        return [data.ids[int(i)] for i in rows]
    return [int(i) for i in rows]
