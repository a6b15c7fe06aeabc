"""Group membership: joining, rebalances, and the repairs kafka-python 3.0.12 needs.

Rebalances only happen inside the consumer's ``poll``. The client runs rebalance listeners on
its IO thread, where blocking calls raise, so `RevocationTracker` only records what was revoked
(after letting the delivery settle its batch); `GroupMembership.after_poll` then drops the
unprocessed records of those partitions (they are uncommitted, so the new owner reads them) and
sends partitions that came straight back to their committed offset. The rest repairs joins that
kafka-python 3.0.12 leaves unfinished (`check_assignment`, `check_rebalance`,
`restart_orphaned_join`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from worker.client import (
    MEMBER_STABLE,
    ClientError,
    ConsumerClient,
    InRecord,
    Partition,
)
from worker.http import HealthState
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# with no partition for this long although the topic has some, rejoin (a bounded number of times)
UNASSIGNED_REJOIN_S = 10.0
# reading a partition's committed offset after it came back in a rebalance
COMMITTED_TIMEOUT_MS = 5000
# a rebalance begun (partitions revoked) but not ended for this long is taken as stuck
REBALANCE_STUCK_S = 10.0
# how long to wait for the input topic's metadata before joining anyway
TOPIC_METADATA_WAIT_S = 10.0

Held = dict[Partition, list[InRecord]]


class RevocationTracker:
    """Records revoked partitions for the loop, after letting the delivery settle its batch.

    The client calls listeners on its IO thread, inside the loop's ``poll``. An async listener
    is awaited there while the IO loop keeps serving requests, so `before_revoke` (set once the
    delivery exists) can wait for acknowledgements and await an offset commit: the batch in
    flight is committed before the partitions move, as the Java client does in
    ``onPartitionsRevoked``. Blocking calls would raise on that thread.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._lock = threading.Lock()
        self._revoked: set[Partition] = set()
        self._metrics = metrics
        # awaited with can_commit=True on revocation, False when the membership is already lost
        self.before_revoke: Callable[[bool], Awaitable[None]] | None = None
        # monotonic time a rebalance began (revocation) and has not ended (assignment) since
        self.rebalancing_since: float | None = None

    async def on_partitions_revoked(self, revoked: set[Partition]) -> None:
        # called at the start of every join, with an empty set on the first
        self.rebalancing_since = time.monotonic()
        if revoked and self.before_revoke is not None:
            await self.before_revoke(True)
        with self._lock:
            self._revoked.update(revoked)
        if revoked:
            self._metrics.rebalances.inc()
            log.info("partitions revoked", extra={"partitions": _fmt(revoked)})

    async def on_partitions_assigned(self, assigned: set[Partition]) -> None:
        self.rebalancing_since = None
        log.info("partitions assigned", extra={"partitions": _fmt(assigned)})

    async def on_partitions_lost(self, lost: set[Partition]) -> None:
        self.rebalancing_since = time.monotonic()
        if lost and self.before_revoke is not None:
            await self.before_revoke(False)
        with self._lock:
            self._revoked.update(lost)
        if lost:
            self._metrics.rebalances.inc()
            log.warning(
                "partitions lost (group membership expired)", extra={"partitions": _fmt(lost)}
            )

    def take(self) -> set[Partition]:
        with self._lock:
            out, self._revoked = self._revoked, set()
        return out


def _fmt(tps: Any) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))


def restart_orphaned_join(coordinator: Any) -> bool:
    """Work around a kafka-python 3.0.12 bug; True when a stalled join was restarted.

    ``coordinator`` is kafka-python's (private) consumer coordinator. When a ``poll`` times out
    while a join the group leader began for a metadata change is in flight, the join completes
    in the background but nothing applies its assignment: the coordinator's ``need_rejoin()``
    turned false as soon as the leader computed the assignment, and only a rejoin loop awaits
    the result. The member then keeps its partitions marked as being revoked (assigned, never
    fetched) until the next rebalance. Asking for a rejoin makes the next ``poll`` join again at
    once. Reads private attributes (the dependency is pinned below 3.1); if they change this
    does nothing and `GroupMembership.check_rebalance` still rejoins after a timeout.
    """
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None or not getattr(task, "is_done", False):
        return False
    if coordinator.need_rejoin():
        return False  # the next poll awaits the result itself
    coordinator.request_rejoin()
    return True


