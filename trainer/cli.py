"""``anomaly-trainer``: argument parsing and wiring of the trainer's commands.

Every `AnomalyError` ends as one line on stderr and exit code 2; nothing is published then.
The Kafka security settings are built once in `main` and handed to every command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from anomaly_contract import artifact, errors
from anomaly_contract.errors import AnomalyError, ConfigError, DataError
from anomaly_contract.kafka_connection import (
    KafkaConnection,
    SaslMechanism,
    SecurityProtocol,
    load_connection,
    read_secret_file,
)
from anomaly_contract.model_dir import (
    current_version,
    list_versions,
    load_bundle,
    normalize_version,
    set_current,
)
from trainer.report import calibration_basis

PROG = "anomaly-trainer"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _image_shape(text: str) -> tuple[int, ...]:
    try:
        from trainer.data import parse_image_shape

        return tuple(parse_image_shape(text))
    except ImportError:  # pragma: no cover - data.py always ships with the package
        return _int_list(text)
    except AnomalyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


# --------------------------------------------------------------------------------------------
# Option groups shared by the commands
# --------------------------------------------------------------------------------------------
def _command(
    sub: Any, name: str, help: str, func: Callable[[argparse.Namespace, KafkaConnection], int]
) -> argparse.ArgumentParser:
    """A subcommand running ``func`` (with the Kafka connection `main` builds)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    p.set_defaults(func=func)
    return p


def _model_command(
    sub: Any,
    name: str,
    help: str,
    func: Callable[[argparse.Namespace, KafkaConnection], int],
    *,
    data_metavar: str = "DATA",
    data_help: str | None = None,
    data_options: bool = True,
) -> argparse.ArgumentParser:
    """A command applying a published version to DATA: DATA, --model-dir, --version."""
    p = _command(sub, name, help, func)
    p.add_argument("data", metavar=data_metavar, help=data_help)
    _model_dir(p)
    if data_options:
        _data_options(p)
    _version(p)
    return p


def _data_options(p: argparse.ArgumentParser, *, image: bool = False) -> None:
    p.add_argument(
        "--label-column", help="column holding labels (0 = normal); other values are anomalies"
    )
    p.add_argument(
        "--features", type=_names, help="comma-separated feature columns to use, in order"
    )
    if image:
        p.add_argument("--image-shape", type=_image_shape, help="HxW or HxWxC for flat pixel rows")


def _model_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, type=Path, help="directory holding the versions")


def _version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", help="use this version instead of the current one (e.g. v3)")


def _table_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", type=Path, required=True, help=".npy, .npz, .csv or .jsonl")


