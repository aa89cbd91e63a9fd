"""Volunteer building blocks: identity files, trust (signatures, key pin, rotation), the spool, the
sandbox's environment and network isolation, result conversion, GPU slots and the JSON display."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest
from test_volunteer_support import SECRET_ENV_TOKEN, TestKey, fake_unit

from autoswarm.v1 import swarm_pb2 as pb
from volunteer import trust
from volunteer.display import Display, LogMode
from volunteer.identity import Identity, IdentityError, load_identity, save_identity
from volunteer.machine import Machine, MachineError, select_gpus, slot_environment
from volunteer.monitor import Ending, Progress, RunOutcome, result_to_pb
from volunteer.sandbox import NetworkMode, ResourceLimits, probe_network_isolation, scrub_env
from volunteer.spool import Spool, SpoolEntry

# ---------------------------------------------------------------------------------------------
# identity
# ---------------------------------------------------------------------------------------------


def _identity(key: bytes = b"\x01" * 32) -> Identity:
    return Identity(coordinator="127.0.0.1:1", volunteer_id="vol_1", token="tok-secret", hardware_class="cpu",
                    owner="alice", display_name="box", pinned_key_hex=key.hex(), pinned_unix_s=1.0,
                    registered_unix_s=1.0)


def test_identity_is_private_and_round_trips(tmp_path):
    data_dir = tmp_path / "vol"
    assert load_identity(data_dir) is None
    save_identity(data_dir, _identity())
    path = data_dir / "identity.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert load_identity(data_dir) == _identity()
    assert "tok-secret" not in json.dumps(_identity().redacted())
    assert not [p for p in data_dir.iterdir() if p.name.endswith(".tmp")]


def test_identity_readable_by_others_is_refused(tmp_path):
    save_identity(tmp_path, _identity())
    os.chmod(tmp_path / "identity.json", 0o644)
    with pytest.raises(IdentityError, match="readable by other users"):
        load_identity(tmp_path)


def test_identity_garbage_is_a_clear_error(tmp_path):
    (tmp_path / "identity.json").write_text("{not json")
    os.chmod(tmp_path / "identity.json", 0o600)
    with pytest.raises(IdentityError, match="unreadable"):
        load_identity(tmp_path)


# ---------------------------------------------------------------------------------------------
# trust
# ---------------------------------------------------------------------------------------------

EXPECT = trust.Expectations("vol_test", "cpu", "manifest-1")


def _signed(key: TestKey, **changes: object) -> pb.SignedWorkUnit:
    unit = fake_unit("lease_a", "print('hi')\n", budget_s=2, manifest_id="manifest-1")
    for name, value in changes.items():
        setattr(unit, name, value)
    return key.sign(unit)


def test_verify_accepts_a_unit_signed_by_the_pinned_key():
    key = TestKey()
    unit = trust.verify_unit(_signed(key), key.public, EXPECT)
    assert unit.lease_id == "lease_a" and unit.train_py == "print('hi')\n"


def test_verify_refuses_tampered_bytes():
    key = TestKey()
    signed = _signed(key)
    unit = pb.WorkUnit.FromString(signed.work_unit)
    unit.train_py = "import os; os.system('rm -rf ~')\n"
    signed.work_unit = unit.SerializeToString()
    with pytest.raises(trust.UntrustedUnitError, match="tampered") as info:
        trust.verify_unit(signed, key.public, EXPECT)
    assert info.value.lease_id == "lease_a"  # so the refusal can be reported


def test_verify_refuses_unsigned_and_foreign_keys():
    key, other = TestKey(), TestKey()
    unsigned = _signed(key)
    unsigned.signature = b""
    with pytest.raises(trust.UntrustedUnitError, match="unsigned"):
        trust.verify_unit(unsigned, key.public, EXPECT)
    with pytest.raises(trust.UnknownSigningKeyError, match="not the pinned key"):
        trust.verify_unit(_signed(other), key.public, EXPECT)
    # A forged key id naming the pinned key does not help: the signature is checked with the pinned key.
    forged = _signed(other)
    forged.key_id = trust.key_id(key.public)
    with pytest.raises(trust.UntrustedUnitError, match="tampered"):
        trust.verify_unit(forged, key.public, EXPECT)


@pytest.mark.parametrize("changes, message", [
    ({"volunteer_id": "vol_other"}, "addressed to volunteer"),
    ({"hardware_class": "h100-80g"}, "for class"),
    ({"train_py": "  "}, "no train.py"),
])
def test_verify_refuses_signed_but_misaddressed_units(changes, message):
    key = TestKey()
    with pytest.raises(trust.UntrustedUnitError, match=message):
        trust.verify_unit(_signed(key, **changes), key.public, EXPECT)


def test_verify_refuses_another_data_manifest():
    key = TestKey()
    unit = fake_unit("lease_b", "x = 1\n", budget_s=2, manifest_id="manifest-2")
    with pytest.raises(trust.UntrustedUnitError, match="data manifest"):
        trust.verify_unit(key.sign(unit), key.public, EXPECT)


def _endorse(old: TestKey, new: TestKey) -> pb.KeyEndorsement:
    return pb.KeyEndorsement(public_key=new.public, endorsed_by=old.public, signature=old.private.sign(new.public))


def test_follow_key_through_an_endorsement_chain():
    k1, k2, k3 = TestKey(), TestKey(), TestKey()
    assert trust.follow_key(k1.public, k1.public, []) == k1.public
    assert trust.follow_key(k1.public, k2.public, [_endorse(k1, k2)]) == k2.public
    assert trust.follow_key(k1.public, k3.public, [_endorse(k2, k3), _endorse(k1, k2)]) == k3.public


def test_follow_key_refuses_an_unendorsed_or_forged_change():
    k1, k2, mallory = TestKey(), TestKey(), TestKey()
    with pytest.raises(trust.KeyChangedError, match="without an endorsement"):
        trust.follow_key(k1.public, mallory.public, [])
    forged = pb.KeyEndorsement(public_key=mallory.public, endorsed_by=k1.public, signature=mallory.private.sign(mallory.public))
    with pytest.raises(trust.KeyChangedError):
        trust.follow_key(k1.public, mallory.public, [forged, _endorse(k2, mallory)])
    with pytest.raises(trust.KeyChangedError, match="malformed"):
        trust.follow_key(k1.public, b"short", [])


# ---------------------------------------------------------------------------------------------
# spool
# ---------------------------------------------------------------------------------------------

def _entry(lease_id: str, val_bpb: float = 1.5) -> SpoolEntry:
    unit = fake_unit(lease_id, "x = 1\n", budget_s=2, manifest_id="m")
    return SpoolEntry.from_result(unit, pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=val_bpb, num_steps=7,
                                                     environment={"torch": "2"}))


def test_spool_put_survives_a_new_instance_and_acknowledge_removes(tmp_path):
    spool = Spool(tmp_path)
    spool.put(_entry("lease_1", 1.25))
    spool.put(_entry("lease_2"))
    assert stat.S_IMODE((tmp_path / "spool" / "lease_1.json").stat().st_mode) == 0o600
    reopened = Spool(tmp_path)
    pending = reopened.pending()
    assert [e.lease_id for e in pending] == ["lease_1", "lease_2"]
    result = pending[0].run_result()
    assert result.val_bpb == 1.25 and result.num_steps == 7 and result.environment["torch"] == "2"
    reopened.acknowledge("lease_1")
    assert [e.lease_id for e in Spool(tmp_path).pending()] == ["lease_2"]
    assert not list((tmp_path / "spool").glob("*.tmp"))


def test_spool_reject_keeps_the_result_with_its_reason(tmp_path):
    spool = Spool(tmp_path)
    entry = _entry("lease_3")
    spool.put(entry)
    spool.reject(entry, "LeaseExpiredError: too late")
    assert spool.pending() == []
    (kept,) = spool.rejected()
    assert kept.lease_id == "lease_3" and "too late" in kept.last_error


def test_spool_moves_unreadable_entries_aside(tmp_path):
    spool = Spool(tmp_path)
    (spool.dir / "lease_bad.json").write_text("{torn")
    spool.put(_entry("lease_ok"))
    assert [e.lease_id for e in spool.pending()] == ["lease_ok"]
    assert (spool.rejected_dir / "lease_bad.json.unreadable").exists()


def test_spool_refuses_unsafe_lease_ids(tmp_path):
    from volunteer.spool import SpoolError

    with pytest.raises(SpoolError):
        Spool(tmp_path).put(_entry("../../etc/passwd"))


# ---------------------------------------------------------------------------------------------
# sandbox
# ---------------------------------------------------------------------------------------------

def test_scrub_env_drops_tokens_and_coordinator_settings():
    environ = {
        "PATH": "/usr/bin", "HOME": "/home/a", "LANG": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "2",
        "AUTOSWARM_TOKEN": SECRET_ENV_TOKEN, "AUTOSWARM_COORDINATOR": "host:1", "AUTOSWARM_INVITE": "inv",
        "AUTOSWARM_CACHE_DIR": "/cache", "HF_TOKEN": "hf_x", "AWS_SECRET_ACCESS_KEY": "k", "GITHUB_TOKEN": "g",
        "SSH_AUTH_SOCK": "/tmp/agent", "TORCH_API_KEY_FILE": "/k", "RANDOM_VAR": "x",
        "PYTHONPATH": f"/src:{SECRET_ENV_TOKEN}",  # a value that contains the token is dropped too
    }
    env = scrub_env(environ, secrets=[SECRET_ENV_TOKEN])
    assert env["PATH"] == "/usr/bin" and env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "2"
    assert env["AUTOSWARM_CACHE_DIR"] == "/cache"
    for dropped in ("AUTOSWARM_TOKEN", "AUTOSWARM_COORDINATOR", "AUTOSWARM_INVITE", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY",
                    "GITHUB_TOKEN", "SSH_AUTH_SOCK", "TORCH_API_KEY_FILE", "RANDOM_VAR", "PYTHONPATH"):
        assert dropped not in env, dropped
    assert not any(SECRET_ENV_TOKEN in value for value in env.values())
    with pytest.raises(ValueError, match="looks like a secret"):
        scrub_env({}, extra={"MY_TOKEN": "x"})


def test_network_isolation_cuts_the_trainer_off(tmp_path):
    isolation = probe_network_isolation(NetworkMode.AUTO)
    if not isolation.enabled:
        pytest.skip(f"this OS gives no isolation here: {isolation.description}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepter = threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True)
    accepter.start()
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')"
    inside = subprocess.run([*isolation.prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert inside.returncode != 0 and "connected" not in inside.stdout
    outside = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert outside.returncode == 0 and "connected" in outside.stdout  # the same probe works without the sandbox
    listener.close()


def test_network_off_is_said_plainly():
    isolation = probe_network_isolation(NetworkMode.OFF)
    assert not isolation.enabled and "can reach the network" in isolation.description


def test_resource_limits_apply_in_a_child(tmp_path):
    limits = ResourceLimits(memory_bytes=3 * 2**30, file_size_bytes=2**20, open_files=256, nice=3)
    script = ("import json, resource, os, sys; from volunteer.sandbox import ResourceLimits as R; "
              f"skipped = R.from_dict({limits.to_dict()!r}).apply(); "
              "print(json.dumps([resource.getrlimit(resource.RLIMIT_AS)[0], resource.getrlimit(resource.RLIMIT_FSIZE)[0], "
              "resource.getrlimit(resource.RLIMIT_NOFILE)[0], resource.getrlimit(resource.RLIMIT_CORE)[0], os.nice(0), skipped]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    address_space, file_size, open_files, core, nice, skipped = json.loads(out.stdout)
    assert (address_space, file_size, open_files, core, skipped) == (3 * 2**30, 2**20, 256, 0, [])
    assert nice >= 3


# ---------------------------------------------------------------------------------------------
# results, slots, display
# ---------------------------------------------------------------------------------------------

def test_result_to_pb_clamps_to_the_coordinator_limits():
    raw = {"status": "ok", "val_bpb": 1.23, "num_steps": 10, "total_tokens": 1000, "mfu_percent": float("nan"),
           "log_tail": "x" * 50_000, "error": "e" * 5000, "environment": {f"k{i}": "v" for i in range(100)}}
    result = result_to_pb(raw, {"volunteer_network_isolated": "true"})
    assert result.status == pb.RUN_STATUS_OK and result.val_bpb == pytest.approx(1.23)
    assert result.mfu_percent == 0.0  # non-finite numbers would be refused by the coordinator
    assert len(result.log_tail.encode()) <= 15_000 and len(result.error.encode()) <= 2_000
    assert len(result.environment) <= 64 and result.environment["volunteer_network_isolated"] == "true"
    assert result_to_pb({"status": "ok"}).status == pb.RUN_STATUS_CRASH  # ok without a number is not ok
    assert result_to_pb({"status": "oom", "val_bpb": 2.0}).val_bpb == 0.0
    assert result_to_pb({"status": "weird"}).status == pb.RUN_STATUS_CRASH


def _machine(device_type: str, count: int) -> Machine:
    return Machine(device_type, "GPU", 24 * 2**30, "8.9", "550", "2.6", "12.4", count, 8, "rtx4090-24g", "", True)


def test_select_gpus_and_pinning():
    assert select_gpus("", _machine("cpu", 0)) == [None]
    assert select_gpus("all", _machine("cuda", 3)) == [0, 1, 2]
    assert select_gpus("0,2", _machine("cuda", 3)) == [0, 2]
    for bad in ("5", "0,0", "x", "all"):
        with pytest.raises(MachineError):
            select_gpus(bad, _machine("cuda", 3) if bad != "all" else _machine("cuda", 0))
    with pytest.raises(MachineError, match="needs CUDA"):
        select_gpus("0", _machine("cpu", 0))
    assert slot_environment(None) == {}
    assert slot_environment(1, {})["CUDA_VISIBLE_DEVICES"] == "1"
    assert slot_environment(1, {"CUDA_VISIBLE_DEVICES": "4,6"})["CUDA_VISIBLE_DEVICES"] == "6"


def test_json_display_writes_one_object_per_line():
    stream = io.StringIO()
    display = Display(LogMode.JSON, stream)
    unit = fake_unit("lease_d", "x = 1\n", budget_s=2, manifest_id="m")
    display.run_started(0, unit)
    display.progress(0, unit, Progress(step=3, fraction=0.5, loss=2.0))
    display.run_finished(0, unit, RunOutcome(Ending.FINISHED, pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=1.5), 3.0))
    score = pb.NormalizedScore(has_baseline=True, baseline_val_bpb=1.6, delta_bpb=0.1, delta_percent=6.25,
                               delta_sigma=2.0, class_sigma=0.05)
    display.acknowledged("lease_d", pb.ReportResultResponse(result_id="res_1", score=score), "cpu val_bpb 1.4")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["run_started", "progress", "run_finished", "result_acknowledged"]
    assert events[1]["fraction"] == 0.5 and events[2]["status"] == "ok" and events[3]["delta_sigma"] == 2.0
    assert "+0.1000 bpb" in display.last_score and "+2.00 sigma" in display.last_score


def test_human_display_without_a_terminal_prints_plain_lines():
    stream = io.StringIO()
    display = Display(LogMode.HUMAN, stream)
    unit = fake_unit("lease_h", "x = 1\n", budget_s=2, manifest_id="m")
    display.run_started(0, unit)
    for step in range(20):
        display.progress(0, unit, Progress(step=step, fraction=step / 19, loss=3.0))
    text = stream.getvalue()
    assert "running baseline" in text and "100%" in text and "\r" not in text
    assert text.count("|") <= 2 * 12  # a line per tenth of the budget, not one per update


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_display_redraws_bars_in_place_with_the_last_score():
    stream = _Terminal()
    display = Display(LogMode.HUMAN, stream)
    assert display.live
    units = [fake_unit(f"lease_{i}", "x = 1\n", budget_s=2, manifest_id="m") for i in range(2)]
    for slot, unit in enumerate(units):
        display.run_started(slot, unit)
        display.progress(slot, unit, Progress(step=5, fraction=0.5, loss=2.5))
    score = pb.NormalizedScore(has_baseline=True, baseline_val_bpb=1.6, delta_bpb=0.002, delta_percent=0.1)
    display.acknowledged("lease_x", pb.ReportResultResponse(result_id="res_x", score=score), "cpu val_bpb 1.5000")
    display.progress(0, units[0], Progress(step=6, fraction=0.75, loss=2.4))
    last_frame = stream.getvalue().rsplit("\r\033[K", 1)[1]
    assert "[0] |##################......|  75%" in last_frame and "[1] |" in last_frame
    assert "last +0.0020 bpb, best cpu val_bpb 1.5000" in last_frame
    display.run_finished(0, units[0], RunOutcome(Ending.FINISHED, pb.RunResult(status=pb.RUN_STATUS_OK, val_bpb=1.5), 9.0))
    assert "[slot 0] ok: val_bpb 1.500000" in stream.getvalue()
    display.close()
