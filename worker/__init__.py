"""The worker: scores a Kafka topic with a published model version (`anomaly-worker`)."""

import os

# TensorFlow (only for versions published without a NumPy or ONNX form) prints C++ log lines
# that would break the worker's JSON log format. The level is read when TensorFlow is first
# imported, so it is set here, before any worker module can import it; a value the user
# exported still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One BLAS thread: the worker's matrices are small (a micro-batch through a small autoencoder),
# and OpenBLAS's spinning helper threads took the CPUs kafka-python's I/O thread needs (2 CPUs,
# 64-feature dense model: 17,700 -> 31,500 records/s, see the README). Read when NumPy is first
# imported, which no worker module does before this one; a value the user exported still wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
