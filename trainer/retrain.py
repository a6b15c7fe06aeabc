"""Retraining from a stream: leave out the rows the current model flags, and say so in the manifest.

A topic read for a retrain holds whatever arrived, recent anomalies included; trained on as
normal they would teach the new model to reconstruct them. With ``--exclude-flagged`` (by
default whenever DATA is a ``kafka://`` topic and the model directory has a current model) the
rows the current model scores above its threshold are dropped before fitting, and the manifest
counts them in ``rows.excluded_flagged`` and names the previous version in its notes.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from anomaly_contract.errors import ConfigError
from anomaly_contract.model_dir import current_version, load_bundle
from trainer.data import Dataset
from trainer.evaluate import align_features
from trainer.fit import TrainedModel

ExcludeFlagged = Literal["auto", "yes", "no"]


@dataclass(frozen=True)
class FlaggedRows:
    """How many rows the previous model flagged and were left out, and the note that says so."""

    count: int
    note: str


def should_exclude_flagged(mode: str, model_dir: Path, data: str) -> bool:
    """``--exclude-flagged``: "yes" needs a current model; "auto" means a topic and a model."""
    has_model = current_version(model_dir) is not None
    if mode == "yes":
        if not has_model:
            raise ConfigError(
                f"--exclude-flagged yes needs a current model in {model_dir} to flag rows"
            )
        return True
    return mode == "auto" and has_model and data.startswith("kafka://")


def drop_flagged(
    ds: Dataset, model_dir: Path, *, quiet: bool, normal: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, FlaggedRows, np.ndarray]:
    """Rows the current model flags are left out of training (they may be recent anomalies),
    except ``normal`` ones (a mask: rows an analyst called false positives). Also returns the
    mask of the rows kept."""
    bundle = load_bundle(model_dir)
    x = align_features(ds.x, ds.feature_names, bundle.manifest)
    flagged = bundle.score(x).is_anomaly(bundle.threshold)
    if normal is not None:
        flagged &= ~normal
    n = int(flagged.sum())
    keep = ~flagged
    note = (
        f"retrained without {n} of {len(flagged)} rows that the previous model {bundle.version}"
        f" flagged (threshold {bundle.threshold:.6g}); pass --exclude-flagged no to keep them"
    )
    if not quiet:
        print(note, file=sys.stderr, flush=True)
    labels = None if ds.labels is None else ds.labels[keep]
    return ds.x[keep], labels, FlaggedRows(n, note), keep


def with_flagged_note(trained: TrainedModel, flagged: FlaggedRows) -> TrainedModel:
    """Record the left-out rows in the manifest and the report."""
    m = trained.manifest
    manifest = m.model_copy(
        update={
            "rows": m.rows.model_copy(
                update={"excluded_flagged": flagged.count, "total": m.rows.total + flagged.count}
            ),
            "notes": [*m.notes, flagged.note],
        }
    )
    return dataclasses.replace(trained, manifest=manifest, notes=[*trained.notes, flagged.note])
