"""Group commit for heartbeats: concurrent ExtendLease calls share one trip to the store.

Heartbeats are most of a swarm's calls (5 of every 7 at one per minute of a five-minute run) and
each is one small write. Alone, each pays a worker-thread hop, a client round trip and (on
Redis with appendfsync always, or SQLite with synchronous=FULL) its share of an fsync. Here the
event loop queues them; one drain task at a time hands everything queued to a worker, which
authorizes each caller and applies the group with `Store.extend_leases` (one pipelined round
trip on Redis, one transaction on SQLite). Calls that arrive during a trip form the next group,
so groups grow with the load and cost nothing extra when it is light.

Nothing is acknowledged before its group is written: each caller's answer is its own result or
error, exactly as `extend_lease` alone would give it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from coordinator.service.auth import PendingPrincipal
from coordinator.store.base import Store
from coordinator.store.types import Lease, LeaseExtension, Principal

MAX_GROUP = 256  # heartbeats per store trip; more wait for the next one


@dataclass
class _Queued:
    caller: Principal | PendingPrincipal
    lease_id: str
    step: int
    fraction: float
    loss: float
    future: asyncio.Future[Lease]


class HeartbeatGroups:
    def __init__(
        self,
        store: Store,
        lease_duration_s: Callable[[], float],
        run_blocking: Callable[..., Awaitable[Any]],
    ) -> None:
        self._store = store
        self._lease_duration_s = lease_duration_s
        self._run_blocking = run_blocking
        self._queued: list[_Queued] = []
        self._draining = False
        self.groups = 0  # store trips made (for tests and metrics)
        self.largest_group = 0

    async def extend(
        self, caller: Principal | PendingPrincipal, lease_id: str, step: int, fraction: float, loss: float
    ) -> Lease:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lease] = loop.create_future()
        self._queued.append(_Queued(caller, lease_id, step, fraction, loss, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queued:
                group, self._queued = self._queued[:MAX_GROUP], self._queued[MAX_GROUP:]
                try:
                    results: list[Lease | Exception] = await self._run_blocking(self._apply, group)
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
            self._draining = False

    def _apply(self, group: list[_Queued]) -> list[Lease | Exception]:
        """On a worker thread: authorize each caller (a token not cached costs a store read),
        then one store call for the group."""
        results: list[Lease | Exception | None] = [None] * len(group)
        extensions: list[LeaseExtension] = []
        positions: list[int] = []
        duration_s = self._lease_duration_s()
        for index, item in enumerate(group):
            try:
                principal = item.caller.resolve() if isinstance(item.caller, PendingPrincipal) else item.caller
            except Exception as exc:
                results[index] = exc
                continue
            extensions.append(
                LeaseExtension(item.lease_id, principal.principal_id, duration_s, item.step, item.fraction, item.loss)
            )
            positions.append(index)
        if extensions:
            for index, result in zip(positions, self._store.extend_leases(extensions), strict=True):
                results[index] = result
        return [r if r is not None else RuntimeError("no result") for r in results]
