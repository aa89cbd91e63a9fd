"""Revoking an owner through `autoswarm coordinator revoke-owner`, on a real coordinator.

Mallory measures a hypothesis first and reports a great number; Alice leases the replicate that
would confirm it. Mallory's owner is revoked before Alice reports: the report that would have
merged the change on Mallory's numbers merges nothing, Mallory's volunteers are refused with
PERMISSION_DENIED, her results stay on record with counts=false, and when Bob (a third owner)
replicates, the change merges on Alice's and Bob's evidence alone.
"""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from coordinator_proc import ScriptedVolunteer, coordinator_process, run_swarm

from autoswarm.v1 import swarm_pb2 as pb
from autoswarm.v1 import swarm_pb2_grpc as pb_grpc
from coordinator.store import errors

pytestmark = pytest.mark.slow

POLICY = {"prior_sigma": 0.001}
BETTER = {"MATRIX_LR": 0.05}


def landscape(constants, hardware_class):
    return 1.0 - (0.01 if constants.get("MATRIX_LR") == 0.05 else 0.0)


def _mallory_first(proc):
    """Baselines from Alice and Bob; Mallory measures the hypothesis; Alice holds the replicate."""
    alice, bob = (ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob"))
    run_swarm([alice, bob], landscape, max_rounds=6)
    mallory = ScriptedVolunteer(proc, owner="mallory").register()
    with proc.admin() as admin:
        hypothesis_id = admin.submit("MATRIX_LR 0.05", constant_changes={"MATRIX_LR": "0.05"}).hypothesis_id
    candidate = mallory.work_once(landscape)
    assert candidate is not None and candidate.hypothesis_id == hypothesis_id
    proc.settle()  # reports are judged after they are acknowledged: the replicate is queued by then
    replicate = alice.lease()
    assert replicate is not None and replicate.kind == pb.UNIT_KIND_REPLICATE
    assert replicate.hypothesis_id == hypothesis_id
    return alice, bob, mallory, hypothesis_id, replicate


def _revoke_mallory(proc) -> subprocess.CompletedProcess:
    """`autoswarm coordinator revoke-owner mallory`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli.coordinator_cmd", "revoke-owner", "mallory",
         "--reason", "numbers too good", "--coordinator", proc.address,
         "--admin-token-file", str(proc.data_dir / "admin.token")],
        capture_output=True, text=True, timeout=60,
    )


def test_without_revocation_that_report_merges_the_change(tmp_path):
    """The control: the same sequence, nobody revoked, merges at Alice's report."""
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        alice, _, _, hypothesis_id, replicate = _mallory_first(proc)
        alice.report(replicate, landscape(BETTER, "cpu"))
        proc.settle()
        with proc.admin() as admin:
            assert admin.hypothesis(hypothesis_id).hypothesis.state == pb.HYPOTHESIS_STATE_MERGED
    finally:
        proc.stop()


def test_revoked_owner_is_refused_and_its_evidence_no_longer_counts(tmp_path):
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        alice, bob, mallory, hypothesis_id, replicate = _mallory_first(proc)
        revoked = _revoke_mallory(proc)
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == "revoked 1 volunteer(s) of mallory; 1 result(s) no longer count"

        # The report that would have confirmed the change on Mallory's numbers merges nothing.
        alice.report(replicate, landscape(BETTER, "cpu"))
        proc.settle()
        with proc.admin() as admin:
            detail = admin.hypothesis(hypothesis_id)
        assert detail.hypothesis.state != pb.HYPOTHESIS_STATE_MERGED, detail.hypothesis.state_reason
        mallory_results = [r for r in detail.results if r.owner == "mallory"]
        assert len(mallory_results) == 1 and not mallory_results[0].counts  # kept, not counted
        assert all(r.counts for r in detail.results if r.owner != "mallory")

        # Mallory's volunteer is refused, as a typed error and on the wire.
        with pytest.raises(errors.PermissionDeniedError):
            mallory.lease()
        with grpc.insecure_channel(proc.address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.CoordinatorStub(channel).LeaseWork(
                    pb.LeaseWorkRequest(hardware_class="cpu"),
                    metadata=(("authorization", f"Bearer {mallory.token}"),), timeout=15,
                )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # With a second honest owner the change merges, on honest evidence only.
        def merged() -> bool:
            with proc.admin() as admin:
                return admin.hypothesis(hypothesis_id).hypothesis.state == pb.HYPOTHESIS_STATE_MERGED

        run_swarm([alice, bob], landscape, max_rounds=20, until=merged)
        with proc.admin() as admin:
            detail = admin.hypothesis(hypothesis_id)
        assert detail.hypothesis.state == pb.HYPOTHESIS_STATE_MERGED, detail.hypothesis.state_reason
        message = subprocess.run(
            ["git", "--git-dir", str(proc.data_dir / "branch.git"), "log", "-1", "--format=%B",
             detail.hypothesis.merged_commit],
            capture_output=True, text=True, check=True,
        ).stdout
        assert f"Result-Id: {mallory_results[0].result_id}" not in message
        honest = [r for r in detail.results if r.counts and r.result.status == pb.RUN_STATUS_OK]
        assert {r.owner for r in honest} == {"alice", "bob"}
        for record in honest:
            assert f"Result-Id: {record.result_id}" in message
    finally:
        proc.stop()


def test_revocation_republishes_the_heads_class_statistics(tmp_path):
    """Runs are scored against the class statistics published for the head (and the leaderboard
    shows them): a revoked owner's baseline runs leave them at once, not at the next baseline."""
    proc = coordinator_process(tmp_path / "c", policy=POLICY).start()
    try:
        alice, mallory = (ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "mallory"))
        baselines: dict[str, list[float]] = {"alice": [], "mallory": []}
        for volunteer, value in [(alice, 1.0), (mallory, 0.95), (alice, 1.002), (mallory, 0.951)]:
            unit = volunteer.lease()
            assert unit is not None and unit.kind == pb.UNIT_KIND_BASELINE
            volunteer.report(unit, value)
            baselines[volunteer.owner].append(value)
        proc.settle()

        def head_baseline() -> float:
            with proc.admin() as admin:
                (row,) = [r for r in admin.leaderboard().rows if r.hardware_class == "cpu"]
            return row.baseline_val_bpb

        everyone = baselines["alice"] + baselines["mallory"]
        assert head_baseline() == pytest.approx(sum(everyone) / len(everyone))
        revoked = _revoke_mallory(proc)
        assert revoked.returncode == 0, revoked.stderr
        honest = sum(baselines["alice"]) / len(baselines["alice"])
        deadline = time.monotonic() + 20
        while head_baseline() != pytest.approx(honest) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert head_baseline() == pytest.approx(honest)
    finally:
        proc.stop()
