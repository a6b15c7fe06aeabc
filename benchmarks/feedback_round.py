"""One round of analyst feedback on ``builtin:machines``, offline (issue 15).

Each key's ticks are cut in time into three parts: A (first half) trains model v1 *without*
labels, as in production; B (next quarter) is the live stream v1 scores: its anomalous rows
become events (`worker.incidents.event_id`) and incidents (`worker.incidents.IncidentTracker`,
record time = the ``t`` column in ms: one tick per millisecond); a simulated analyst labels a
random 20 % of B's incidents (confirmed when the incident's rows overlap a labelled range, else
false_positive). C (last quarter) is the test part. The feedback goes through the trainer's own
path (JSON records -> `parse_feedback` / `parse_outputs` -> `label_rows` on `series_refs`), then:

- ``refit``: A + B refitted with that feedback (`fit_series_model(..., feedback=...)`, what
  ``fit --feedback`` does);
- ``control``: A + B refitted without feedback (same data, so the difference is the feedback);
- ``threshold``: v1's thresholds scaled by the factor ``threshold --max-f1`` proposes from the
  labelled events (same network, so precision at equal recall cannot move: only the cut does).

Printed per model on C: row precision and recall at the published thresholds, precision at v1's
recall (the relative scores cut where they reach v1's recall), incidents per true anomalous range
(incidents overlapping a labelled range / ranges with at least one incident; target <= 1.5),
events per found range, and incidents overlapping no range.

    python benchmarks/feedback_round.py                 # 20 keys x 2000 ticks, 8 epochs
    python benchmarks/feedback_round.py --keys 40 --epochs 15 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from anomaly_contract.errors import DataError  # noqa: E402
from anomaly_contract.model_dir import load_bundle  # noqa: E402
from anomaly_contract.series import SeriesRowScores  # noqa: E402
from benchmarks.quality_series import _rows as series_rows  # noqa: E402
from trainer.data_series import SeriesData, load_series  # noqa: E402
from trainer.evaluate_series import labelled_ranges, score_series  # noqa: E402
from trainer.feedback import parse_feedback, parse_outputs  # noqa: E402
from trainer.feedback_resolve import label_events, label_rows  # noqa: E402
from trainer.feedback_source import series_refs  # noqa: E402
from trainer.feedback_threshold import propose, threshold_curve  # noqa: E402
from trainer.fit import FitOptions  # noqa: E402
from trainer.fit_series import fit_series_model  # noqa: E402
from trainer.publish import publish_model  # noqa: E402
from worker.incidents import IncidentRules, IncidentTracker, ScoredRecord, event_id  # noqa: E402

WINDOW = 32
TOPIC = "machines"


@dataclass(frozen=True)
class Flags:
    """A model's verdict on every row of the full data: relative score and flag (warming: NaN)."""

    relative: np.ndarray
    flagged: np.ndarray
    scores: SeriesRowScores
    version: str


def _rows(data: SeriesData, mask: np.ndarray) -> SeriesData:
    """The rows ``mask`` selects, unlabelled (fits are unsupervised: only feedback labels
    anything), with their row numbers in the full data as ids (what events carry)."""
    return replace(series_rows(data, mask), labels=None, ids=[int(i) for i in np.flatnonzero(mask)])


def fit_and_score(
    train: SeriesData,
    full: SeriesData,
    opts: FitOptions,
    root: Path,
    feedback=None,  # type: ignore[no-untyped-def]
) -> tuple[Flags, float]:
    started = time.perf_counter()
    trained = fit_series_model(train, WINDOW, opts, quiet=True, feedback=feedback)
    seconds = time.perf_counter() - started
    version = publish_model(trained, root)
    bundle = load_bundle(root, version)
    result = score_series(bundle, full)
    relative = result.scores / np.maximum(result.thresholds, 1e-12)
    return Flags(relative, result.is_anomaly, result, version), seconds


def incidents_of(
    flags: np.ndarray, data: SeriesData, part: np.ndarray, rules: IncidentRules
) -> list[dict]:
    """Closed incident records of the part's rows, fed in time order (one partition)."""
    rows = np.flatnonzero(part)
    all_times = np.asarray(data.times, np.float64)
    times = all_times[rows]
    rows = rows[np.lexsort((data.keys[rows].astype(str), times))]
    tracker = IncidentTracker(rules, TOPIC, 0)
    records = [
        ScoredRecord(str(data.keys[i]), int(all_times[i]), int(i), bool(flags[i]), 1.0)
        for i in rows
    ]
    out = tracker.process(records, model_version="v", now_ms=0).records
    out += tracker.process([], model_version="v", now_ms=10**12).records  # close the rest
    return [r for r in out if r["status"] == "closed"]


