"""Readers for the deploy files, reading them the way their tools do (Dockerfile instructions,
systemd unit files and environment files, compose services), and the one rewriting step that lets
a test run a deployment's exact command on this machine: container and host paths to temp dirs,
fixed ports to free ones, nothing else. The tests of these readers are at the bottom.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY / "coordinator" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COORDINATOR_UNIT = DEPLOY / "systemd" / "autoswarm-coordinator.service"
VOLUNTEER_UNIT = DEPLOY / "systemd" / "autoswarm-volunteer.service"
HOURS_WRAPPER = DEPLOY / "systemd" / "autoswarm-hours"
COORDINATOR_ENV_EXAMPLE = DEPLOY / "coordinator.env.example"
VOLUNTEER_ENV_EXAMPLE = DEPLOY / "systemd" / "volunteer.env.example"
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_autoswarm() -> str:
    """The `autoswarm` console script of the Python running the tests."""
    script = Path(sys.executable).parent / "autoswarm"
    if not script.exists():
        pytest.skip(f"no autoswarm console script beside {sys.executable} (pip install -e .)")
    return str(script)


# -- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path} ends inside a continued instruction"
    return instructions


def exec_form(arguments: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT / CMD / HEALTHCHECK CMD; shell form is refused."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def dockerfile_env(instructions: Iterable[tuple[str, str]]) -> dict[str, str]:
    """ENV instructions in `KEY=VALUE ...` form ($PATH-style references are left unexpanded)."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for item in shlex.split(arguments):
                key, _, value = item.partition("=")
                env[key] = value
    return env


# -- systemd ------------------------------------------------------------------------------------


@dataclass
class UnitFile:
    path: Path
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (section, key, value)

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, k, v in self.entries if s == section and k == key]

    def value(self, section: str, key: str) -> str:
        found = self.values(section, key)
        assert found, f"{self.path.name} has no {key}= in [{section}]"
        return found[-1]  # systemd: the last assignment of a single-valued key wins


def read_unit(path: Path) -> UnitFile:
    unit = UnitFile(path)
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"{path.name}: cannot read {raw!r}"
        unit.entries.append((section, key.strip(), value.strip()))
    return unit


_SPECIFIER = re.compile(r"%(.)")


def expand_specifiers(text: str, home: Path) -> str:
    """The unit specifiers these units use: %h (the user's home) and %% (a percent sign)."""

    def one(match: re.Match[str]) -> str:
        if match.group(1) == "h":
            return str(home)
        if match.group(1) == "%":
            return "%"
        raise AssertionError(f"specifier %{match.group(1)} is not handled by this test")

    return _SPECIFIER.sub(one, text)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= and compose's env_file read them here
    (comments and blank lines skipped, one level of matching quotes removed)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def unit_environment(unit: UnitFile, home: Path, env_files: Mapping[str, Path]) -> dict[str, str]:
    """Environment= assignments, then each EnvironmentFile= (which win, as in systemd). env_files
    maps a unit's file path (after %h expansion) to the file standing in for it here."""
    env: dict[str, str] = {}
    for value in unit.values("Service", "Environment"):
        for item in shlex.split(expand_specifiers(value, home)):
            key, _, item_value = item.partition("=")
            env[key] = item_value
    for value in unit.values("Service", "EnvironmentFile"):
        name = expand_specifiers(value, home).removeprefix("-")
        assert name in env_files, f"{unit.path.name} reads {name}; give the test a stand-in for it"
        env.update(read_env_file(env_files[name]))
    return env


def unit_command(unit: UnitFile, home: Path) -> list[str]:
    return shlex.split(expand_specifiers(unit.value("Service", "ExecStart"), home))


# -- compose ------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML reads compose.yaml in these tests")
    with open(path) as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict)
    return document


