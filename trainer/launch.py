"""The `anomaly-trainer` console script: refuse in one line when the training extra is missing.

The base distribution installs the worker's runtime only; fitting needs TensorFlow, Keras,
pandas and the rest of ``kafka-anomaly[train]``. This module imports none of them, so the check
runs before anything else could fail with an ImportError traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

# Import names of the `train` extra in pyproject.toml (what trainer modules import).
TRAINING_MODULES = (
    "tensorflow",
    "keras",
    "sklearn",
    "pandas",
    "pyarrow",
    "matplotlib",
    "tqdm",
    "tf2onnx",
)
EXIT_MISSING_EXTRA = 2


def missing_training_modules() -> list[str]:
    """The training modules that cannot be imported here (found without importing them)."""
    return [name for name in TRAINING_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    missing = missing_training_modules()
    if missing:
        print(
            "anomaly-trainer: error: the training dependencies are not installed "
            f"(missing: {', '.join(missing)}): pip install 'kafka-anomaly[train]'",
            file=sys.stderr,
        )
        return EXIT_MISSING_EXTRA
    from trainer.cli import main as cli_main

    return cli_main(argv)
