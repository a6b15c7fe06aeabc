"""Old import path of the worker subprocess handle, kept for tests/integration/
test_worker_model_topic.py, which imports it from here; new code imports `worker_harness`."""

from worker_harness import Topics, WorkerProcess

__all__ = ["Topics", "WorkerProcess"]
