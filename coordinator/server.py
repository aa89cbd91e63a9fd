"""The coordinator process: store + global branch + signing key + gRPC server (asyncio).

    autoswarm coordinator serve --listen 127.0.0.1:50051 --store sqlite:///DIR/state.sqlite --data-dir DIR

On start it opens (or creates) the data dir: the signing key (signing/current.pem, 0600), the
global branch (branch.git), and an admin token (admin.token, 0600) the first time. It reconciles
store and branch, then serves until SIGINT/SIGTERM, finishing in-flight RPCs before it exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from autoswarm.v1 import swarm_pb2_grpc as pb_grpc
from coordinator.branch import GlobalBranch
from coordinator.ops import BranchMirror
from coordinator.service import event_loop
from coordinator.service.auth import AuthInterceptor, PrincipalCache, hash_token, new_token
from coordinator.service.core import META_REVOCATION_EPOCH, CoordinatorCore, SwarmConfig
from coordinator.service.decider import DeciderLink, DeciderProcess, decider_command
from coordinator.service.registration import add_services
from coordinator.service.servicer import AdminServicer, Blocking, CoordinatorServicer
from coordinator.service.signing import SigningKeys
from coordinator.service.work_loop import WorkLoop
from coordinator.store.aio import HotStore, hot_store_for
from coordinator.store.base import Store, open_store
from coordinator.store.types import Role

log = logging.getLogger("autoswarm.coordinator")

ADMIN_TOKEN_FILE = "admin.token"
BRANCH_DIR = "branch.git"
READY_FILE = "coordinator.json"  # written once serving: {"address": ..., "pid": ...}
MAINTENANCE_INTERVAL_S = 5.0  # lease expiry and queue top-up
RPC_WORKERS = 8
DECISION_WORKERS = 4  # they serialize on the core's lock: a few are enough to keep it busy
GIL_SWITCH_INTERVAL_S = 0.0005
PLAN_DUTY_FACTOR = 4.0  # a policy pass waits at least this many times its own duration before the next
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SHUTDOWN_GRACE_S = 10.0
SECONDARY_START_S = 60.0  # how long the primary waits for another serving process to listen
REVOCATION_POLL_S = 1.0  # how soon a secondary serving process sees a revocation made elsewhere


@dataclass
class ServerOptions:
    listen: str = "127.0.0.1:50051"
    store_url: str = ""
    data_dir: Path = Path("coordinator-data")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int = 0
    branch_name: str = "global"
    mirror_url: str = ""
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    # "process": judging, merging, planning and proposing run in a child process (decider.py);
    # "inline": in this process's worker threads (simpler, for small swarms and debugging).
    decisions: str = "process"
    log_json: bool = False
    # Serving processes sharing the port (SO_REUSEPORT, Linux): each has its own GIL. The first
    # (primary) reconciles, runs the decider, expires leases and serves metrics; the others only
    # answer RPCs. Needs decisions="process".
    serving_processes: int = 1
    secondary: bool = False  # set on the processes the primary starts
    event_loop: str = "auto"  # auto | uvloop | asyncio (service/event_loop.py)
    grpc_servers: int = 64  # gRPC servers per serving process on the same port (accept queues; see start)


def _refuse_a_taken_port(listen: str) -> None:
    """With SO_REUSEPORT a second coordinator could bind a port another one listens on and take
    half its connections; refuse instead, as a plain bind would. Port 0 picks a free one."""
    host, _, port_text = listen.rpartition(":")
    port = int(port_text) if port_text.isdigit() else 0
    if port == 0:
        return
    host = host.strip("[]") or None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closing old socket is fine
            try:
                probe.bind(address)
            except OSError as exc:
                raise RuntimeError(f"could not listen on {listen}: {exc.strerror} (another process serves it)") from exc
        return


def initial_branch_files() -> dict[str, str]:
    """The trainer's train.py and profiles.json shipped with this package: the branch's root commit."""
    trainer_dir = Path(__file__).resolve().parent.parent / "trainer"
    return {
        "train.py": (trainer_dir / "train.py").read_text(),
        "profiles.json": (trainer_dir / "profiles.json").read_text(),
    }


@functools.lru_cache(maxsize=1)
def _shipped_profiles() -> Any:
    from trainer.profiles import load_profiles

    return load_profiles()  # parsed once, not once per registration


def classify_fingerprint(hardware: dict[str, Any], requested_class: str) -> str:
    """Class of a volunteer from its fingerprint; a requested class must exist and fit the device type."""
    from trainer.hardware import DeviceInfo, classify
    from trainer.profiles import DeviceType

    profiles = _shipped_profiles()
    device_type = DeviceType(hardware.get("device_type") or "cpu")
    if requested_class and requested_class != "auto":
        if requested_class not in profiles:
            from coordinator.store.errors import InvalidValueError

            raise InvalidValueError(f"unknown hardware class {requested_class!r}; known: {', '.join(profiles.names())}")
        return requested_class
    capability = hardware.get("compute_capability") or ""
    info = DeviceInfo(
        device_type=device_type,
        name=hardware.get("device_name", ""),
        memory_gib=int(hardware.get("memory_bytes", 0) or 0) / 2**30,
        compute_capability=tuple(int(x) for x in capability.split(".")) if capability else None,  # type: ignore[arg-type]
    )
    return classify(info, profiles).name


def ensure_admin_token(store: Store, data_dir: Path) -> str | None:
    """Create an admin principal on first start and write its token (0600); None if one exists."""
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return None
    token = new_token()
    store.create_principal(Role.ADMIN, owner="operator", display_name="operator", token_hash=hash_token(token))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


class CoordinatorServer:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        data_dir = Path(options.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        store_url = options.store_url or f"sqlite:///{data_dir / 'state.sqlite'}"
        self.store_url = store_url
        self.store = open_store(store_url)
        self.branch = GlobalBranch.open(data_dir / BRANCH_DIR, options.branch_name, initial_branch_files())
        self.signer = SigningKeys.load_or_create(data_dir)
        swarm = options.swarm
        if not swarm.data_manifest_id:
            from shared_data.manifests import get_manifest

            swarm = SwarmConfig(**{**swarm.__dict__, "data_manifest_id": get_manifest(swarm.dataset).manifest_id})
        self.core = CoordinatorCore(self.store, self.branch, self.signer, swarm)
        self.mirror: BranchMirror | None = None
        if options.mirror_url:
            self.mirror = BranchMirror(self.branch, options.mirror_url)
            self.core.on_branch_moved = self.mirror.request
        if not options.secondary:
            ensure_admin_token(self.store, data_dir)
        if options.decisions not in ("process", "inline"):
            raise ValueError(f"decisions must be 'process' or 'inline', not {options.decisions!r}")
        if options.serving_processes < 1 or (options.serving_processes > 1 and options.decisions != "process"):
            raise ValueError("several serving processes need decisions in their own process (--decisions process)")
        self.decider: DeciderLink | None = None
        self.decider_process: DeciderProcess | None = None
        if options.decisions == "process":
            self.decider = DeciderLink(data_dir)
            self.core.delegate = self.decider
            if not options.secondary:
                self.decider_process = DeciderProcess(
                    decider_command(store_url, data_dir, options.branch_name, swarm, options.log_json)
                )
        self.secondaries: list[subprocess.Popen[bytes]] = []
        self._counted = (0, 0)  # merges and reverts the decider had made at the last look
        self._revocation_epoch = ""
        self._mirrored_head = ""
        # Store calls are mostly client-side Python (redis-py) under one GIL: a few threads
        # overlap the round trips; many more only contend (measured: 4-8 threads serve the most
        # lease extensions per second, 48 a third fewer at 6x the latency).
        self.run_blocking = Blocking(RPC_WORKERS)
        self.run_decisions = Blocking(DECISION_WORKERS, name="decide")  # calls that take the core's lock
        self.cache = PrincipalCache()
        self.hot: HotStore | None = None  # the volunteer loop's async store (start() makes it)
        self._servers: list[grpc.aio.Server] = []
        self._maintenance: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        if not self.options.secondary:
            self.core.reconcile()
            if self.decider_process is not None and self.decider is not None:
                earlier = self.decider.last_pass()  # a previous decider's counts are not ours
                self._counted = (int(earlier.get("merges", 0)), int(earlier.get("reverts", 0)))
                self.decider_process.start()  # its first pass judges what arrived meanwhile
                # Serve once it listens for wake-ups, so no early lease's wake-up is lost.
                decider = self.decider
                if not await asyncio.get_running_loop().run_in_executor(
                    None, decider.wait_for_reader, SECONDARY_START_S
                ):
                    log.error("the decider did not start in %.0f s; serving anyway", SECONDARY_START_S)
            else:
                self.core.plan()
        self._revocation_epoch = self.store.get_meta(META_REVOCATION_EPOCH) or ""
        self.hot = hot_store_for(self.store, self.run_blocking)  # made on the loop that uses it
        work = WorkLoop(self.core, self.hot, self.run_blocking, self.run_decisions)
        # grpc.aio accepts one call of each pre-registered method at a time per server, and each
        # accept is re-armed a turn or two of the event loop later: the method with most of the
        # calls (heartbeats) queues in gRPC when the loop is busy. Several servers on the same
        # port (SO_REUSEPORT spreads connections over them) accept in parallel, sharing
        # everything else; each pre-registers only the volunteer loop's methods, so its accept
        # loop stays cheap however many there are (registration.py). Measured on 2 cores at
        # 1,167 RPC/s: 64 servers held p99 <= 50 ms in ten runs of fifteen, 8 in none of six
        # (benchmarks/README.md).
        servers = self.options.grpc_servers
        reuse_port = self.options.serving_processes > 1 or servers > 1
        if reuse_port and not self.options.secondary:
            _refuse_a_taken_port(self.options.listen)  # port sharing would otherwise split it silently
        coordinator = CoordinatorServicer(
            self.core, work, self.run_blocking, self.cache, classify_fingerprint, self.run_decisions, self.decider
        )
        admin = AdminServicer(self.core, self.run_blocking, self.cache)
        health_servicer = health.aio.HealthServicer()
        credentials = None
        if self.options.tls_cert and self.options.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(Path(self.options.tls_key).read_bytes(), Path(self.options.tls_cert).read_bytes())]
            )
        listen = self.options.listen
        for index in range(servers):
            server = grpc.aio.server(
                interceptors=[AuthInterceptor(self.cache, self.hot)],
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.so_reuseport", 1 if reuse_port else 0),
                ],
            )
            add_services(server, [
                (pb_grpc.add_CoordinatorServicer_to_server, coordinator),
                (pb_grpc.add_AdminServicer_to_server, admin),
                (health_pb2_grpc.add_HealthServicer_to_server, health_servicer),
            ])  # every method served; only the volunteer loop's pre-registered (registration.py)
            port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
            if port == 0 and index > 0:  # no SO_REUSEPORT here: the servers started serve alone
                log.warning("could not add gRPC server %d on %s (port sharing unavailable?); serving with %d",
                            index + 1, listen, index)
                break
            if port == 0:
                raise RuntimeError(f"could not listen on {listen}")
            if index == 0:
                self.port = port
                listen = f"{listen.rsplit(':', 1)[0]}:{port}"  # the others join the first one's port
            await server.start()
            self._servers.append(server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("autoswarm.v1.Coordinator", health_pb2.HealthCheckResponse.SERVING)
        host = self.options.listen.rsplit(":", 1)[0]
        address = f"{host}:{self.port}"
        if self.options.secondary:
            self._maintenance = asyncio.create_task(self._maintain_secondary())
            log.info("serving process %d also listening on %s", os.getpid(), address)
            _freeze_startup_objects()
            return self.port
        if self.options.metrics_port:
            from coordinator.service.metrics import serve_metrics

            serve_metrics(self.options.metrics_port)
        self._maintenance = asyncio.create_task(self._maintain())
        if self.mirror is not None:
            self.mirror.start()
        for _ in range(self.options.serving_processes - 1):
            self.secondaries.append(await self._start_secondary(address))
        ready = {
            "address": address, "pid": os.getpid(), "public_key": self.signer.public_key.hex(),
            "decider_pid": self.decider_process.pid if self.decider_process is not None else None,
            "serving_pids": [os.getpid(), *(p.pid for p in self.secondaries)],
        }
        (Path(self.options.data_dir) / READY_FILE).write_text(json.dumps(ready))
        log.info("listening on %s (store %s, head %s)", address, type(self.store).__name__, self.branch.head()[:10])
        _freeze_startup_objects()
        return self.port

    async def _maintain(self) -> None:
        from coordinator.service.metrics import METRICS

        plan_due = 0.0
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                expired = await self.run_blocking(self.core.expire)
                if expired:
                    log.info("expired %d lease(s); their units are leasable again", len(expired))
                await self._follow_other_processes()
                if self.decider_process is not None:
                    self.decider_process.ensure_running()
                    await self._supervise_secondaries()
                    self._follow_head()
                    self._count_decisions()
                    if self.options.metrics_port:  # the backlog, counted up to 1,000 (a store read)
                        METRICS.undecided_results.set(await self.run_blocking(self.core.undecided_results, 1000))
                    continue
                if time.monotonic() < plan_due:
                    continue
                started = time.monotonic()
                await self.run_decisions(self.core.plan)
                took_s = time.monotonic() - started
                # A policy pass holds the core's decision lock (reports wait on it): a slow one
                # is run less often, so it never takes more than 1/PLAN_DUTY_FACTOR of the time.
                plan_due = time.monotonic() + max(0.0, (PLAN_DUTY_FACTOR - 1) * took_s - MAINTENANCE_INTERVAL_S)
                if took_s > MAINTENANCE_INTERVAL_S:
                    log.warning("policy pass took %.1f s; the next one in %.0f s", took_s, plan_due - time.monotonic())
            except Exception:
                log.exception("maintenance failed")

    async def _start_secondary(self, address: str) -> subprocess.Popen[bytes]:
        """Another serving process on the same port, with these options (see serve_secondary);
        returns once it listens (its first line on stdout), so the ready file means all do."""
        options = dataclasses.replace(self.options, listen=address, secondary=True, metrics_port=0, mirror_url="")
        encoded = json.dumps(
            {**dataclasses.asdict(options), "data_dir": str(options.data_dir),
             "tls_cert": str(options.tls_cert or ""), "tls_key": str(options.tls_key or "")},
            default=dict,
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "coordinator.server", encoded], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, process.stdout.readline), SECONDARY_START_S
            )
        except TimeoutError:
            log.error("serving process %d did not start listening in %.0f s", process.pid, SECONDARY_START_S)
        log.info("serving process %d started", process.pid)
        return process

    async def _supervise_secondaries(self) -> None:
        for index, process in enumerate(self.secondaries):
            if process.poll() is not None:
                log.error("serving process %d exited with %s; restarting it", process.pid, process.returncode)
                address = f"{self.options.listen.rsplit(':', 1)[0]}:{self.port}"
                self.secondaries[index] = await self._start_secondary(address)

    async def _maintain_secondary(self) -> None:
        """A secondary follows revocations and key rotations, and exits when the primary does
        (its stdin closes)."""
        loop = asyncio.get_running_loop()
        gone = loop.run_in_executor(None, sys.stdin.buffer.read)
        while not gone.done():
            await asyncio.sleep(REVOCATION_POLL_S)
            try:
                await self._follow_other_processes()
            except Exception:
                log.exception("maintenance failed")
        log.info("primary serving process gone: exiting")
        os.kill(os.getpid(), signal.SIGTERM)

    async def _follow_other_processes(self) -> None:
        """What another serving process changed: a revocation (forget cached principals and
        results) or a key rotation (sign with the new key). The store is read through the async
        store: a blocking read on the loop would stall every call for a Redis fsync."""
        if self.signer.reload_if_changed():
            log.info("signing key changed on disk (rotated elsewhere): now signing with %s", self.signer.key_id[:16])
        assert self.hot is not None
        epoch = await self.hot.get_meta(META_REVOCATION_EPOCH) or ""
        if epoch != self._revocation_epoch:
            self._revocation_epoch = epoch
            self.cache.invalidate()
            self.core.view.forget_results()

    def _count_decisions(self) -> None:
        """Merges and reverts happen in the decider: count them into this process's metrics."""
        from coordinator.service.metrics import METRICS

        assert self.decider is not None
        record = self.decider.last_pass()
        merges, reverts = int(record.get("merges", 0)), int(record.get("reverts", 0))
        seen_merges, seen_reverts = self._counted
        # A restarted decider counts from zero again: then all of its count is new.
        METRICS.merges.inc(merges - seen_merges if merges >= seen_merges else merges)
        METRICS.reverts.inc(reverts - seen_reverts if reverts >= seen_reverts else reverts)
        self._counted = (merges, reverts)

    def _follow_head(self) -> None:
        """The decider merges in its own process: mirror the branch when its head moves."""
        head = self.branch.head()
        if head != self._mirrored_head:
            self._mirrored_head = head
            if self.mirror is not None:
                self.mirror.request(head)

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
        await asyncio.gather(*(server.stop(grace_s) for server in self._servers))
        for process in self.secondaries:
            if process.stdin is not None:
                process.stdin.close()  # EOF ends its stdin watch, so its own shutdown can finish
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.secondaries:
            try:
                await asyncio.get_running_loop().run_in_executor(None, process.wait, grace_s + 5)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.decider_process is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.decider_process.stop)
        if self.decider is not None:
            self.decider.close()
        if self.hot is not None:
            await self.hot.close()
        self.run_blocking.shutdown()
        self.run_decisions.shutdown()
        if self.mirror is not None:
            self.mirror.stop()
        self.store.close()

    async def serve_forever(self) -> None:
        await self.start()
        print(f"listening on {self.options.listen.rsplit(':', 1)[0]}:{self.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing in-flight calls")
        await self.stop()


