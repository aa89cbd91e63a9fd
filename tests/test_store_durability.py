"""Invariant 6: an acknowledged write survives `kill -9`.

A child process streams writes (lease a unit, report its result) and prints each result id on
stdout right after `record_result` returns. SQLite: the child itself is killed mid-stream. Redis:
the redis-server (AOF, appendfsync always) is killed mid-stream and restarted on the same
directory. Either way every printed id must be in the store afterwards, and the store must open
cleanly and be consistent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from coordinator.store.base import Store, open_store
from coordinator.store.sqlite_store import SqliteStore
from coordinator.store.types import LeaseState, UnitState
from tests.conftest import RedisServer
from tests.store_contract import add_volunteer, make_unit

ROOT = Path(__file__).resolve().parent.parent
UNITS = 400  # more than any round writes, so the writer never runs dry
ACKS_BEFORE_KILL = 25  # acknowledged writes to wait for before each kill
ROUNDS = 3  # kills per backend
CHILD_TIMEOUT_S = 60.0

WRITER = r"""
import sys
from coordinator.store.base import open_store
from coordinator.store.types import NormalizedScore, RunMetrics, RunStatus

url, volunteer_id, owner = sys.argv[1:4]
store = open_store(url)
while (granted := store.lease_unit(volunteer_id, owner, "cpu", 600.0)) is not None:
    unit, lease = granted
    result_id = "res-" + lease.lease_id
    store.record_result(lease.lease_id, volunteer_id, RunMetrics(RunStatus.OK, 1.5), NormalizedScore(), result_id)
    print(result_id, flush=True)  # only now is the write acknowledged
"""


def start_writer(url: str, volunteer_id: str, owner: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, volunteer_id, owner],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_acks(writer: subprocess.Popen[str], count: int) -> list[str]:
    """Block until the writer acknowledged `count` writes (or died)."""
    assert writer.stdout is not None
    acked = []
    while len(acked) < count and (line := writer.stdout.readline()):
        acked.append(line.strip())
    assert len(acked) == count, f"writer stopped early: {writer.stderr.read() if writer.stderr else ''}"
    return acked


def drain(writer: subprocess.Popen[str]) -> list[str]:
    """Whatever else the writer acknowledged before it died."""
    stdout, _ = writer.communicate(timeout=CHILD_TIMEOUT_S)
    return [line.strip() for line in stdout.splitlines() if line.strip()]


def check_store(store: Store, acked: list[str]) -> None:
    for result_id in acked:
        record = store.get_result(result_id)
        assert store.get_lease(record.lease_id).state == LeaseState.REPORTED
        assert store.get_unit(record.unit_id).state == UnitState.DONE
    # Consistency: a unit is leased exactly when it has an active lease.
    active = {lease.unit_id for lease in store.list_leases()}
    assert {u.unit_id for u in store.list_units(state=UnitState.LEASED)} == active


def test_sqlite_keeps_acknowledged_writes_when_the_writer_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    url = f"sqlite:///{path}"
    with SqliteStore(path) as store:
        for _ in range(UNITS):
            store.enqueue_unit(make_unit())
        volunteer = add_volunteer(store)
    acked: list[str] = []
    for _ in range(ROUNDS):
        writer = start_writer(url, volunteer.principal_id, volunteer.owner)
        acked += read_acks(writer, ACKS_BEFORE_KILL)
        writer.send_signal(signal.SIGKILL)  # mid-stream: it is writing the next one
        acked += drain(writer)
        assert writer.returncode == -signal.SIGKILL
    with SqliteStore(path) as reopened:
        assert reopened.integrity_check() == "ok"
        check_store(reopened, acked)
        assert len(reopened.list_results()) >= len(acked) == len(set(acked))


def test_redis_keeps_acknowledged_writes_when_the_server_is_killed(redis_process: RedisServer) -> None:
    url = f"{redis_process.url}/0?prefix=durability"
    store = open_store(url)
    for _ in range(UNITS):
        store.enqueue_unit(make_unit())
    volunteer = add_volunteer(store)
    store.close()
    acked: list[str] = []
    for _ in range(ROUNDS):
        writer = start_writer(url, volunteer.principal_id, volunteer.owner)
        acked += read_acks(writer, ACKS_BEFORE_KILL)
        redis_process.kill9()  # mid-stream: the writer's next call is in flight or about to be
        acked += drain(writer)
        assert writer.returncode != 0  # it lost its server
        redis_process.start()  # same directory and port: replays the AOF
    reopened = open_store(url)
    try:
        check_store(reopened, acked)
        assert len(reopened.list_results()) >= len(acked) == len(set(acked))
    finally:
        reopened.close()
