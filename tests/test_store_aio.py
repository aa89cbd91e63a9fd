"""The store contract through the async store of the serving event loop (coordinator/store/aio.py).

`AsyncRedisStore` runs the volunteer loop's calls (token lookup, lease, heartbeats, report context,
report, result pages, meta) on an asyncio client; `ThreadedHotStore` runs them on worker threads
over any blocking store. Here every contract test runs against a store whose hot calls go through
them, on an event loop in a background thread, and the rest through the blocking store: the same
invariants, errors and results both ways, on a real redis-server and on SQLite.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from coordinator.store.aio import HotStore, ThreadedHotStore, hot_store_for
from coordinator.store.base import Store
from coordinator.store.redis_aio import AsyncRedisStore
from coordinator.store.redis_store import RedisStore
from coordinator.store.sqlite_store import SqliteStore
from coordinator.store.types import LeaseExtension
from tests.store_contract import StoreContract, add_volunteer, make_unit

HOT_CALLS = (
    "find_principal_by_token_hash", "lease_unit", "extend_leases", "report_context", "record_result",
    "list_results", "get_meta", "compare_and_set_meta",
)


class LoopThread:
    """An event loop in a daemon thread; `call(coroutine)` waits for its result here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class ThroughHotStore:
    """A Store whose hot calls go through a HotStore on the loop thread (extend_lease as a group
    of one, as the serving process sends it); every other call goes to the blocking store."""

    def __init__(self, store: Store, loops: LoopThread, lean: bool = True) -> None:
        self._store = store
        self._loops = loops

        async def make() -> HotStore:
            async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
                return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

            if not lean and isinstance(store, RedisStore):
                return AsyncRedisStore(store, lean=False)
            return hot_store_for(store, in_thread)

        self.hot: HotStore = loops.call(make())

    def __getattr__(self, name: str) -> Any:
        if name in HOT_CALLS:
            method = getattr(self.hot, name)
            return lambda *args, **kwargs: self._loops.call(method(*args, **kwargs))
        return getattr(self._store, name)

    def extend_lease(
        self, lease_id: str, volunteer_id: str, lease_duration_s: float, step: int = 0, fraction: float = 0.0,
        loss: float = 0.0,
    ) -> Any:
        (result,) = self.extend_leases([LeaseExtension(lease_id, volunteer_id, lease_duration_s, step, fraction, loss)])
        if isinstance(result, Exception):
            raise result
        return result

    def extend_leases(self, extensions: Sequence[LeaseExtension]) -> Any:
        return self._loops.call(self.hot.extend_leases(extensions))

    def close(self) -> None:
        self._loops.call(self.hot.close())
        self._store.close()


@pytest.fixture
def loops() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.stop()


class TestAsyncRedisStore(StoreContract):
    lean = True  # the lean client (resp_aio); the subclass below runs redis-py's

    @pytest.fixture
    def store_url(self, redis_url: str) -> str:
        return redis_url

    @pytest.fixture
    def make_store(self, store_url: str, loops: LoopThread) -> Iterator[Callable[[], Any]]:
        opened: list[ThroughHotStore] = []

        def make() -> Any:
            opened.append(ThroughHotStore(RedisStore.from_url(store_url), loops, lean=self.lean))
            assert isinstance(opened[-1].hot, AsyncRedisStore)
            expected = "RespPool" if self.lean else "_RedisPyPipeline"
            assert type(opened[-1].hot._pipe).__name__ == expected
            return opened[-1]

        yield make
        cleaner = RedisStore.from_url(store_url)
        cleaner.delete_everything()
        cleaner.close()
        for store in opened:
            store.close()


class TestAsyncRedisStoreOnRedisPy(TestAsyncRedisStore):
    """The same contract through redis-py's asyncio client: what serves URLs with options the
    lean client does not implement."""

    lean = False


class TestThreadedHotStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.sqlite'}"

    @pytest.fixture
    def make_store(self, tmp_path: Path, loops: LoopThread) -> Iterator[Callable[[], Any]]:
        opened: list[ThroughHotStore] = []

        def make() -> Any:
            opened.append(ThroughHotStore(SqliteStore(str(tmp_path / "contract.sqlite")), loops))
            assert isinstance(opened[-1].hot, ThreadedHotStore)
            return opened[-1]

        yield make
        for store in opened:
            store.close()


def test_a_group_survives_the_server_losing_its_scripts(redis_url: str, loops: LoopThread) -> None:
    """After SCRIPT FLUSH (a restarted redis-server) pipelined and single scripts load again and
    each call runs exactly once."""
    store = ThroughHotStore(RedisStore.from_url(redis_url), loops)
    try:
        volunteer = add_volunteer(store)  # type: ignore[arg-type]
        store.enqueue_unit(make_unit())
        store._store._redis.script_flush()
        unit, lease = store.lease_unit(volunteer.principal_id, volunteer.owner, "cpu", 60.0)
        store._store._redis.script_flush()
        (extended,) = store.extend_leases([LeaseExtension(lease.lease_id, volunteer.principal_id, 600.0, 7)])
        assert not isinstance(extended, Exception)
        assert extended.progress_step == 7 and extended.deadline_s > lease.deadline_s
        assert store.get_unit(unit.unit_id).attempts == 1
    finally:
        RedisStore.from_url(redis_url).delete_everything()
        store.close()
