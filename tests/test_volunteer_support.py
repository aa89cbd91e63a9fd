"""Helpers for the volunteer tests (no tests here): real volunteer processes, a test signing key,
train.py variants that hang or run out of memory, and a gRPC proxy that sits between a volunteer
and a real coordinator to tamper with work units or re-sign them with its own key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from autoswarm.v1 import swarm_pb2 as pb
from autoswarm.v1 import swarm_pb2_grpc as pb_grpc
from coordinator.service.signing import key_id

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = REPO_ROOT / "trainer" / "train.py"
PROFILES_JSON = REPO_ROOT / "trainer" / "profiles.json"
SECRET_ENV_TOKEN = "env-secret-token-must-not-leak-0123456789"


# ---------------------------------------------------------------------------------------------
# Keys and units
# ---------------------------------------------------------------------------------------------

class TestKey:
    """An Ed25519 key standing in for a coordinator's."""

    __test__ = False  # not a test class

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, unit: pb.WorkUnit) -> pb.SignedWorkUnit:
        payload = unit.SerializeToString(deterministic=True)
        return pb.SignedWorkUnit(work_unit=payload, signature=self.private.sign(payload), key_id=key_id(self.public))

    def resign(self, signed: pb.SignedWorkUnit, edit: Callable[[pb.WorkUnit], None]) -> pb.SignedWorkUnit:
        unit = pb.WorkUnit.FromString(signed.work_unit)
        edit(unit)
        return self.sign(unit)


def inject_into_train(source: str, code: str) -> str:
    """train.py with `code` run first thing in `train(ctx)` (the harness still wraps it)."""
    marker = "def train(ctx):\n"
    assert marker in source, "train.py no longer defines train(ctx)"
    head, tail = source.split(marker, 1)
    doc_end = tail.index('"""', tail.index('"""') + 3) + 3 if tail.lstrip().startswith('"""') else 0
    body = "".join(f"    {line}\n" for line in code.strip().splitlines())
    return head + marker + tail[:doc_end] + "\n" + body + tail[doc_end:]


def env_dump_code(path: Path) -> str:
    return f"import json as _j, os as _o\nopen({str(path)!r}, 'w').write(_j.dumps(dict(_o.environ)))"


HANG_CODE = "import time as _t\n_t.sleep(3600)"
OOM_CODE = "import torch as _torch\n_torch.empty(1 << 46, dtype=_torch.uint8)"


def train_py_variant(*snippets: str) -> str:
    return inject_into_train(TRAIN_PY.read_text(), "\n".join(snippets))


def fake_unit(lease_id: str, train_py: str, *, budget_s: float, manifest_id: str, volunteer_id: str = "vol_test",
              heartbeat_interval_s: float = 0.5) -> pb.WorkUnit:
    return pb.WorkUnit(
        lease_id=lease_id, unit_id=f"unit_{lease_id}", kind=pb.UNIT_KIND_BASELINE, hardware_class="cpu",
        base_commit="0" * 40, train_py=train_py, profiles_json=PROFILES_JSON.read_text(),
        settings=pb.SwarmSettings(budget_s=budget_s, data_manifest_id=manifest_id, dataset_name="pydoc",
                                  heartbeat_interval_s=heartbeat_interval_s, lease_duration_s=60),
        lease_deadline_unix_s=time.time() + 600, issued_unix_s=time.time(), volunteer_id=volunteer_id,
    )


# ---------------------------------------------------------------------------------------------
# Volunteer processes
# ---------------------------------------------------------------------------------------------

def volunteer_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSWARM_")}
    env.update({
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'proto'}",
        "AUTOSWARM_CACHE_DIR": str(cache_dir),
        # Secrets a careless owner might have exported: none may reach the trainer.
        "AUTOSWARM_TOKEN": SECRET_ENV_TOKEN,
        "MY_API_KEY": SECRET_ENV_TOKEN,
        **extra,
    })
    return env


