"""The command line of feedback: ``--feedback`` options (fit, threshold) and ``threshold``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomaly_contract import artifact
from trainer.commands_feedback import cmd_threshold


def feedback_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_argument_group(
        "analyst feedback",
        "verdicts on events and incidents: confirmed rows are left out of training, false "
        "positives trained on and calibrated on (see the README, Feedback)",
    )
    g.add_argument(
        "--feedback",
        required=required,
        metavar="SOURCE",
        help="kafka://HOST:PORT/FEEDBACK_TOPIC?events=OUTPUT_TOPIC[&incidents=INCIDENT_TOPIC], "
        "or a JSON Lines file of feedback records",
    )
    g.add_argument(
        "--feedback-events",
        metavar="FILE",
        help="with a feedback file: the anomaly events (.jsonl)",
    )
    g.add_argument(
        "--feedback-incidents",
        metavar="FILE",
        help="with a feedback file: the incident records (.jsonl)",
    )


def add_threshold_command(
    sub: Any,
    command: Callable[..., argparse.ArgumentParser],
    model_dir: Callable[[argparse.ArgumentParser], None],
    version: Callable[[argparse.ArgumentParser], None],
    publish_topic: Callable[..., None],
) -> None:
    """``threshold``, built with the parser's shared option groups (passed in: they live in
    `trainer.cli`, which imports this module)."""
    p = command(
        sub,
        "threshold",
        "propose a threshold from analyst feedback on events; --publish makes it a new version",
        cmd_threshold,
    )
    model_dir(p)
    version(p)
    feedback_options(p, required=True)
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument(
        "--target-precision",
        type=float,
        metavar="P",
        help="the threshold with the highest recall whose precision on the labelled events is >= P",
    )
    rule.add_argument(
        "--max-f1",
        action="store_true",
        help="the threshold with the highest F1 on the labelled events",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write threshold.png here (default: MODEL_DIR/reports/)",
    )
    p.add_argument("--publish", action="store_true", help="publish the proposal as a new version")
    p.add_argument(
        "--keep",
        type=int,
        default=artifact.DEFAULT_KEEP,
        help=f"versions to keep (default {artifact.DEFAULT_KEEP})",
    )
    publish_topic(p)