def _ms(iso: str) -> int:
    return int(round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000))


def incident_rows(incident: dict, data: SeriesData) -> np.ndarray:
    times = np.asarray(data.times, np.float64)
    key = data.keys == incident["key"]
    first, last = _ms(incident["opened_at"]), _ms(incident["last_anomaly_at"])
    return np.flatnonzero(key & (times >= first) & (times <= last))


def incident_figures(
    incidents: list[dict], data: SeriesData, truth: np.ndarray, part: np.ndarray, flags: np.ndarray
) -> dict:
    ranges = [r for r in labelled_ranges(truth.astype(int), score_index(data)) if part[r].all()]
    row_range = np.full(data.n_rows, -1)
    for k, r in enumerate(ranges):
        row_range[r] = k
    per_range = np.zeros(len(ranges), int)
    false_incidents = 0
    for incident in incidents:
        hit = np.unique(row_range[incident_rows(incident, data)])
        hit = hit[hit >= 0]
        per_range[hit] += 1
        false_incidents += hit.size == 0
    found = per_range > 0
    events = [int(flags[r].sum()) for r in ranges]
    return {
        "ranges": len(ranges),
        "ranges_with_incident": int(found.sum()),
        "incidents_per_range": float(per_range[found].mean()) if found.any() else float("nan"),
        "events_per_found_range": float(np.mean([e for e in events if e])) if any(events) else 0.0,
        "incidents": len(incidents),
        "false_incidents": int(false_incidents),
    }


def score_index(data: SeriesData):  # type: ignore[no-untyped-def]
    from anomaly_contract.windows import index_windows

    return index_windows(data.keys, data.n_rows, WINDOW, data.times)


def row_figures(
    relative: np.ndarray, truth: np.ndarray, part: np.ndarray, recall_at: float | None
) -> dict:
    scored = part & np.isfinite(relative)
    r, t = relative[scored], truth[scored]
    flagged = r > 1.0
    out = {
        "precision": float(t[flagged].mean()) if flagged.any() else 0.0,
        "recall": float(flagged[t].mean()),
    }
    if recall_at is not None:  # the cut reaching that recall: the k-th highest anomaly score
        anomalous = np.sort(r[t])[::-1]
        k = max(1, int(np.ceil(recall_at * anomalous.size)))
        cut = anomalous[k - 1]
        at = r >= cut
        out["precision_at_v1_recall"] = float(t[at].mean())
    return out


