"""Inference time per architecture and batch size: the version's NumPy engine, Keras through
the traced tf.function (versions without a NumPy form), and ONNX Runtime (``--onnx``) on the
version's graph (conv, lstm, conv1d) or, for the dense family, on a graph exported here.

Each architecture is the small model of the TensorFlow-free contract tests
(`tests/contract/tf_free_models.py`, two epochs: speed does not depend on training). Times are
the median of repeated calls on the same batch, after one warm-up call, in milliseconds.

    python benchmarks/inference_engines.py                 # NumPy vs TensorFlow, markdown
    PYTHONPATH=/tmp/onnxlib python benchmarks/inference_engines.py --onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from anomaly_contract import artifact  # noqa: E402
from anomaly_contract.engines import DenseEngine  # noqa: E402
from anomaly_contract.layer_engine import LayerEngine  # noqa: E402
from anomaly_contract.model_dir import load_bundle, load_version_dir  # noqa: E402
from anomaly_contract.onnx_engine import export_onnx  # noqa: E402
from tests.contract.tf_free_models import ALL_ARCHITECTURES, publish_architecture  # noqa: E402

BATCHES = (1, 100, 1000)


def median_ms(call: Callable[[], object], budget_s: float = 0.6, max_calls: int = 200) -> float:
    call()  # warm-up (tracing, allocation)
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < max_calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def numpy_engine(version: Path) -> DenseEngine | LayerEngine:
    """The version's NumPy engine, whichever other forms it has."""
    if (version / artifact.DENSE_WEIGHTS_FILE).is_file():
        return DenseEngine.load(version / artifact.DENSE_WEIGHTS_FILE)
    return LayerEngine.load(version / artifact.LAYERS_FILE)


def onnx_runner(version: Path, model: object, work: Path) -> Callable[[np.ndarray], object] | str:
    """ONNX Runtime on the version's graph (or, for the dense family, which publishes none, on
    an export made here the same way); the reason when there is none."""
    import onnxruntime as ort

    graph = version / artifact.ONNX_FILE
    if not graph.is_file():
        graph = work / "model.onnx"
        if not export_onnx(model, graph):  # type: ignore[arg-type]
            return "export failed"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def measure(name: str, work: Path, with_onnx: bool) -> dict:
    model_dir = publish_architecture(name, work / name)
    version = load_bundle(model_dir).path
    slow = load_version_dir(version, prefer_keras=True)
    engine = numpy_engine(version)
    shape = slow.manifest.input_shape
    onnx = onnx_runner(version, slow.model, work / name) if with_onnx else "not run"
    row: dict = {"architecture": name, "numpy": {}, "tensorflow": {}, "onnx": {}}
    if isinstance(onnx, str):
        row["onnx_error"] = onnx
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        flat = rng.normal(size=(batch, slow.manifest.input_size)).astype(np.float32)
        row["numpy"][batch] = median_ms(lambda flat=flat: engine.reconstruct(flat))
        row["tensorflow"][batch] = median_ms(lambda flat=flat: slow.reconstruct_scaled(flat))
        if not isinstance(onnx, str):
            shaped = flat.reshape(batch, *shape)
            row["onnx"][batch] = median_ms(lambda shaped=shaped: onnx(shaped))
    print(json.dumps(row), file=sys.stderr)
    return row


def markdown(rows: list[dict]) -> str:
    head = "| architecture | " + " | ".join(
        f"{engine} b={b}" for engine in ("numpy", "tensorflow", "onnx") for b in BATCHES
    )
    lines = [head + " |", "|" + "---|" * (1 + 3 * len(BATCHES))]
    for r in rows:
        cells = [
            f"{r[engine][b]:.3f}" if b in r[engine] else "-"
            for engine in ("numpy", "tensorflow", "onnx")
            for b in BATCHES
        ]
        lines.append(f"| {r['architecture']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime")
    parser.add_argument("--architectures", default=",".join(ALL_ARCHITECTURES))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        rows = [measure(n, Path(tmp), args.onnx) for n in args.architectures.split(",")]
    print(f"inference time per call, ms (median), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
