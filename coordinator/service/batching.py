"""Group commit for heartbeats: concurrent ExtendLease calls share one trip to the store.

Heartbeats are most of a swarm's calls (5 of every 7 at one per minute of a five-minute run) and
each is one small write. Alone, each pays a round trip and (on Redis with appendfsync always, or
SQLite with synchronous=FULL) its share of an fsync. Here the event loop queues them; a trip
applies everything queued with `HotStore.extend_leases` (one pipelined round trip on Redis, one
transaction on a worker thread on SQLite). Up to MAX_TRIPS trips are in flight at once: a
heartbeat never waits for an earlier group's fsync while a trip is free, and when all are busy,
calls queue and form the next group, so groups grow with the load.

Nothing is acknowledged before its group is written: each caller's answer is its own result or
error, exactly as `extend_lease` alone would give it.

Most heartbeats need no write at all. A lease's deadline is lease_duration ahead when it is written
(at the grant and at each written heartbeat); a heartbeat that comes while less than
REWRITE_AFTER_SHARE of the lease has passed since this process last wrote it is answered from
memory with that deadline, which is still at least (1 - share) of a lease ahead. With the default
1,020 s lease (3 x a 300 s budget + 120 s start-up allowance), a third is 340 s: of a five-minute
run's heartbeats, one a minute, at most one writes. What this gives up: a volunteer that dies is
reissued (1 - share) to 1 lease after its last heartbeat instead of exactly 1 lease after it, and
the progress stored with a lease is as of its last write.
A heartbeat from anyone but the lease's holder, or for a lease this process does not remember
(another serving process granted it, or a restart), goes to the store as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.service.metrics import METRICS
from coordinator.store.aio import HotStore
from coordinator.store.types import Lease, LeaseExtension, Principal

MAX_GROUP = 256  # heartbeats per store trip; more wait for the next one
MAX_TRIPS = 4  # groups in flight at once
REWRITE_AFTER_SHARE = 1.0 / 3.0  # of the lease passed since the last write: the next heartbeat writes


@dataclass
class _Queued:
    caller: Principal
    lease_id: str
    step: int
    fraction: float
    loss: float
    future: asyncio.Future[Lease]


class HeartbeatGroups:
    def __init__(
        self,
        hot: HotStore,
        lease_duration_s: Callable[[], float],
        rewrite_after_share: float = REWRITE_AFTER_SHARE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hot = hot
        self._lease_duration_s = lease_duration_s
        self._rewrite_after_share = rewrite_after_share  # 0: every heartbeat writes
        self._clock = clock
        # lease id -> (the lease as last written, when), oldest write first: the front ages out
        self._written: dict[str, tuple[Lease, float]] = {}
        self._queued: list[_Queued] = []
        self._trips = 0  # in flight
        # The running trips. The event loop keeps only weak references to tasks, and a trip
        # waiting on Redis is otherwise reachable only through its own reference cycle (task ->
        # connection -> reader -> waiter -> task): the garbage collector would destroy it
        # mid-trip and its group's callers would wait out their deadlines.
        self._trip_tasks: set[asyncio.Task[None]] = set()
        self.groups = 0  # store trips made (for tests and metrics)
        self.largest_group = 0
        self.answered_from_memory = 0  # heartbeats that needed no write (for tests and metrics)

    def _rewrite_after_s(self) -> float:
        return self._lease_duration_s() * self._rewrite_after_share

    def remember(self, lease: Lease) -> None:
        """`lease` was just written with a fresh deadline (granted, or extended by a heartbeat)."""
        if self._rewrite_after_share <= 0:
            return
        now = self._clock()
        self._written.pop(lease.lease_id, None)
        self._written[lease.lease_id] = (lease, now)
        horizon = now - self._rewrite_after_s()
        while self._written:  # drop what has aged out: its next heartbeat writes anyway
            oldest_id, (_, written_at) = next(iter(self._written.items()))
            if written_at > horizon:
                break
            del self._written[oldest_id]

    def forget(self, lease_id: str) -> None:
        """The lease ended here (reported, released): its heartbeats go to the store, which refuses them."""
        self._written.pop(lease_id, None)

    async def extend(self, caller: Principal, lease_id: str, step: int, fraction: float, loss: float) -> Lease:
        written = self._written.get(lease_id)
        if (
            written is not None
            and written[0].volunteer_id == caller.principal_id
            and self._clock() - written[1] < self._rewrite_after_s()
        ):
            self.answered_from_memory += 1
            return written[0]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lease] = loop.create_future()
        self._queued.append(_Queued(caller, lease_id, step, fraction, loss, future))
        if self._trips < MAX_TRIPS:
            self._trips += 1
            trip = loop.create_task(self._drain())  # runs after this tick: calls of the same tick join its group
            self._trip_tasks.add(trip)
            trip.add_done_callback(self._trip_tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queued:
                group, self._queued = self._queued[:MAX_GROUP], self._queued[MAX_GROUP:]
                duration_s = self._lease_duration_s()
                extensions = [
                    LeaseExtension(q.lease_id, q.caller.principal_id, duration_s, q.step, q.fraction, q.loss)
                    for q in group
                ]
                try:
                    results: list[Lease | Exception] = await self._hot.extend_leases(extensions)
                except Exception as exc:  # the trip itself failed: every caller of the group gets it
                    results = [exc] * len(group)
                self.groups += 1
                METRICS.heartbeat_writes.inc(sum(not isinstance(r, Exception) for r in results))
                self.largest_group = max(self.largest_group, len(group))
                for item, result in zip(group, results, strict=True):
                    # (a caller that gave up, by deadline or disconnect, has its future done already)
                    if isinstance(result, Exception):
                        self.forget(item.lease_id)
                        if not item.future.done():
                            item.future.set_exception(result)
                    else:
                        self.remember(result)
                        if not item.future.done():
                            item.future.set_result(result)
        finally:
            self._trips -= 1
