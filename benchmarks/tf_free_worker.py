"""The worker per architecture without TensorFlow (the version's NumPy or ONNX form) and with it
(the same version without those files, as one published before they existed): time to ready,
peak RSS and records/s (from a quarter of the records to the last), in one run on one topic.

Point architectures run through ``anomaly-worker`` itself (a subprocess with its defaults,
`throughput.running_worker`): 64-pixel `builtin:digits` rows as JSON records on a 4-partition topic,
every run reading the whole topic with its own group, after one unmeasured warm-up read, NumPy
and TensorFlow runs alternating which goes first. Windowed architectures (lstm, conv1d,
windowed dense) run through ``anomaly-worker`` too, on their own topic of keyed records
(`builtin:machines` rows, 300 keys, the Kafka key the series key: keys the model never saw, so
the worker also learns their normalisation online), and one level down (``--series-scoring``):
a fresh process that imports the scoring path, loads the version and scores windows in batches
of 500 (ready = process start to the first batch scored).

    python benchmarks/tf_free_worker.py                      # 60,000 records, markdown
    python benchmarks/tf_free_worker.py --records 5000 --json out.json
    python benchmarks/tf_free_worker.py --runs 3 --series-scoring   # three runs, scoring path too
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from ceilings import bare_consume  # noqa: E402
from feeds import produce_bulk  # noqa: E402
from kafka import KafkaProducer  # noqa: E402
from kafka_helpers import LocalKafka, unique_name  # noqa: E402
from throughput import running_worker  # noqa: E402
from worker_harness import Topics, make_topics  # noqa: E402

from anomaly_contract import artifact  # noqa: E402
from anomaly_contract.model_dir import load_bundle  # noqa: E402
from tests.contract.tf_free_models import (  # noqa: E402
    POINT_ARCHITECTURES,
    SERIES_ARCHITECTURES,
    digits_rows,
    publish_architecture,
)
from trainer.builtin_machines import machines_table  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

PARTITIONS = 4
SERIES_KEYS = 300
TARGETS = {"ready_s": 2.0, "rss_mb": 250.0}

_SCORE_WINDOWS = """
import sys, time, json
started = float(sys.argv[3])
import numpy as np
import worker.scoring
from anomaly_contract.model_dir import load_version_dir
bundle = load_version_dir(sys.argv[1], prefer_keras=sys.argv[2] == "tensorflow")
m, n, batch = bundle.manifest, int(sys.argv[4]), 500
windows = np.random.default_rng(0).normal(size=(n, m.series.window, m.n_features))
keys = list(bundle.series.normaliser.trained_keys())[:1] * batch
bundle.series.score_windows(windows[:batch], keys)
ready = time.time() - started
t0 = time.perf_counter()
for start in range(0, n, batch):
    bundle.series.score_windows(windows[start : start + batch], keys)
rate = n / (time.perf_counter() - t0)
# VmHWM: this process' own peak (ru_maxrss would count the forking parent's pages too)
status = open("/proc/self/status").read().split("VmHWM:")[1]
rss = int(status.split()[0]) / 1024
print(json.dumps({"ready_s": ready, "peak_rss_mb": rss, "rate": rate,
                  "tensorflow_imported": "tensorflow" in sys.modules, "inference": bundle.inference}))
