"""A real coordinator process and real volunteer processes on the cpu class (pydoc data, budgets of
seconds): registration and identity reuse, trainings reported and normalized, SIGTERM, kill -9 and
lease expiry, a coordinator outage, tampered units, a hanging trainer and an out-of-memory one."""

from __future__ import annotations

import json
import signal
import stat
import time

import pytest
from test_volunteer_support import (
    HANG_CODE,
    OOM_CODE,
    SECRET_ENV_TOKEN,
    CoordinatorProxy,
    TestKey,
    env_dump_code,
    restart_on_same_port,
    start_coordinator,
    start_volunteer,
    train_py_variant,
    wait_until,
)

from autoswarm.v1 import swarm_pb2 as pb

pytestmark = pytest.mark.slow

BUDGET_S = 2.0
RUN_TIMEOUT_S = 150.0  # one tiny CPU run, on two cores shared with other work


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from shared_data.prepare import prepare

    path = tmp_path_factory.mktemp("volunteer-cache")
    prepare("pydoc", path, progress=False)
    return path


@pytest.fixture
def coordinators():
    started = []

    def start(data_dir, **kwargs):
        proc = start_coordinator(data_dir, budget_s=BUDGET_S, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def volunteers():
    started = []

    def start(*args, **kwargs):
        volunteer = start_volunteer(*args, **kwargs)
        started.append(volunteer)
        return volunteer

    yield start
    for volunteer in started:
        volunteer.stop()


def _identity(data_dir) -> dict:
    return json.loads((data_dir / "identity.json").read_text())


def _processes_under(directory) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(directory) in part for part in process.info["cmdline"] or []):
                found.append(process.info["pid"])
        except psutil.Error:
            continue
    return found


def test_register_train_report_then_reuse_identity_and_finish_on_sigterm(tmp_path, cache, coordinators, volunteers):
    # One baseline sample is enough for a class baseline here, so the second run comes back normalized.
    coordinator = coordinators(tmp_path / "c", policy={"min_baseline_samples": 1})
    data_dir = tmp_path / "alice"

    first = volunteers(data_dir, coordinator.address, cache, "--once", "--owner", "alice")
    assert first.wait(RUN_TIMEOUT_S) == 0, first.output()
    identity = _identity(data_dir)
    assert stat.S_IMODE((data_dir / "identity.json").stat().st_mode) == 0o600
    assert identity["hardware_class"] == "cpu" and identity["owner"] == "alice"
    assert identity["pinned_key_hex"] == json.loads((tmp_path / "c" / "coordinator.json").read_text())["public_key"]
    assert any("registered as" in e.get("message", "") for e in first.named("info"))
    (finished,) = first.named("run_finished")
    assert finished["status"] == "ok" and finished["val_bpb"] > 0, first.output()
    assert len(first.named("result_acknowledged")) == 1

    # Second start: the same identity, no new registration. SIGTERM mid-run finishes the run first.
    second = volunteers(data_dir, coordinator.address, cache)
    second.wait_for(lambda e: e.get("event") == "progress" and e["step"] >= 1, RUN_TIMEOUT_S, "training progress")
    second.signal(signal.SIGTERM)
    assert second.wait(RUN_TIMEOUT_S) == 0, second.output()
    assert not any("registered as" in e.get("message", "") for e in second.named("info"))
    assert _identity(data_dir)["volunteer_id"] == identity["volunteer_id"]
    (finished,) = second.named("run_finished")
    assert finished["status"] == "ok" and finished["ending"] == "finished", second.output()
    (acknowledged,) = second.named("result_acknowledged")
    assert acknowledged["has_baseline"] is True and not acknowledged["duplicate"]
    assert any("stopped after 1 run" in e.get("message", "") for e in second.named("info"))

    with coordinator.admin() as admin:
        records = admin.results(volunteer_id=identity["volunteer_id"])
    assert len(records) == 2
    assert all(r.result.status == pb.RUN_STATUS_OK and r.result.val_bpb > 0 and r.owner == "alice" for r in records)
    last = records[-1]
    assert last.score.has_baseline and last.score.baseline_val_bpb > 0
    assert last.score.delta_bpb == pytest.approx(last.score.baseline_val_bpb - last.result.val_bpb, abs=1e-9)
    assert last.result.data_manifest_id and last.result.tokenizer_hash and last.result.num_steps > 0
    assert not list((data_dir / "spool").glob("*.json"))
    assert not list((data_dir / "work").iterdir())


