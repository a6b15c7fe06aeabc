"""Inference time per architecture and batch size: the NumPy engine the worker runs, Keras
through the traced tf.function (versions without a NumPy form), and ONNX Runtime when it is
importable (``--onnx``: Keras 3's ``model.export(format="onnx")``, which needs tf2onnx).

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

from anomaly_contract.model_dir import load_bundle, load_version_dir  # noqa: E402
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


def onnx_session(
    model: object, shape: list[int], work: Path
) -> Callable[[np.ndarray], object] | str:
    """An ONNX Runtime session of the Keras model, or why there is none."""
    try:
        import onnxruntime as ort

        model(np.zeros((1, *shape), np.float32))  # type: ignore[operator]  # export needs a call
        path = work / "model.onnx"
        model.export(str(path), format="onnx", verbose=False)  # type: ignore[attr-defined]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # export and runtime raise many types
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def measure(name: str, work: Path, with_onnx: bool) -> dict:
    model_dir = publish_architecture(name, work / name)
    fast = load_bundle(model_dir)
    slow = load_version_dir(fast.path, prefer_keras=True)
    shape = fast.manifest.input_shape
    onnx = onnx_session(slow.model, shape, work / name) if with_onnx else "not run"
    row: dict = {"architecture": name, "numpy": {}, "tensorflow": {}, "onnx": {}}
    if isinstance(onnx, str):
        row["onnx_error"] = onnx
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        flat = rng.normal(size=(batch, fast.manifest.input_size)).astype(np.float32)
        row["numpy"][batch] = median_ms(lambda flat=flat: fast.reconstruct_scaled(flat))
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
