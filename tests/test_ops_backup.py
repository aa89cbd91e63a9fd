"""Backup -> wipe -> restore, and SQLite -> Redis migration, of a real coordinator's state.

A real coordinator process (tests/coordinator_proc.py) builds a history worth keeping: baselines,
a hypothesis replicated and merged into the global branch (mirrored to a bare repository by
--mirror-url), a key rotation. `autoswarm coordinator backup` archives it while it serves; the
data dir (and store) is wiped; `restore` brings it back and the restarted coordinator serves the
same public key, endorsements, head, and every result id, and its volunteers' tokens still work.
The refusals (occupied targets, damaged archives, a changing source) run without a server.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from coordinator_proc import (
    CoordinatorProcess,
    ScriptedVolunteer,
    coordinator_process,
    merge_a_win,
)

from autoswarm.v1 import swarm_pb2 as pb
from coordinator import ops
from coordinator.branch import GlobalBranch
from coordinator.server import initial_branch_files
from coordinator.service.signing import SigningKeys
from coordinator.store.base import StoreSnapshot, open_store
from coordinator.store.redis_store import RedisStore
from tests.store_contract import a_snapshot

POLICY = {"prior_sigma": 0.001}
MIRROR_TIMEOUT_S = 30.0


def landscape(constants, hardware_class):
    return 1.0 - (0.01 if constants.get("MATRIX_LR") == 0.05 else 0.0)


def _git(git_dir: Path, *args: str) -> str:
    done = subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli.coordinator_cmd", *args],
                          capture_output=True, text=True, timeout=120)


@dataclasses.dataclass
class Served:
    """What a client sees of a coordinator: what a restore must bring back."""

    public_key: bytes
    endorsements: list[tuple[bytes, bytes]]
    head: str
    result_ids: list[str]
    merged: list[tuple[str, str]]  # (hypothesis id, merged commit)


def served(proc: CoordinatorProcess) -> Served:
    with proc.admin() as admin:
        config, status = admin.config(), admin.status()
        results = admin.results()
        hypotheses = admin.hypotheses().hypotheses
    return Served(
        public_key=config.coordinator_public_key,
        endorsements=[(e.public_key, e.endorsed_by) for e in config.endorsements],
        head=status.head_commit,
        result_ids=[r.result_id for r in results],
        merged=[(h.hypothesis_id, h.merged_commit) for h in hypotheses if h.state == pb.HYPOTHESIS_STATE_MERGED],
    )


def build_history(proc: CoordinatorProcess, rotate: bool) -> list[ScriptedVolunteer]:
    """Baselines, one merged win, maybe a key rotation; returns the volunteers (their tokens).
    (Scripted volunteers verify units against the key they registered with: no rotation where
    they lease afterwards.)"""
    volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob", "carol")]
    merge_a_win(proc, volunteers, landscape)
    if rotate:
        with proc.admin() as admin:
            admin.rotate_key(transition_s=3600)
    return volunteers


def _wait_for_mirror(mirror: Path, head: str) -> None:
    deadline = time.monotonic() + MIRROR_TIMEOUT_S
    while time.monotonic() < deadline:
        if _git(mirror, "for-each-ref", "--format=%(objectname)", "refs/heads/global") == head:
            return
        time.sleep(0.1)
    raise AssertionError(f"the mirror never reached {head}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_backup_wipe_restore_brings_back_results_branch_and_key(tmp_path, backend, request):
    store_url = ""
    if backend == "redis":
        store_url = f"{request.getfixturevalue('redis_server')}/0?prefix=ops-{uuid.uuid4().hex[:10]}"
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "init", "-q", "--bare", str(mirror)], check=True)
    data_dir = tmp_path / "coordinator"
    proc = coordinator_process(data_dir, store_url, policy=POLICY, extra=["--mirror-url", str(mirror)]).start()
    try:
        volunteers = build_history(proc, rotate=True)
        before = served(proc)
        assert before.merged and before.endorsements and len(before.result_ids) >= 4
        _wait_for_mirror(mirror, before.head)  # pushed after the merge, off the request path
        archive = tmp_path / "backups" / "swarm.tar.gz"
        done = _cli("backup", "--data-dir", str(data_dir), "--store", store_url, "-o", str(archive))
        assert done.returncode == 0, done.stderr
        assert (archive.stat().st_mode & 0o777) == 0o600  # it holds the signing key
    finally:
        proc.stop()
    manifest = ops.read_manifest(archive)
    assert manifest.head == before.head and manifest.public_key == before.public_key.hex()
    assert manifest.store_dump == (ops.StoreDump.SQLITE_FILE if backend == "sqlite" else ops.StoreDump.RECORDS)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"signing/current.pem", "signing/rotation.json", "branch.bundle", "admin.token"} <= names
    assert any(n.startswith("signing/previous-") for n in names)
    original = open_store(ops.default_store_url(data_dir, store_url))
    stopped = original.export_snapshot()
    original.close()

    # Wipe: the data dir and the store are gone.
    shutil.rmtree(data_dir)
    if store_url:
        RedisStore.from_url(store_url).delete_everything()
    done = _cli("restore", str(archive), "--data-dir", str(data_dir), "--store", store_url)
    assert done.returncode == 0, done.stderr
    restored_store = open_store(ops.default_store_url(data_dir, store_url))
    restored = restored_store.export_snapshot()
    restored_store.close()
    assert restored.results == stopped.results  # no report came between the backup and the stop
    assert restored.principals == stopped.principals and restored.merges == stopped.merges
    assert (data_dir / "signing" / "current.pem").stat().st_mode & 0o777 == 0o600
    assert (data_dir / "admin.token").stat().st_mode & 0o777 == 0o600

    proc.start()
    try:
        after = served(proc)
        assert after == before
        assert _git(data_dir / "branch.git", "rev-parse", "global") == before.head
        volunteers[0].lease()  # answered (a unit or none), not UNAUTHENTICATED: its token came back
    finally:
        proc.stop()


@pytest.mark.slow
def test_sqlite_to_redis_migration_loses_nothing(tmp_path, redis_server):
    data_dir = tmp_path / "coordinator"
    # A long budget: the lease held across the migration must outlive two restarts.
    proc = coordinator_process(data_dir, budget_s=60.0, policy=POLICY).start()
    try:
        volunteers = build_history(proc, rotate=False)
        with proc.admin() as admin:
            admin.submit("WEIGHT_DECAY 0.1", constant_changes={"WEIGHT_DECAY": "0.1"})
        held = volunteers[0].lease()  # its candidate run, in flight across the migration
        assert held is not None
        before = served(proc)
    finally:
        proc.stop()
    sqlite_url = ops.default_store_url(data_dir)
    redis_url = f"{redis_server}/0?prefix=migrated-{uuid.uuid4().hex[:10]}"
    done = _cli("migrate", "--from", sqlite_url, "--to", redis_url)
    assert done.returncode == 0, done.stderr
    source, target = open_store(sqlite_url), open_store(redis_url)
    try:
        assert target.export_snapshot() == source.export_snapshot()
    finally:
        source.close()
        target.close()
    # Migrating again into the now full target is refused, and changes nothing.
    again = _cli("migrate", "--from", sqlite_url, "--to", redis_url)
    assert again.returncode == 1 and "not empty" in again.stderr

    proc.args += ["--store", redis_url]
    proc.start()
    try:
        assert served(proc) == before
        volunteers[0].report(held, 1.0)  # the run leased before the migration is accepted after it
        assert len(served(proc).result_ids) == len(before.result_ids) + 1
    finally:
        proc.stop()
        RedisStore.from_url(redis_url).delete_everything()


# -- refusals and damage, without a server --------------------------------------------------------


def _data_dir(path: Path, snapshot: StoreSnapshot | None = None) -> Path:
    """A coordinator data dir as the server lays it out: key, branch, SQLite store, admin token."""
    SigningKeys.load_or_create(path)
    GlobalBranch.open(path / "branch.git", "global", initial_branch_files())
    store = open_store(ops.default_store_url(path))
    if snapshot is not None:
        store.import_snapshot(snapshot)
    store.close()
    (path / "admin.token").write_text("as_admin\n")
    return path


def test_restore_refuses_occupied_targets_and_damaged_archives(tmp_path, redis_url):
    source = _data_dir(tmp_path / "source", a_snapshot(time.time()))
    archive = tmp_path / "a.tar.gz"
    manifest = ops.backup(source, archive)
    assert manifest.counts["results"] == 2

    with pytest.raises(ops.OpsError, match="existing state"):
        ops.restore(archive, source)  # over a live data dir
    occupied = RedisStore.from_url(redis_url)
    occupied.set_meta("head_commit", "somebody else's")
    with pytest.raises(ops.OpsError, match="not empty"):
        ops.restore(archive, tmp_path / "fresh", redis_url)
    assert list((tmp_path / "fresh").iterdir()) == []  # branch and keys it had written are gone again
    assert occupied.export_snapshot() == StoreSnapshot(meta={"head_commit": "somebody else's"})

    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive) as tar, tarfile.open(damaged, "w:gz") as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "branch.bundle":
                data = data[:-10] + b"0123456789"
            out.addfile(member, io.BytesIO(data))
    with pytest.raises(ops.OpsError, match="checksum"):
        ops.restore(damaged, tmp_path / "fresh2")
    assert not (tmp_path / "fresh2" / "branch.git").exists()
    (tmp_path / "not-a-backup.tar.gz").write_bytes(b"hello")
    with pytest.raises(ops.OpsError, match="not a readable"):
        ops.restore(tmp_path / "not-a-backup.tar.gz", tmp_path / "fresh3")

    other_url = redis_url.replace("prefix=", "prefix=other-")
    try:
        report = ops.restore(archive, tmp_path / "fresh4", other_url)
        assert report.counts == manifest.counts  # a SQLite backup restores into Redis too
    finally:
        for url in (redis_url, other_url):
            RedisStore.from_url(url).delete_everything()


def test_snapshot_file_round_trip_and_cut_files(tmp_path):
    snapshot = a_snapshot(time.time())
    path = tmp_path / "store.jsonl"
    ops.write_snapshot(snapshot, path)
    assert ops.read_snapshot(path) == snapshot
    lines = path.read_text().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_text("".join(lines[:-3]))
    with pytest.raises(ops.OpsError, match="cut short"):
        ops.read_snapshot(tmp_path / "cut.jsonl")
    (tmp_path / "bad.jsonl").write_text("".join(lines[:3] + ['{"kind": "results", "record": {"x": 1}}\n'] + lines[3:]))
    with pytest.raises(ops.OpsError, match=":4: unreadable"):
        ops.read_snapshot(tmp_path / "bad.jsonl")


def test_migration_refuses_a_source_that_changes_meanwhile(tmp_path, redis_url, monkeypatch):
    sqlite_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    source = open_store(sqlite_url)
    source.import_snapshot(a_snapshot(time.time()))
    source.close()
    real_import = ops._import_verified

    def import_then_write(snapshot, target_url):  # a coordinator still serving during the copy
        real_import(snapshot, target_url)
        writer = open_store(sqlite_url)
        writer.set_meta("head_commit", "moved")
        writer.close()

    monkeypatch.setattr(ops, "_import_verified", import_then_write)
    with pytest.raises(ops.OpsError, match="changed during the migration"):
        ops.migrate(sqlite_url, redis_url)
    target = open_store(redis_url)
    assert target.export_snapshot().is_empty()  # the copy was cleared
    target.close()


def test_redis_export_while_writers_run_is_one_consistent_moment(redis_url):
    """Leases taken, renewed, reported and given back by two writer threads while snapshots are
    exported: every snapshot passes the import checks (no result without its lease, no unit with
    two active leases, ...) and imports into an empty store."""
    import threading

    from coordinator.store.base import check_snapshot
    from tests.store_contract import a_score, add_volunteer, make_unit, new_id, ok_metrics

    store = RedisStore.from_url(redis_url)
    for _ in range(300):
        store.enqueue_unit(make_unit(train_py="MATRIX_LR = 0.04\n" + "# padding\n" * 2000))
    stop = threading.Event()

    def work(owner: str) -> None:
        writer = RedisStore.from_url(redis_url)
        volunteer = add_volunteer(writer, owner)
        turn = 0
        while not stop.is_set():
            granted = writer.lease_unit(volunteer.principal_id, owner, "cpu", 600.0)
            if granted is None:
                return
            turn += 1
            lease = granted[1]
            writer.extend_lease(lease.lease_id, volunteer.principal_id, 600.0, step=turn)
            if turn % 3:
                writer.record_result(lease.lease_id, volunteer.principal_id, ok_metrics(), a_score(), new_id("res"))
            else:
                writer.release_lease(lease.lease_id, volunteer.principal_id, "give back")
        writer.close()

    writers = [threading.Thread(target=work, args=(owner,)) for owner in ("alice", "bob")]
    for writer in writers:
        writer.start()
    try:
        counts = []
        for round_number in range(4):
            snapshot = store.export_snapshot()
            check_snapshot(snapshot)
            counts.append(snapshot.counts()["results"])
            target = RedisStore.from_url(redis_url.replace("prefix=", f"prefix=copy{round_number}-"))
            try:
                target.import_snapshot(snapshot)
                assert target.export_snapshot() == snapshot
            finally:
                target.delete_everything()
                target.close()
    finally:
        stop.set()
        for writer in writers:
            writer.join(timeout=30)
        store.delete_everything()
        store.close()
    assert counts[-1] > counts[0]  # the writers really wrote between the snapshots
