"""The store calls of the volunteer loop, awaitable from the serving event loop.

Leases, heartbeats and reports are most of a swarm's traffic. `HotStore` is the part of the Store
interface they use, as coroutines with the same arguments, results, errors and invariants as the
blocking methods of the same names (the contract tests run both). Two implementations:

- `AsyncRedisStore` (redis_aio.py): the same Redis scripts on an asyncio client, no threads;
- `ThreadedHotStore`: any blocking Store (SQLite), each call run on a worker thread, so a slow
  fsync never stalls the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from coordinator.store.base import Store
from coordinator.store.types import (
    Lease,
    LeaseExtension,
    NormalizedScore,
    Principal,
    ReportContext,
    ResultFilter,
    ResultRecord,
    RunMetrics,
    WorkUnit,
)

RunBlocking = Callable[..., Awaitable[Any]]  # run_blocking(fn, *args) -> awaitable of fn(*args)


class HotStore(Protocol):
    store: Store  # the blocking store underneath, for everything else

    async def find_principal_by_token_hash(self, token_hash: str) -> Principal | None: ...

    async def lease_unit(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> tuple[WorkUnit, Lease] | None: ...

    async def extend_leases(self, extensions: Sequence[LeaseExtension]) -> list[Lease | Exception]: ...

    async def report_context(self, lease_id: str) -> ReportContext: ...

    async def record_result(
        self, lease_id: str, volunteer_id: str, metrics: RunMetrics, score: NormalizedScore, result_id: str
    ) -> tuple[ResultRecord, bool]: ...

    async def list_results(
        self, result_filter: ResultFilter | None = None, limit: int = 1000, after: str = ""
    ) -> list[ResultRecord]: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def compare_and_set_meta(self, key: str, expected: str | None, value: str) -> bool: ...

    async def close(self) -> None: ...


class ThreadedHotStore:
    """HotStore over a blocking Store: every call on a worker thread (`run_blocking`)."""

    def __init__(self, store: Store, run_blocking: RunBlocking) -> None:
        self.store = store
        self._run = run_blocking

    async def find_principal_by_token_hash(self, token_hash: str) -> Principal | None:
        return await self._run(self.store.find_principal_by_token_hash, token_hash)  # type: ignore[no-any-return]

    async def lease_unit(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> tuple[WorkUnit, Lease] | None:
        return await self._run(  # type: ignore[no-any-return]
            self.store.lease_unit, volunteer_id, owner, hardware_class, lease_duration_s, slot
        )

    async def extend_leases(self, extensions: Sequence[LeaseExtension]) -> list[Lease | Exception]:
        return await self._run(self.store.extend_leases, extensions)  # type: ignore[no-any-return]

    async def report_context(self, lease_id: str) -> ReportContext:
        return await self._run(self.store.report_context, lease_id)  # type: ignore[no-any-return]

    async def record_result(
        self, lease_id: str, volunteer_id: str, metrics: RunMetrics, score: NormalizedScore, result_id: str
    ) -> tuple[ResultRecord, bool]:
        return await self._run(  # type: ignore[no-any-return]
            self.store.record_result, lease_id, volunteer_id, metrics, score, result_id
        )

    async def list_results(
        self, result_filter: ResultFilter | None = None, limit: int = 1000, after: str = ""
    ) -> list[ResultRecord]:
        return await self._run(self.store.list_results, result_filter, limit, after)  # type: ignore[no-any-return]

    async def get_meta(self, key: str) -> str | None:
        return await self._run(self.store.get_meta, key)  # type: ignore[no-any-return]

    async def compare_and_set_meta(self, key: str, expected: str | None, value: str) -> bool:
        return await self._run(self.store.compare_and_set_meta, key, expected, value)  # type: ignore[no-any-return]

    async def close(self) -> None:
        return None  # the blocking store is closed by its owner


def hot_store_for(store: Store, run_blocking: RunBlocking) -> HotStore:
    """The natively async store for Redis, the threaded adapter for anything else. Call it on the
    event loop that will use it."""
    from coordinator.store.redis_store import RedisStore

    if isinstance(store, RedisStore):
        from coordinator.store.redis_aio import AsyncRedisStore

        return AsyncRedisStore(store)
    return ThreadedHotStore(store, run_blocking)
