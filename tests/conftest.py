"""Shared fixtures: a private redis-server (AOF, fsync on every write), stores on each backend.

The shared Redis on 127.0.0.1:6379 keeps nothing on disk and other people use it, so every test
here starts its own `redis-server` on a free port in a temp dir instead.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child with `appendonly yes`, `appendfsync always`, in its own directory.

    `kill9()` then `start()` restarts it on the same directory and port, so it reloads its AOF."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
                try:
                    if client.ping() and client.info("persistence").get("loading") == 0:
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not become ready")
                time.sleep(0.02)
        finally:
            client.close()

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final fsync; only what the AOF already holds survives."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def _start_redis(directory: Path) -> RedisServer:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(directory)
    for attempt in range(3):  # a free port can be taken between probing and binding
        try:
            server.start()
            return server
        except RuntimeError:
            if attempt == 2:
                raise
            server = RedisServer(directory)
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a private redis-server shared by the session's tests (each uses its own prefix)."""
    with tempfile.TemporaryDirectory(prefix="autoswarm-redis-") as directory:
        server = _start_redis(Path(directory))
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill and restart."""
    server = _start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


class OffsetClock:
    """time.time() plus an offset the test advances: lease expiry without sleeping."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


@pytest.fixture
def offset_clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def sqlite_store(tmp_path: Path, offset_clock: OffsetClock) -> Iterator[object]:
    """A fresh SqliteStore on a temp file whose clock the test can advance."""
    from coordinator.store.sqlite_store import SqliteStore

    store = SqliteStore(tmp_path / "state.sqlite", clock=offset_clock)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def store(sqlite_store: object) -> object:
    """The default store for tests that do not care which backend: a fresh SQLite file."""
    return sqlite_store


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A store URL on the private server with a prefix no other test uses."""
    return f"{redis_server}/0?prefix=test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[object]:
    """A fresh RedisStore; its keys are deleted afterwards."""
    from coordinator.store.redis_store import RedisStore

    store = RedisStore.from_url(redis_url)
    try:
        yield store
    finally:
        store.delete_everything()
        store.close()
