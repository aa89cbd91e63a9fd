"""Grouped heartbeats (coordinator/service/batching.py) on a real SQLite store."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import pytest

from coordinator.service.batching import MAX_TRIPS, HeartbeatGroups
from coordinator.service.metrics import METRICS
from coordinator.store.aio import ThreadedHotStore
from coordinator.store.errors import LeaseExpiredError, NotFoundError, PermissionDeniedError
from coordinator.store.sqlite_store import SqliteStore
from coordinator.store.types import Lease, Principal, Role, UnitKind, WorkUnit


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


def test_a_trip_waiting_on_the_store_survives_garbage_collection():
    """The event loop holds tasks only weakly, and a trip waiting on Redis is reachable only
    through its own cycle (task -> reader -> waiter -> task: asyncio's stream protocol holds its
    reader weakly). Collected mid-trip, its group's callers used to wait out their deadlines."""

    class StoreThatWaits:
        def __init__(self) -> None:
            self.replies: list[weakref.ref[asyncio.Future[list[Lease]]]] = []  # held weakly, like a reader

        async def extend_leases(self, extensions):
            reply = asyncio.get_running_loop().create_future()
            self.replies.append(weakref.ref(reply))
            return await reply

    store = StoreThatWaits()
    groups = HeartbeatGroups(store, lambda: 500.0)  # type: ignore[arg-type]
    caller = Principal("v1", Role.VOLUNTEER, "o1", "v", "hash")
    lease = Lease("lease-1", "u1", "v1", "o1", issued_s=0.0, deadline_s=500.0)

    async def main():
        call = asyncio.ensure_future(groups.extend(caller, lease.lease_id, 1, 0.1, 1.0))
        await asyncio.sleep(0.01)  # the trip is now waiting on its reply
        gc.collect()
        reply = store.replies[0]()
        assert reply is not None, "the trip was garbage-collected while waiting on the store"
        reply.set_result([lease])
        return await asyncio.wait_for(call, 1.0)

    assert asyncio.run(main()) == lease


def test_a_slow_handler_is_logged_with_its_method(monkeypatch, caplog):
    """The latency histogram says how many calls were slow; the log says which (how the lost
    heartbeat trips above were found)."""
    from coordinator.service import servicer

    monkeypatch.setattr(servicer, "SLOW_CALL_S", 0.01)

    async def main():
        await servicer._answer(None, "ExtendLease", asyncio.sleep(0.05, result="late"))  # type: ignore[arg-type]
        await servicer._answer(None, "LeaseWork", asyncio.sleep(0, result="prompt"))  # type: ignore[arg-type]

    with caplog.at_level("WARNING", logger="autoswarm.coordinator.rpc"):
        asyncio.run(main())
    slow = [r.getMessage() for r in caplog.records if "slow call" in r.getMessage()]
    assert len(slow) == 1 and slow[0].startswith("slow call: ExtendLease took ")


def test_a_heartbeat_soon_after_a_write_is_answered_from_memory_and_a_later_one_writes(tmp_path):
    """A deadline written less than a third of a lease ago is still two thirds of a lease ahead:
    the heartbeat is acknowledged with it, and nothing is written, until a third has passed."""
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    (volunteer, lease), (other, _) = _leased(store, 2)
    trips: list[int] = []

    async def run_blocking(fn, *args):
        trips.append(len(args[0]))
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    now = [1000.0]
    groups = HeartbeatGroups(ThreadedHotStore(store, run_blocking), lambda: 300.0, clock=lambda: now[0])
    groups.remember(lease)  # granted here: its deadline was written with the grant
    writes_before = METRICS.heartbeat_writes._value.get()

    async def main():
        first = await groups.extend(volunteer, lease.lease_id, 1, 0.1, 3.0)
        now[0] += 99.0
        second = await groups.extend(volunteer, lease.lease_id, 2, 0.2, 2.9)
        stolen = await asyncio.gather(groups.extend(other, lease.lease_id, 9, 0.9, 1.0), return_exceptions=True)
        now[0] += 1.0  # a third of the 300 s lease since the grant
        third = await groups.extend(volunteer, lease.lease_id, 3, 0.3, 2.8)
        now[0] += 50.0
        fourth = await groups.extend(volunteer, lease.lease_id, 4, 0.4, 2.7)
        return first, second, stolen[0], third, fourth

    first, second, stolen, third, fourth = asyncio.run(main())
    assert first == lease and second == lease  # the grant's deadline, no trip
    assert isinstance(stolen, PermissionDeniedError)  # not its holder: the store decides, and refuses
    assert trips == [1, 1]  # the refused call and the third heartbeat
    assert third.deadline_s > lease.deadline_s and third.progress_step == 3
    assert fourth == third  # remembered from the third's write
    assert store.get_lease(lease.lease_id).progress_step == 3
    assert groups.answered_from_memory == 3
    assert METRICS.heartbeat_writes._value.get() - writes_before == 1  # the refused call wrote nothing
    store.close()


def test_a_forgotten_lease_goes_to_the_store_again(tmp_path):
    """After its report (or release) here, a late heartbeat is the store's to refuse."""
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    (volunteer, lease), = _leased(store, 1)
    groups = HeartbeatGroups(ThreadedHotStore(store, _in_thread), lambda: 300.0)
    groups.remember(lease)
    store.release_lease(lease.lease_id, volunteer.principal_id, "done here")
    groups.forget(lease.lease_id)

    async def main():
        return await asyncio.gather(groups.extend(volunteer, lease.lease_id, 1, 0.1, 3.0), return_exceptions=True)

    (result,) = asyncio.run(main())
    assert isinstance(result, LeaseExpiredError)
    assert groups.answered_from_memory == 0
    store.close()


def test_remembered_leases_age_out():
    now = [0.0]
    groups = HeartbeatGroups(None, lambda: 30.0, clock=lambda: now[0])  # type: ignore[arg-type]
    for index in range(5):
        groups.remember(Lease(f"lease-{index}", "u", "v", "o", issued_s=now[0], deadline_s=now[0] + 30.0))
        now[0] += 4.0
    assert len(groups._written) == 3  # written at 8, 12, 16; those at 0 and 4 are 10 s (a third) old
    groups.remember(Lease("lease-0", "u", "v", "o", issued_s=now[0], deadline_s=now[0] + 30.0))
    assert list(groups._written) == ["lease-3", "lease-4", "lease-0"]


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_share_zero_writes_every_heartbeat(tmp_path):
    store = SqliteStore(str(tmp_path / "s.sqlite"))
    (volunteer, lease), = _leased(store, 1)
    groups = HeartbeatGroups(ThreadedHotStore(store, _in_thread), lambda: 300.0, rewrite_after_share=0.0)
    groups.remember(lease)

    async def main():
        return [await groups.extend(volunteer, lease.lease_id, step, 0.1, 3.0) for step in (1, 2)]

    first, second = asyncio.run(main())
    assert (first.progress_step, second.progress_step) == (1, 2) and second.deadline_s >= first.deadline_s > lease.deadline_s
    assert groups.answered_from_memory == 0 and groups.groups == 2
    store.close()