def compose_environment(service: Mapping[str, Any], env_files: Mapping[str, Path]) -> dict[str, str]:
    """env_file entries, then `environment:` (which wins, as in compose). env_files maps each
    env_file name to the file standing in for it."""
    env: dict[str, str] = {}
    declared = service.get("env_file", [])
    for name in [declared] if isinstance(declared, str) else declared:
        name = name if isinstance(name, str) else name["path"]
        assert name in env_files, f"compose reads {name}; give the test a stand-in for it"
        env.update(read_env_file(env_files[name]))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({str(k): str(v) for k, v in environment.items()})
    return env


def compose_volume_source(service: Mapping[str, Any], target: str) -> str:
    """The host side of the volume a service mounts at `target`."""
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[1] == target:
            return parts[0]
    raise AssertionError(f"nothing is mounted at {target}")


# -- rewriting to this machine ------------------------------------------------------------------


@dataclass
class Rewrite:
    """Substring replacements applied to every argument and environment value, in order; `log`
    records each value that changed, so a test can say exactly what it altered."""

    replacements: list[tuple[str, str]]
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (where, before, after)

    def text(self, where: str, value: str) -> str:
        after = value
        for old, new in self.replacements:
            after = after.replace(old, new)
        if after != value:
            self.log.append((where, value, after))
        return after

    def command(self, argv: list[str]) -> list[str]:
        return [self.text(f"argv[{i}]", arg) for i, arg in enumerate(argv)]

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        return {key: self.text(key, value) for key, value in env.items()}

    def changed(self) -> set[str]:
        return {where for where, _, _ in self.log}


def process_env(service_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """What a service manager gives a process besides its own settings: a PATH (git, the console
    scripts), a HOME, a locale. Nothing else of the test's environment leaks in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **service_env,
    }


@dataclass
class ServiceProcess:
    """A deployment's command running here, stdout and stderr to one log file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = Path("/")
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it until it exits
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_file(self, path: Path, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if path.exists():
                try:
                    return dict(json.loads(path.read_text()))
                except json.JSONDecodeError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"{path} did not appear in {timeout_s} s:\n{self.log()[-4000:]}")

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.argv} did not exit in {timeout_s} s:\n{self.log()[-6000:]}") from None

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)


def self_signed_tls(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key (0600), as an operator would make
    with openssl for a first trial; returns (cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# -- tests of the readers -------------------------------------------------------------------------


def test_dockerfile_reader_joins_continuations_and_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text('# c\nFROM a\nRUN one \\\n  # inside\n  && two\nENV A=1 \\\n    B="x y"\nCMD ["x", "y"]\n')
    instructions = dockerfile_instructions(path)
    assert [k for k, _ in instructions] == ["FROM", "RUN", "ENV", "CMD"]
    assert instructions[1][1].split() == ["one", "&&", "two"]
    assert dockerfile_env(instructions) == {"A": "1", "B": "x y"}
    assert exec_form(instructions[3][1]) == ["x", "y"]


def test_unit_reader_expands_home_and_lets_environment_files_win(tmp_path: Path) -> None:
    unit_path = tmp_path / "x.service"
    unit_path.write_text(
        "[Service]\nEnvironment=A=%h/a\nEnvironment=\"B=two words\" C=3\nEnvironmentFile=-%h/x.env\n"
        "ExecStart=%h/bin/run --flag \"quoted arg\" 100%%\n"
    )
    env_file = tmp_path / "stand-in.env"
    env_file.write_text("# comment\nC=from-file\nD='quoted'\n")
    unit = read_unit(unit_path)
    home = Path("/home/u")
    assert unit_environment(unit, home, {"/home/u/x.env": env_file}) == {
        "A": "/home/u/a", "B": "two words", "C": "from-file", "D": "quoted"
    }
    assert unit_command(unit, home) == ["/home/u/bin/run", "--flag", "quoted arg", "100%"]


def test_rewrite_logs_exactly_what_it_changed() -> None:
    rewrite = Rewrite([("/data", "/tmp/d"), (":50051", ":4242")])
    env = rewrite.environment({"DIR": "/data", "LISTEN": "0.0.0.0:50051", "OTHER": "same"})
    assert env == {"DIR": "/tmp/d", "LISTEN": "0.0.0.0:4242", "OTHER": "same"}
    assert rewrite.changed() == {"DIR", "LISTEN"}
