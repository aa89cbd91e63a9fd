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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.store.aio import HotStore
from coordinator.store.types import Lease, LeaseExtension, Principal

MAX_GROUP = 256  # heartbeats per store trip; more wait for the next one
MAX_TRIPS = 4  # groups in flight at once


@dataclass
class _Queued:
    caller: Principal
    lease_id: str
    step: int
    fraction: float
    loss: float
    future: asyncio.Future[Lease]


class HeartbeatGroups:
    def __init__(self, hot: HotStore, lease_duration_s: Callable[[], float]) -> None:
        self._hot = hot
        self._lease_duration_s = lease_duration_s
        self._queued: list[_Queued] = []
        self._trips = 0  # in flight
        # The running trips. The event loop keeps only weak references to tasks, and a trip
        # waiting on Redis is otherwise reachable only through its own reference cycle (task ->
        # connection -> reader -> waiter -> task): the garbage collector would destroy it
        # mid-trip and its group's callers would wait out their deadlines.
        self._trip_tasks: set[asyncio.Task[None]] = set()
        self.groups = 0  # store trips made (for tests and metrics)
        self.largest_group = 0

    async def extend(self, caller: Principal, lease_id: str, step: int, fraction: float, loss: float) -> Lease:
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
                self.largest_group = max(self.largest_group, len(group))
                for item, result in zip(group, results, strict=True):
                    if item.future.done():  # the caller gave up (deadline, disconnect)
                        continue
                    if isinstance(result, Exception):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)
        finally:
            self._trips -= 1