def test_kill9_mid_run_then_the_lease_expires_and_another_volunteer_completes_the_unit(
        tmp_path, cache, coordinators, volunteers):
    coordinator = coordinators(tmp_path / "c", startup_allowance_s=2.0)  # lease: 3 x 2 s + 2 s
    doomed = volunteers(tmp_path / "bob", coordinator.address, cache, "--owner", "bob")
    started = doomed.wait_for(lambda e: e.get("event") == "run_started", RUN_TIMEOUT_S, "a run")
    doomed.wait_for(lambda e: e.get("event") == "progress" and e["step"] >= 1, RUN_TIMEOUT_S, "training progress")
    doomed.signal(signal.SIGKILL)
    doomed.wait(10)
    # The sandboxed child notices its parent is gone and takes the trainer with it: nothing keeps running.
    wait_until(lambda: not _processes_under(tmp_path / "bob" / "work"), 15, "the orphaned run to stop")

    with coordinator.admin() as admin:
        wait_until(lambda: admin.status().units_in_flight == 0, 60, "the lease to expire")

    rescuer = volunteers(tmp_path / "carol", coordinator.address, cache, "--once", "--owner", "carol")
    assert rescuer.wait(RUN_TIMEOUT_S) == 0, rescuer.output()
    (rescued,) = rescuer.named("run_started")
    assert rescued["unit_id"] == started["unit_id"] and rescued["lease_id"] != started["lease_id"]
    with coordinator.admin() as admin:
        records = [r for r in admin.results() if r.unit_id == started["unit_id"]]
    assert len(records) == 1 and records[0].owner == "carol" and records[0].result.status == pb.RUN_STATUS_OK


def test_coordinator_outage_spools_the_result_and_delivers_it_exactly_once(tmp_path, cache, coordinators, volunteers):
    # A long lease (as in deployment, where it is 3 x 300 s + 120 s) so the outage does not outlive it.
    coordinator = coordinators(tmp_path / "c", startup_allowance_s=120.0)
    data_dir = tmp_path / "dave"
    volunteer = volunteers(data_dir, coordinator.address, cache, "--once", "--owner", "dave")
    started = volunteer.wait_for(lambda e: e.get("event") == "progress", RUN_TIMEOUT_S, "training progress")
    del started
    assert coordinator.stop() == 0
    volunteer.wait_for(lambda e: e.get("event") == "run_finished", RUN_TIMEOUT_S, "the run to finish")
    wait_until(lambda: len(list((data_dir / "spool").glob("*.json"))) == 1, 10, "the result in the spool")
    time.sleep(2.0)  # a few delivery attempts fail while the coordinator is down
    assert not volunteer.named("result_acknowledged")
    restart_on_same_port(coordinator)
    assert volunteer.wait(90) == 0, volunteer.output()
    (acknowledged,) = volunteer.named("result_acknowledged")
    assert acknowledged["duplicate"] is False
    assert not list((data_dir / "spool").glob("*.json"))

    identity = _identity(data_dir)
    with coordinator.admin() as admin:
        records = admin.results(volunteer_id=identity["volunteer_id"])
    assert len(records) == 1 and records[0].lease_id == acknowledged["lease_id"]
    # A retry of the same report (as after a lost acknowledgement) changes nothing.
    with coordinator.client(identity["token"]) as client:
        again = client.report(records[0].lease_id, records[0].result)
        assert again.duplicate and again.result_id == records[0].result_id
    with coordinator.admin() as admin:
        assert len(admin.results(volunteer_id=identity["volunteer_id"])) == 1


def test_tampered_and_unsigned_units_are_refused_and_reported(tmp_path, cache, coordinators, volunteers):
    coordinator = coordinators(tmp_path / "c")

    def tamper(signed: pb.SignedWorkUnit, index: int) -> pb.SignedWorkUnit:
        forged = pb.SignedWorkUnit()
        forged.CopyFrom(signed)
        if index % 2 == 0:  # same signature, different code
            unit = pb.WorkUnit.FromString(signed.work_unit)
            unit.train_py += "\nimport os\nos.system('echo pwned > /tmp/pwned')\n"
            forged.work_unit = unit.SerializeToString()
        else:
            forged.signature = b""
        return forged

    proxy = CoordinatorProxy(coordinator.address, rewrite_unit=tamper).start()
    try:
        data_dir = tmp_path / "erin"
        volunteer = volunteers(data_dir, proxy.address, cache, "--owner", "erin")
        wait_until(lambda: len(proxy.refusals) >= 2, RUN_TIMEOUT_S, "two refusals")
        volunteer.signal(signal.SIGTERM)
        assert volunteer.wait(60) == 0, volunteer.output()
    finally:
        proxy.stop()
    reasons = [r.reason for r in proxy.refusals]
    assert any("tampered" in reason for reason in reasons[0::2]), reasons
    assert any("unsigned" in reason for reason in reasons[1::2]), reasons
    errors = [e["message"] for e in volunteer.named("error")]
    assert any("refused a work unit" in message for message in errors)
    assert not volunteer.named("run_started") and not proxy.reports
    assert not list((data_dir / "work").iterdir())
    with coordinator.admin() as admin:  # refused leases were handed back, not left to expire
        wait_until(lambda: admin.status().units_in_flight == 0, 10, "refused leases released")
        assert admin.results() == []


