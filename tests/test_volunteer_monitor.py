"""The monitor loop on real sandboxed runs (the real runner and harness, no coordinator): units signed
by a test key whose train.py hangs, runs out of memory or is cancelled, and what the trainer sees
of the environment."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from test_volunteer_support import (
    HANG_CODE,
    OOM_CODE,
    SECRET_ENV_TOKEN,
    TestKey,
    env_dump_code,
    fake_unit,
    train_py_variant,
)

from autoswarm.v1 import swarm_pb2 as pb
from volunteer import trust
from volunteer.daemon import LocalExecutor
from volunteer.monitor import Ending, HeartbeatVerdict, UnitJob, UnitMonitor, kill_deadline_s
from volunteer.sandbox import NetworkMode, default_limits, probe_network_isolation, scrub_env

pytestmark = pytest.mark.slow

VOLUNTEER_TOKEN = "volunteer-token-abcdef0123456789"


@pytest.fixture(scope="module")
def prepared_cache(tmp_path_factory):
    from shared_data.prepare import prepare

    cache = tmp_path_factory.mktemp("cache")
    prepared = prepare("pydoc", cache, progress=False)
    return cache, prepared.manifest_id


def _job(tmp_path, cache_and_manifest, train_py: str, *, budget_s: float, allowance_s: float,
         lease_id: str = "lease_m1") -> UnitJob:
    cache, manifest_id = cache_and_manifest
    key = TestKey()
    signed = key.sign(fake_unit(lease_id, train_py, budget_s=budget_s, manifest_id=manifest_id))
    unit = trust.verify_unit(signed, key.public, trust.Expectations("vol_test", "cpu", manifest_id))
    environ = {**os.environ, "AUTOSWARM_TOKEN": SECRET_ENV_TOKEN, "MY_API_KEY": SECRET_ENV_TOKEN,
               "AUTOSWARM_COORDINATOR": "127.0.0.1:1", "SOME_VAR": VOLUNTEER_TOKEN}
    return UnitJob(
        signed=signed, unit=unit, unit_dir=tmp_path / "work" / lease_id,
        env=scrub_env(environ, secrets=[VOLUNTEER_TOKEN]), isolation=probe_network_isolation(NetworkMode.AUTO),
        limits=default_limits("cpu", nice=0), kill_after_s=kill_deadline_s(budget_s, allowance_s),
        heartbeat_interval_s=0.5, cache_dir=cache,
    )


def test_hanging_trainer_is_killed_at_the_deadline_and_its_environment_holds_no_token(tmp_path, prepared_cache):
    env_file = tmp_path / "trainer-env.json"
    job = _job(tmp_path, prepared_cache, train_py_variant(env_dump_code(env_file), HANG_CODE),
               budget_s=1.0, allowance_s=4.0)
    beats: list[float] = []

    def heartbeat(progress):
        beats.append(time.monotonic())
        return HeartbeatVerdict()

    started = time.monotonic()
    # Slot 1 of a two-GPU volunteer (--gpus 0,3): its trainer sees only GPU 3.
    outcome = LocalExecutor([0, 3]).execute(1, job, heartbeat, lambda progress: None, threading.Event())
    elapsed = time.monotonic() - started
    assert outcome.result.status == pb.RUN_STATUS_TIMEOUT, outcome.result
    assert job.kill_after_s == 6.0 and 6.0 <= elapsed < 6.0 + 15.0
    assert "time limit" in outcome.result.error or "deadline" in outcome.result.error
    assert len(beats) >= 5  # heartbeats kept the lease alive while it hung
    trainer_env = json.loads(env_file.read_text())
    leaked = [k for k, v in trainer_env.items() if SECRET_ENV_TOKEN in v or VOLUNTEER_TOKEN in v]
    assert not leaked, leaked
    assert not [k for k in trainer_env if k.startswith("AUTOSWARM_") and k not in ("AUTOSWARM_CACHE_DIR", "AUTOSWARM_RUN_CONFIG")]
    assert "MY_API_KEY" not in trainer_env and "AUTOSWARM_TOKEN" not in trainer_env
    assert trainer_env["CUDA_VISIBLE_DEVICES"] == "3"
    assert outcome.result.environment["volunteer_network_isolated"] == ("true" if job.isolation.enabled else "false")


def test_out_of_memory_is_classified_oom(tmp_path, prepared_cache):
    job = _job(tmp_path, prepared_cache, train_py_variant(OOM_CODE), budget_s=1.0, allowance_s=60.0, lease_id="lease_m2")
    outcome = UnitMonitor(job, lambda progress: HeartbeatVerdict()).run()
    assert outcome.ending == Ending.FINISHED
    assert outcome.result.status == pb.RUN_STATUS_OOM, (outcome.result.error, outcome.result.log_tail[-2000:])
    assert outcome.result.val_bpb == 0.0


def test_a_cancel_from_the_coordinator_stops_the_run(tmp_path, prepared_cache):
    job = _job(tmp_path, prepared_cache, train_py_variant(HANG_CODE), budget_s=1.0, allowance_s=60.0, lease_id="lease_m3")
    beats = []
    seen_trainer = []

    def heartbeat(progress):
        beats.append(progress)
        seen_trainer.extend(_processes_under(job.unit_dir / "run"))
        return HeartbeatVerdict(cancel=len(beats) >= 4, reason="lease reissued")

    started = time.monotonic()
    outcome = UnitMonitor(job, heartbeat).run()
    assert seen_trainer, "the trainer never started, so the test proves nothing"
    assert outcome.ending == Ending.CANCELLED and "lease reissued" in outcome.result.error
    assert time.monotonic() - started < 20
    pid = int((job.unit_dir / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _processes_under(job.unit_dir) == []  # the trainer below the child is gone too


def _processes_under(directory) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(str(directory) in part for part in process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found