"""


def without_numpy_form(model_dir: Path, work: Path) -> Path:
    """A copy of ``model_dir`` whose current version lacks its NumPy form (TensorFlow loads it)."""
    copy = work / f"{model_dir.name}-keras"
    shutil.copytree(model_dir, copy)
    version = load_bundle(copy).path
    for name in artifact.OPTIONAL_FILES:
        (version / name).unlink(missing_ok=True)
    return copy


def steady_run(bootstrap: str, topics: Topics, model_dir: Path, n: int, log: Path) -> dict:
    """One worker over the whole topic: ready time, peak RSS, and records/s once running (from
    the first quarter of the records to the last: a worker that started slowly had its
    consumer fetching while its model loaded, which would flatter a rate counted from ready)."""
    with running_worker(bootstrap, topics, model_dir, log) as (w, memory):
        w.wait_records(n / 4, timeout_s=300, poll_s=0.05)
        t_quarter, counted = time.time(), w.records_total()
        w.wait_records(n, timeout_s=300, poll_s=0.25)
        done = w.last_metrics[("anomaly_worker_last_batch_timestamp_seconds", ())]
        return {
            "ready_s": w.ready_after_s,
            "peak_rss_mb": memory.rss_mb,
            "rate": (n - counted) / (done - t_quarter),
        }


def digits_records(n: int) -> list[bytes]:
    x, _ = digits_rows()
    rows = np.resize(x, (n, x.shape[1]))
    return [json.dumps({"id": i, "features": [round(v, 5) for v in r]}).encode()
            for i, r in enumerate(rows.tolist())]  # fmt: skip


def produce_keyed(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20,
                             batch_size=512 * 1024)  # fmt: skip
    for key, value in records:
        producer.send(topic, value=value, key=key)
    producer.flush()
    producer.close()


def machines_records(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` keyed records of `builtin:machines` (300 keys, in time order): (key, value)."""
    table = machines_table(keys=SERIES_KEYS, length=max(60, -(-n // SERIES_KEYS)), seed=7)
    rows = np.column_stack([table[c] for c in ("temp", "load", "vibration")])[:n]
    return [(str(k).encode(), json.dumps({"id": i, "features": [round(v, 4) for v in r]}).encode())
            for i, (k, r) in enumerate(zip(table["key"], rows.tolist(), strict=False))]  # fmt: skip


def worker_runs(names: list[str], n: int, work: Path, series: bool, run: int = 0) -> list[dict]:
    """Each architecture through ``anomaly-worker``, NumPy/ONNX form against TensorFlow (which
    goes first alternates between architectures and between runs)."""
    if not names:
        return []
    broker = LocalKafka()
    broker.start()
    try:
        topics = make_topics(broker.bootstrap, "tffree", PARTITIONS)
        if series:
            produce_keyed(broker.bootstrap, topics.input, machines_records(n))
        else:
            produce_bulk(broker.bootstrap, topics.input, digits_records(n))
        # One unmeasured read first: the broker's fetch path (its JIT) warms up, so that the
        # first worker measured does not pay for it.
        bare_consume(broker.bootstrap, topics.input, n, WorkerSettings.model_construct(), len)
        rows = []
        for turn, name in enumerate(names):
            fast = publish_architecture(name, work / name)
            slow = without_numpy_form(fast, work)
            row: dict = {"architecture": name}
            runs = [("numpy", fast), ("tensorflow", slow)]
            for label, model_dir in (
                runs if (turn + run) % 2 == 0 else runs[::-1]
            ):  # alternate order
                run_topics = make_topics(broker.bootstrap, f"tffree-{name}", 1)
                run_topics.input, run_topics.group = topics.input, unique_name(f"g-{name}")
                log = work / f"{name}-{label}.log"
                row[label] = steady_run(broker.bootstrap, run_topics, model_dir, n, log)
                print(name, label, row[label], file=sys.stderr)
            rows.append(row)
        return rows
    finally:
        broker.close()


def series_runs(names: list[str], n: int, work: Path) -> list[dict]:
    rows = []
    inherited = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), inherited])))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    for name in names:
        version = load_bundle(publish_architecture(name, work / name)).path
        row: dict = {"architecture": name}
        for label in ("numpy", "tensorflow"):
            cmd = [sys.executable, "-c", _SCORE_WINDOWS, str(version), label, str(time.time()),
                   str(n)]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            row[label] = json.loads(out.stdout.strip().splitlines()[-1])
            print(name, label, row[label], file=sys.stderr)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| architecture | path | run | ready s (NumPy / TF) | peak RSS MB (NumPy / TF) "
        "| records/s (NumPy / TF) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["numpy"], r["tensorflow"]
        lines.append(
            f"| {r['architecture']} | {r['path']} | {r['run']} "
            f"| {a['ready_s']:.2f} / {b['ready_s']:.2f} "
            f"| {a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} "
            f"| {a['rate']:,.0f} / {b['rate']:,.0f} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per architecture and path over the runs: the worst ready time and RSS without
    TensorFlow, and records/s without it against with it (median of the runs' ratios, and
    total records/s against total), next to the targets."""
    lines = [
        "| architecture | path | worst ready s | worst peak RSS MB | NumPy / TF records/s, "
        "median of runs | total / total | targets met |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["architecture"], r["path"]), []).append(r)
    for (name, path), runs in groups.items():
        ready = max(r["numpy"]["ready_s"] for r in runs)
        rss = max(r["numpy"]["peak_rss_mb"] for r in runs)
        ratio = float(np.median([r["numpy"]["rate"] / r["tensorflow"]["rate"] for r in runs]))
        total = sum(r["numpy"]["rate"] for r in runs) / sum(r["tensorflow"]["rate"] for r in runs)
        met = ready <= TARGETS["ready_s"] and rss <= TARGETS["rss_mb"] and ratio >= 1.0
        lines.append(
            f"| {name} | {path} | {ready:.2f} | {rss:.0f} | {ratio:.2f} | {total:.2f} "
            f"| {'yes' if met else '**no**'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--windows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--point", default=",".join(POINT_ARCHITECTURES))
    parser.add_argument("--series", default=",".join(SERIES_ARCHITECTURES))
    parser.add_argument("--series-scoring", action="store_true",
                        help="also score windows one level down, without Kafka")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    point = [n for n in args.point.split(",") if n]
    series = [n for n in args.series.split(",") if n]
    work = Path(tempfile.mkdtemp(prefix="bench-tf-free-"))
    rows: list[dict] = []
    try:
        for run in range(1, args.runs + 1):
            found = [
                {**r, "path": "worker"} for r in worker_runs(point, args.records, work, False, run)
            ]
            found += [
                {**r, "path": "worker"} for r in worker_runs(series, args.records, work, True, run)
            ]
            if args.series_scoring:
                found += [{**r, "path": "scoring"} for r in series_runs(series, args.windows, work)]
            rows += [{**r, "run": run} for r in found]
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.records} records / {args.windows} windows"
    )
    print(markdown(rows))
    print()
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
