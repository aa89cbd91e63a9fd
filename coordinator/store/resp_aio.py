"""A lean asyncio Redis client for the serving processes' hot path: the Redis protocol (RESP)
written straight to asyncio streams, replies parsed by hiredis, a bounded pool of connections.

Why not redis-py's asyncio client: measured here, one command costs its caller about 180-230 us
of CPU through redis-py (pipeline object, pool bookkeeping, timeouts, hooks) and about 50 us
written directly, on uvloop (benchmarks/README.md, load section). A lease, a heartbeat group
or a report is one to three commands, so that difference is a large share of a call's CPU.

It speaks only what AsyncRedisStore sends (EVALSHA alone or pipelined, SCRIPT LOAD, MGET, HGET),
and it keeps redis-py's behaviour where the rest of the coordinator depends on it:
- error replies are redis-py's exception types (its own parser's table), so NOSCRIPT, LOADING and
  the scripts' typed errors are recognised as before;
- a broken, refused or closed connection raises redis.exceptions.ConnectionError (a store outage:
  UNAVAILABLE to callers, service/errors.py), and the round trip is retried on a fresh connection
  with the same backoff as the blocking client (redis_store.reconnect_retry);
- a connection is never reused after an error or a cancellation in the middle of a round trip
  (its replies would be out of step); one that met an error reply is fine and goes back.
URLs with options it does not implement are served by redis-py's client instead
(`supports_url`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.exceptions
from redis._parsers.base import BaseParser
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from coordinator.store.redis_store import RECONNECT_BACKOFF_CAP_S, RECONNECT_BACKOFF_S, RECONNECT_RETRIES

READ_CHUNK_BYTES = 65536
# What parse_url may return that this client implements; anything else goes to redis-py.
SUPPORTED_OPTIONS = frozenset(
    {"host", "port", "db", "username", "password", "path", "connection_class", "socket_timeout",
     "socket_connect_timeout", "ssl_cert_reqs"}
)


def supports_url(url: str) -> bool:
    options = parse_url(url)
    if not set(options) <= SUPPORTED_OPTIONS:
        return False
    return options.get("connection_class") in (None, SSLConnection, UnixDomainSocketConnection)


def encode(value: Any) -> bytes:
    """One argument as redis-py encodes it (numbers by repr; booleans and None refused)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise redis.exceptions.DataError(
            f"Invalid input of type: '{type(value).__name__}'. Convert to a bytes, string, int or float first."
        )
    return repr(value).encode("ascii")


def pack(command: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse, replyError=BaseParser.parse_error, encoding="utf-8"
        )

    async def round_trip(self, payload: bytes, count: int) -> list[Any]:
        """Send `count` commands (already packed) and read their `count` replies in order; an
        error reply is returned as its exception instance, not raised."""
        try:
            self.writer.write(payload)
            replies: list[Any] = []
            while len(replies) < count:
                reply = self.parser.gets()
                if reply is False:  # no complete reply buffered yet
                    data = await self.reader.read(READ_CHUNK_BYTES)
                    if not data:
                        raise redis.exceptions.ConnectionError("Connection closed by server.")
                    self.parser.feed(data)
                    continue
                replies.append(reply)
            return replies
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error while talking to redis: {exc}") from exc

    def close(self) -> None:
        self.writer.close()


class _Slots:
    """At most `size` holders; waiters are served first come, first served, and a released slot
    goes straight to the oldest waiter (no newcomer can take it first, so no waiter starves
    behind a stream of new calls)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeout_s: float) -> bool:
        """True once a slot is held; False after timeout_s without one."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
            return True
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return True  # handed a slot just as the wait ran out: keep it
            waiter.cancel()
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but the caller is gone: pass it on
            else:
                waiter.cancel()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class RespPool:
    """Up to `max_connections` connections; a round trip takes one for its duration. Waiting for
    a free one longer than `wait_s` fails like an unreachable store."""

    def __init__(self, url: str, max_connections: int, wait_s: float) -> None:
        options = parse_url(url)
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._path = str(options.get("path", ""))
        self._db = int(options.get("db", 0) or 0)
        self._username = options.get("username")
        self._password = options.get("password")
        self._read_timeout_s: float | None = options.get("socket_timeout")
        self._connect_timeout_s: float | None = options.get("socket_connect_timeout")
        self._ssl: ssl.SSLContext | None = None
        if options.get("connection_class") is SSLConnection:
            self._ssl = ssl.create_default_context()
            if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._wait_s = wait_s
        self._slots = _Slots(max_connections)
        self._idle: list[_Connection] = []
        # Connections in the middle of a round trip. asyncio's stream protocol holds its reader
        # only weakly, so without this a waiting round trip (and the task awaiting it) is reachable
        # only through its own reference cycle, and the garbage collector may destroy it mid-call.
        self._busy: set[_Connection] = set()
        self._backoff = ExponentialBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=RECONNECT_BACKOFF_S)

    @property
    def where(self) -> str:
        return self._path or f"{self._host}:{self._port}"

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of `commands`, sent as one pipeline (no transaction)."""
        payload = b"".join(pack(command) for command in commands)
        failures = 0
        while True:
            try:
                replies = await self._round_trip(payload, len(commands))
                for reply in replies:  # LOADING (a restarted server replaying its log): as refused
                    if isinstance(reply, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
                        raise reply
                return replies
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                failures += 1
                if failures > RECONNECT_RETRIES:
                    raise
                await asyncio.sleep(self._backoff.compute(failures))

    async def _round_trip(self, payload: bytes, count: int) -> list[Any]:
        if not await self._slots.acquire(self._wait_s):
            raise redis.exceptions.ConnectionError(
                f"no free connection to redis at {self.where} within {self._wait_s:.0f} s"
            )
        connection: _Connection | None = None
        try:
            connection = self._idle.pop() if self._idle else await self._connect()
            self._busy.add(connection)
            if self._read_timeout_s is None:
                replies = await connection.round_trip(payload, count)
            else:
                try:
                    replies = await asyncio.wait_for(connection.round_trip(payload, count), self._read_timeout_s)
                except TimeoutError:
                    raise redis.exceptions.TimeoutError(f"Timeout reading from redis at {self.where}") from None
        except BaseException:
            if connection is not None:
                connection.close()  # out of step, broken or cancelled: never reused
            raise
        else:
            self._idle.append(connection)
            return replies
        finally:
            if connection is not None:
                self._busy.discard(connection)
            self._slots.release()

    async def _connect(self) -> _Connection:
        try:
            if self._path:
                opening = asyncio.open_unix_connection(self._path)
            else:
                opening = asyncio.open_connection(self._host, self._port, ssl=self._ssl)
            reader, writer = await asyncio.wait_for(opening, self._connect_timeout_s)
        except TimeoutError:
            raise redis.exceptions.TimeoutError(f"Timeout connecting to redis at {self.where}") from None
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error {exc.errno} connecting to {self.where}. {exc.strerror}.") from exc
        connection = _Connection(reader, writer)
        setup: list[tuple[Any, ...]] = []
        if self._password is not None:
            setup.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            setup.append(("SELECT", self._db))
        if setup:
            try:
                replies = await connection.round_trip(b"".join(pack(c) for c in setup), len(setup))
            except BaseException:
                connection.close()
                raise
            for reply in replies:
                if isinstance(reply, Exception):
                    connection.close()
                    raise reply
        return connection

    async def aclose(self) -> None:
        while self._idle:
            connection = self._idle.pop()
            connection.close()
            try:
                await connection.writer.wait_closed()
            except OSError:
                pass
