"""``anomaly-trainer``: argument parsing, and `main`, which runs the chosen command.

The commands themselves live in `trainer.commands`. Every `AnomalyError` ends as one line on
stderr and exit code 2; nothing is published then. The Kafka security settings are built once in
`main` and handed to every command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from anomaly_contract.errors import AnomalyError
from anomaly_contract.kafka_connection import (
    KafkaConnection,
    SaslMechanism,
    SecurityProtocol,
    load_connection,
    read_secret_file,
)
from trainer.cli_feedback import add_threshold_command, feedback_options
from trainer.cli_fit import fit_model_options, fit_output_options, fit_training_options, int_list
from trainer.commands import (
    PROG,
    cmd_decode,
    cmd_denoise,
    cmd_encode,
    cmd_evaluate,
    cmd_fit,
    cmd_promote,
    cmd_publish,
    cmd_score,
    cmd_versions,
)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _image_shape(text: str) -> tuple[int, ...]:
    try:
        from trainer.data import parse_image_shape

        return tuple(parse_image_shape(text))
    except ImportError:  # pragma: no cover - data.py always ships with the package
        return int_list(text)
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
    fit_model_options(p)
    _series_options(p, fit=True)
    fit_training_options(p)
    fit_output_options(p)
    _publish_topic(p)
    feedback_options(p)
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
    _series_options(p)

    p = _model_command(
        sub, "evaluate", "precision, recall, F1, ROC-AUC, PR-AUC against labels", cmd_evaluate
    )
    p.add_argument("--report", type=Path, metavar="DIR", help="write error and latent plots here")
    _json_flag(p, "print one JSON object")
    _series_options(p)

    p = _model_command(sub, "encode", "latent codes of each row (compression)", cmd_encode)
    _table_output(p)
    _series_options(p)

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
    _series_options(p)

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
    add_threshold_command(sub, _command, _model_dir, _version, _publish_topic)
    # Every command may read kafka:// data or a model topic.
    for command in sub.choices.values():
        _kafka_options(command)
    return parser


def _series_options(p: argparse.ArgumentParser, *, fit: bool = False) -> None:
    g = p.add_argument_group(
        "series per key",
        "windowed models score each row with the rows of its key before it"
        + ("" if fit else "; the key and time columns default to the model's"),
    )
    if fit:
        g.add_argument(
            "--window",
            type=int,
            metavar="W",
            help="train a windowed model on sliding windows of W rows per key (W >= 2)",
        )
        g.add_argument(
            "--score-steps",
            type=int,
            default=1,
            metavar="S",
            help="a window's score is the mean error of its last S rows (default 1: the row it "
            "scores; W averages the whole window)",
        )
        g.add_argument(
            "--series-score",
            choices=("blend", "mean", "channel-max", "channel-max-per-key"),
            default=None,
            help="how those rows' errors become the score: mean over every channel; "
            "channel-max: the largest channel error, each channel's over its calibrated scale "
            "(pooled over keys; channel-max-per-key: each key's own), so an anomaly in one "
            "channel is not averaged away; blend: the mean and channel-max-per-key, each over "
            "its calibrated scale, averaged (default: blend)",
        )
        g.add_argument(
            "--history-clip",
            default=None,
            metavar="auto|off|Z",
            help="before the network sees a window, the rows before the scored ones are "
            "clipped (errors still against the rows as they are), so a past spike does not "
            "raise the scores of the normal rows after it: auto to each channel's range in "
            "training (its 0.1-99.9 %% quantiles, +-0.5 key standard deviations), Z to +-Z "
            "of them, off not at all (default: auto)",
        )
    g.add_argument("--key-column", help="column naming each row's series (default: one series)")
    g.add_argument(
        "--time-column",
        help="column ordering each key's rows, numbers or timestamps (default: input order)",
    )


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
