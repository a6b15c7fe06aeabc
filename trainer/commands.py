"""The trainer's commands: each ``cmd_*`` runs one ``anomaly-trainer`` subcommand.

Each takes the parsed arguments and the Kafka connection `trainer.cli.main` built, prints what
the user sees and returns the exit code; errors raise `AnomalyError` for `main` to report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from anomaly_contract import artifact, errors
from anomaly_contract.errors import ConfigError, DataError
from anomaly_contract.kafka_connection import KafkaConnection
from anomaly_contract.model_dir import (
    current_version,
    list_versions,
    load_bundle,
    normalize_version,
    set_current,
)
from trainer.report import calibration_basis

PROG = "anomaly-trainer"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(
    source: str,
    args: argparse.Namespace,
    kafka: KafkaConnection,
    *,
    image_shape: Any = None,
    min_rows: int | None = 1,
    bundle: artifact.ModelBundle | None = None,
) -> Any:
    """Load DATA; ``min_rows=None`` keeps the loader's training minimum. With ``bundle``, JSON
    records are read against the model's features exactly as the worker reads them."""
    from anomaly_contract.records import FeatureSpec
    from trainer.data import MIN_ROWS, load_dataset

    model = None
    if bundle is not None and not getattr(args, "features", None):
        m = bundle.manifest
        model = FeatureSpec(
            names=tuple(m.feature_names),
            image_shape=tuple(m.image_shape) if m.image_shape else None,
        )
    return load_dataset(
        source,
        kafka=kafka,
        label_column=getattr(args, "label_column", None),
        features=getattr(args, "features", None),
        image_shape=image_shape,
        min_rows=MIN_ROWS if min_rows is None else min_rows,
        model=model,
    )


def _bundle(args: argparse.Namespace) -> artifact.ModelBundle:
    return load_bundle(args.model_dir, getattr(args, "version", None))


def write_lines(path: Path | None, write: Callable[[TextIO], None]) -> None:
    """Run ``write`` on ``path`` (whole or not at all: written aside, then renamed), or stdout."""
    if path is None:
        write(sys.stdout)
        return
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w") as fh:
            write(fh)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror}") from exc
    os.replace(tmp, path)


def _refuse_series_flags(args: argparse.Namespace, what: str) -> None:
    for flag in ("key_column", "time_column", "series_score", "history_clip"):
        if getattr(args, flag, None):
            raise ConfigError(f"{what} --{flag.replace('_', '-')}: it applies to windowed models")


def _windowed(args: argparse.Namespace, bundle: artifact.ModelBundle) -> bool:
    """True for a windowed version; refuses the series flags on a point model."""
    if bundle.manifest.series is not None:
        return True
    _refuse_series_flags(args, f"{bundle.version} is a point model and takes no")
    return False


def _model_rows(ds: Any, bundle: artifact.ModelBundle) -> Any:
    from trainer.evaluate import align_features

    return align_features(ds.x, ds.feature_names, bundle.manifest)


