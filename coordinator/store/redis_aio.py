"""The volunteer loop's store calls on an asyncio Redis client, for the serving event loop.

A heartbeat, a lease or a report is one or two Redis round trips. Made from a worker thread, each
also costs a thread hop and a fight for the GIL with the event loop (measured: a worker-thread GET
costs the server 2-3x the CPU of the same GET awaited on the loop). So the serving process runs
these calls here, natively async. The logic is not written twice: RedisStore writes each of
them as a generator of commands (`*_steps`), and `_drive` below runs those same generators on
this client instead of the blocking one. The commands travel through resp_aio's lean client (the
protocol written directly: about a quarter of redis-py's CPU per command), or through redis-py's
asyncio client for URLs with options the lean one does not implement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from coordinator.store.redis_store import Command, RedisStore, Steps, reconnect_retry
from coordinator.store.resp_aio import RespPool, supports_url
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

MAX_CONNECTIONS = 64  # concurrent commands of one serving process; more wait for a free connection
CONNECTION_WAIT_S = 10.0  # ...this long at most, then the call fails (a store that slow is down)


class _RedisPyPipeline:
    """redis-py's asyncio client behind the same two calls as resp_aio.RespPool, for URLs with
    options the lean client does not implement."""

    def __init__(self, url: str) -> None:
        # An asyncio command holds a connection for its round trip, so a burst of calls needs
        # many; past MAX_CONNECTIONS they queue for one instead of failing.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=CONNECTION_WAIT_S, decode_responses=True,
            retry=reconnect_retry(asyncio_client=True),
        )
        self._client = redis.asyncio.Redis(connection_pool=pool)

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._client.aclose()


class AsyncRedisStore:
    """The hot calls of a RedisStore (see coordinator.store.aio.HotStore), awaited on the loop.
    Make it on the event loop that will use it: the client's connections belong to that loop."""

    def __init__(self, store: RedisStore, lean: bool = True) -> None:
        self.store = store
        if not store.url:
            raise ValueError("an async client needs a RedisStore opened with RedisStore.from_url")
        self._pipe: RespPool | _RedisPyPipeline
        if lean and supports_url(store.url):
            self._pipe = RespPool(store.url, MAX_CONNECTIONS, CONNECTION_WAIT_S)
        else:
            self._pipe = _RedisPyPipeline(store.url)

    async def close(self) -> None:
        await self._pipe.aclose()

    # -- the commands of RedisStore's generators, awaited -------------------------------------------

    async def _drive(self, steps: Steps) -> Any:
        try:
            command = next(steps)
            while True:
                command = steps.send(await self._execute(command))
        except StopIteration as done:
            return done.value

    async def _execute(self, command: Command) -> Any:
        kind = command[0]
        if kind == "script":
            (reply,) = await self._scripts([(command[1], command[2])])
            if isinstance(reply, Exception):
                raise reply
            return reply
        if kind == "scripts":
            return await self._scripts(command[1])
        if kind == "mget":
            return await self._one(("MGET", *command[1]))
        if kind == "hget":
            return await self._one(("HGET", command[1], command[2]))
        raise ValueError(f"unknown command {kind!r}")

    async def _one(self, command: Sequence[Any]) -> Any:
        (reply,) = await self._pipe.execute([command])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _scripts(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Pipelined EVALSHA; a script the server lost (NOSCRIPT: it did not run) is loaded and
        sent once more. Error replies come back as typed errors, one per call."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            got = await self._pipe.execute([
                ("EVALSHA", self.store.script(calls[index][0]).sha, *self.store.script_argv(calls[index][1]))
                for index in todo
            ])
            todo = self.store.settle_replies(calls, todo, got, replies, attempt)
            if not todo:
                break
            await self._pipe.execute([("SCRIPT", "LOAD", self.store.script(name).script)
                                      for name in {calls[index][0] for index in todo}])
        return replies

    # -- the hot calls --------------------------------------------------------------------------------

    async def find_principal_by_token_hash(self, token_hash: str) -> Principal | None:
        return await self._drive(self.store.find_principal_by_token_hash_steps(token_hash))  # type: ignore[no-any-return]

    async def lease_unit(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> tuple[WorkUnit, Lease] | None:
        return await self._drive(  # type: ignore[no-any-return]
            self.store.lease_unit_steps(volunteer_id, owner, hardware_class, lease_duration_s, slot)
        )

    async def extend_leases(self, extensions: Sequence[LeaseExtension]) -> list[Lease | Exception]:
        return await self._drive(self.store.extend_leases_steps(extensions))  # type: ignore[no-any-return]

    async def report_context(self, lease_id: str) -> ReportContext:
        return await self._drive(self.store.report_context_steps(lease_id))  # type: ignore[no-any-return]

    async def record_result(
        self, lease_id: str, volunteer_id: str, metrics: RunMetrics, score: NormalizedScore, result_id: str
    ) -> tuple[ResultRecord, bool]:
        return await self._drive(  # type: ignore[no-any-return]
            self.store.record_result_steps(lease_id, volunteer_id, metrics, score, result_id)
        )

    async def list_results(
        self, result_filter: ResultFilter | None = None, limit: int = 1000, after: str = ""
    ) -> list[ResultRecord]:
        return await self._drive(self.store.list_results_steps(result_filter, limit, after))  # type: ignore[no-any-return]

    async def get_meta(self, key: str) -> str | None:
        return await self._drive(self.store.get_meta_steps(key))  # type: ignore[no-any-return]

    async def compare_and_set_meta(self, key: str, expected: str | None, value: str) -> bool:
        return await self._drive(self.store.compare_and_set_meta_steps(key, expected, value))  # type: ignore[no-any-return]
