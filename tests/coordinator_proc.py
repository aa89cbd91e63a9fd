"""Test helpers: a real coordinator process, and scripted volunteers that report chosen numbers.

A scripted volunteer is a real gRPC client: it registers, leases signed units, verifies their
signature and reports a val_bpb computed from the constants of the train.py it was sent, so tests
choose which changes are real improvements without training anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.client import CoordinatorClient
from coordinator.service.signing import verify_signature

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


@dataclass
class CoordinatorProcess:
    data_dir: Path
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    address: str = ""
    log_path: Path | None = None

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> CoordinatorProcess:
        ready = self.data_dir / "coordinator.json"
        if ready.exists():
            ready.unlink()
        self.log_path = self.data_dir / f"coordinator-{int(time.time() * 1000)}.log"
        log = open(self.log_path, "w")  # noqa: SIM115 - the process owns it until it exits
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli.coordinator_cmd", "serve", *self.args],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}:\n{self.log()}")
            if ready.exists():
                try:
                    self.address = json.loads(ready.read_text())["address"]
                except (json.JSONDecodeError, KeyError):
                    time.sleep(0.05)
                    continue
                return self
            time.sleep(0.05)
        raise RuntimeError(f"coordinator did not start in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def client(self, token: str | None = None) -> CoordinatorClient:
        # Each client its own connection, as each volunteer has: with several serving processes
        # on the port, the kernel spreads connections (not calls) over them.
        return CoordinatorClient(self.address, token, timeout_s=15.0, own_connection=True)

    def settle(self, timeout_s: float = 20.0) -> None:
        """Wait until the decision process has judged every reported result (reports are
        acknowledged before they are judged)."""
        deadline = time.monotonic() + timeout_s
        with self.admin() as admin:
            while admin.status().undecided_results:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"results still undecided after {timeout_s} s")
                time.sleep(0.05)

    def admin(self) -> CoordinatorClient:
        return self.client(self.admin_token)


def coordinator_process(
    data_dir: Path,
    store_url: str = "",
    *,
    budget_s: float = 5.0,
    extra: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    policy: Mapping[str, object] | None = None,
) -> CoordinatorProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--dataset", "pydoc",
        "--budget-s", str(budget_s), "--startup-allowance-s", "5", "--no-proposer",
    ]
    if store_url:
        args += ["--store", store_url]
    args += extra or []
    full_env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'proto'}", **(env or {})}
    if policy:
        full_env["AUTOSWARM_POLICY_JSON"] = json.dumps(policy)
    return CoordinatorProcess(data_dir, args, full_env)


def fingerprint(device_type: str = "cpu", name: str = "test cpu", memory_gib: float = 16.0) -> pb.HardwareFingerprint:
    return pb.HardwareFingerprint(
        device_type=device_type, device_name=name, memory_bytes=int(memory_gib * 2**30), cpu_count=2,
        torch_version="test", os=sys.platform, python_version=sys.version.split()[0],
    )


Landscape = Callable[[Mapping[str, object], str], float]  # (constants, hardware class) -> val_bpb


@dataclass
class ScriptedVolunteer:
    """A real gRPC volunteer that reports landscape(constants of the unit's train.py) instead of training."""

    coordinator: CoordinatorProcess
    owner: str
    hardware_class: str = "cpu"
    invite: str = ""
    volunteer_id: str = ""
    token: str = ""
    public_key: bytes = b""
    reports: list[pb.ReportResultResponse] = field(default_factory=list)

    def register(self) -> ScriptedVolunteer:
        with self.coordinator.client() as client:
            response = client.register(
                fingerprint(), owner=self.owner, invite_token=self.invite,
                requested_class=self.hardware_class, display_name=f"{self.owner}-bot",
            )
        self.volunteer_id, self.token = response.volunteer_id, response.token
        self.public_key = response.coordinator_public_key
        return self

    def client(self) -> CoordinatorClient:
        return self.coordinator.client(self.token)

    def lease(self) -> pb.WorkUnit | None:
        with self.client() as client:
            response = client.lease(self.hardware_class)
        if not response.HasField("unit"):
            return None
        signed = response.unit
        assert verify_signature(self.public_key, signed.work_unit, signed.signature), "bad signature"
        unit = pb.WorkUnit()
        unit.ParseFromString(signed.work_unit)
        return unit

    def report(
        self, unit: pb.WorkUnit, val_bpb: float, status: int = pb.RUN_STATUS_OK, tokenizer_hash: str = "tok-test"
    ) -> pb.ReportResultResponse:
        result = pb.RunResult(
            status=status, val_bpb=val_bpb if status == pb.RUN_STATUS_OK else 0.0,
            training_s=unit.settings.budget_s, total_s=unit.settings.budget_s + 1,
            num_steps=100, total_tokens=100_000, tokenizer_hash=tokenizer_hash,
            data_manifest_id=unit.settings.data_manifest_id, attention_backend="sdpa",
        )
        with self.client() as client:
            response = client.report(unit.lease_id, result)
        self.reports.append(response)
        return response

    def work_once(self, landscape: Landscape) -> pb.WorkUnit | None:
        from trainer.constants import read_constants

        unit = self.lease()
        if unit is None:
            return None
        self.report(unit, landscape(read_constants(unit.train_py), self.hardware_class))
        return unit


def run_swarm(volunteers: list[ScriptedVolunteer], landscape: Landscape, max_rounds: int = 60,
              until: Callable[[], bool] | None = None) -> int:
    """Round-robin the volunteers until `until()` holds or nobody gets work; returns runs done."""
    runs = 0
    for _ in range(max_rounds):
        did = 0
        for volunteer in volunteers:
            if volunteer.work_once(landscape) is not None:
                did += 1
        runs += did
        if until is not None and until():
            return runs
        if did == 0:
            return runs
    return runs


def merge_a_win(
    proc: CoordinatorProcess, volunteers: list[ScriptedVolunteer], landscape: Landscape,
    constant_changes: Mapping[str, str] | None = None, max_rounds: int = 30,
) -> str:
    """Baselines, then a submitted constant change run until it merges; returns its hypothesis id."""
    changes = dict(constant_changes or {"MATRIX_LR": "0.05"})
    run_swarm(volunteers, landscape, max_rounds=6)
    with proc.admin() as admin:
        title = " ".join(f"{name} {value}" for name, value in changes.items())
        hypothesis_id = admin.submit(title, constant_changes=changes).hypothesis_id

    def merged() -> bool:
        with proc.admin() as admin:
            return admin.hypothesis(hypothesis_id).hypothesis.state == pb.HYPOTHESIS_STATE_MERGED

    run_swarm(volunteers, landscape, max_rounds=max_rounds, until=merged)
    assert merged(), proc.log()[-3000:]
    return hypothesis_id