@dataclass
class VolunteerProcess:
    """`autoswarm volunteer run --log-json ...` as a child process; its events are parsed from stdout."""

    data_dir: Path
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    out_path: Path | None = None
    err_path: Path | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> VolunteerProcess:
        stamp = int(time.time() * 1000)
        self.out_path = self.data_dir.parent / f"{self.data_dir.name}-{stamp}.out"
        self.err_path = self.data_dir.parent / f"{self.data_dir.name}-{stamp}.err"
        command = [sys.executable, "-c", "from coordinator.cli import main; raise SystemExit(main())",
                   "volunteer", "run", "--data-dir", str(self.data_dir), "--log-json", *self.args]
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=open(self.out_path, "w"),  # noqa: SIM115
                                     stderr=open(self.err_path, "w"))  # noqa: SIM115
        return self

    def events(self) -> list[dict[str, Any]]:
        assert self.out_path is not None
        events = []
        for line in self.out_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                events.append({"event": "text", "message": line})
        return events

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def output(self) -> str:
        out = self.out_path.read_text() if self.out_path else ""
        err = self.err_path.read_text() if self.err_path else ""
        return f"--- stdout\n{out}\n--- stderr\n{err[-6000:]}"

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, what: str) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            if self.proc.poll() is not None:
                for event in self.events():
                    if predicate(event):
                        return event
                raise AssertionError(f"volunteer exited ({self.proc.returncode}) before {what}:\n{self.output()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"volunteer did not exit in {timeout_s}s:\n{self.output()}") from None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_volunteer(data_dir: Path, coordinator: str, cache_dir: Path, *args: str, **env: str) -> VolunteerProcess:
    base = ["--coordinator", coordinator, "--cache-dir", str(cache_dir), "--nice", "0", "--drain-timeout-s", "60"]
    return VolunteerProcess(data_dir, [*base, *args], volunteer_env(cache_dir, **env)).start()


# ---------------------------------------------------------------------------------------------
# A gRPC proxy in front of a real coordinator
# ---------------------------------------------------------------------------------------------

COORDINATOR_SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]


class CoordinatorProxy:
    """Forwards the Coordinator service to `upstream`. `rewrite_unit` may change leased units on the
    way through; with `key`, the proxy presents that key as the coordinator's (so volunteers that
    register through it pin it) and re-signs units with it."""

    def __init__(self, upstream: str, rewrite_unit: Callable[[pb.SignedWorkUnit, int], pb.SignedWorkUnit] | None = None,
                 key: TestKey | None = None) -> None:
        self.channel = grpc.insecure_channel(upstream)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.rewrite_unit = rewrite_unit
        self.key = key
        self.leases = 0
        self.refusals: list[pb.ReportRefusalRequest] = []
        self.reports: list[pb.ReportResultRequest] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {method.name: grpc.unary_unary_rpc_method_handler(
            self._handler(method.name),
            request_deserializer=getattr(pb, method.input_type.name).FromString,
            response_serializer=lambda message: message.SerializeToString(),
        ) for method in COORDINATOR_SERVICE.methods}  # every method of the contract, whatever it is called
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(COORDINATOR_SERVICE.full_name, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> CoordinatorProxy:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=1).wait()
        self.channel.close()

    def _handler(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
            if name == "ReportRefusal":
                with self.lock:
                    self.refusals.append(request)
            if name == "ReportResult":
                with self.lock:
                    self.reports.append(request)
            try:
                response = getattr(self.stub, name)(request, metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())
            if self.key is not None and name in ("RegisterVolunteer", "GetSwarmConfig"):
                response.coordinator_public_key = self.key.public
                if name == "GetSwarmConfig":
                    del response.endorsements[:]
                    del response.previous_public_keys[:]
            if name == "LeaseWork" and response.HasField("unit") and self.rewrite_unit is not None:
                with self.lock:
                    index = self.leases
                    self.leases += 1
                response.unit.CopyFrom(self.rewrite_unit(response.unit, index))
            return response

        return handle


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# A real coordinator
# ---------------------------------------------------------------------------------------------

def start_coordinator(data_dir: Path, *, budget_s: float = 3.0, startup_allowance_s: float = 5.0,
                      policy: dict[str, object] | None = None, extra: list[str] | None = None) -> Any:
    """A real coordinator process (tests/coordinator_proc.py) on the pydoc data with a tiny budget."""
    from coordinator_proc import coordinator_process

    # A later --startup-allowance-s wins over the helper's default (argparse keeps the last).
    extra = [*(extra or []), "--startup-allowance-s", str(startup_allowance_s)]
    return coordinator_process(data_dir, budget_s=budget_s, policy=policy, extra=extra).start()


def restart_on_same_port(proc: Any) -> Any:
    """Start a stopped coordinator again on the address volunteers know."""
    port = proc.address.rsplit(":", 1)[1]
    proc.args = [f"127.0.0.1:{port}" if a == "127.0.0.1:0" else a for a in proc.args]
    return proc.start()
