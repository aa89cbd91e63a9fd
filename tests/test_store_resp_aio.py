"""The lean asyncio Redis client (coordinator/store/resp_aio.py), against real redis-server
processes: encoding as redis-py does it, typed error replies, credentials and database, a
killed and restarted server, cancellation in the middle of a round trip, the pool's bound.
(The whole store contract also runs through it: tests/test_store_aio.py.)"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
import redis.exceptions

from coordinator.store.resp_aio import RespPool, encode, pack, supports_url


def test_arguments_are_encoded_as_redis_py_does():
    assert encode("héllo") == "héllo".encode()
    assert encode(b"\x00raw") == b"\x00raw"
    assert encode(7) == b"7" and encode(-3) == b"-3"
    assert encode(0.1) == b"0.1" and encode(1e-05) == b"1e-05" and encode(2.0) == b"2.0"
    for bad in (True, None, [1], {"a": 1}):
        with pytest.raises(redis.exceptions.DataError):
            encode(bad)
    assert pack(("HGET", "k", 1)) == b"*3\r\n$4\r\nHGET\r\n$1\r\nk\r\n$1\r\n1\r\n"


def test_urls_it_serves_and_those_it_leaves_to_redis_py():
    assert supports_url("redis://127.0.0.1:6379/0")
    assert supports_url("redis://user:secret@example.org:6380/3?socket_timeout=2")
    assert supports_url("rediss://example.org:6380/0")
    assert supports_url("unix:///run/redis.sock?db=2")
    assert not supports_url("redis://127.0.0.1:6379/0?health_check_interval=5")


def _run(coroutine):
    return asyncio.run(coroutine)


def test_replies_and_typed_errors(redis_server):
    async def main():
        pool = RespPool(f"{redis_server}/0", max_connections=4, wait_s=5.0)
        try:
            replies = await pool.execute([
                ("SET", "resp-test:k", "v"), ("GET", "resp-test:k"), ("GET", "resp-test:missing"),
                ("EVALSHA", "0" * 40, 0), ("NOSUCHCOMMAND",), ("MGET", "resp-test:k", "resp-test:missing"),
                ("DEL", "resp-test:k"),
            ])
        finally:
            await pool.aclose()
        return replies

    ok, value, missing, noscript, unknown, mget, deleted = _run(main())
    assert (ok, value, missing, mget, deleted) == ("OK", "v", None, ["v", None], 1)
    assert isinstance(noscript, redis.exceptions.NoScriptError)  # returned in place, not raised
    assert type(unknown) is redis.exceptions.ResponseError and "unknown command" in str(unknown)


def test_password_and_database_from_the_url(redis_process):
    admin = redis.Redis(port=redis_process.port)
    admin.config_set("requirepass", "s3cret")
    try:
        async def main(url):
            pool = RespPool(url, max_connections=2, wait_s=5.0)
            try:
                await pool.execute([("SET", "resp-db-test", "in db 5")])
            finally:
                await pool.aclose()

        _run(main(f"redis://:s3cret@127.0.0.1:{redis_process.port}/5"))
        checker = redis.Redis(port=redis_process.port, password="s3cret", db=5, decode_responses=True)
        assert checker.get("resp-db-test") == "in db 5"
        assert redis.Redis(port=redis_process.port, password="s3cret", db=0).get("resp-db-test") is None
        with pytest.raises(redis.exceptions.AuthenticationError):
            _run(main(f"redis://:wrong@127.0.0.1:{redis_process.port}/5"))
    finally:
        redis.Redis(port=redis_process.port, password="s3cret").config_set("requirepass", "")


def test_a_killed_server_is_a_connection_error_and_a_restarted_one_is_used_again(redis_process):
    async def main():
        pool = RespPool(f"{redis_process.url}/0", max_connections=4, wait_s=5.0)
        try:
            assert await pool.execute([("SET", "resp-restart", "before")]) == ["OK"]
            redis_process.kill9()  # the pooled connection is now dead, and nothing listens
            started = time.monotonic()
            with pytest.raises(redis.exceptions.ConnectionError):
                await pool.execute([("GET", "resp-restart")])
            assert time.monotonic() - started >= 0.3  # retried with backoff before giving up
            redis_process.start()  # replays its append-only file
            return await pool.execute([("GET", "resp-restart")])
        finally:
            await pool.aclose()

    assert _run(main()) == ["before"]


def test_a_cancelled_round_trip_never_hands_its_reply_to_the_next_caller(redis_server):
    async def main():
        pool = RespPool(f"{redis_server}/0", max_connections=1, wait_s=5.0)
        try:
            slow = asyncio.ensure_future(pool.execute([("BLPOP", "resp-test:never", 0.3)]))
            await asyncio.sleep(0.05)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            # The only connection was in the middle of BLPOP: it must not be reused.
            return await pool.execute([("ECHO", "mine")])
        finally:
            await pool.aclose()

    assert _run(main()) == ["mine"]


def test_the_pool_bounds_connections_and_a_long_wait_fails_like_an_outage(redis_server):
    async def main():
        pool = RespPool(f"{redis_server}/0", max_connections=2, wait_s=5.0)
        clients_before = len(redis.Redis.from_url(redis_server).client_list())
        started = time.monotonic()
        replies = await asyncio.gather(*(pool.execute([("BLPOP", f"resp-test:none{i}", 0.2)]) for i in range(4)))
        took = time.monotonic() - started
        clients_after = len(redis.Redis.from_url(redis_server).client_list())
        impatient = RespPool(f"{redis_server}/0", max_connections=1, wait_s=0.05)
        hold = asyncio.ensure_future(impatient.execute([("BLPOP", "resp-test:hold", 0.3)]))
        await asyncio.sleep(0.01)
        with pytest.raises(redis.exceptions.ConnectionError, match="no free connection"):
            await impatient._round_trip(pack(("PING",)), 1)
        await hold
        await pool.aclose()
        await impatient.aclose()
        return replies, took, clients_after - clients_before

    replies, took, opened = _run(main())
    assert replies == [[None]] * 4
    assert took >= 0.38  # four 0.2 s waits over two connections: two rounds
    assert opened <= 2


def test_a_round_trip_nobody_else_holds_survives_garbage_collection(redis_server):
    """asyncio's stream protocol holds its reader weakly and the loop holds tasks weakly: a task
    whose only work is a round trip must be kept alive by the pool, not by luck."""

    async def main():
        pool = RespPool(f"{redis_server}/0", max_connections=2, wait_s=5.0)
        try:
            task = asyncio.get_running_loop().create_task(pool.execute([("BLPOP", "resp-test:gc", 0.3)]))
            watched = weakref.ref(task)
            task.add_done_callback(lambda t: finished.append(t.result()))
            del task
            await asyncio.sleep(0.05)  # in the middle of BLPOP
            gc.collect()
            alive = watched() is not None
            await asyncio.sleep(0.5)
            return alive, finished
        finally:
            await pool.aclose()

    finished: list[list[object]] = []
    alive, finished = _run(main())
    assert alive, "the round trip was garbage-collected in the middle of its call"
    assert finished == [[None]]


def test_slots_are_handed_to_waiters_in_arrival_order_and_never_lost():
    from coordinator.store.resp_aio import _Slots

    async def main():
        slots = _Slots(1)
        assert await slots.acquire(1.0)
        order: list[str] = []

        async def wait(name: str, timeout_s: float = 2.0) -> None:
            if await slots.acquire(timeout_s):
                order.append(name)
                await asyncio.sleep(0.01)
                slots.release()
            else:
                order.append(f"{name} timed out")

        first = asyncio.ensure_future(wait("first"))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(wait("cancelled"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(wait("second"))
        await asyncio.sleep(0)
        impatient = asyncio.ensure_future(wait("impatient", timeout_s=0.001))
        await asyncio.sleep(0.005)
        gone.cancel()
        slots.release()  # the holder lets go: the oldest waiter gets it, not a newcomer
        late = asyncio.ensure_future(wait("late"))
        await asyncio.gather(first, second, late, impatient, return_exceptions=True)
        return order, slots.free

    order, free = _run(main())
    assert order == ["impatient timed out", "first", "second", "late"]
    assert free == 1  # every slot came back, the cancelled waiter's included