def _json_flag(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--json", action="store_true", help=help)


def _publish_topic(
    p: argparse.ArgumentParser,
    text: str = "also publish the new version to this compacted model topic (workers with"
    " ANOMALY_MODEL_TOPIC pick it up)",
    *,
    required: bool = False,
) -> None:
    p.add_argument(
        "--publish-topic", required=required, metavar="kafka://HOST:PORT/TOPIC", help=text
    )


def _kafka_options(p: argparse.ArgumentParser) -> None:
    """Security for kafka:// DATA and model topics; flags win over ANOMALY_* variables.

    Passwords only come from files or the environment: a flag value would show in `ps`.
    """
    g = p.add_argument_group(
        "Kafka security",
        "for kafka:// data and model topics; unset flags come from the worker's ANOMALY_*"
        " variables (ANOMALY_SECURITY_PROTOCOL, ANOMALY_SASL_USERNAME, ...), else PLAINTEXT",
    )
    g.add_argument("--security-protocol", choices=get_args(SecurityProtocol))
    g.add_argument("--sasl-mechanism", choices=get_args(SaslMechanism))
    g.add_argument("--sasl-username", metavar="USER")
    g.add_argument(
        "--sasl-password-file",
        type=Path,
        metavar="FILE",
        help="file holding the SASL password (or set ANOMALY_SASL_PASSWORD)",
    )
    g.add_argument("--ssl-cafile", type=Path, metavar="FILE", help="CA bundle (PEM)")
    g.add_argument("--ssl-certfile", type=Path, metavar="FILE", help="client certificate (PEM)")
    g.add_argument("--ssl-keyfile", type=Path, metavar="FILE", help="client key (PEM)")
    g.add_argument(
        "--ssl-password-file",
        type=Path,
        metavar="FILE",
        help="file holding the client key's password (or set ANOMALY_SSL_PASSWORD)",
    )
    for secret in ("--sasl-password", "--ssl-password"):
        # Defined only to refuse them: else argparse would take them as abbreviations of the
        # -file options and echo the password in a "cannot read file" error.
        g.add_argument(secret, action=_RefuseSecretFlag, help=argparse.SUPPRESS)
    g.add_argument(
        "--no-ssl-check-hostname",
        dest="ssl_check_hostname",
        action="store_const",
        const=False,
        help="do not match the broker certificate's host name (test clusters only)",
    )


class _RefuseSecretFlag(argparse.Action):
    """A password given as a flag value shows in `ps` and shell history: refuse it unseen."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        env = "ANOMALY_" + self.dest.upper()
        parser.error(
            f"{self.option_strings[0]} is not accepted (it would show in ps and shell history):"
            f" set {env} or pass {self.option_strings[0]}-file FILE"
        )


def _kafka_connection(args: argparse.Namespace) -> KafkaConnection:
    """The Kafka security settings: ANOMALY_* variables and .env, with the flags on top."""
    overrides: dict[str, Any] = {
        name: getattr(args, name, None)
        for name in (
            "security_protocol",
            "sasl_mechanism",
            "sasl_username",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_check_hostname",
        )
    }
    if getattr(args, "sasl_password_file", None):
        overrides["sasl_password"] = read_secret_file(args.sasl_password_file, "SASL password")
    if getattr(args, "ssl_password_file", None):
        overrides["ssl_password"] = read_secret_file(args.ssl_password_file, "SSL key password")
    return load_connection(overrides)


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, calibrate, evaluate and publish autoencoder anomaly detectors.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "fit", "train, calibrate and publish a new version", cmd_fit)
    p.add_argument(
        "data",
        metavar="DATA",
        help="file (.csv .jsonl .parquet .npy .npz), kafka://..., or builtin:NAME",
    )
    _model_dir(p)
    _data_options(p, image=True)
    _fit_model_options(p)
    _fit_training_options(p)
    _fit_output_options(p)
    _publish_topic(p)
    g = p.add_argument_group("retraining")
    g.add_argument(
        "--exclude-flagged",
        choices=["auto", "yes", "no"],
        default="auto",
        help="leave out rows the current model flags, so a retrain does not learn recent anomalies"
        " as normal (auto: yes when DATA is a kafka:// topic and --model-dir has a current model)",
    )

    p = _model_command(sub, "score", "offline scores, the same numbers the worker emits", cmd_score)
    p.add_argument("--output", "-o", type=Path, help="JSON Lines file (default: stdout)")

    p = _model_command(
        sub, "evaluate", "precision, recall, F1, ROC-AUC, PR-AUC against labels", cmd_evaluate
    )
    p.add_argument("--report", type=Path, metavar="DIR", help="write error and latent plots here")
    _json_flag(p, "print one JSON object")

    p = _model_command(sub, "encode", "latent codes of each row (compression)", cmd_encode)
    _table_output(p)

    p = _model_command(
        sub,
        "decode",
        "reconstructed rows from latent codes",
        cmd_decode,
        data_metavar="CODES",
        data_help="codes written by `encode` (.npy, .npz, .csv, .jsonl)",
        data_options=False,
    )
    _table_output(p)

    p = _model_command(sub, "denoise", "cleaned records from a denoising model", cmd_denoise)
    _table_output(p)

    p = _command(sub, "versions", "published versions; * marks the current one", cmd_versions)
    _model_dir(p)
    _json_flag(p, "print JSON")
    _publish_topic(p, "also list the versions on this model topic")

    p = _command(sub, "promote", "make an older version current (rollback)", cmd_promote)
    p.add_argument("version", metavar="VERSION", help="e.g. v2 or 2")
    _model_dir(p)
    _publish_topic(p, "roll back on this model topic too (the version must be on it)")

    p = _command(sub, "publish", "send a published version to a compacted model topic", cmd_publish)
    p.add_argument("version", metavar="VERSION", nargs="?", help="default: the current version")
    _model_dir(p)
    _publish_topic(p, "model topic that workers with ANOMALY_MODEL_TOPIC follow", required=True)
    p.add_argument(
        "--no-current", action="store_true", help="send the version without making it current"
    )
    # Every command may read kafka:// data or a model topic.
    for command in sub.choices.values():
        _kafka_options(command)
    return parser


def _fit_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (defaults follow the data)")
    g.add_argument(
        "--architecture",
        choices=["dense", "conv", "vae"],
        help="dense, conv (images) or vae (variational, dense; the score is the reconstruction "
        "error of the mean code); default: dense",
    )
    g.add_argument(
        "--hidden", type=_int_list, help="dense layer widths (or conv filters), e.g. 64,16"
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


def _fit_training_options(p: argparse.ArgumentParser) -> None:
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
        "--calibration",
        choices=("auto", "holdout", "cross_fit"),
        default="auto",
        help="where the threshold's errors come from: the held-out calibration rows, or "
        "out-of-fold errors of every normal row from 3 extra trainings (auto: cross-fit below "
        "2,000 normal rows, where the held-out share is too small for a steady percentile)",
    )


def _fit_output_options(p: argparse.ArgumentParser) -> None:
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


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(
    source: str,
    args: argparse.Namespace,
    kafka: KafkaConnection,
    *,
    image_shape: Any = None,
    min_rows: int | None = 1,
) -> Any:
    """Load DATA; ``min_rows=None`` keeps the loader's training minimum."""
    from trainer.data import MIN_ROWS, load_dataset

    return load_dataset(
        source,
        kafka=kafka,
        label_column=getattr(args, "label_column", None),
        features=getattr(args, "features", None),
        image_shape=image_shape,
        min_rows=MIN_ROWS if min_rows is None else min_rows,
    )


def _bundle(args: argparse.Namespace) -> artifact.ModelBundle:
    return load_bundle(args.model_dir, getattr(args, "version", None))


def _model_rows(ds: Any, bundle: artifact.ModelBundle) -> Any:
    from trainer.evaluate import align_features

    return align_features(ds.x, ds.feature_names, bundle.manifest)


def cmd_fit(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.fit import FitOptions, fit_model, publish_model

    if args.keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {args.keep}")
    ds = _load(args.data, args, kafka, image_shape=args.image_shape, min_rows=None)
    image_shape = args.image_shape or ds.image_shape
    if args.architecture == "conv" and image_shape is None:
        raise ConfigError("--architecture conv needs --image-shape HxW[xC] for this data")
    options = FitOptions(
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
    )
    x, labels, flagged = ds.x, ds.labels, None
    if _should_exclude_flagged(args):
        x, labels, flagged = _drop_flagged(ds, args.model_dir, quiet=args.quiet)
    trained = fit_model(x, ds.feature_names, labels, options, source=ds.source, quiet=args.quiet)
    if flagged is not None:
        trained = _with_flagged_note(trained, *flagged)
    version = publish_model(trained, args.model_dir, keep=args.keep)
    if args.publish_topic:
        from trainer.topic_publish import publish_from_model_dir

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
    return 0


def _should_exclude_flagged(args: argparse.Namespace) -> bool:
    has_model = current_version(args.model_dir) is not None
    if args.exclude_flagged == "yes":
        if not has_model:
            raise ConfigError(
                f"--exclude-flagged yes needs a current model in {args.model_dir} to flag rows"
            )
        return True
    return args.exclude_flagged == "auto" and has_model and args.data.startswith("kafka://")


def _drop_flagged(ds: Any, model_dir: Path, *, quiet: bool) -> tuple[Any, Any, tuple[int, str]]:
    """Rows the current model flags are left out of training (they may be recent anomalies)."""
    bundle = load_bundle(model_dir)
    x = _model_rows(ds, bundle)
    flagged = bundle.score(x).is_anomaly(bundle.threshold)
    n = int(flagged.sum())
    keep = ~flagged
    note = (
        f"retrained without {n} of {len(flagged)} rows that the previous model {bundle.version}"
        f" flagged (threshold {bundle.threshold:.6g}); pass --exclude-flagged no to keep them"
    )
    if not quiet:
        _err(note)
    labels = None if ds.labels is None else ds.labels[keep]
    return ds.x[keep], labels, (n, note)


def _with_flagged_note(trained: Any, n: int, note: str) -> Any:
    """Record the left-out rows in the manifest and the report."""
    import dataclasses

    m = trained.manifest
    manifest = m.model_copy(
        update={
            "rows": m.rows.model_copy(update={"excluded_flagged": n, "total": m.rows.total + n}),
            "notes": [*m.notes, note],
        }
    )
    return dataclasses.replace(trained, manifest=manifest, notes=[*trained.notes, note])


def cmd_publish(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.topic_publish import publish_from_model_dir

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
    ds = _load(args.data, args, kafka)
    x = _model_rows(ds, bundle)
    result = score_rows(bundle, x)
    if args.output:
        tmp = args.output.with_name(args.output.name + ".part")
        try:
            with tmp.open("w") as fh:
                write_scores(fh, result, bundle.threshold, ds.ids)
        except OSError as exc:
            raise DataError(f"cannot write {args.output}: {exc.strerror}") from exc
        os.replace(tmp, args.output)
    else:
        write_scores(sys.stdout, result, bundle.threshold, ds.ids)
    flagged = int(result.is_anomaly(bundle.threshold).sum())
    _err(
        f"scored {len(result.scores)} rows with {bundle.version}: {flagged} above threshold {bundle.threshold:.6g}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.evaluate import evaluate_bundle, format_metrics

    bundle = _bundle(args)
    ds = _load(args.data, args, kafka)
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
    ds = _load(args.data, args, kafka)
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
    if not bundle.manifest.denoise:
        _err(
            f"note: {bundle.version} was not trained with --denoise; its reconstructions smooth "
            "records but were not trained to remove noise"
        )
    ds = _load(args.data, args, kafka)
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
    from trainer.topic_publish import list_topic_versions

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
        from trainer.topic_publish import promote_on_topic

        promote_on_topic(*parse_topic_url(args.publish_topic), name, connection=kafka)
        print(f"{name} is current on model topic {args.publish_topic}")
        if not (Path(args.model_dir) / artifact.VERSIONS_DIR / name).is_dir():
            return 0
    set_current(args.model_dir, name)
    print(
        f"current version is now {name}" + (f" (was {before})" if before and before != name else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (even some "E" lines) is noise for a command-line user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        kafka = _kafka_connection(args)
        return int(args.func(args, kafka))
    except AnomalyError as exc:
        _err(f"{PROG} {args.command}: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err(f"{PROG} {args.command}: interrupted; nothing was published")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
