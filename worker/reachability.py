"""Whether the broker answers: one explicit state with one owner, fed by every signal the worker has.

The rule (also in docs/operations.md, runbook "BrokerUnreachable"):

- **Unreachable** as soon as any failure is observed (no answer: a timeout, a lost connection;
  an error the broker replies with is an answer): an offset commit failed or timed out, a
  send is unacknowledged for longer than `UNACKED_BOUND_S`, a poll, metadata or probe request
  failed (the loop probes the broker every `PROBE_INTERVAL_S`, so an idle worker notices too), or
  the group coordinator has been unknown for `COORDINATOR_GRACE_S`.
- **Reachable again** only through a successful round trip that *began after* the last failure
  was observed. An acknowledgement of something sent before the outage proves nothing.
- **No flapping**: a failure of a request that began before the round trip that last cleared the
  state is stale (it was in flight across the outage: a commit timing out late, a send the
  producer is still retrying) and is ignored. Requests begun since count as usual.

Times are the owner's clock (monotonic seconds); `clock` is injectable for tests. Signals come from
the loop thread and from the client's IO thread (commit callbacks), hence the lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# A send unacknowledged for longer than this means the broker is away.
UNACKED_BOUND_S = 2.5
# The loop's broker round trip (end offsets of the assigned partitions), and its timeout.
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_MS = 2000
# The coordinator unknown for this long (not a momentary re-lookup after a failed request).
COORDINATOR_GRACE_S = 1.5


class BrokerReachability:
    """The worker's one verdict on the broker (read by /readyz and the
    ``anomaly_worker_broker_reachable`` gauge); starts unreachable until a first round trip."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._reachable = False
        self._failed_at = -math.inf  # when the last counted failure was observed
        self._cleared_at = -math.inf  # when the round trip that last cleared the state began
        self._coordinator_unknown_since: float | None = None
        self.reason = "not connected yet"

    @property
    def reachable(self) -> bool:
        return self._reachable

    def now(self) -> float:
        """The time to pass as ``started_at`` for a request about to begin."""
        return self.clock()

    def answered(self, started_at: float) -> None:
        """A round trip begun at ``started_at`` succeeded."""
        with self._lock:
            if self._reachable or started_at <= self._failed_at:
                return
            self._reachable = True
            self._cleared_at = started_at
        log.info("broker reachable again", extra={"was": self.reason})

    def failed(self, reason: str, started_at: float | None = None) -> None:
        """A request begun at ``started_at`` (default: now) failed, or a condition was seen."""
        now = self.clock()
        with self._lock:
            if started_at is not None and started_at < self._cleared_at:
                return  # in flight across the outage that the last clearance ended
            self._failed_at = max(self._failed_at, now)
            was = self._reachable
            self._reachable = False
            self.reason = reason
        if was:
            log.warning("broker unreachable: %s", reason)

    def report(self, what: str, started_at: float, error: Exception | None) -> None:
        """The outcome of a request begun at ``started_at``: None for success. An error the
        broker itself replied with (``error.answered``, see `worker.client.ClientError`) is an
        answer: the broker is reachable."""
        if error is None or getattr(error, "answered", False):
            self.answered(started_at)
        else:
            self.failed(f"{what}: {error}", started_at=started_at)

    def unacknowledged(self, oldest_sent_at: float | None) -> None:
        """The oldest send still waiting for its acknowledgement went out at ``oldest_sent_at``
        (None: nothing waits)."""
        if oldest_sent_at is None:
            return
        age = self.clock() - oldest_sent_at
        if age > UNACKED_BOUND_S:
            self.failed(f"sends unacknowledged for {age:.1f}s", started_at=oldest_sent_at)

    def coordinator(self, known: bool) -> None:
        """Whether the group coordinator is known right now (checked every loop turn)."""
        now = self.clock()
        if known:
            self._coordinator_unknown_since = None
            return
        if self._coordinator_unknown_since is None:
            self._coordinator_unknown_since = now
        elif now - self._coordinator_unknown_since >= COORDINATOR_GRACE_S:
            self.failed("group coordinator unknown", started_at=self._coordinator_unknown_since)