def test_hanging_trainer_times_out_and_out_of_memory_is_oom_and_no_token_reaches_the_trainer(
        tmp_path, cache, coordinators, volunteers):
    coordinator = coordinators(tmp_path / "c")
    env_file = tmp_path / "trainer-env.json"
    key = TestKey()
    variants = [train_py_variant(env_dump_code(env_file), HANG_CODE), train_py_variant(OOM_CODE)]

    def replace_code(signed: pb.SignedWorkUnit, index: int) -> pb.SignedWorkUnit:
        def edit(unit: pb.WorkUnit) -> None:
            unit.train_py = variants[min(index, len(variants) - 1)]
        return key.resign(signed, edit)

    # The volunteer registers through the proxy, so it pins the proxy's key: the proxy plays a
    # coordinator that sends these train.py files; results still land in the real coordinator.
    proxy = CoordinatorProxy(coordinator.address, rewrite_unit=replace_code, key=key).start()
    try:
        data_dir = tmp_path / "frank"
        volunteer = volunteers(data_dir, proxy.address, cache, "--max-runs", "2", "--owner", "frank",
                               "--startup-allowance-s", "3")
        assert volunteer.wait(RUN_TIMEOUT_S) == 0, volunteer.output()
    finally:
        proxy.stop()
    finished = volunteer.named("run_finished")
    assert [e["status"] for e in finished] == ["timeout", "oom"], volunteer.output()
    assert 2 * BUDGET_S + 3 <= finished[0]["wall_s"] < 2 * BUDGET_S + 3 + 20
    identity = _identity(data_dir)
    with coordinator.admin() as admin:
        statuses = sorted(r.result.status for r in admin.results(volunteer_id=identity["volunteer_id"]))
    assert statuses == sorted([pb.RUN_STATUS_TIMEOUT, pb.RUN_STATUS_OOM])

    trainer_env = json.loads(env_file.read_text())
    for value in trainer_env.values():
        assert identity["token"] not in value and SECRET_ENV_TOKEN not in value
    assert "AUTOSWARM_TOKEN" not in trainer_env and "MY_API_KEY" not in trainer_env
    assert not [k for k in trainer_env if k.startswith("AUTOSWARM_") and k not in ("AUTOSWARM_CACHE_DIR", "AUTOSWARM_RUN_CONFIG")]


def test_a_second_signal_abandons_the_run_and_releases_its_lease(tmp_path, cache, coordinators, volunteers):
    coordinator = coordinators(tmp_path / "c", startup_allowance_s=60.0)
    key = TestKey()
    hanging = train_py_variant(HANG_CODE)
    proxy = CoordinatorProxy(coordinator.address, key=key,
                             rewrite_unit=lambda signed, index: key.resign(signed, lambda u: setattr(u, "train_py", hanging)))
    proxy.start()
    try:
        data_dir = tmp_path / "hana"
        volunteer = volunteers(data_dir, proxy.address, cache, "--owner", "hana")
        volunteer.wait_for(lambda e: e.get("event") == "run_started", RUN_TIMEOUT_S, "a run")
        wait_until(lambda: bool(_processes_under(data_dir / "work")), 30, "the trainer to start")
        volunteer.signal(signal.SIGINT)
        volunteer.wait_for(lambda e: "finishing the run" in e.get("message", ""), 10, "the first signal's notice")
        volunteer.signal(signal.SIGINT)
        assert volunteer.wait(30) == 0, volunteer.output()
    finally:
        proxy.stop()
    (finished,) = volunteer.named("run_finished")
    assert finished["ending"] == "abandoned"
    assert not proxy.reports  # nothing half-done is reported
    assert not _processes_under(data_dir / "work")
    with coordinator.admin() as admin:
        assert admin.status().units_in_flight == 0  # released at once, not left to expire
