"""``anomaly-trainer threshold``: a threshold from labelled events, optionally published.

The events used are those scored by the chosen version's network: the version itself and every
version ``threshold --publish`` derived from the same network (``hyperparameters.network_of``),
since those give the same scores. With ``--publish`` a new version holds the same files with the
new threshold (for windowed models every per-key and the pooled threshold scaled by the same
factor) and becomes current; workers swap to it as to any new version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import ConfigError, DataError
from anomaly_contract.kafka_connection import KafkaConnection
from anomaly_contract.key_thresholds import KeyThresholds
from anomaly_contract.model_dir import list_versions, read_manifest, version_dir
from trainer.feedback import EventRef, FeedbackLabels
from trainer.feedback_threshold import Proposal, ThresholdCurve, propose, threshold_curve

NETWORK_OF = "network_of"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def network_of(manifest: artifact.Manifest) -> str:
    """The version whose training produced this version's network."""
    return str(manifest.hyperparameters.get(NETWORK_OF, manifest.version))


def same_network_versions(model_dir: Path, manifest: artifact.Manifest) -> set[str]:
    """Versions in ``model_dir`` that score with ``manifest``'s network."""
    root = network_of(manifest)
    found = {manifest.version, root}
    for info in list_versions(model_dir):
        try:
            other = read_manifest(version_dir(model_dir, info.version))
        except Exception:  # an unreadable version cannot share the network; skip it
            continue
        if network_of(other) == root:
            found.add(info.version)
    return found


def relative_scores(manifest: artifact.Manifest, events: list[EventRef]) -> np.ndarray:
    """Event scores over the version's threshold (windowed: the event's key's threshold)."""
    scores = np.asarray([e.score for e in events], np.float64)
    if manifest.series is None:
        return scores / max(manifest.threshold, 1e-300)
    thresholds = KeyThresholds.from_json(manifest.series.thresholds)
    keys = [e.key if e.key is not None else "" for e in events]
    return thresholds.relative_scores(scores, keys)


def scaled_manifest(
    manifest: artifact.Manifest, factor: float, summary: artifact.FeedbackSummary, note: str
) -> artifact.Manifest:
    """``manifest`` with every threshold times ``factor``, its network's origin and the note."""
    update: dict[str, object] = {
        "threshold": manifest.threshold * factor,
        "feedback": summary,
        "notes": [*manifest.notes, note],
        "hyperparameters": {**manifest.hyperparameters, NETWORK_OF: network_of(manifest)},
    }
    if manifest.series is not None:
        old = KeyThresholds.from_json(manifest.series.thresholds)
        new = KeyThresholds(
            percentile=old.percentile,
            min_windows=old.min_windows,
            pooled=old.pooled * factor,
            per_key={k: v * factor for k, v in old.per_key.items()},
            windows=old.windows,
        )
        update["series"] = manifest.series.model_copy(update={"thresholds": new.to_json()})
    return manifest.model_copy(update=update)


def cmd_threshold(args: argparse.Namespace, kafka: KafkaConnection) -> int:
    from trainer.commands import read_feedback_flags
    from trainer.feedback_resolve import label_events

    if (args.target_precision is None) == (not args.max_f1):
        raise ConfigError("threshold needs one of --target-precision P or --max-f1")
    path = version_dir(args.model_dir, args.version)
    manifest = read_manifest(path)
    read = read_feedback_flags(args, kafka)
    family = same_network_versions(Path(args.model_dir), manifest)
    events = [
        e for e in read.outputs.events.values() if e.model_version in family and e.score is not None
    ]
    labels = label_events(read.verdicts, read.outputs, events)
    used = labels.rows != 0
    _err(
        f"{len(events)} events of {manifest.version}'s network ({', '.join(sorted(family))}); "
        f"{int(used.sum())} labelled: {int(labels.confirmed.sum())} confirmed, "
        f"{int(labels.false_positive.sum())} false positives"
    )
    relative = relative_scores(manifest, [e for e, u in zip(events, used, strict=True) if u])
    confirmed = labels.confirmed[used]
    curve = threshold_curve(relative, confirmed)
    proposal = propose(curve, relative, confirmed, target_precision=args.target_precision)
    plot = _plot(args, manifest, curve, proposal)
    windowed = manifest.series is not None
    new = proposal.factor * manifest.threshold
    what = "thresholds x" if windowed else "threshold "
    value = f"{proposal.factor:.4g}" if windowed else f"{new:.6g}"
    print(
        f"proposed {what}{value} (current {manifest.version}: {manifest.threshold:.6g}"
        f"{' pooled' if windowed else ''}, factor {proposal.factor:.4g}): precision "
        f"{proposal.precision:.3f}, recall {proposal.recall:.3f} on {int(used.sum())} labelled "
        f"events; at the current threshold precision {proposal.current_precision:.3f}, recall "
        f"{proposal.current_recall:.3f}; plot in {plot}"
    )
    if args.publish:
        fp_above = int(((relative > proposal.factor) & ~confirmed).sum())
        _publish(args, manifest, proposal, labels, kafka, fp_above)
    return 0


def _plot(
    args: argparse.Namespace, manifest: artifact.Manifest, curve: ThresholdCurve, proposal: Proposal
) -> Path:
    from trainer.report_feedback import write_threshold_plot

    out = (
        Path(args.report) / "threshold.png"
        if args.report
        else Path(args.model_dir) / "reports" / f"threshold-{manifest.version}.png"
    )
    return write_threshold_plot(
        out, curve, proposal, current=manifest.threshold, relative=manifest.series is not None
    )


def _publish(
    args: argparse.Namespace,
    manifest: artifact.Manifest,
    proposal: Proposal,
    labels: FeedbackLabels,
    kafka: KafkaConnection,
    fp_above: int,
) -> None:
    from trainer.publish import publish_from_model_dir, publish_with_manifest

    if not proposal.factor > 0:
        raise DataError(
            f"the proposed factor {proposal.factor:g} is not positive; nothing published"
        )
    summary = labels.counts.model_copy(
        update={
            "confirmed_rows": int(labels.confirmed.sum()),
            "false_positive_rows": int(labels.false_positive.sum()),
            "false_positive_rows_above": fp_above,
            "threshold_before": manifest.threshold,
        }
    )
    rule = (
        f"the highest recall at precision >= {args.target_precision:g}"
        if args.target_precision is not None
        else "the highest F1"
    )
    note = (
        f"threshold from feedback ({args.feedback}): {manifest.version}'s thresholds x "
        f"{proposal.factor:.4g} ({rule}: precision {proposal.precision:.3f}, recall "
        f"{proposal.recall:.3f} on the labelled events); same network as {network_of(manifest)}"
    )
    scaled = scaled_manifest(manifest, proposal.factor, summary, note)
    version = publish_with_manifest(args.model_dir, manifest.version, scaled, keep=args.keep)
    if args.publish_topic:
        publish_from_model_dir(args.publish_topic, args.model_dir, version, connection=kafka)
        _err(f"sent {version} to model topic {args.publish_topic}")
    print(
        f"published {version} to {args.model_dir}: threshold "
        f"{manifest.threshold * proposal.factor:.6g} (was {manifest.threshold:.6g} in "
        f"{manifest.version}), network of {network_of(manifest)}"
    )
