"""Grouped heartbeats (coordinator/service/batching.py) on a real SQLite store."""

from __future__ import annotations

import asyncio
import threading

import pytest

from coordinator.service.batching import MAX_TRIPS, HeartbeatGroups
from coordinator.store.aio import ThreadedHotStore
from coordinator.store.errors import NotFoundError, PermissionDeniedError
from coordinator.store.sqlite_store import SqliteStore
from coordinator.store.types import Role, UnitKind, WorkUnit


def _leased(store: SqliteStore, count: int):
    pairs = []
    for index in range(count):
        volunteer = store.create_principal(Role.VOLUNTEER, f"o{index}", "v", f"tok-{index}", "cpu", "{}")
        store.enqueue_unit(WorkUnit(f"u{index}", UnitKind.BASELINE, "cpu", "c0", "x = 1\n", "{}"))
        unit, lease = store.lease_unit(volunteer.principal_id, volunteer.owner, "cpu", 100.0)
        pairs.append((volunteer, lease))
    return pairs


def test_concurrent_heartbeats_share_store_trips_and_keep_their_own_answers(tmp_path):
    """While MAX_TRIPS trips are in flight, later heartbeats queue and go together in one trip."""
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    pairs = _leased(store, 40)
    trips: list[int] = []
    gate = threading.Event()

    async def run_blocking(fn, *args):
        trips.append(len(args[0]))
        loop = asyncio.get_running_loop()
        if len(trips) <= MAX_TRIPS:  # hold the first trips so the rest queue up behind them
            await loop.run_in_executor(None, gate.wait, 5.0)
        return await loop.run_in_executor(None, fn, *args)

    groups = HeartbeatGroups(ThreadedHotStore(store, run_blocking), lambda: 500.0)

    async def main():
        calls = [groups.extend(volunteer, lease.lease_id, 5, 0.5, 2.0) for volunteer, lease in pairs]
        intruder, (_, victim_lease) = pairs[0][0], pairs[1]
        calls.append(groups.extend(intruder, victim_lease.lease_id, 1, 0.1, 1.0))  # not its lease
        calls.append(groups.extend(intruder, "no-such-lease", 1, 0.1, 1.0))
        tasks = []
        for call in calls[:MAX_TRIPS]:  # one per tick: each starts its own trip, which is held
            tasks.append(asyncio.ensure_future(call))
            await asyncio.sleep(0.02)
        tasks += [asyncio.ensure_future(c) for c in calls[MAX_TRIPS:]]
        await asyncio.sleep(0.05)
        assert trips == [1] * MAX_TRIPS  # every trip is busy: the rest wait
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert trips == [1] * MAX_TRIPS + [len(pairs) + 2 - MAX_TRIPS]  # 42 calls, 5 trips
    assert isinstance(results[-2], PermissionDeniedError)
    assert isinstance(results[-1], NotFoundError)
    for (volunteer, lease), extended in zip(pairs, results[:-2], strict=True):
        assert extended.lease_id == lease.lease_id and extended.volunteer_id == volunteer.principal_id
        assert extended.deadline_s == pytest.approx(extended.heartbeat_s + 500.0)
        assert store.get_lease(lease.lease_id).progress_step == 5
    assert groups.groups == MAX_TRIPS + 1 and groups.largest_group == len(pairs) + 2 - MAX_TRIPS
    store.close()


def test_a_failed_trip_fails_every_caller_of_its_group(tmp_path):
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    (volunteer, lease), = _leased(store, 1)

    async def broken(fn, *args):
        raise ConnectionError("store unreachable")

    groups = HeartbeatGroups(ThreadedHotStore(store, broken), lambda: 500.0)

    async def main():
        return await asyncio.gather(groups.extend(volunteer, lease.lease_id, 1, 0.1, 1.0), return_exceptions=True)

    (result,) = asyncio.run(main())
    assert isinstance(result, ConnectionError)
    assert store.get_lease(lease.lease_id).progress_step == 0  # nothing written
    store.close()
