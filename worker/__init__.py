"""The worker: scores a Kafka topic with a published model version (`anomaly-worker`)."""

import os

# TensorFlow (only for versions published without a NumPy or ONNX form) prints C++ log lines
# that would break the worker's JSON log format. The level is read when TensorFlow is first
# imported, so it is set here, before any worker module can import it; a value the user
# exported still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# BLAS threads are limited at start-up from ANOMALY_BLAS_THREADS (default 1, worker.cli).