def simulated_feedback(
    v1: Flags,
    data: SeriesData,
    truth: np.ndarray,
    part: np.ndarray,
    rules: IncidentRules,
    share: float,
    seed: int,
) -> tuple[list[bytes], list[bytes], list[bytes], dict]:
    """Events and incidents of v1 on the part, and an analyst's verdicts on ``share`` of the
    incidents, as the JSON records the topics would hold."""
    incidents = incidents_of(v1.flagged, data, part, rules)
    times = np.asarray(data.times, np.float64)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(incidents), size=int(round(share * len(incidents))), replace=False)
    feedback, verdicts = [], {"confirmed": 0, "false_positive": 0}
    for k in sorted(picked.tolist()):
        incident = incidents[k]
        verdict = "confirmed" if truth[incident_rows(incident, data)].any() else "false_positive"
        verdicts[verdict] += 1
        feedback.append(
            json.dumps(
                {
                    "incident_id": incident["incident_id"],
                    "verdict": verdict,
                    "by": "sim",
                    "at": "2026-12-02T00:00:00Z",
                }
            ).encode()
        )
    events = [
        json.dumps(
            {
                "event_id": event_id(TOPIC, 0, int(i), v1.version),
                "id": int(i),
                "key": str(data.keys[i]),
                "score": float(v1.scores.scores[i]),
                "threshold": float(v1.scores.thresholds[i]),
                "model_version": v1.version,
                "source": {
                    "topic": TOPIC,
                    "partition": 0,
                    "offset": int(i),
                    "timestamp_ms": int(times[i]),
                },
            }
        ).encode()
        for i in np.flatnonzero(v1.flagged & part)
    ]
    return feedback, events, [json.dumps(r).encode() for r in incidents], verdicts


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--share", type=float, default=0.2, help="share of incidents labelled")
    ap.add_argument("--gap", type=int, default=10, help="incident gap in ticks (ms)")
    ap.add_argument("--min-anomalies", type=int, default=3)
    ap.add_argument("--target-precision", type=float, help="threshold step rule (default: max F1)")
    ap.add_argument("--percentile", type=float, default=99.0, help="per-key threshold percentile")
    args = ap.parse_args()
    started = time.perf_counter()
    data = load_series(
        f"builtin:machines?keys={args.keys}&seed={args.seed}", key_column="key", time_column="t"
    )
    truth = np.asarray(data.labels) != 0
    t = np.asarray(data.times, np.float64)
    length = t.max() + 1
    a, b, c = t < 0.5 * length, (t >= 0.5 * length) & (t < 0.75 * length), t >= 0.75 * length
    rules = IncidentRules(gap_ms=args.gap, min_anomalies=args.min_anomalies, update_ms=0)
    opts = FitOptions(epochs=args.epochs, seed=args.seed, percentile=args.percentile)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        v1, s1 = fit_and_score(_rows(data, a), data, opts, root / "v1")
        fb, ev, inc, verdicts = simulated_feedback(v1, data, truth, b, rules, args.share, args.seed)
        read_verdicts, outputs = (
            parse_feedback(("", v) for v in fb),
            parse_outputs([("", v) for v in ev], [("", v) for v in inc]),
        )
        ab = a | b
        train_ab = _rows(data, ab)
        labels = label_rows(read_verdicts, outputs, series_refs(train_ab), "simulated")
        refit, s2 = fit_and_score(train_ab, data, opts, root / "refit", labels)
        control, s3 = fit_and_score(train_ab, data, opts, root / "control")
        event_refs = list(outputs.events.values())
        ev_labels = label_events(read_verdicts, outputs, event_refs)
        used = ev_labels.rows != 0
        rel = np.array([e.score / e.threshold for e, u in zip(event_refs, used, strict=True) if u])  # type: ignore[operator]
        conf = ev_labels.confirmed[used]
        models = [("v1", v1), ("refit", refit), ("control", control)]
        try:
            proposal = propose(
                threshold_curve(rel, conf), rel, conf, target_precision=args.target_precision
            )
            rule = f"precision >= {args.target_precision:g}" if args.target_precision else "max F1"
            factor = f"threshold factor {proposal.factor:.3f} ({rule} on {int(used.sum())} labelled events)"
            scaled = v1.relative / proposal.factor
            models.append(("threshold", replace(v1, relative=scaled, flagged=scaled > 1)))
        except DataError as exc:  # e.g. no false positive among the labelled incidents
            factor = f"no threshold step: {exc}"
        base = row_figures(v1.relative, truth, c, None)
        for name, model in models:
            flags = np.where(np.isfinite(model.relative), model.relative > 1.0, False)
            figures = row_figures(model.relative, truth, c, base["recall"])
            figures.update(
                incident_figures(incidents_of(flags, data, c, rules), data, truth, c, flags)
            )
            results[name] = figures
    print(
        f"feedback round on builtin:machines?keys={args.keys}&seed={args.seed}, W={WINDOW}, conv1d, "
        f"{args.epochs} epochs, p{args.percentile:g}; incidents: gap {args.gap} ticks, min {args.min_anomalies} anomalies; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"analyst labelled {sum(verdicts.values())} of B's {len(inc)} incidents: {verdicts}; "
        f"{labels.summary()}; {factor}"
    )
    print(f"fit seconds: v1 {s1:.0f}, refit {s2:.0f}, control {s3:.0f}")
    cols = [
        "precision",
        "recall",
        "precision_at_v1_recall",
        "incidents_per_range",
        "events_per_found_range",
        "ranges",
        "ranges_with_incident",
        "incidents",
        "false_incidents",
    ]
    print("model      " + "  ".join(f"{c:>12.12}" for c in cols))
    for name, figures in results.items():
        print(
            f"{name:<10} "
            + "  ".join(
                f"{figures.get(c, float('nan')):>12.3f}"
                if isinstance(figures.get(c), float)
                else f"{figures.get(c, ''):>12}"
                for c in cols
            )
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
