"""The deploy files, checked as far as this machine can check them: the Dockerfile's lines, the
compose file's structure, the Redis durability settings, the systemd units (with systemd-analyze
when it is installed), the settings the example env files name, and the hours wrapper.

Building and running the image needs a Docker engine, which this machine lacks (`docker --version`
answers, but there is no daemon); tests/test_deploy_run.py runs the image's and the units'
commands here instead.
"""

from __future__ import annotations

import datetime as dt
import importlib.machinery
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_deploy_support import (
    COMPOSE,
    COORDINATOR_ENV_EXAMPLE,
    COORDINATOR_UNIT,
    DEPLOY,
    DOCKERFILE,
    HOURS_WRAPPER,
    REPO_ROOT,
    VOLUNTEER_ENV_EXAMPLE,
    VOLUNTEER_UNIT,
    compose_volume_source,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
    load_compose,
    read_env_file,
    read_unit,
)

# -- the coordinator image ----------------------------------------------------------------------


def test_dockerfile_installs_the_coordinator_set_only_and_runs_as_a_user() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert instructions[0][0] == "FROM" and re.match(r"python:3\.11-slim", instructions[0][1])
    runs = " ".join(args for k, args in instructions if k == "RUN")
    installs = [found.strip() for found in re.findall(r"pip install ([^&]*)", runs)]
    assert installs == ["-c requirements.lock ."], installs  # the base set, pinned; no extras
    assert "[volunteer]" not in runs and "torch" not in installs[0]
    assert "find_spec('torch') is not None" in runs  # the build fails if torch came in anyway
    assert "git" in re.findall(r"apt-get install [^&]*", runs)[0].split()  # the global branch
    # Every COPY source exists, and every package directory pyproject.toml names is copied.
    copied = {name for k, args in instructions if k == "COPY" for name in args.split()[:-1]}
    for source in copied:
        assert (REPO_ROOT / source).exists(), source
    packages = re.search(r"packages = \[(.*?)\]", (REPO_ROOT / "pyproject.toml").read_text(), re.S)
    assert packages is not None
    top_dirs = {name.strip().strip('"').split(".")[0] for name in packages.group(1).split(",") if name.strip()}
    top_dirs = {"proto" if d == "autoswarm" else d for d in top_dirs}
    assert top_dirs <= set(copied), top_dirs - set(copied)
    # A non-root user from there on; the entry point and health check run as it.
    users = [args for k, args in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("HEALTHCHECK") < keywords.index("ENTRYPOINT")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    healthcheck = next(args for k, args in instructions if k == "HEALTHCHECK")
    assert exec_form(healthcheck.split(" CMD ", 1)[1]) == ["autoswarm", "coordinator", "health"]
    assert exec_form(next(a for k, a in instructions if k == "ENTRYPOINT")) == ["autoswarm"]
    env = dockerfile_env(instructions)
    assert env["AUTOSWARM_DATA_DIR"] == "/data" and env["AUTOSWARM_LISTEN"].endswith(":50051")
    assert "50051" in next(a for k, a in instructions if k == "EXPOSE").split()


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip() for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"  # everything out (.venv, data, caches) ...
    admitted = {line[1:] for line in lines if line.startswith("!")}
    copied = {name for k, args in dockerfile_instructions() if k == "COPY" for name in args.split()[:-1]}
    assert admitted == copied  # ... and back in exactly what the image is built from


def test_the_coordinator_health_subcommand_exists() -> None:
    from coordinator.cli.coordinator_cmd import main

    with pytest.raises(SystemExit) as done:
        main(["health", "--help"])
    assert done.value.code == 0


# -- compose ------------------------------------------------------------------------------------


def test_compose_runs_the_image_with_redis_volumes_tls_and_an_env_file() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"coordinator", "redis"}
    coordinator, redis = services["coordinator"], services["redis"]
    build = coordinator["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert coordinator["command"][:2] == ["coordinator", "serve"]
    env_file = coordinator["env_file"]
    assert (DEPLOY / f"{env_file}.example").is_file()  # the documented example the operator copies
    env = coordinator["environment"]
    assert env["AUTOSWARM_STORE"].startswith("redis://redis:6379/")
    assert env["AUTOSWARM_DATA_DIR"] == "/data"
    port = env["AUTOSWARM_LISTEN"].rsplit(":", 1)[1]
    assert f"{port}:{port}" in coordinator["ports"]
    metrics_port = read_env_file(COORDINATOR_ENV_EXAMPLE)["AUTOSWARM_METRICS_PORT"]
    assert f"127.0.0.1:{metrics_port}:{metrics_port}" in coordinator["ports"]  # not public
    # Named volumes for state; the certificates mounted read-only where the env says they are.
    named = set(compose["volumes"])
    assert compose_volume_source(coordinator, "/data") in named
    tls_mount = next(v for v in coordinator["volumes"] if v.split(":")[1] == "/tls")
    assert tls_mount.endswith(":ro")
    assert env["AUTOSWARM_TLS_CERT"].startswith("/tls/") and env["AUTOSWARM_TLS_KEY"].startswith("/tls/")
    assert coordinator["depends_on"]["redis"]["condition"] == "service_healthy"
    assert coordinator["restart"] == redis["restart"] == "unless-stopped"
    # Redis: its own named volume, our config file, no published port, a health check.
    assert compose_volume_source(redis, "/data") in named
    config = redis["command"][1]
    assert (COMPOSE.parent / compose_volume_source(redis, config)).resolve() == (DEPLOY / "redis" / "redis.conf")
    assert "ports" not in redis
    assert redis["healthcheck"]["test"][-1] == "ping"


def redis_settings() -> dict[str, str]:
    settings = {}
    for line in (DEPLOY / "redis" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition(" ")
            settings[key] = value
    return settings


def test_redis_config_is_durable_before_it_replies() -> None:
    settings = redis_settings()
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "always"  # the reasoning is in deploy/README.md, "Durability"
    assert settings["no-appendfsync-on-rewrite"] == "no"
    assert settings["maxmemory-policy"] == "noeviction"
    assert "dir" not in settings  # the official image's working directory, /data, is the volume


# -- systemd --------------------------------------------------------------------------------------


def test_coordinator_unit() -> None:
    unit = read_unit(COORDINATOR_UNIT)
    assert unit.value("Service", "ExecStart").split()[1:4] == ["coordinator", "serve", "--log-json"]
    assert unit.value("Service", "User") not in ("", "root")
    assert unit.value("Service", "Restart") == "on-failure"
    assert unit.value("Service", "StateDirectory") == "autoswarm"
    assert unit.value("Service", "UMask") == "0077"
    environment = " ".join(unit.values("Service", "Environment"))
    assert "AUTOSWARM_DATA_DIR=/var/lib/autoswarm" in environment  # where StateDirectory= puts it
    assert unit.value("Install", "WantedBy") == "multi-user.target"


def test_volunteer_user_unit_runs_low_priority_restarts_and_honours_hours() -> None:
    unit = read_unit(VOLUNTEER_UNIT)
    command = unit.value("Service", "ExecStart").split()
    assert Path(command[1]).name == HOURS_WRAPPER.name  # the hours wrapper runs the daemon
    assert command[2].endswith("/autoswarm") and command[3:5] == ["volunteer", "run"]
    assert unit.value("Service", "Restart") == "on-failure"
    assert int(unit.value("Service", "Nice")) >= 10
    assert unit.value("Service", "IOSchedulingClass") == "idle"
    assert unit.value("Service", "KillMode") == "mixed"  # SIGTERM reaches the wrapper, not the trainer
    assert unit.value("Install", "WantedBy") == "default.target"  # a user unit
    assert "User" not in {k for _, k, _ in unit.entries}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit_path", [COORDINATOR_UNIT, VOLUNTEER_UNIT], ids=lambda p: p.name)
def test_systemd_analyze_finds_nothing_to_complain_about(unit_path: Path, tmp_path: Path) -> None:
    """systemd's own parser on a copy whose ExecStart points at a binary that exists here
    (verify insists on it); every other line is as shipped."""
    copy = tmp_path / unit_path.name
    copy.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", unit_path.read_text()))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if str(copy) in line or "Unknown" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


# -- the example env files name real settings ----------------------------------------------------


def _sources(*paths: Path) -> str:
    return "\n".join(p.read_text() for path in paths for p in (path.rglob("*.py") if path.is_dir() else [path]))


def test_every_example_setting_is_read_by_the_program() -> None:
    coordinator_source = _sources(REPO_ROOT / "coordinator" / "cli" / "coordinator_cmd.py")
    for key in read_env_file(COORDINATOR_ENV_EXAMPLE):
        assert f'"{key}"' in coordinator_source, f"{key} is not read by autoswarm coordinator"
    volunteer_source = _sources(REPO_ROOT / "volunteer", HOURS_WRAPPER)
    for key in read_env_file(VOLUNTEER_ENV_EXAMPLE):
        if key.startswith("AUTOSWARM_"):
            assert f'"{key}"' in volunteer_source or f"'{key}'" in volunteer_source, f"{key} is not read"
    unit_env = " ".join(read_unit(VOLUNTEER_UNIT).values("Service", "Environment"))
    for key in re.findall(r"(AUTOSWARM_\w+)=", unit_env):
        assert f'"{key}"' in volunteer_source, f"{key} is not read by the volunteer"


def test_readme_says_what_was_not_run_here_and_why_fsync_always() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "Docker engine" in readme and "not run here" in readme
    assert "appendfsync always" in readme and "everysec" in readme
    for command in ("backup", "restore", "migrate", "invite", "revoke-owner", "rotate-key", "--mirror-url"):
        assert command in readme, command


# -- the hours wrapper ----------------------------------------------------------------------------


def hours_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("autoswarm_hours", str(HOURS_WRAPPER))
    spec = importlib.util.spec_from_loader("autoswarm_hours", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    loader.exec_module(module)
    return module


def test_hours_parse_and_window_arithmetic() -> None:
    hours = hours_module()
    night = hours.parse_hours("22-07")
    assert (night.start_s, night.end_s) == (22 * 3600, 7 * 3600)
    assert night.is_open(23 * 3600) and night.is_open(3600) and not night.is_open(12 * 3600)
    assert night.seconds_until_open(21 * 3600) == 3600
    assert night.seconds_until_open(8 * 3600) == 14 * 3600
    assert night.seconds_until_close(23 * 3600) == 8 * 3600
    assert night.seconds_until_close(12 * 3600) == 0
    day = hours.parse_hours(" 09:30-17:15:30 ")
    assert (day.start_s, day.end_s) == (9 * 3600 + 1800, 17 * 3600 + 900 + 30)
    assert not day.is_open(17 * 3600 + 900 + 30) and day.is_open(9 * 3600 + 1800)
    assert hours.parse_hours("") is None and hours.parse_hours("0-24") is None
    assert hours.parse_hours("18-24").end_s == 0
    for bad in ("22", "25-07", "7-7", "09:60-10", "a-b", "24:01-3"):
        with pytest.raises(hours.HoursError):
            hours.parse_hours(bad)


def _window(start_offset_s: int, end_offset_s: int) -> str:
    now = dt.datetime.now()
    return "-".join((now + dt.timedelta(seconds=s)).strftime("%H:%M:%S") for s in (start_offset_s, end_offset_s))


def _wrapper(tmp_path: Path, hours: str, *command: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AUTOSWARM_HOURS": hours}
    return subprocess.Popen([sys.executable, str(HOURS_WRAPPER), *command], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


CHILD = """
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    marker.write_text(f"term {signum}")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
marker.write_text("started")
time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[3]))
"""


def test_hours_wrapper_runs_always_when_unset_and_passes_the_status_on(tmp_path: Path) -> None:
    done = _wrapper(tmp_path, "", sys.executable, "-c", CHILD, str(tmp_path / "m"), "0", "3")
    assert done.wait(timeout=30) == 3
    assert (tmp_path / "m").read_text() == "started"
    bad = _wrapper(tmp_path, "26-07", "true")
    assert bad.wait(timeout=30) == 2 and "not a time of day" in bad.communicate()[1]


def test_hours_wrapper_waits_outside_its_hours_and_stops_on_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    wrapper = _wrapper(tmp_path, _window(3600, 7200), sys.executable, "-c", CHILD, str(marker), "0", "0")
    time.sleep(1.0)
    assert wrapper.poll() is None and not marker.exists()  # waiting, command not started
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 0
    assert not marker.exists() and "waiting until" in wrapper.communicate()[1]


def test_hours_wrapper_passes_sigterm_on_inside_its_hours(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    wrapper = _wrapper(tmp_path, _window(-3600, 3600), sys.executable, "-c", CHILD, str(marker), "60", "0")
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "started"
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 0
    assert marker.read_text() == f"term {int(signal.SIGTERM)}"


def test_hours_wrapper_asks_the_command_to_stop_when_the_hours_end(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    wrapper = _wrapper(tmp_path, _window(-3600, 3), sys.executable, "-c", CHILD, str(marker), "60", "0")
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text().startswith("term")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == f"term {int(signal.SIGTERM)}"  # stopped by the wrapper at closing time
    assert wrapper.poll() is None  # and the wrapper waits for tomorrow's window
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 0
    assert "hours are over" in wrapper.communicate()[1]
