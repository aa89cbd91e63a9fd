"""A real coordinator process, real gRPC, scripted volunteers that report chosen numbers.

Each volunteer computes its val_bpb from the constants of the train.py it was sent (a synthetic
landscape), so the tests decide which changes are real improvements without training anything.
The core scenarios run on SQLite and on a real redis-server.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
import uuid

import pytest
from coordinator_proc import (
    CoordinatorProcess,
    ScriptedVolunteer,
    coordinator_process,
    merge_a_win,
    run_swarm,
)

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.client import CoordinatorUnavailable
from coordinator.store import errors

pytestmark = pytest.mark.slow

POLICY = {"prior_sigma": 0.001}
NOISE = 0.0005
GAIN = 0.01


def landscape(better: dict[str, object], seed: int = 0, worse_on: dict[str, float] | None = None):
    """val_bpb = 1.0 + noise, minus GAIN for each constant set to its 'better' value."""
    rng = random.Random(seed)
    worse_on = worse_on or {}

    def value(constants, hardware_class):
        val = 1.0 + rng.gauss(0.0, NOISE)
        for name, good in better.items():
            if constants.get(name) == good:
                val -= GAIN
                val += worse_on.get(hardware_class, 0.0)
        return val

    return value


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return ""
    server = request.getfixturevalue("redis_server")
    return f"{server}/0?prefix=it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def coordinator(tmp_path, store_url):
    proc = coordinator_process(tmp_path / "coordinator", store_url, policy=POLICY).start()
    yield proc
    proc.stop()


def _state(coordinator: CoordinatorProcess, hypothesis_id: str) -> int:
    with coordinator.admin() as admin:
        return admin.hypothesis(hypothesis_id).hypothesis.state


def _git(coordinator: CoordinatorProcess, *args: str) -> str:
    git_dir = coordinator.data_dir / "branch.git"
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True, text=True
    ).stdout


def _volunteers(coordinator: CoordinatorProcess, owners: list[str], hardware_class: str = "cpu"):
    return [ScriptedVolunteer(coordinator, owner=o, hardware_class=hardware_class).register() for o in owners]


# -- leases ---------------------------------------------------------------------------------------


def test_lease_heartbeat_expiry_and_reissue(tmp_path, store_url):
    proc = coordinator_process(
        tmp_path / "c", store_url, budget_s=1.0, policy=POLICY, extra=["--startup-allowance-s", "1"]
    ).start()
    try:
        first, second = _volunteers(proc, ["a", "b"])
        unit = first.lease()
        assert unit is not None and unit.kind == pb.UNIT_KIND_BASELINE
        lease_s = unit.lease_deadline_unix_s - unit.issued_unix_s
        assert 3.5 <= lease_s <= 4.5  # 3 x budget + allowance
        with first.client() as client:  # within a third of the lease of the grant: acknowledged
            early = client.heartbeat(unit.lease_id, step=1)  # with the deadline the grant wrote
        assert early.lease_deadline_unix_s == pytest.approx(unit.lease_deadline_unix_s)
        with second.client() as client, pytest.raises(errors.PermissionDeniedError):
            client.heartbeat(unit.lease_id, step=1)  # not its lease: refused as ever
        time.sleep(lease_s * 0.6)
        with first.client() as client:
            beat = client.heartbeat(unit.lease_id, step=3, fraction=0.5, loss=4.2)
        assert beat.lease_deadline_unix_s > unit.lease_deadline_unix_s  # extended
        # Stop heartbeating: past the deadline the same unit goes to someone else.
        time.sleep(max(0.0, beat.lease_deadline_unix_s - time.time()) + 0.5)
        reissued = None
        for _ in range(10):
            reissued = second.lease()
            if reissued is not None and reissued.unit_id == unit.unit_id:
                break
            if reissued is not None:
                second.report(reissued, 1.0)
        assert reissued is not None and reissued.unit_id == unit.unit_id
        assert reissued.lease_id != unit.lease_id
        with pytest.raises(errors.LeaseExpiredError):
            first.report(unit, 0.5)
        second.report(reissued, 1.0)
        with proc.admin() as admin:
            results = admin.results()
        assert [r.lease_id for r in results if r.unit_id == unit.unit_id] == [reissued.lease_id]
    finally:
        proc.stop()


def test_double_report_is_idempotent(coordinator):
    (volunteer,) = _volunteers(coordinator, ["a"])
    unit = volunteer.lease()
    first = volunteer.report(unit, 1.001)
    second = volunteer.report(unit, 1.001)
    assert not first.duplicate and second.duplicate
    assert second.result_id == first.result_id
    with coordinator.admin() as admin:
        assert len([r for r in admin.results() if r.lease_id == unit.lease_id]) == 1


# -- acceptance -----------------------------------------------------------------------------------


def test_real_improvement_is_replicated_by_another_owner_and_merged(coordinator):
    volunteers = _volunteers(coordinator, ["alice", "bob", "carol", "alice"])
    land = landscape({"MATRIX_LR": 0.05})
    run_swarm(volunteers, land, max_rounds=6)  # baselines
    with coordinator.admin() as admin:
        submitted = admin.submit("Raise MATRIX_LR to 0.05", "Muon likes a larger step.",
                                 constant_changes={"MATRIX_LR": "0.05"})
    hypothesis_id = submitted.hypothesis_id
    run_swarm(volunteers, land, max_rounds=30,
              until=lambda: _state(coordinator, hypothesis_id) == pb.HYPOTHESIS_STATE_MERGED)
    with coordinator.admin() as admin:
        detail = admin.hypothesis(hypothesis_id)
    assert detail.hypothesis.state == pb.HYPOTHESIS_STATE_MERGED, detail.hypothesis.state_reason
    ok = [r for r in detail.results if r.result.status == pb.RUN_STATUS_OK]
    assert len({r.owner for r in ok}) >= 2 and len({r.volunteer_id for r in ok}) >= 2
    assert all(r.score.delta_bpb > 0.005 for r in ok)
    # The commit carries the evidence: title, body, trailers naming the hypothesis and results.
    commit = detail.hypothesis.merged_commit
    message = _git(coordinator, "log", "-1", "--format=%B", commit)
    assert message.startswith("Raise MATRIX_LR to 0.05")
    assert f"Hypothesis-Id: {hypothesis_id}" in message
    for record in ok:
        assert f"Result-Id: {record.result_id}" in message
    assert "Delta-Bpb-cpu:" in message
    assert "MATRIX_LR = 0.05" in _git(coordinator, "show", f"{commit}:train.py")
    assert _git(coordinator, "rev-parse", "global").strip() == commit


def test_runs_on_a_new_head_are_scored_against_the_merged_wins_runs(coordinator):
    """A report is scored against the class statistics whoever judges publishes: after a merge
    they exist for the new head at once (the win's runs on its parent ran the new head's code),
    so the first run on the new head already gets a normalized score."""
    volunteers = _volunteers(coordinator, ["alice", "bob", "carol", "alice"])
    land = landscape({"MATRIX_LR": 0.05})
    hypothesis_id = merge_a_win(coordinator, volunteers, land)
    with coordinator.admin() as admin:
        detail = admin.hypothesis(hypothesis_id)
    head = detail.hypothesis.merged_commit
    win_runs = [
        r for r in detail.results
        if r.result.status == pb.RUN_STATUS_OK and r.base_commit == detail.hypothesis.base_commit
    ]
    run_swarm(volunteers, land, max_rounds=2)  # the new head's first runs
    with coordinator.admin() as admin:
        on_head = [r for r in admin.results() if r.base_commit == head and r.result.status == pb.RUN_STATUS_OK]
    assert on_head, "no run on the new head"
    first = min(on_head, key=lambda r: r.reported_unix_s)
    score = first.score
    assert score.has_baseline and score.baseline_samples >= len(win_runs) >= 2
    assert score.delta_bpb == pytest.approx(score.baseline_val_bpb - first.result.val_bpb, abs=1e-9)
    assert abs(score.baseline_val_bpb - (1.0 - GAIN)) < 10 * NOISE  # the win's level, not the old head's


@pytest.mark.parametrize("owners", [["solo"], ["same", "same"]], ids=["one-volunteer", "one-owner"])
def test_lucky_numbers_from_one_volunteer_or_one_owner_are_not_merged(tmp_path, owners):
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        volunteers = _volunteers(proc, owners)
        land = landscape({"MATRIX_LR": 0.05})
        run_swarm(volunteers, land, max_rounds=6)
        with proc.admin() as admin:
            hypothesis_id = admin.submit("lucky", constant_changes={"MATRIX_LR": "0.05"}).hypothesis_id
        run_swarm(volunteers, land, max_rounds=12)
        state = _state(proc, hypothesis_id)
        assert state not in (pb.HYPOTHESIS_STATE_CONFIRMED, pb.HYPOTHESIS_STATE_MERGED)
        with proc.admin() as admin:
            detail = admin.hypothesis(hypothesis_id)
        assert any(r.result.status == pb.RUN_STATUS_OK for r in detail.results)  # it was measured
        assert all(r.score.delta_bpb > 0.005 for r in detail.results)  # and looked great
        assert len(_git(proc, "log", "--format=%H", "global").split()) == 1  # nothing landed
    finally:
        proc.stop()


def test_conflicting_win_is_marked_conflicted(coordinator):
    """Two wins on adjacent lines of one base: the second no longer merges once the first landed."""
    volunteers = _volunteers(coordinator, ["alice", "bob", "carol"])
    land = landscape({"MATRIX_LR": 0.05, "SCALAR_LR": 0.6})
    run_swarm(volunteers, land, max_rounds=6)
    with coordinator.admin() as admin:
        first = admin.submit("MATRIX_LR 0.05", constant_changes={"MATRIX_LR": "0.05"}).hypothesis_id
        second = admin.submit("SCALAR_LR 0.6", constant_changes={"SCALAR_LR": "0.6"}).hypothesis_id
    done = (pb.HYPOTHESIS_STATE_CONFLICTED, pb.HYPOTHESIS_STATE_MERGED)
    run_swarm(volunteers, land, max_rounds=40,
              until=lambda: _state(coordinator, first) in done and _state(coordinator, second) in done)
    with coordinator.admin() as admin:
        states = {h: admin.hypothesis(h).hypothesis for h in (first, second)}
    merged = [h for h in states.values() if h.state == pb.HYPOTHESIS_STATE_MERGED]
    conflicted = [h for h in states.values() if h.state == pb.HYPOTHESIS_STATE_CONFLICTED]
    assert len(merged) == 1 and len(conflicted) == 1, [(h.title, h.state, h.state_reason) for h in states.values()]
    assert "train.py" in conflicted[0].state_reason


@pytest.fixture
def strict_verify_coordinator(tmp_path, store_url):
    """Wins must be verified on the exact head (the default accepts runs up to 2 merges behind)."""
    proc = coordinator_process(tmp_path / "coordinator", store_url, policy={**POLICY, "verify_max_lag": 0}).start()
    yield proc
    proc.stop()


def test_win_on_a_stale_base_is_rebased_and_reverified_on_the_head(strict_verify_coordinator):
    coordinator = strict_verify_coordinator
    volunteers = _volunteers(coordinator, ["alice", "bob", "carol"])
    land = landscape({"MATRIX_LR": 0.05, "WEIGHT_DECAY": 0.1})
    run_swarm(volunteers, land, max_rounds=6)
    with coordinator.admin() as admin:
        old_head = admin.status().head_commit
        first = admin.submit("MATRIX_LR 0.05", constant_changes={"MATRIX_LR": "0.05"}).hypothesis_id
        second = admin.submit("WEIGHT_DECAY 0.1", constant_changes={"WEIGHT_DECAY": "0.1"}).hypothesis_id
    run_swarm(volunteers, land, max_rounds=60, until=lambda: all(
        _state(coordinator, h) == pb.HYPOTHESIS_STATE_MERGED for h in (first, second)))
    with coordinator.admin() as admin:
        a, b = admin.hypothesis(first), admin.hypothesis(second)
    assert a.hypothesis.state == b.hypothesis.state == pb.HYPOTHESIS_STATE_MERGED
    order = _git(coordinator, "log", "--format=%H", "global").split()  # newest first
    later = min((a, b), key=lambda d: order.index(d.hypothesis.merged_commit))
    earlier = a if later is b else b
    assert later.hypothesis.base_commit == old_head  # proposed on the old base ...
    bases = {r.base_commit for r in later.results if r.result.status == pb.RUN_STATUS_OK}
    assert earlier.hypothesis.merged_commit in bases  # ... and measured again on the head
    head_source = _git(coordinator, "show", "global:train.py")
    assert "MATRIX_LR = 0.05" in head_source and "WEIGHT_DECAY = 0.1" in head_source


def test_merge_that_makes_another_class_worse_is_reverted(tmp_path):
    proc = coordinator_process(tmp_path / "c", policy={**POLICY, "online_window_s": 2.0}).start()
    try:
        cpu = _volunteers(proc, ["alice", "bob", "carol"])
        gpu = _volunteers(proc, ["dave", "erin"], hardware_class="rtx4090-24g")
        land = landscape({"MATRIX_LR": 0.05}, worse_on={"rtx4090-24g": 3 * GAIN})
        run_swarm(cpu + gpu, land, max_rounds=8)  # both classes measure the first head
        time.sleep(2.5)  # the GPU volunteers go quiet: the change is measured on cpu only
        with proc.admin() as admin:
            hypothesis_id = admin.submit("MATRIX_LR 0.05", constant_changes={"MATRIX_LR": "0.05"}).hypothesis_id
        run_swarm(cpu, land, max_rounds=30,
                  until=lambda: _state(proc, hypothesis_id) == pb.HYPOTHESIS_STATE_MERGED)
        assert _state(proc, hypothesis_id) == pb.HYPOTHESIS_STATE_MERGED
        # The GPU class comes back, measures the new head, finds it much worse: the merge is reverted.
        run_swarm(cpu + gpu, land, max_rounds=20,
                  until=lambda: _state(proc, hypothesis_id) == pb.HYPOTHESIS_STATE_REVERTED)
        with proc.admin() as admin:
            detail = admin.hypothesis(hypothesis_id).hypothesis
            history = admin.history().merges
        assert detail.state == pb.HYPOTHESIS_STATE_REVERTED, detail.state_reason
        assert history[0].reverted_by
        message = _git(proc, "log", "-1", "--format=%B", "global")
        assert "rtx4090-24g" in message and f"Reverts: {history[0].commit}" in message
        assert "MATRIX_LR = 0.04" in _git(proc, "show", "global:train.py")
    finally:
        proc.stop()


# -- bad input ------------------------------------------------------------------------------------


def _snapshot(coordinator: CoordinatorProcess) -> tuple:
    with coordinator.admin() as admin:
        return (
            [(r.result_id, r.result.val_bpb) for r in admin.results()],
            [(h.hypothesis_id, h.state) for h in admin.hypotheses().hypotheses],
            admin.status().head_commit,
        )


def test_bad_requests_get_the_right_status_and_change_nothing(tmp_path):
    import grpc

    from coordinator.client import CoordinatorClient
    from coordinator.store.types import MAX_PATCH_BYTES

    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        alice, mallory = _volunteers(proc, ["alice", "mallory"])
        unit = alice.lease()
        before = _snapshot(proc)

        def expect(code, call):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == code, caught.value.details()

        raw = grpc.insecure_channel(proc.address)
        from autoswarm.v1 import swarm_pb2_grpc as pb_grpc

        stub, admin_stub = pb_grpc.CoordinatorStub(raw), pb_grpc.AdminStub(raw)
        report = pb.ReportResultRequest(lease_id=unit.lease_id, result=pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=0.5))
        bearer = lambda token: (("authorization", f"Bearer {token}"),)  # noqa: E731
        # Unauthenticated: no token, a forged token.
        expect(grpc.StatusCode.UNAUTHENTICATED, lambda: stub.ReportResult(report))
        expect(grpc.StatusCode.UNAUTHENTICATED, lambda: stub.ReportResult(report, metadata=bearer("as_forged")))
        # Wrong role: a volunteer calling the admin service or proposing.
        expect(grpc.StatusCode.PERMISSION_DENIED, lambda: admin_stub.RevokeOwner(
            pb.RevokeOwnerRequest(owner="alice"), metadata=bearer(mallory.token)))
        expect(grpc.StatusCode.PERMISSION_DENIED, lambda: stub.SubmitHypothesis(
            pb.SubmitHypothesisRequest(title="x", constant_changes={"MATRIX_LR": "0.05"}), metadata=bearer(mallory.token)))
        # Another volunteer's lease.
        expect(grpc.StatusCode.PERMISSION_DENIED, lambda: stub.ReportResult(report, metadata=bearer(mallory.token)))
        # Malformed: NaN, no status, unknown lease.
        for result in (pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=float("nan")), pb.RunResult(val_bpb=1.0),
                       pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=float("inf"))):
            expect(grpc.StatusCode.INVALID_ARGUMENT, lambda r=result: stub.ReportResult(
                pb.ReportResultRequest(lease_id=unit.lease_id, result=r), metadata=bearer(alice.token)))
        expect(grpc.StatusCode.NOT_FOUND, lambda: stub.ReportResult(
            pb.ReportResultRequest(lease_id="no-such-lease", result=pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=1)),
            metadata=bearer(alice.token)))
        # A result measured on other data is refused.
        expect(grpc.StatusCode.FAILED_PRECONDITION, lambda: stub.ReportResult(pb.ReportResultRequest(
            lease_id=unit.lease_id, result=pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=1.0, data_manifest_id="other")),
            metadata=bearer(alice.token)))
        # Oversize: a patch over the limit, a message over the transport limit; a patch that does not apply.
        with CoordinatorClient(proc.address, proc.admin_token) as admin:
            with pytest.raises(errors.PayloadTooLargeError):
                admin.submit("big", patch="+" * (MAX_PATCH_BYTES + 1))
            with pytest.raises(errors.InvalidValueError):
                admin.submit("broken", patch="--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-nope\n+yes\n")
            with pytest.raises(errors.InvalidValueError):
                admin.submit("not a constant", constant_changes={"NO_SUCH_CONSTANT": "1"})
        expect(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: stub.ReportResult(pb.ReportResultRequest(
            lease_id=unit.lease_id, result=pb.RunResult(status=pb.RUN_STATUS_OK, log_tail="x" * (5 * 2**20))),
            metadata=bearer(alice.token)))
        raw.close()
        assert _snapshot(proc) == before
        # The lease is untouched: its owner still reports normally.
        assert not alice.report(unit, 1.0).duplicate
    finally:
        proc.stop()


# -- durability -----------------------------------------------------------------------------------


def test_kill9_mid_run_loses_no_acknowledged_result(tmp_path, store_url):
    proc = coordinator_process(tmp_path / "c", store_url, policy=POLICY).start()
    try:
        volunteers = _volunteers(proc, ["alice", "bob", "carol"])
        with proc.admin() as admin:
            admin.submit("MATRIX_LR 0.05", constant_changes={"MATRIX_LR": "0.05"})
        land = landscape({"MATRIX_LR": 0.05})
        acknowledged: list[str] = []
        held = volunteers[0].lease()  # a run in flight across the crash
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                for volunteer in volunteers[1:]:
                    try:
                        unit = volunteer.lease()
                        if unit is None:
                            continue
                        acknowledged.append(volunteer.report(unit, land({}, "cpu")).result_id)
                    except Exception:
                        return  # the coordinator died under us

        worker = threading.Thread(target=work)
        worker.start()
        deadline = time.time() + 20
        while len(acknowledged) < 3 and time.time() < deadline:
            time.sleep(0.05)
        proc.kill9()
        stop.set()
        worker.join(timeout=20)
        assert len(acknowledged) >= 3
        proc.start()
        with proc.admin() as admin:
            stored = {r.result_id for r in admin.results()}
            head = admin.status().head_commit
        assert set(acknowledged) <= stored
        assert head == _git(proc, "rev-parse", "global").strip()  # store and branch agree
        # The run that was in flight when the coordinator died is still accepted afterwards.
        response = volunteers[0].report(held, 1.0)
        assert not response.duplicate
        assert "reconciled" in proc.log() or head
    finally:
        proc.stop()


def test_redis_killed_under_a_serving_coordinator(tmp_path, redis_process):
    """kill -9 of redis-server mid-run: calls answer UNAVAILABLE (retryable) and change nothing;
    once it is back (its log replayed, its script cache empty) the same volunteers lease, beat and
    report again, and every acknowledged result is still there."""
    proc = coordinator_process(
        tmp_path / "c", f"{redis_process.url}/0?prefix=outage", policy=POLICY,
        extra=["--serving-processes", "2"],
    ).start()
    try:
        alice, bob = _volunteers(proc, ["alice", "bob"])
        first = alice.lease()
        acknowledged = alice.report(first, 1.0).result_id
        held = bob.lease()  # a run in flight across the outage
        redis_process.kill9()
        for call in (alice.lease, lambda: bob.report(held, 1.0)):
            with pytest.raises(CoordinatorUnavailable, match="store is unreachable"):
                call()
        for _ in range(4):  # on new connections: the granting process answers from the deadline it
            with bob.client() as client:  # wrote (durable before the outage); the other needs the store
                try:
                    beat = client.heartbeat(held.lease_id, step=1)
                except CoordinatorUnavailable as exc:
                    assert "store is unreachable" in str(exc)
                else:
                    assert beat.lease_deadline_unix_s == pytest.approx(held.lease_deadline_unix_s)
        redis_process.start()
        for step in range(2, 10):  # each call on a new connection, so on both serving processes
            with bob.client() as client:  # (the granting one answers from the deadline it wrote)
                assert client.heartbeat(held.lease_id, step=step).lease_deadline_unix_s >= held.lease_deadline_unix_s
        assert not bob.report(held, 1.0).duplicate  # the refused report changed nothing
        reported = 0
        for _ in range(8):  # each on a new connection: both processes, whose pooled store
            again = alice.lease()  # connections all died with the server, reach it again
            if again is not None:  # (an empty queue is an answer from the store too)
                reported += bool(alice.report(again, 1.0).result_id)
        assert reported >= 1
        proc.settle()
        with proc.admin() as admin:
            assert acknowledged in {r.result_id for r in admin.results()}
    finally:
        proc.stop()


def test_restart_resumes_with_the_same_key_and_branch(tmp_path):
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        (volunteer,) = _volunteers(proc, ["alice"])
        with proc.client() as client:
            key_before = client.config().coordinator_public_key
        proc.stop()
        proc.start()
        with proc.client() as client:
            config = client.config()
        assert config.coordinator_public_key == key_before
        assert volunteer.lease() is not None  # the identity survived too
        assert oct((proc.data_dir / "signing" / "current.pem").stat().st_mode & 0o777) == "0o600"
        assert oct((proc.data_dir / "admin.token").stat().st_mode & 0o777) == "0o600"
    finally:
        proc.stop()


