"""The coordinator started with exactly the command and environment that the systemd unit and the
compose file give it, read from those files, against a real redis-server started from the compose
file's redis.conf; a CPU volunteer completes a unit through each.

What the test changes, and only that (each test asserts the list): paths to temp dirs (data dir,
TLS files, the install prefix and the venv's console script), fixed ports to free ones, the Redis
host to 127.0.0.1, and the operator's env file replaced by the shipped example plus TEST_SETTINGS
(a budget of seconds on the tiny pydoc corpus, so a CPU run takes seconds, not five minutes).
The volunteer's env file is its shipped example plus what its owner would fill in (coordinator,
invite, owner, class cpu, the CA, hours open now) and, for this test, one run and nice 0. Each
process gets PATH, HOME and LANG as a service manager would, nothing else of the test's
environment; a directory on PYTHONPATH makes `import torch` fail in the coordinator, as in the image.

- systemd: coordinator unit + the volunteer user unit (through the hours wrapper) running the real
  volunteer daemon, which trains one tiny model on the CPU and reports it, over TLS.
- compose: the image's ENTRYPOINT + compose `command`, image ENV < env_file < `environment`; a
  scripted volunteer (a real gRPC client, tests/coordinator_proc.py) completes a unit over TLS.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis as redis_py
from coordinator_proc import ScriptedVolunteer

from coordinator.client import CoordinatorClient
from tests.conftest import RedisServer
from tests.test_deploy_support import (
    COORDINATOR_ENV_EXAMPLE,
    COORDINATOR_UNIT,
    DEPLOY,
    HOURS_WRAPPER,
    VOLUNTEER_ENV_EXAMPLE,
    VOLUNTEER_UNIT,
    Rewrite,
    ServiceProcess,
    compose_environment,
    compose_volume_source,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
    free_port,
    load_compose,
    process_env,
    read_unit,
    self_signed_tls,
    unit_command,
    unit_environment,
    venv_autoswarm,
)

pytestmark = pytest.mark.slow

# The only settings that differ from the shipped example env file: a CPU-sized trial swarm.
TEST_SETTINGS = {"AUTOSWARM_BUDGET_S": "2", "AUTOSWARM_DATASET": "pydoc", "AUTOSWARM_STARTUP_ALLOWANCE_S": "30"}
VOLUNTEER_RUN_TIMEOUT_S = 240.0  # one tiny CPU training, on two cores shared with other work
REDIS_PREFIX = "autoswarm"


class ComposeRedis(RedisServer):
    """redis-server started with the compose service's own command (its config file), plus only
    port, bind address and directory moved to this machine."""

    def __init__(self, directory: Path, command: list[str]) -> None:
        super().__init__(directory)
        self.command = command

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        overrides = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                     "--logfile", str(self.directory / "redis.log"), "--daemonize", "no"]
        self.process = subprocess.Popen([*self.command, *overrides], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._wait_ready()


@pytest.fixture
def compose_redis(tmp_path: Path):
    service = load_compose()["services"]["redis"]
    command = list(service["command"])
    # The config file the container reads is the one compose mounts from deploy/.
    command[1] = str((DEPLOY / compose_volume_source(service, command[1])).resolve())
    server = ComposeRedis(tmp_path / "redis", command)
    server.start()
    client = redis_py.Redis(port=server.port, decode_responses=True)
    try:
        persistence = client.config_get("append*")
        assert (persistence["appendonly"], persistence["appendfsync"]) == ("yes", "always")
        yield server
    finally:
        client.close()
        server.stop()


@pytest.fixture
def no_torch(tmp_path: Path) -> Path:
    """A PYTHONPATH entry under which `import torch` fails: the coordinator image has no torch."""
    blocker = tmp_path / "no-torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is not in the coordinator image')\n")
    return blocker


def _open_window() -> str:
    now = dt.datetime.now()
    return f"{(now - dt.timedelta(hours=1)):%H:%M}-{(now + dt.timedelta(hours=2)):%H:%M}"


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, in the coordinator's environment (as Docker runs it)."""
    return subprocess.run([venv_autoswarm(), "coordinator", "health"], env=env, capture_output=True, text=True,
                          timeout=60)


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([venv_autoswarm(), "coordinator", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_systemd_units_coordinator_and_real_volunteer_complete_a_run(tmp_path, compose_redis, no_torch):
    cert, key = self_signed_tls(tmp_path / "etc-autoswarm" / "tls")
    port, metrics_port = free_port(), free_port()
    data_dir = tmp_path / "var-lib-autoswarm"
    data_dir.mkdir(mode=0o700)  # StateDirectory=autoswarm, StateDirectoryMode=0700
    settings = tmp_path / "coordinator.env"
    settings.write_text(COORDINATOR_ENV_EXAMPLE.read_text() + "".join(f"{k}={v}\n" for k, v in TEST_SETTINGS.items()))

    unit = read_unit(COORDINATOR_UNIT)
    root_home = Path("/root")  # a system unit has no %h in its lines; nothing is expanded
    rewrite = Rewrite([
        ("/opt/autoswarm/venv/bin/autoswarm", venv_autoswarm()),
        ("/var/lib/autoswarm", str(data_dir)),
        ("/etc/autoswarm/tls", str(cert.parent)),
        ("127.0.0.1:6379", f"127.0.0.1:{compose_redis.port}"),
        (":50051", f":{port}"),
        ("9108", str(metrics_port)),
    ])
    command = rewrite.command(unit_command(unit, root_home))
    service_env = rewrite.environment(
        unit_environment(unit, root_home, {"/etc/autoswarm/coordinator.env": settings})
    )
    assert rewrite.changed() == {"argv[0]", "AUTOSWARM_LISTEN", "AUTOSWARM_DATA_DIR", "AUTOSWARM_STORE",
                                 "AUTOSWARM_TLS_CERT", "AUTOSWARM_TLS_KEY", "AUTOSWARM_METRICS_PORT"}, rewrite.log
    env = process_env({**service_env, "PYTHONPATH": str(no_torch)}, tmp_path / "home-autoswarm")
    coordinator = ServiceProcess(command, env, tmp_path / "coordinator.log").start()
    try:
        ready = coordinator.wait_for_file(data_dir / "coordinator.json")
        address = f"127.0.0.1:{port}"
        assert ready["address"] == f"0.0.0.0:{port}"
        health = _health(env)
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stdout + health.stderr
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "autoswarm" in metrics
        # The operator invites a volunteer (the swarm is invite-only in the example settings).
        invite = _cli(env, "invite", "--owner", "alice", "--coordinator", address,
                      "--admin-token-file", str(data_dir / "admin.token"), "--tls-ca", str(cert))

        # The volunteer's user unit, through its hours wrapper (inside its hours now).
        home = tmp_path / "home-alice"
        volunteer_unit = read_unit(VOLUNTEER_UNIT)
        volunteer_settings = tmp_path / "volunteer.env"
        volunteer_settings.write_text(VOLUNTEER_ENV_EXAMPLE.read_text() + "".join(
            f"{k}={v}\n" for k, v in {
                "AUTOSWARM_COORDINATOR": address, "AUTOSWARM_INVITE": invite, "AUTOSWARM_OWNER": "alice",
                "AUTOSWARM_CLASS": "cpu", "AUTOSWARM_TLS_CA": str(cert), "AUTOSWARM_MAX_RUNS": "1",
                "AUTOSWARM_HOURS": _open_window(), "AUTOSWARM_NICE": "0",
            }.items()))
        prefix = f"{home}/.local/share/autoswarm"
        volunteer_rewrite = Rewrite([
            (f"{prefix}/venv/bin/python", sys.executable),
            (f"{prefix}/venv/bin/autoswarm", venv_autoswarm()),
            (f"{prefix}/autoswarm-hours", str(HOURS_WRAPPER)),
        ])
        volunteer_command = volunteer_rewrite.command(unit_command(volunteer_unit, home))
        assert volunteer_rewrite.changed() == {"argv[0]", "argv[1]", "argv[2]"}
        volunteer_env = process_env(
            unit_environment(volunteer_unit, home, {f"{home}/.config/autoswarm/volunteer.env": volunteer_settings}),
            home,
        )
        volunteer = ServiceProcess(volunteer_command, volunteer_env, tmp_path / "volunteer.log", cwd=home)
        home.mkdir()
        volunteer.start()
        assert volunteer.wait(VOLUNTEER_RUN_TIMEOUT_S) == 0, volunteer.log()[-6000:]
        events = [json.loads(line) for line in volunteer.log().splitlines() if line.startswith("{")]
        finished = [e for e in events if e.get("event") == "run_finished"]
        acknowledged = [e for e in events if e.get("event") == "result_acknowledged"]
        assert len(finished) == 1 and finished[0]["status"] == "ok", volunteer.log()[-4000:]
        assert len(acknowledged) == 1 and not acknowledged[0]["duplicate"]
        identity = json.loads((home / ".config/autoswarm/volunteer/identity.json").read_text())
        assert identity["pinned_key_hex"] == ready["public_key"]

        with CoordinatorClient(address, (data_dir / "admin.token").read_text().strip(), tls_ca=cert) as admin:
            results = admin.results()
        assert [(r.result_id, r.volunteer_id, r.owner) for r in results] == [
            (acknowledged[0]["result_id"], identity["volunteer_id"], "alice")
        ]
        stored = redis_py.Redis(port=compose_redis.port).zcard(f"{{{REDIS_PREFIX}}}:results")
        assert stored == 1  # the result lives in the compose-configured Redis
    finally:
        assert coordinator.stop() == 0, coordinator.log()[-4000:]


class _TlsCoordinator:
    """What ScriptedVolunteer needs of a coordinator: a client factory (here over TLS)."""

    def __init__(self, address: str, ca: Path) -> None:
        self.address, self.ca = address, ca

    def client(self, token: str | None = None) -> CoordinatorClient:
        return CoordinatorClient(self.address, token, tls_ca=self.ca, timeout_s=15.0)


def test_compose_coordinator_with_its_redis_serves_a_volunteer(tmp_path, compose_redis, no_torch):
    cert, _ = self_signed_tls(tmp_path / "tls")
    port, metrics_port = free_port(), free_port()
    data_dir = tmp_path / "volume-coordinator-data"
    data_dir.mkdir(mode=0o700)  # the image's /data: owned by its user, 0700
    settings = tmp_path / "coordinator.env"
    settings.write_text(COORDINATOR_ENV_EXAMPLE.read_text() + "".join(f"{k}={v}\n" for k, v in TEST_SETTINGS.items()))

    instructions = dockerfile_instructions()
    entrypoint = exec_form(next(a for k, a in instructions if k == "ENTRYPOINT"))
    service = load_compose()["services"]["coordinator"]
    image_env = {k: v for k, v in dockerfile_env(instructions).items() if k.startswith("AUTOSWARM_")}
    service_env = {**image_env, **compose_environment(service, {service["env_file"]: settings})}
    tls_dir = compose_volume_source(service, "/tls")
    assert tls_dir == "./tls"
    rewrite = Rewrite([
        ("/data", str(data_dir)),
        ("/tls", str(cert.parent)),
        ("redis:6379", f"127.0.0.1:{compose_redis.port}"),
        (":50051", f":{port}"),
        ("9108", str(metrics_port)),
    ])
    command = [venv_autoswarm() if entrypoint == ["autoswarm"] else entrypoint[0], *rewrite.command(service["command"])]
    env = rewrite.environment(service_env)
    assert rewrite.changed() == {"AUTOSWARM_LISTEN", "AUTOSWARM_DATA_DIR", "AUTOSWARM_STORE",
                                 "AUTOSWARM_TLS_CERT", "AUTOSWARM_TLS_KEY", "AUTOSWARM_METRICS_PORT"}, rewrite.log
    env = process_env({**env, "PYTHONPATH": str(no_torch)}, data_dir)
    coordinator = ServiceProcess(command, env, tmp_path / "coordinator.log", cwd=data_dir).start()
    try:
        coordinator.wait_for_file(data_dir / "coordinator.json")
        health = _health(env)
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stdout + health.stderr
        address = f"127.0.0.1:{port}"
        swarm = _TlsCoordinator(address, cert)
        invite = _cli(env, "invite", "--owner", "bob", "--coordinator", address,
                      "--admin-token-file", str(data_dir / "admin.token"), "--tls-ca", str(cert))
        volunteer = ScriptedVolunteer(swarm, owner="bob", invite=invite).register()  # type: ignore[arg-type]
        unit = volunteer.lease()
        assert unit is not None and unit.settings.budget_s == 2.0 and unit.settings.dataset_name == "pydoc"
        response = volunteer.report(unit, 3.1)
        assert response.result_id and not response.duplicate
        with swarm.client(volunteer.token) as client:
            assert [r.result_id for r in client.results()] == [response.result_id]
        assert redis_py.Redis(port=compose_redis.port).zcard(f"{{{REDIS_PREFIX}}}:results") == 1
        # Without TLS the coordinator cannot be talked to at all.
        with CoordinatorClient(address, volunteer.token, timeout_s=5.0) as plain:
            assert not plain.health()
    finally:
        assert coordinator.stop() == 0, coordinator.log()[-4000:]