def cmd_fit(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.progress import silenced

    with silenced(args.quiet):  # the topic read and publish too, not only training
        return _fit(args, kafka)


def _fit(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.fit import fit_model
    from trainer.publish import publish_from_model_dir, publish_model
    from trainer.retrain import drop_flagged, should_exclude_flagged, with_flagged_note

    if args.keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {args.keep}")
    read = read_feedback_flags(args, kafka)
    if args.window is not None:
        from trainer.commands_series import fit_series

        for flag, default in (("short_fit", "off"), ("point_score", "auto")):
            if getattr(args, flag) != default:
                name = "--" + flag.replace("_", "-")
                raise ConfigError(f"{name} applies to point models: leave it out with --window")
        return fit_series(args, _fit_options(args, None), kafka, read)
    _refuse_series_flags(args, "fit needs --window W for")
    ds = _load(args.data, args, kafka, image_shape=args.image_shape, min_rows=None)
    options = _fit_options(args, args.image_shape or ds.image_shape)
    feedback = None
    if read is not None:
        from trainer.feedback_source import dataset_refs

        feedback = feedback_labels(read, dataset_refs(ds), args)
    x, labels, flagged = ds.x, ds.labels, None
    if should_exclude_flagged(args.exclude_flagged, args.model_dir, args.data):
        normal = feedback.false_positive if feedback is not None else None
        x, labels, flagged, kept = drop_flagged(ds, args.model_dir, quiet=args.quiet, normal=normal)
        feedback = feedback.subset(kept) if feedback is not None else None
    trained = fit_model(
        x,
        ds.feature_names,
        labels,
        options,
        source=ds.source,
        quiet=args.quiet,
        feedback=feedback,
    )
    if flagged is not None:
        trained = with_flagged_note(trained, flagged)
    version = publish_model(trained, args.model_dir, keep=args.keep)
    if args.publish_topic:
        publish_from_model_dir(args.publish_topic, args.model_dir, version, connection=kafka)
        _err(f"sent {version} to model topic {args.publish_topic}")
    m = trained.manifest
    if args.report:
        from trainer.report import write_report

        write_report(
            args.report,
            manifest=m,
            scaler=trained.scaler,
            model=trained.model,
            x=trained.heldout_x,
            labels=trained.heldout_labels,
            errors=trained.heldout_errors,
            history=trained.history,
            best_epoch=trained.best_epoch,
            title="Training report",
        )
    vm = m.validation_metrics
    extra = "".join(f", {k} {vm[k]:.4f}" for k in ("roc_auc", "pr_auc") if k in vm)
    print(
        f"published {version} to {args.model_dir}: threshold {m.threshold:.6g} "
        f"(p{m.percentile:g} of {calibration_basis(m)}), val_loss {vm['val_loss']:.5g}{extra}"
        + (f"; report in {args.report}" if args.report else "")
    )
    if m.feedback is not None:
        print(feedback_line(m.feedback))
    return 0


def feedback_line(summary: artifact.FeedbackSummary) -> str:
    """What feedback did to a fit, in the line printed after "published ..."."""
    return (
        f"feedback: {summary.confirmed} confirmed ({summary.confirmed_rows} rows left out), "
        f"{summary.false_positive} false positives ({summary.false_positive_rows} rows, "
        f"{summary.false_positive_rows_above} still above the threshold), {summary.unresolved} "
        f"unresolved, {summary.skipped} unusable records skipped"
    )


def read_feedback_flags(args: argparse.Namespace, kafka: KafkaConnection) -> Any:
    """``--feedback`` (and its events and incidents) read, or None without the flag."""
    if not getattr(args, "feedback", None):
        for flag in ("feedback_events", "feedback_incidents"):
            if getattr(args, flag, None):
                raise ConfigError(f"--{flag.replace('_', '-')} needs --feedback")
        return None
    from trainer.feedback_source import feedback_source, read_feedback

    source = feedback_source(args.feedback, args.feedback_events, args.feedback_incidents)
    read = read_feedback(source, kafka)
    # What was read is progress (hidden by --quiet); what was skipped is a warning (always said).
    lines = read.summary_lines()
    for line in lines[1:] if getattr(args, "quiet", False) else lines:
        _err(line)
    return read


def feedback_labels(read: Any, refs: Any, args: argparse.Namespace) -> Any:
    """The feedback resolved to the rows ``refs`` describes, said in one line (two with
    unresolved ids)."""
    from trainer.feedback_resolve import label_rows

    labels = label_rows(read.verdicts, read.outputs, refs, args.feedback)
    if not getattr(args, "quiet", False):
        _err(labels.summary())
    if labels.unresolved_ids:
        ids = labels.unresolved_ids
        more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
        _err(
            f"feedback: {len(ids)} ids match no row of the data (unknown to the events and "
            f"incidents read, or their rows are not in DATA): {', '.join(ids[:3])}{more}"
        )
    return labels


def _fit_options(args: argparse.Namespace, image_shape: Any) -> Any:
    """`FitOptions` from the fit command's flags; ``image_shape`` is the flag's or the data's."""
    from trainer.fit import FitOptions

    if args.architecture == "conv" and image_shape is None:
        raise ConfigError("--architecture conv needs --image-shape HxW[xC] for this data")
    return FitOptions(
        architecture=args.architecture,
        image_shape=tuple(image_shape) if image_shape else None,
        hidden=args.hidden,
        latent=args.latent,
        activation=args.activation,
        denoise=args.denoise,
        sparsity=args.sparsity,
        kl_weight=args.kl_weight,
        loss=args.loss,
        scaler=args.scaler,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        validation_split=args.validation_split,
        calibration_split=args.calibration_split,
        percentile=args.percentile,
        calibration=args.calibration,
        outlier_fence=args.outlier_fence,
        error=args.error,
        seed=args.seed,
        short_fit=args.short_fit,
        score=None if args.point_score == "auto" else args.point_score.replace("-", "_"),
    )


def cmd_publish(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.publish import publish_from_model_dir

    version = publish_from_model_dir(
        args.publish_topic,
        args.model_dir,
        args.version,
        make_current=not args.no_current,
        connection=kafka,
    )
    state = "sent" if args.no_current else "sent and made current"
    print(f"{version} {state} on model topic {args.publish_topic}")
    return 0


def cmd_score(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.evaluate import score_rows, write_scores

    bundle = _bundle(args)
    if _windowed(args, bundle):
        from trainer.commands_series import score_series_command

        return score_series_command(args, bundle)
    ds = _load(args.data, args, kafka, bundle=bundle)
    x = _model_rows(ds, bundle)
    result = score_rows(bundle, x)
    write_lines(args.output, lambda fh: write_scores(fh, result, bundle.threshold, ds.ids))
    flagged = int(result.is_anomaly(bundle.threshold).sum())
    _err(
        f"scored {len(result.scores)} rows with {bundle.version}: {flagged} above threshold {bundle.threshold:.6g}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.evaluate import evaluate_bundle, format_metrics

    bundle = _bundle(args)
    if _windowed(args, bundle):
        from trainer.commands_series import evaluate_series_command

        return evaluate_series_command(args, bundle)
    ds = _load(args.data, args, kafka, bundle=bundle)
    if ds.labels is None:
        raise ConfigError("evaluate needs labels: pass --label-column COL (0 = normal)")
    x = _model_rows(ds, bundle)
    ev = evaluate_bundle(bundle, x, ds.labels)
    if args.report:
        from trainer.report import write_report

        write_report(
            args.report,
            manifest=bundle.manifest,
            scaler=bundle.scaler,
            model=bundle.model,
            x=x,
            labels=(ds.labels != 0).astype(int),
            errors=ev.scores,
            metrics=ev.metrics,
            title="Evaluation report",
        )
    if args.json:
        print(json.dumps(ev.metrics))
    else:
        print(format_metrics(ev.metrics))
    return 0


def cmd_encode(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.evaluate import encode_rows, write_table

    bundle = _bundle(args)
    if _windowed(args, bundle):
        from trainer.commands_series import encode_series_command

        return encode_series_command(args, bundle)
    ds = _load(args.data, args, kafka, bundle=bundle)
    x = _model_rows(ds, bundle)
    codes, stats = encode_rows(bundle, x)
    write_table(args.output, codes, [f"z{i}" for i in range(codes.shape[1])], ds.ids)
    print(
        f"encoded {len(codes)} rows to {args.output}: {x.shape[1]} -> {codes.shape[1]} values per row "
        f"(compression {stats['compression_ratio']:.1f}x); reconstruction RMSE {stats['rmse']:.4g} "
        f"in data units, mean score {stats['mean_score']:.4g} (threshold {bundle.threshold:.4g})"
    )
    return 0


def cmd_decode(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.evaluate import decode_codes, write_table

    bundle = _bundle(args)
    if bundle.manifest.series is not None:
        from trainer.commands_series import decode_series_command

        return decode_series_command(args, bundle)
    from trainer.data import load_dataset

    ds = load_dataset(args.data, min_rows=1, kafka=kafka)
    rows = decode_codes(bundle, ds.x)
    write_table(args.output, rows, bundle.feature_names, ds.ids)
    print(
        f"decoded {len(rows)} codes to {args.output}: {ds.x.shape[1]} -> {rows.shape[1]} values per row "
        f"(compression {rows.shape[1] / ds.x.shape[1]:.1f}x); reconstruction error of the original "
        f"rows is what `encode` reported"
    )
    return 0


def cmd_denoise(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    import numpy as np

    from trainer.evaluate import denoise_rows, score_rows, write_table

    bundle = _bundle(args)
    if _windowed(args, bundle):
        from trainer.commands_series import denoise_series_command

        return denoise_series_command(args, bundle)
    if not bundle.manifest.denoise:
        _err(
            f"note: {bundle.version} was not trained with --denoise; its reconstructions smooth "
            "records but were not trained to remove noise"
        )
    ds = _load(args.data, args, kafka, bundle=bundle)
    x = _model_rows(ds, bundle)
    score_rows(bundle, x[:1])  # validates shape and values with the scoring rules
    cleaned = denoise_rows(bundle, x)
    write_table(args.output, cleaned, bundle.feature_names, ds.ids)
    change = float(np.sqrt(np.mean(np.square(cleaned - x))))
    print(
        f"denoised {len(cleaned)} rows to {args.output} with {bundle.version}: RMS change {change:.4g}"
    )
    return 0


def cmd_versions(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    if not Path(args.model_dir).is_dir():
        raise errors.ArtifactError(f"model directory {args.model_dir} does not exist")
    if args.publish_topic:
        return _topic_versions(args, kafka)
    infos = list_versions(args.model_dir)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "version": v.version,
                        "current": v.is_current,
                        "created_at": v.created_at.isoformat() if v.created_at else None,
                        "threshold": v.threshold,
                    }
                    for v in infos
                ]
            )
        )
        return 0
    if not infos:
        print(f"no versions in {args.model_dir}: run `{PROG} fit`")
        return 0
    for v in infos:
        created = (
            v.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            if v.created_at
            else "(unreadable manifest)"
        )
        threshold = f"threshold {v.threshold:.6g}" if v.threshold is not None else ""
        print(f"{'*' if v.is_current else ' '} {v.version:<6} {created}  {threshold}")
    return 0


def _topic_versions(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from anomaly_contract.model_topic_format import parse_topic_url
    from trainer.publish import list_topic_versions

    infos = list_topic_versions(*parse_topic_url(args.publish_topic), connection=kafka)
    rows = [
        {
            "version": v.version,
            "current": v.is_current,
            "sha256": v.sha256,
            "size": v.size,
            "problem": v.problem,
        }
        for v in infos
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no versions on {args.publish_topic}: run `{PROG} publish`")
    for r in rows:
        problem = f"  REFUSED: {r['problem']}" if r["problem"] else ""
        print(f"{'*' if r['current'] else ' '} {r['version']:<6} {r['size']:>10} bytes{problem}")
    return 0


def cmd_promote(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    before = current_version(args.model_dir)
    if not Path(args.model_dir).is_dir():
        raise errors.ArtifactError(f"model directory {args.model_dir} does not exist")
    name = normalize_version(args.version)
    if args.publish_topic:
        from anomaly_contract.model_topic_format import parse_topic_url
        from trainer.publish import promote_on_topic

        promote_on_topic(*parse_topic_url(args.publish_topic), name, connection=kafka)
        print(f"{name} is current on model topic {args.publish_topic}")
        if not (Path(args.model_dir) / artifact.VERSIONS_DIR / name).is_dir():
            return 0
    set_current(args.model_dir, name)
    print(
        f"current version is now {name}" + (f" (was {before})" if before and before != name else "")
    )
    return 0
