"""Start-up of the daemon in-process against a real coordinator: data preparation that re-fetches a
corrupted file and refuses other pins, and recovery of a crash from the working directory and spool."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest
from test_volunteer_support import start_coordinator

from autoswarm.v1 import swarm_pb2 as pb
from shared_data.prepare import load_prepared, prepare
from volunteer.daemon import FatalError, Volunteer, VolunteerOptions
from volunteer.display import Display, LogMode
from volunteer.monitor import PID_FILE, SIGNED_UNIT_FILE
from volunteer.spool import deliver_pending

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("recovery-coordinator"), budget_s=2.0, startup_allowance_s=60.0)
    yield proc
    proc.stop()


def _volunteer(tmp_path, coordinator, cache) -> Volunteer:
    options = VolunteerOptions(coordinator=coordinator.address, data_dir=tmp_path / "vol", owner="gina",
                               cache_dir=cache, log_mode=LogMode.QUIET, nice=0)
    return Volunteer(options, Display(LogMode.QUIET))


def test_corrupted_data_is_fetched_again_never_used(tmp_path):
    cache = tmp_path / "cache"
    prepared = prepare("pydoc", cache, progress=False)
    victim = prepared.train_files[0]
    victim.write_bytes(b"corrupted" + victim.read_bytes()[9:])
    volunteer = Volunteer(VolunteerOptions(coordinator="127.0.0.1:1", data_dir=tmp_path / "vol", cache_dir=cache,
                                           log_mode=LogMode.QUIET), Display(LogMode.QUIET))
    volunteer.settings = pb.SwarmSettings(dataset_name="pydoc", data_manifest_id=prepared.manifest_id,
                                          tokenizer_hash=prepared.tokenizer_hash)
    volunteer._prepare_data()
    again = load_prepared("pydoc", cache)  # re-hashes every file: passes only if the bad bytes are gone
    assert again.file_sha256 == prepared.file_sha256 and not victim.read_bytes().startswith(b"corrupted")

    volunteer.settings = pb.SwarmSettings(dataset_name="pydoc", data_manifest_id="f" * 64)
    with pytest.raises(FatalError, match="pins pydoc manifest ffffffffffffffff"):
        volunteer._prepare_data()
    volunteer.settings = pb.SwarmSettings(dataset_name="pydoc", data_manifest_id=prepared.manifest_id,
                                          tokenizer_hash="0" * 64)
    with pytest.raises(FatalError, match="pins tokenizer 000000000000"):
        volunteer._prepare_data()


def test_restart_recovers_a_finished_result_and_releases_an_interrupted_run(tmp_path, coordinator):
    cache = tmp_path / "cache"
    prepared = prepare("pydoc", cache, progress=False)
    first = _volunteer(tmp_path, coordinator, cache)
    first.setup()  # registers, prepares, probes the sandbox
    assert first.client is not None and first.identity is not None
    leased = [first.client.lease("cpu").unit for _ in range(2)]
    assert all(signed.work_unit for signed in leased)
    finished, interrupted = (pb.WorkUnit.FromString(s.work_unit) for s in leased)

    # What a crash leaves behind: a run that wrote its result but was never spooled ...
    done_dir = first.work_dir / finished.lease_id
    done_dir.mkdir()
    (done_dir / SIGNED_UNIT_FILE).write_bytes(leased[0].SerializeToString())
    (done_dir / "result.json").write_text(json.dumps({
        "status": "ok", "val_bpb": 3.21, "num_steps": 5, "total_tokens": 20480, "training_s": 2.0, "total_s": 9.0,
        "tokenizer_hash": prepared.tokenizer_hash, "data_manifest_id": prepared.manifest_id,
        "attention_backend": "sdpa", "environment": {"torch_version": "test"}}))
    # ... and a run still going, whose daemon died (its child would normally notice and stop itself).
    running_dir = first.work_dir / interrupted.lease_id
    running_dir.mkdir()
    (running_dir / SIGNED_UNIT_FILE).write_bytes(leased[1].SerializeToString())
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(running_dir)])
    (running_dir / PID_FILE).write_text(str(leftover.pid))
    first.client.close()

    restarted = _volunteer(tmp_path, coordinator, cache)
    restarted.setup()
    assert restarted.identity.volunteer_id == first.identity.volunteer_id
    leftover.wait(timeout=20)  # killed (and reaped by the daemon's kill, so no exit status to read here)
    assert not psutil.pid_exists(leftover.pid) or psutil.Process(leftover.pid).status() == psutil.STATUS_ZOMBIE
    assert list(restarted.work_dir.iterdir()) == []
    (entry,) = restarted.spool.pending()
    assert entry.lease_id == finished.lease_id and entry.run_result().val_bpb == pytest.approx(3.21)
    assert entry.run_result().environment["volunteer_recovered"] == "true"

    outcome = deliver_pending(restarted.spool, restarted.client)
    assert outcome.complete and len(outcome.acknowledged) == 1 and restarted.spool.pending() == []
    with coordinator.admin() as admin:
        records = admin.results(volunteer_id=restarted.identity.volunteer_id)
        assert [r.lease_id for r in records] == [finished.lease_id]
        deadline = time.monotonic() + 10
        while admin.status().units_in_flight and time.monotonic() < deadline:  # the interrupted lease was released
            time.sleep(0.2)
        assert admin.status().units_in_flight == 0
    restarted.client.close()


def test_a_rotated_key_is_followed_through_its_endorsement(tmp_path, coordinator):
    cache = tmp_path / "cache"
    volunteer = _volunteer(tmp_path, coordinator, cache)
    volunteer.setup()
    old_key = volunteer.identity.pinned_key
    with coordinator.admin() as admin:
        rotated = admin.rotate_key(transition_s=3600)
    assert rotated.previous_public_key == old_key
    signed = volunteer.client.lease("cpu").unit
    from volunteer.trust import key_id

    assert signed.key_id == key_id(rotated.new_public_key)
    unit = volunteer._verify(signed)  # signed by the new key: fetched, endorsement checked, pinned
    assert unit is not None and volunteer.fatal is None
    assert volunteer.identity.pinned_key == rotated.new_public_key
    stored = json.loads((tmp_path / "vol" / "identity.json").read_text())
    assert stored["pinned_key_hex"] == rotated.new_public_key.hex()
    volunteer.client.release(unit.lease_id, "test done")
    volunteer.client.close()


def test_an_unendorsed_key_change_stops_the_volunteer(tmp_path, coordinator):
    from test_volunteer_support import TestKey

    from volunteer.daemon import EXIT_TRUST
    from volunteer.identity import load_identity, save_identity

    cache = tmp_path / "cache"
    _volunteer(tmp_path, coordinator, cache).setup()
    identity = load_identity(tmp_path / "vol")
    save_identity(tmp_path / "vol", identity.with_pinned_key(TestKey().public))  # as if the coordinator were an impostor
    with pytest.raises(FatalError, match="without an endorsement") as info:
        _volunteer(tmp_path, coordinator, cache).setup()
    assert info.value.exit_code == EXIT_TRUST