def _freeze_startup_objects() -> None:
    """Move everything made while starting (modules, protobuf descriptors, gRPC, the core) out of
    the cyclic collector's reach: it lives as long as the process, and every full collection
    would scan it again. Measured in a serving process under load: full collections of ~100,000
    objects paused the event loop 50-110 ms every 5-10 s; ~94,000 of them were startup objects."""
    gc.collect()
    gc.freeze()
    log.info("froze %d startup objects out of the garbage collector's scans", gc.get_freeze_count())


def serve(options: ServerOptions) -> None:
    if options.decisions == "inline":
        # Policy passes and judging then run in worker threads; at the default 5 ms switch
        # interval a CPU-bound one holds the GIL that long each time the event loop asks for it.
        # Measured on 2 cores: a no-op health server with one busy thread beside it served 419
        # RPC/s at 5 ms and 1,380 at 0.5 ms (3,307 with no busy thread). With the decider in its
        # own process the workers only wait on the store, and the default interval serves more
        # (benchmarks/README.md).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    event_loop.run(CoordinatorServer(options).serve_forever(), options.event_loop)


def serve_secondary(encoded: str) -> None:
    """Entry point of a secondary serving process (started by the primary, never by hand)."""
    raw = json.loads(encoded)
    raw["swarm"] = SwarmConfig(**raw["swarm"])
    raw["data_dir"] = Path(raw["data_dir"])
    raw["tls_cert"] = Path(raw["tls_cert"]) if raw["tls_cert"] else None
    raw["tls_key"] = Path(raw["tls_key"]) if raw["tls_key"] else None
    options = ServerOptions(**raw)
    from coordinator.cli.coordinator_cmd import configure_logging

    configure_logging(options.log_json)
    event_loop.run(CoordinatorServer(options).serve_forever(), options.event_loop)


if __name__ == "__main__":
    serve_secondary(sys.argv[1])