class GroupMembership:
    """The consumer's place in the group: joining, rebalances and their repairs.

    ``forget`` is called with the partitions whose batches in flight and positions are void
    (revoked, or all of them, None, on a rejoin); ``drain`` settles the batches in flight
    before a rejoin (unsubscribing leaves the group without calling the listener)."""

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        health: HealthState,
        stop: threading.Event,
    ) -> None:
        self.s = settings
        self.metrics = metrics
        self.health = health
        self._stop = stop
        self.tracker = RevocationTracker(metrics)
        self.consumer: ConsumerClient | None = None
        self.forget: Callable[[set[Partition] | None], None] = lambda partitions: None
        self.drain: Callable[[], None] = lambda: None
        # partitions revoked and not yet re-positioned: lowest offset dropped (or None)
        self._reseek: dict[Partition, int | None] = {}
        self._unassigned_since = time.monotonic()
        self._rejoins_left = 3
        self._had_partitions = False

    @property
    def repositioning(self) -> frozenset[Partition]:
        """Partitions revoked and assigned back whose fetch position is not yet sent back to
        the committed offset (`release`): their position is past records never processed."""
        return frozenset(self._reseek)

    @property
    def rebalancing(self) -> bool:
        """A rebalance began and has not ended."""
        return self.tracker.rebalancing_since is not None

    def join(self, consumer: ConsumerClient) -> None:
        """Subscribe ``consumer`` to the input topic once its partitions are known."""
        self._await_topic_metadata(consumer)
        consumer.subscribe(self.s.input_topic, self.tracker)
        self.consumer = consumer
        self._unassigned_since = time.monotonic()

    def _await_topic_metadata(
        self, consumer: ConsumerClient, timeout_s: float = TOPIC_METADATA_WAIT_S
    ) -> None:
        """Know the input topic's partitions before joining the group: a join without them
        leaves kafka-python with an empty assignment until the next metadata refresh."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            consumer.topics()  # forces a metadata request
            if consumer.partitions_for_topic(self.s.input_topic):
                return
            if time.monotonic() > deadline:
                log.warning(
                    "input topic %s has no partitions yet: waiting for it to be created",
                    self.s.input_topic,
                )
                return
            self.health.beat()
            time.sleep(0.5)

    def _consumer(self) -> ConsumerClient:
        assert self.consumer is not None, "join() first"
        return self.consumer

    # ------------------------------------------------------------------------------- polling
    def after_poll(self, held: Held, polled: Held) -> int:
        """After each ``poll``: drop what revoked partitions held, restart an orphaned join,
        re-position partitions that came back. Returns how many held records were dropped."""
        consumer = self._consumer()
        n_dropped = 0
        revoked = self.tracker.take()
        if revoked:
            n_dropped = self.release(revoked, held, polled)
        if self.rebalancing and consumer.restart_orphaned_join():
            log.warning("a join finished after poll gave up on it was never applied: rejoining")
        if self._reseek:
            self._reposition(polled)
        return n_dropped

    def release(self, revoked: set[Partition], held: Held, polled: Held) -> int:
        """Drop unprocessed records of revoked partitions; returns how many were held.

        They are uncommitted, so whoever owns the partition next reads them again from the
        committed offset. When that owner is this consumer (revoked and assigned back in one
        rebalance), kafka-python keeps its old fetch position, past the dropped records (and
        past a batch the rebalance could not commit): such partitions are sent back to the
        committed offset once the rebalance is over (`_reposition`).
        """
        n_held = 0
        for tp in revoked:
            dropped = held.pop(tp, None) or []
            n_held += len(dropped)
            fresh = polled.pop(tp, None) or []
            lowest = self._reseek.get(tp)
            if dropped or fresh:
                self.metrics.dropped_revoked.inc(len(dropped) + len(fresh))
                first = min(r.offset for r in (*dropped, *fresh))
                lowest = first if lowest is None else min(lowest, first)
            self._reseek[tp] = lowest
        self.forget(revoked)
        return n_held

    def _reposition(self, polled: Held) -> None:
        """Once a rebalance is over, resume the partitions that came back where their committed
        offset says, as a fresh owner would. Records fetched before that, from the old
        position, are dropped (the seek reads them again)."""
        for tp in self._reseek.keys() & polled.keys():
            self.metrics.dropped_revoked.inc(len(polled.pop(tp)))
        if self.rebalancing:
            return
        assigned = self._consumer().assignment()
        for tp, lowest in self._reseek.items():
            if tp in assigned:
                self._seek_committed(tp, lowest)
        self._reseek.clear()

    def _seek_committed(self, tp: Partition, lowest_dropped: int | None) -> None:
        """Resume ``tp`` where its committed offset says, as a fresh owner would."""
        consumer = self._consumer()
        try:
            committed = consumer.committed(tp, timeout_ms=COMMITTED_TIMEOUT_MS)
        except ClientError as exc:
            # cannot ask the group: the dropped records are certainly uncommitted, so at least
            # go back to them
            log.warning("cannot read the committed offset of %s (%s)", tp, exc)
            if lowest_dropped is not None:
                consumer.seek(tp, lowest_dropped)
            return
        if committed is not None:
            consumer.seek(tp, committed)
        elif self.s.auto_offset_reset == "earliest":
            consumer.seek_to_beginning(tp)
        elif lowest_dropped is not None:
            consumer.seek(tp, lowest_dropped)

    # ------------------------------------------------------------------------------- repairs
    def check(self, n_assigned: int) -> None:
        """Between batches: rejoin when the membership is stuck (see the two checks)."""
        self.check_assignment(n_assigned)
        self.check_rebalance()

    def check_assignment(self, n_assigned: int) -> None:
        """Rejoin when we hold no partitions for long although the topic has some and either
        the membership is not stable (a rejoin that never completed) or we never had any (a
        first join that raced the topic's metadata). A stable idle member of a group with more
        members than partitions is left alone."""
        now = time.monotonic()
        if n_assigned:
            self._unassigned_since = now
            self._rejoins_left = 0
            self._had_partitions = True
            return
        if self._had_partitions:
            # Lost every partition: kafka-python 3.0 can end a rejoin without re-awaiting the
            # SyncGroup (it then believes it is stable with nothing assigned); allow a few
            # rejoins again, bounded so an idle extra replica does not cause rebalance storms.
            self._had_partitions = False
            self._rejoins_left = 3
            self._unassigned_since = now
        if now - self._unassigned_since < max(
            UNASSIGNED_REJOIN_S, self.s.session_timeout_ms / 1000
        ):
            return
        self._unassigned_since = now
        consumer = self._consumer()
        state = consumer.member_state()
        if self._rejoins_left <= 0 and state == MEMBER_STABLE:
            return
        consumer.topics()
        if consumer.partitions_for_topic(self.s.input_topic):
            self._rejoins_left -= 1
            log.warning(
                "no partitions assigned although %s has some (membership %s): rejoining",
                self.s.input_topic,
                state,
            )
            self.rejoin()

    def check_rebalance(self) -> None:
        """Rejoin when a rebalance began long ago and never ended.

        kafka-python 3.0.12: when a poll gives up on a join that the group leader started for
        a metadata change, the join completes in the background but its assignment is never
        applied (the coordinator no longer thinks it needs to rejoin, so nothing awaits the
        result). The member then keeps its partitions marked as being revoked: assigned, never
        fetched, while the group believes it owns them. Leaving and joining again ends that."""
        since = self.tracker.rebalancing_since
        if since is None:
            return
        if time.monotonic() - since < max(REBALANCE_STUCK_S, self.s.session_timeout_ms / 1000):
            return
        log.warning(
            "a rebalance began %.0fs ago and never completed: rejoining the group",
            time.monotonic() - since,
        )
        self.rejoin()

    def rejoin(self) -> None:
        """Leave the group and join again (settling the batches in flight first)."""
        consumer = self._consumer()
        self.drain()  # unsubscribing leaves the group without calling the listener
        self.forget(None)
        consumer.unsubscribe()
        self._reseek.clear()  # a new subscription starts every partition at its committed offset
        self.tracker.rebalancing_since = time.monotonic()
        consumer.subscribe(self.s.input_topic, self.tracker)
