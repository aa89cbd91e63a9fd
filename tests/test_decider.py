"""The decision process beside the serving process (coordinator/service/decider.py).

Real processes throughout: a `coordinator serve` process, its decider child, scripted volunteers
over gRPC. Reports are acknowledged before they are judged; these tests show that nothing
acknowledged goes unjudged when the decider is killed, that a killed server leaves no decider
behind, and that the decider resumes from its cursor.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from coordinator_proc import ScriptedVolunteer, coordinator_process, merge_a_win, run_swarm

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.service import decider as decider_mod

pytestmark = pytest.mark.slow

POLICY = {"prior_sigma": 0.001}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _decider_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / "coordinator.json").read_text())["decider_pid"])


def _children(pid: int) -> list[int]:
    """Live children of pid (a child reaped between the listing and its status is not one)."""
    import psutil

    alive = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_killed_decider_is_restarted_and_judges_what_was_acknowledged_meanwhile(tmp_path):
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob")]
        first = _decider_pid(proc.data_dir)
        assert _alive(first) and first in _children(proc.proc.pid)
        unit = volunteers[0].lease()  # a baseline, planned by the decider
        assert unit is not None and unit.kind == pb.UNIT_KIND_BASELINE
        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: not _alive(first), 10)
        # Acknowledged while nobody decides: stored, not yet judged.
        response = volunteers[0].report(unit, 1.0)
        assert response.result_id
        # The server notices within its maintenance interval and starts a new decider, which
        # judges from its cursor: the result counts towards the class's baseline.
        assert _wait(lambda: [p for p in _children(proc.proc.pid) if p != first] != [], 20)
        proc.settle(timeout_s=20)
        with proc.admin() as admin:
            classes = {c.hardware_class: c for c in admin.status().classes}
        assert classes["cpu"].baseline_samples >= 1
        assert "restarting it" in proc.log()
        # And it keeps deciding: the swarm goes on leasing planned work.
        assert run_swarm(volunteers, lambda constants, hardware_class: 1.0, max_rounds=2) > 0
    finally:
        proc.stop()


def test_killed_server_leaves_no_decider_behind(tmp_path):
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    decider_pid = _decider_pid(proc.data_dir)
    assert _alive(decider_pid)
    proc.kill9()
    assert _wait(lambda: not _alive(decider_pid), 15), "the decider outlived its server"
    # A restart on the same data dir gets a fresh decider (the lock was released with the process).
    proc.start()
    try:
        second = _decider_pid(proc.data_dir)
        assert second != decider_pid and _alive(second)
        (volunteer,) = [ScriptedVolunteer(proc, owner="alice").register()]
        assert volunteer.lease() is not None
    finally:
        proc.stop()
    assert _wait(lambda: not _alive(second), 15)  # a clean stop takes the decider with it


def test_graceful_stop_leaves_every_result_judged(tmp_path):
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob", "carol")]
        runs = run_swarm(volunteers, lambda constants, hardware_class: 1.0, max_rounds=3)
        assert runs >= 3
        proc.settle()
        with proc.admin() as admin:
            assert admin.status().undecided_results == 0
            results = len(admin.results())
        assert results == runs
    finally:
        proc.stop()


def test_wake_ups_are_read_whole_and_coalesced(tmp_path):
    link = decider_mod.DeciderLink(tmp_path)
    assert link.wake() > 0  # no decider yet: nothing blocks, nothing fails
    reader = os.open(link.fifo_path, os.O_RDWR | os.O_NONBLOCK)
    try:
        buffer = bytearray()
        link.wake("wake")
        link.wake("topup")
        link.wake("rejudge")
        raw = os.open(link.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(raw, b"wa")
        assert decider_mod._drain(reader, buffer) == {"wake", "topup", "rejudge"}
        assert bytes(buffer) == b"wa"  # a partial line waits for the rest
        os.write(raw, b"ke\n")
        assert decider_mod._drain(reader, buffer) == {"wake"}
        assert decider_mod._drain(reader, buffer) == set()
        os.close(raw)
    finally:
        os.close(reader)
        link.close()


def test_a_waiter_is_released_only_by_a_pass_that_read_its_wake_up(tmp_path):
    link = decider_mod.DeciderLink(tmp_path)
    sent = link.wake()
    assert not asyncio.run(link.wait_for_pass_async(sent, 0.05))  # no pass at all
    decider_mod._write_passes(link.passes_path, {"covered_until": sent - 1.0, "passes": 1})
    assert not link.covered(sent)  # that pass read the pipe before this wake-up
    decider_mod._write_passes(link.passes_path, {"covered_until": sent + 0.001, "passes": 2})
    assert asyncio.run(link.wait_for_pass_async(sent, 1.0))


def test_two_serving_processes_share_the_port_and_the_decider(tmp_path):
    """Each scripted call opens its own connection, so the kernel spreads them over both
    processes; the swarm still merges a real improvement with its evidence."""
    proc = coordinator_process(tmp_path / "c", policy=POLICY, extra=["--serving-processes", "2"]).start()
    try:
        ready = json.loads((proc.data_dir / "coordinator.json").read_text())
        primary, secondary = ready["serving_pids"]
        assert primary == proc.proc.pid and _alive(secondary)
        volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob", "carol")]

        def landscape(constants, hardware_class):
            return 1.0 - (0.01 if constants.get("MATRIX_LR") == 0.05 else 0.0)

        merge_a_win(proc, volunteers, landscape)
        # A secondary that dies is replaced; the primary's death takes every child with it.
        os.kill(secondary, signal.SIGKILL)
        assert _wait(lambda: len([p for p in _children(proc.proc.pid) if p != secondary]) >= 2, 20)
        children = _children(proc.proc.pid)
        proc.kill9()
        assert _wait(lambda: not any(_alive(pid) for pid in children), 20), "children outlived the primary"
    finally:
        proc.stop()


def test_several_serving_processes_need_the_decider_process(tmp_path):
    proc = coordinator_process(tmp_path / "c", extra=["--serving-processes", "2", "--decisions", "inline"])
    with pytest.raises(RuntimeError, match="decisions in their own process"):
        proc.start(timeout_s=30)


def test_merges_made_by_the_decider_reach_the_servers_metrics(tmp_path):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    proc = coordinator_process(tmp_path / "c", policy=POLICY, extra=["--metrics-port", str(metrics_port)]).start()
    try:
        volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob", "carol")]
        merge_a_win(proc, volunteers, lambda constants, cls: 1.0 - (0.01 if constants.get("MATRIX_LR") == 0.05 else 0.0))

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                return response.read().decode()

        assert _wait(lambda: "autoswarm_merges_total 1.0" in scrape(), 20), scrape()
        assert "autoswarm_undecided_results 0.0" in scrape()
    finally:
        proc.stop()


def test_serving_processes_stop_together_and_follow_a_key_rotation(tmp_path):
    from coordinator.client import CoordinatorClient

    proc = coordinator_process(tmp_path / "c", policy=POLICY, extra=["--serving-processes", "2"]).start()
    ready = json.loads((proc.data_dir / "coordinator.json").read_text())
    pids = [*ready["serving_pids"], ready["decider_pid"]]
    try:
        with proc.admin() as admin:
            rotated = admin.rotate_key(3600.0)
        # Every serving process answers with the new key within its maintenance interval; each
        # call below is a new connection, so both processes are asked again and again.
        def everyone_has_it() -> bool:
            keys = set()
            for _ in range(12):
                with CoordinatorClient(proc.address, None, timeout_s=10.0, own_connection=True) as client:
                    keys.add(client.config().coordinator_public_key)
            return keys == {rotated.new_public_key}

        assert _wait(everyone_has_it, 20)
    finally:
        started = time.monotonic()
        assert proc.stop() == 0
    assert time.monotonic() - started < 12, "a graceful stop waited on a serving process"
    assert _wait(lambda: not any(_alive(pid) for pid in pids), 10)


def test_a_tokenizer_pinned_through_one_serving_process_binds_them_all(tmp_path):
    from coordinator.service.errors import PreconditionError

    proc = coordinator_process(tmp_path / "c", policy=POLICY, extra=["--serving-processes", "2"]).start()
    try:
        volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob", "carol", "dave")]
        first = volunteers[2].lease()  # the first ok result pins the tokenizer
        assert first is not None
        volunteers[2].report(first, 1.0, tokenizer_hash="tok-a")
        refused = 0
        for _ in range(6):  # each report a new connection: both processes answer some of them
            for volunteer in (volunteers[3], volunteers[2]):
                unit = volunteer.lease()
                if unit is None:
                    continue
                with pytest.raises(PreconditionError, match="tok-a"):
                    volunteer.report(unit, 1.0, tokenizer_hash="tok-b")
                refused += 1
                volunteer.report(unit, 1.0, tokenizer_hash="tok-a")
        assert refused >= 4
    finally:
        proc.stop()


def test_a_store_outage_mid_pass_stops_the_pass_before_the_unjudged_result(tmp_path, redis_process, monkeypatch):
    """redis-server killed (-9) while the decider judges a batch: the pass stops at the result
    it could not judge, the cursor stays before it, and after the restart the next pass judges
    it and the rest. (Skipping on would leave those results to a sweep that runs only when the
    head moves.) A failure that is not an outage still only skips its own result."""
    import redis
    from store_contract import a_score, add_volunteer, make_unit, new_id, ok_metrics

    from coordinator.branch import GlobalBranch
    from coordinator.server import BRANCH_DIR, initial_branch_files
    from coordinator.service.core import CoordinatorCore, SwarmConfig
    from coordinator.service.signing import SigningKeys
    from coordinator.store.redis_store import RedisStore

    store = RedisStore.from_url(f"{redis_process.url}/0?prefix=outage")
    try:
        branch = GlobalBranch.open(tmp_path / BRANCH_DIR, "global", initial_branch_files())
        config = SwarmConfig(budget_s=5.0, dataset="pydoc", data_manifest_id="m", proposer_enabled=False)
        core = CoordinatorCore(store, branch, SigningKeys.load_or_create(tmp_path), config)
        core.reconcile()
        volunteer = add_volunteer(store)
        reported = []
        for _ in range(4):
            store.enqueue_unit(make_unit(base_commit=branch.head()))
            granted = store.lease_unit(volunteer.principal_id, volunteer.owner, "cpu", 600.0)
            assert granted is not None
            record, _ = store.record_result(
                granted[1].lease_id, volunteer.principal_id, ok_metrics(), a_score(), new_id("res")
            )
            reported.append(record.result_id)

        decider = decider_mod.Decider(core)
        judged: list[str] = []
        killed: list[bool] = []
        real_after_result = core.after_result

        def after_result(record):
            if record.result_id == reported[1] and not killed:
                redis_process.kill9()  # the store goes away in the middle of the batch
                killed.append(True)
            if record.result_id == reported[3] and len(judged) == 3:
                raise ValueError("a bug judging this one result")
            real_after_result(record)
            judged.append(record.result_id)

        monkeypatch.setattr(core, "after_result", after_result)
        with pytest.raises(redis.exceptions.ConnectionError):
            decider.judge_new_results()
        assert judged == reported[:1]
        assert decider.cursor == reported[0]

        redis_process.start()  # reloads its append-only file: every acknowledged result is back
        assert decider.judge_new_results() == 3
        assert judged == reported[:3]  # the fourth failed on its own and was skipped, as before
        assert decider.cursor == reported[3]
        assert store.get_meta(decider_mod.META_CURSOR) == reported[3]
    finally:
        store.close()
