"""Load benchmark: the coordinator over real gRPC, driven by simulated volunteers in separate processes.

    .venv/bin/python benchmarks/bench_load.py [--stores sqlite,redis] [--target-rps 1167,400] [--json-out FILE]
    .venv/bin/python benchmarks/bench_load.py --core-costs 500     # the core's calls in process, no gRPC

One run measures, with the same harness (N load processes, each one asyncio loop and one grpc.aio
channel, on the same cores as the servers):
  1. a no-op grpc.aio server (the standard health Check only) at its maximum rate (closed loop);
     `--noop both` adds the same server on the sync grpc.server;
  2. for each store (SQLite file, then a private redis-server with appendonly yes, appendfsync
     always): a real coordinator process with registered volunteers: its own health Check at the
     maximum rate, then the realistic mix (per volunteer a lease and a report every 300 s, a
     heartbeat every 60 s: per unit 1 lease, 5 ExtendLease, 1 report) at its maximum rate (closed
     loop), then open loop at each target rate (default 1,167 RPC/s: 50,000 volunteers).
Latency in open loop is measured from each call's scheduled start, so a server (or a client) that
falls behind shows up in p99 instead of silently lowering the offered rate.

The queue is seeded through the store API (a proposer's SubmitHypothesis costs ~0.2 s of git work
per hypothesis; three are still submitted over gRPC to time that path): every seeded hypothesis has
one queued candidate unit with real code, so leases find work.

Not a test: one run takes about 3.5 minutes and its figures depend on the machine and its other
load, which the report prints (load average, CPU used by processes outside the benchmark).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import datetime
import gc
import itertools
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "proto", REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import grpc  # noqa: E402
import psutil  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from autoswarm.v1 import swarm_pb2 as pb  # noqa: E402
from autoswarm.v1 import swarm_pb2_grpc as pb_grpc  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The traffic model (fixed: it is what the targets are stated in)
# ---------------------------------------------------------------------------------------------
RUN_PERIOD_S = 300.0  # one lease and one report per volunteer per budget
HEARTBEAT_PERIOD_S = 60.0
HEARTBEATS_PER_RUN = int(RUN_PERIOD_S / HEARTBEAT_PERIOD_S)  # 5
RPCS_PER_VOLUNTEER_S = (2 + HEARTBEATS_PER_RUN) / RUN_PERIOD_S  # 7 / 300
TARGET_VOLUNTEERS = 50_000
TARGET_RPS = round(TARGET_VOLUNTEERS * RPCS_PER_VOLUNTEER_S)  # 1,167 (~1,170)
TARGET_P99_MS = 50.0
HARDWARE_CLASS = "cpu"
BASELINE_BPB = 1.0  # scripted reports: N(BASELINE_BPB, REPORT_SIGMA_BPB), a plausible cpu-class spread
REPORT_SIGMA_BPB = 3e-3
TOKENIZER_HASH = "tok-loadbench"

# ---------------------------------------------------------------------------------------------
# Harness defaults (may be changed on the command line)
# ---------------------------------------------------------------------------------------------
LOAD_PROCESSES = 2  # one per core; each is an asyncio loop with CHANNELS connections
# Connections per load process. Real volunteers each hold their own; many per process let a
# server with several serving processes (SO_REUSEPORT spreads connections, not calls) see its
# load spread as a real swarm's would be. With 8 per process (16 in all) the kernel's split was
# often 5:11, and the busier serving process saturated while the other idled at a third of a core.
CHANNELS = 64
# Closed-loop calls in flight per load process. The maximum rate is where the server runs out
# of CPU: with 32 per process the coordinator's serving processes sat at a quarter of a core
# each, its calls waiting on Redis's fsync and gRPC's accept queue (the closed loop measured
# latency, not capacity); the no-op serves the same at 32 or 128 (2,111 and 2,089 RPC/s).
CONCURRENCY = 128
VOLUNTEERS = 2000  # registered volunteers; each calls about every VOLUNTEERS / rate seconds
VOLUNTEERS_PER_OWNER = 4
MAX_S = 8.0  # measured seconds of each closed-loop phase (after WARMUP_S)
RATE_S = 15.0  # measured seconds of each open-loop phase (after WARMUP_S)
SETTLE_TIMEOUT_S = 300.0  # the longest wait for the decider to judge every report before a phase
HEALTH_S = 4.0  # measured seconds of the coordinator's own health Check (interceptor, no store)
WARMUP_S = 2.0
RPC_TIMEOUT_S = 10.0
MAX_OUTSTANDING = 4000  # open loop: arrivals beyond this many calls in flight are counted as dropped
GRPC_SUBMITS = 3  # hypotheses submitted over gRPC by a proposer token (timed, not needed for the queue)


# Written as sitecustomize.py on the coordinator's PYTHONPATH by --profile-dir. Two profilers, both
# rewriting their files every second so nothing depends on a clean exit:
#   stacks-PID.txt: every thread's stack every few ms (wall clock, so waits on locks and fsync show);
#               collapsed form, "thread;outer;...;inner count";
#   thread-PID-N.prof: cProfile of each thread (the event loop and the core's workers), for pstats.
PROFILE_HOOK = """
import collections, os, sys, threading, time
_out = os.path.join(os.environ["LOADBENCH_PROFILE_DIR"], f"stacks-{os.getpid()}.txt")  # server and decider
_interval_s = float(os.environ.get("LOADBENCH_PROFILE_INTERVAL_S", "0.005"))
def _sample():
    counts = collections.Counter()
    me = threading.get_ident()
    last_write = time.monotonic()
    while True:
        time.sleep(_interval_s)
        names = {t.ident: t.name.split("_")[0] for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{os.path.basename(code.co_filename)}:{code.co_name}")
                frame = frame.f_back
            counts[";".join([names.get(ident, "?")] + stack[::-1])] += 1
        if time.monotonic() - last_write > 1.0:
            with open(_out + ".tmp", "w") as handle:
                handle.writelines(f"{key} {n}\\n" for key, n in counts.most_common())
            os.replace(_out + ".tmp", _out)
            last_write = time.monotonic()
import cProfile, marshal
_profiles = []
def _dump_profiles():
    while True:
        time.sleep(1.0)
        for index, profile in enumerate(list(_profiles)):
            profile.snapshot_stats()
            with open(os.path.join(os.path.dirname(_out), f"thread-{os.getpid()}-{index}.prof"), "wb") as handle:
                marshal.dump(profile.stats, handle)
def _start_profile():
    profile = cProfile.Profile()
    _profiles.append(profile)
    profile.enable()
_run = threading.Thread.run
def _profiled_run(self):
    if self.name.startswith("loadbench-"):
        return _run(self)
    _start_profile()
    _run(self)
if os.environ.get("LOADBENCH_PROFILE_MODE") == "cprofile":
    threading.Thread.run = _profiled_run
    _start_profile()
    threading.Thread(target=_dump_profiles, name="loadbench-dumper", daemon=True).start()
else:
    threading.Thread(target=_sample, name="loadbench-sampler", daemon=True).start()
"""

# ---------------------------------------------------------------------------------------------
# Servers: the no-op baseline and a private redis-server
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_noop(kind: str, port_file: Path, workers: int) -> None:
    """Run a health-only server until SIGTERM: `aio` (grpc.aio) or `sync` (thread pool server)."""
    from concurrent import futures

    from grpc_health.v1 import health

    if kind == "aio":

        async def main() -> None:
            server = grpc.aio.server()
            servicer = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            port_file.write_text(str(port))
            await server.wait_for_termination()  # SIGTERM's default action ends the process

        asyncio.run(main())
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    sync_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(sync_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sync_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port_file.write_text(str(port))
    server.wait_for_termination()  # SIGTERM's default action ends the process


@dataclass
class ChildServer:
    """A server child process and where it listens."""

    proc: subprocess.Popen[bytes]
    address: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_noop(kind: str, scratch: Path, workers: int = 16) -> ChildServer:
    port_file = scratch / f"noop-{kind}.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-noop", kind, "--port-file", str(port_file), "--noop-workers", str(workers)],
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"no-op {kind} server did not start")
        time.sleep(0.05)
    return ChildServer(proc, f"127.0.0.1:{port_file.read_text().strip()}")


def start_redis(directory: Path) -> ChildServer:
    """redis-server on a free port with the durability the Redis store assumes (AOF, fsync always)."""
    import redis

    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # a probed port can be taken before redis binds it
        port = free_port()
        proc = subprocess.Popen(
            [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return ChildServer(proc, f"127.0.0.1:{port}")
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        proc.kill()
        proc.wait()
    raise RuntimeError("redis-server did not start")


# ---------------------------------------------------------------------------------------------
# Load processes
# ---------------------------------------------------------------------------------------------


@dataclass
class SimVolunteer:
    metadata: tuple[tuple[str, str], ...]
    stub: Any = None  # its connection (volunteers are spread over the process's channels)
    lease_id: str = ""
    manifest_id: str = ""
    budget_s: float = RUN_PERIOD_S
    heartbeats: int = 0
    calling: str = ""  # the method of the call in flight (errors are counted per method)


@dataclass
class PhaseSpec:
    mode: str  # "max" (closed loop) or "rate" (open loop)
    op: str  # "health" or "mix"
    start_at: float  # wall clock (time.time()) at which every process starts
    warmup_s: float
    duration_s: float
    concurrency: int = CONCURRENCY
    rate: float = 0.0  # open loop: calls per second of this process


@dataclass
class PhaseSamples:
    """What one load process saw in the measured window of a phase."""

    latencies_ms: dict[str, array.array] = field(default_factory=dict)  # method -> latencies
    errors: Counter[str] = field(default_factory=Counter)  # "method:CODE" -> count
    dropped: int = 0  # open loop: arrivals not sent (too many in flight or no idle volunteer)
    unfinished: int = 0  # open loop: calls still in flight when the phase ended
    max_send_lag_ms: float = 0.0  # open loop: how late the dispatcher sent a call
    window_s: float = 0.0
    client_cpu_s: float = 0.0

    def add(self, method: str, latency_ms: float) -> None:
        self.latencies_ms.setdefault(method, array.array("d")).append(latency_ms)


class LoadProcess:
    """The body of one load process: volunteers, one channel, phases on command."""

    def __init__(self, conn: Connection, address: str, seed: int) -> None:
        self.conn = conn
        self.address = address
        self.rng = random.Random(seed)
        self.idle: deque[SimVolunteer] = deque()

    async def serve(self) -> None:
        options = [
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own per channel
        ]
        async with contextlib.AsyncExitStack() as stack:
            channels = [
                await stack.enter_async_context(grpc.aio.insecure_channel(self.address, options=options))
                for _ in range(CHANNELS)
            ]
            self.stubs = [pb_grpc.CoordinatorStub(channel) for channel in channels]
            self.healths = itertools.cycle([health_pb2_grpc.HealthStub(channel) for channel in channels])
            self.stub = self.stubs[0]
            loop = asyncio.get_running_loop()
            while True:
                command, payload = await loop.run_in_executor(None, self.conn.recv)
                if command == "stop":
                    return
                if command == "register":
                    self.conn.send(await self.register(*payload))
                elif command == "prime":
                    self.conn.send(await self.prime())
                elif command == "phase":
                    self.conn.send(await self.phase(payload))

    async def register(self, first: int, count: int) -> float:
        """Register volunteers first..first+count-1 over gRPC; returns the seconds it took."""
        from coordinator_proc import fingerprint

        started = time.perf_counter()
        hardware = fingerprint()
        gate = asyncio.Semaphore(16)

        async def one(index: int) -> None:
            request = pb.RegisterVolunteerRequest(
                hardware=hardware, requested_class=HARDWARE_CLASS, owner=f"owner-{index // VOLUNTEERS_PER_OWNER}",
                display_name=f"loadbench-{index}",
            )
            async with gate:
                response = await self.stub.RegisterVolunteer(request, timeout=60)
            self.idle.append(
                SimVolunteer((("authorization", f"Bearer {response.token}"),), self.stubs[index % len(self.stubs)])
            )

        await asyncio.gather(*(one(i) for i in range(first, first + count)))
        self.rng.shuffle(self.idle)
        return time.perf_counter() - started

    async def prime(self) -> int:
        """Put each volunteer at a uniformly random point of its run (steady state), so the
        measured mix is 1 lease : 5 heartbeats : 1 report from the first second; returns leases taken."""
        gate = asyncio.Semaphore(16)
        volunteers = list(self.idle)

        async def one(v: SimVolunteer) -> int:
            position = self.rng.randrange(2 + HEARTBEATS_PER_RUN)  # 0: idle, next call leases
            if position == 0:
                return 0
            async with gate:
                await self.mix_call(v)
            v.heartbeats = position - 1
            return 1 if v.lease_id else 0

        return sum(await asyncio.gather(*(one(v) for v in volunteers)))

    # -- one call -------------------------------------------------------------------------------

    async def call(self, volunteer: SimVolunteer | None) -> str:
        """One RPC (a health Check without a volunteer); returns the method label it measured."""
        if volunteer is None:
            await next(self.healths).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
            return "Check"
        try:
            return await self.mix_call(volunteer)
        finally:
            self.idle.append(volunteer)

    async def mix_call(self, v: SimVolunteer) -> str:
        """The volunteer's next step: lease when idle, heartbeat while running, report at the end."""
        if not v.lease_id:
            v.calling = "LeaseWork"
            response = await v.stub.LeaseWork(
                pb.LeaseWorkRequest(hardware_class=HARDWARE_CLASS), metadata=v.metadata, timeout=RPC_TIMEOUT_S
            )
            if not response.HasField("unit"):
                return "LeaseWork(miss)"
            unit = pb.WorkUnit.FromString(response.unit.work_unit)
            v.lease_id, v.manifest_id, v.heartbeats = unit.lease_id, unit.settings.data_manifest_id, 0
            v.budget_s = unit.settings.budget_s
            return "LeaseWork"
        try:
            if v.heartbeats < HEARTBEATS_PER_RUN:
                v.heartbeats += 1
                v.calling = "ExtendLease"
                progress = pb.Progress(
                    step=v.heartbeats * 10, fraction_of_budget=v.heartbeats / (HEARTBEATS_PER_RUN + 1),
                    loss=4.0 - 0.3 * v.heartbeats,
                )
                await v.stub.ExtendLease(
                    pb.ExtendLeaseRequest(lease_id=v.lease_id, progress=progress), metadata=v.metadata,
                    timeout=RPC_TIMEOUT_S,
                )
                return "ExtendLease"
            result = pb.RunResult(
                status=pb.RUN_STATUS_OK, val_bpb=self.rng.gauss(BASELINE_BPB, REPORT_SIGMA_BPB),
                training_s=v.budget_s, total_s=v.budget_s + 20, num_steps=900, total_tokens=450_000_000,
                tokenizer_hash=TOKENIZER_HASH, data_manifest_id=v.manifest_id, attention_backend="sdpa",
                peak_memory_mb=1200.0, num_params_m=11.5,
            )
            lease_id, v.lease_id = v.lease_id, ""
            v.calling = "ReportResult"
            await v.stub.ReportResult(
                pb.ReportResultRequest(lease_id=lease_id, result=result), metadata=v.metadata, timeout=RPC_TIMEOUT_S
            )
            return "ReportResult"
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                v.lease_id = ""  # the lease is gone: lease again next time
            raise

    # -- phases ---------------------------------------------------------------------------------

    async def phase(self, spec: PhaseSpec) -> PhaseSamples:
        # Calls are timed from their scheduled start, so a pause of this process (its garbage
        # collector: 20-30 ms full collections measured here) would count as the server's latency.
        # Collect before a phase, not during it: a phase lasts seconds and leaves little garbage.
        gc.collect()
        gc.disable()
        try:
            return await self._phase(spec)
        finally:
            gc.enable()

    async def _phase(self, spec: PhaseSpec) -> PhaseSamples:
        loop = asyncio.get_running_loop()
        samples = PhaseSamples()
        cpu_before = time.process_time()
        start = loop.time() + max(0.0, spec.start_at - time.time())
        measure_from = start + spec.warmup_s
        measure_to = measure_from + spec.duration_s
        await asyncio.sleep(max(0.0, start - loop.time()))

        async def timed(scheduled: float, volunteer: SimVolunteer | None) -> None:
            try:
                method = await self.call(volunteer)
                done = loop.time()
                if spec.mode == "rate" and measure_from <= scheduled < measure_to:
                    samples.add(method, (done - scheduled) * 1000)
                elif spec.mode == "max" and measure_from <= done < measure_to:
                    samples.add(method, (done - scheduled) * 1000)
            except grpc.aio.AioRpcError as exc:
                in_window = measure_from <= (scheduled if spec.mode == "rate" else loop.time()) < measure_to
                if in_window:
                    method = volunteer.calling if volunteer is not None else "Check"
                    samples.errors[f"{method}:{exc.code().name}"] += 1

        if spec.mode == "max":

            async def worker() -> None:
                while loop.time() < measure_to:
                    if spec.op == "mix" and not self.idle:
                        await asyncio.sleep(0.001)
                        continue
                    await timed(loop.time(), self.idle.popleft() if spec.op == "mix" else None)

            await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
        else:
            in_flight: set[asyncio.Task[None]] = set()
            scheduled = start
            while scheduled < measure_to:
                now = loop.time()
                if scheduled > now:
                    await asyncio.sleep(scheduled - now)
                    now = loop.time()
                while scheduled <= now and scheduled < measure_to:
                    if scheduled >= measure_from:
                        samples.max_send_lag_ms = max(samples.max_send_lag_ms, (now - scheduled) * 1000)
                    if len(in_flight) >= MAX_OUTSTANDING or (spec.op == "mix" and not self.idle):
                        if scheduled >= measure_from:
                            samples.dropped += 1
                    else:
                        volunteer = self.idle.popleft() if spec.op == "mix" else None
                        task = asyncio.create_task(timed(scheduled, volunteer))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    scheduled += self.rng.expovariate(spec.rate)
            if in_flight:
                _, pending = await asyncio.wait(in_flight, timeout=RPC_TIMEOUT_S)
                samples.unfinished = len(pending)
                for task in pending:
                    task.cancel()
        samples.window_s = spec.duration_s
        samples.client_cpu_s = time.process_time() - cpu_before
        return samples


def _load_process_main(conn: Connection, address: str, seed: int) -> None:
    asyncio.run(LoadProcess(conn, address, seed).serve())


class LoadGenerator:
    """N load processes pointed at one server."""

    def __init__(self, address: str, processes: int) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited grpc state
        self.conns: list[Connection] = []
        self.procs = []
        for index in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=_load_process_main, args=(child, address, 1000 + index), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def register(self, volunteers: int) -> float:
        share = -(-volunteers // len(self.conns))
        for index, conn in enumerate(self.conns):
            first = index * share
            conn.send(("register", (first, max(0, min(share, volunteers - first)))))
        return max(conn.recv() for conn in self.conns)

    def prime(self) -> int:
        for conn in self.conns:
            conn.send(("prime", None))
        return sum(conn.recv() for conn in self.conns)

    def phase(self, spec: PhaseSpec) -> list[PhaseSamples]:
        for conn in self.conns:
            per_process = PhaseSpec(**{**spec.__dict__, "rate": spec.rate / len(self.conns)})
            conn.send(("phase", per_process))
        return [conn.recv() for conn in self.conns]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


# ---------------------------------------------------------------------------------------------
# Measurement and the report
# ---------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


class CpuMeter:
    """CPU seconds used by the benchmark's own processes, and by everything else on the machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def snapshot(self) -> dict[str, float]:
        times = psutil.cpu_times()
        out = {"machine_busy": sum(times) - times.idle - getattr(times, "iowait", 0.0), "wall": time.monotonic()}
        for name, proc in self.procs.items():
            try:
                cpu = proc.cpu_times()
                out[name] = cpu.user + cpu.system
            except psutil.Error:
                out[name] = 0.0
        return out


def summarize(label: str, spec: PhaseSpec, parts: list[PhaseSamples], cpu: dict[str, Any]) -> dict[str, Any]:
    by_method: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    for part in parts:
        for method, values in part.latencies_ms.items():
            by_method.setdefault(method, []).extend(values)
        errors.update(part.errors)
    everything = sorted(v for values in by_method.values() for v in values)
    window_s = parts[0].window_s
    result: dict[str, Any] = {
        "target": label,
        "mode": spec.mode,
        "offered_rps": round(spec.rate, 1) if spec.mode == "rate" else None,
        "concurrency": spec.concurrency * len(parts) if spec.mode == "max" else None,
        "achieved_rps": round(len(everything) / window_s, 1),
        "p50_ms": round(percentile(everything, 50), 2),
        "p99_ms": round(percentile(everything, 99), 2),
        "calls": len(everything),
        "errors": dict(errors),
        "dropped": sum(p.dropped for p in parts),
        "unfinished": sum(p.unfinished for p in parts),
        "max_send_lag_ms": round(max(p.max_send_lag_ms for p in parts), 1),
        "client_cpu_s": round(sum(p.client_cpu_s for p in parts), 2),
        "methods": {
            method: {
                "calls": len(values),
                "p50_ms": round(percentile(sorted(values), 50), 2),
                "p99_ms": round(percentile(sorted(values), 99), 2),
            }
            for method, values in sorted(by_method.items())
        },
        "cpu": cpu,
    }
    return result


class RedisCommandMeter:
    """Per-command calls and Redis's own execution time (INFO commandstats) over a phase, and the
    redis-server process's user and system CPU: where its share of the cores goes."""

    def __init__(self, address: str, pid: int) -> None:
        import redis

        host, port = address.rsplit(":", 1)
        self.client = redis.Redis(host=host, port=int(port))
        self.proc = psutil.Process(pid)

    def snapshot(self) -> dict[str, Any]:
        stats = self.client.info("commandstats")
        cpu = self.proc.cpu_times()
        return {
            "commands": {name.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for name, v in stats.items()},
            "user_s": cpu.user, "system_s": cpu.system, "wall": time.monotonic(),
        }

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], rpcs: int) -> dict[str, Any]:
        wall = after["wall"] - before["wall"]
        commands = {}
        for name, (calls, usec) in after["commands"].items():
            calls_before, usec_before = before["commands"].get(name, (0, 0))
            if calls > calls_before:
                commands[name] = {
                    "per_rpc": round((calls - calls_before) / max(1, rpcs), 2),
                    "us_per_call": round((usec - usec_before) / (calls - calls_before), 1),
                }
        executing_s = sum(
            after["commands"][n][1] - before["commands"].get(n, (0, 0))[1] for n in after["commands"]
        ) / 1e6
        return {
            "user_cores": round((after["user_s"] - before["user_s"]) / wall, 3),
            "system_cores": round((after["system_s"] - before["system_s"]) / wall, 3),
            # Time inside commands. A script's own commands count both under their names and in
            # its EVALSHA, so this can exceed the CPU it used: compare commands, not this total.
            "executing_cores": round(executing_s / wall, 3),
            "commands": dict(sorted(commands.items(), key=lambda kv: -kv[1]["per_rpc"])),
        }


def measure(
    label: str, gen: LoadGenerator, spec: PhaseSpec, meter: CpuMeter, redis_meter: RedisCommandMeter | None = None
) -> dict[str, Any]:
    redis_before = redis_meter.snapshot() if redis_meter else None
    before = meter.snapshot()
    parts = gen.phase(spec)
    after = meter.snapshot()
    redis_after = redis_meter.snapshot() if redis_meter else None
    wall = after["wall"] - before["wall"]
    ours = {name: after[name] - before[name] for name in meter.procs}
    client_cpu = sum(p.client_cpu_s for p in parts)
    server_cpu = sum(ours.values())
    calls = sum(len(v) for p in parts for v in p.latencies_ms.values())
    busy = after["machine_busy"] - before["machine_busy"]
    cpu = {
        "wall_s": round(wall, 1),
        "server_cores": {name: round(value / wall, 2) for name, value in ours.items()},
        "load_cores": round(client_cpu / wall, 2),
        "other_cores": round(max(0.0, busy - server_cpu - client_cpu) / wall, 2),
        "server_cpu_us_per_call": round(server_cpu / max(1, calls) * 1e6 * (spec.duration_s / wall), 0),
    }
    result = summarize(label, spec, parts, cpu)
    if redis_meter is not None:
        # Whole-phase counts (warm-up included), per measured RPC: a ratio, not an exact count.
        rpcs_in_phase = round(calls * (wall / spec.duration_s))
        result["redis"] = RedisCommandMeter.delta(redis_before, redis_after, rpcs_in_phase)  # type: ignore[arg-type]
    print(format_row(result), flush=True)
    return result


HEADER = (
    f"{'target':<16} {'mode':<10} {'offered':>8} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'errors':>6} {'dropped':>7} {'srv cores':>9} {'other':>6}  mix"
)


def format_row(r: dict[str, Any]) -> str:
    mode = "max" if r["mode"] == "max" else "open"
    if r["mode"] == "max":
        mode += f" c{r['concurrency']}"
    offered = "-" if r["offered_rps"] is None else f"{r['offered_rps']:.0f}"
    methods = r["methods"]
    mix = " ".join(f"{m.replace('ReportResult', 'Report').replace('LeaseWork', 'Lease')}={v['calls']}" for m, v in methods.items())
    return (
        f"{r['target']:<16} {mode:<10} {offered:>8} {r['achieved_rps']:>9.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
        f"{sum(r['errors'].values()):>6} {r['dropped']:>7} {sum(r['cpu']['server_cores'].values()):>9.2f} "
        f"{r['cpu']['other_cores']:>6.2f}  {mix}"
    )


def format_methods(r: dict[str, Any]) -> str:
    return "    " + "  ".join(
        f"{m}: p50 {v['p50_ms']:.1f} p99 {v['p99_ms']:.1f}" for m, v in r["methods"].items()
    )


# ---------------------------------------------------------------------------------------------
# Seeding the queue
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def fast_writes(store: Any, redis_address: str) -> Iterator[None]:
    """Bulk seeding without an fsync per write; the server's own settings are restored after."""
    if redis_address:
        import redis

        host, port = redis_address.rsplit(":", 1)
        client = redis.Redis(host=host, port=int(port))
        client.config_set("appendfsync", "no")
        try:
            yield
        finally:
            client.config_set("appendfsync", "always")
            client.close()
        return
    store._conn.execute("PRAGMA synchronous = OFF")  # this connection only; the coordinator's stays FULL
    try:
        yield
    finally:
        store._conn.execute("PRAGMA synchronous = FULL")


def seed_queue(store_url: str, data_dir: Path, hypotheses: int, redis_address: str) -> dict[str, float]:
    """`hypotheses` queued hypotheses, each with one candidate unit carrying its code."""
    from coordinator.branch import GlobalBranch
    from coordinator.server import BRANCH_DIR, initial_branch_files
    from coordinator.store.base import open_store
    from coordinator.store.types import Role

    started = time.perf_counter()
    branch = GlobalBranch.open(data_dir / BRANCH_DIR, "global", initial_branch_files())
    store = open_store(store_url)
    try:
        proposer = next(p for p in store.list_principals() if p.role == Role.PROPOSER)
        with fast_writes(store, redis_address):
            add_hypotheses(store, branch, hypotheses, proposer.principal_id)
    finally:
        store.close()
    return {"seeded_hypotheses": hypotheses, "seed_s": round(time.perf_counter() - started, 1)}


def add_hypotheses(store: Any, branch: Any, count: int, proposer_id: str) -> None:
    """Hypotheses that each change MATRIX_LR a little, with a queued candidate unit. One real
    patch (checked by git once) serves all of them; fingerprints keep them distinct."""
    from coordinator.store.types import Hypothesis, HypothesisSource, UnitKind, WorkUnit
    from trainer.constants import read_constants, rewrite_constants

    head = branch.head()
    files = branch.files_at(head)
    base_lr = float(read_constants(files["train.py"])["MATRIX_LR"])  # type: ignore[arg-type]
    changed = rewrite_constants(files["train.py"], {"MATRIX_LR": base_lr * 1.1})
    patch = branch.diff_files(head, {"train.py": changed})
    for index in range(count):
        hypothesis_id = f"hyp_bench{uuid.uuid4().hex[:15]}"
        literal = repr(round(base_lr * (1.0 + (index + 1) * 1e-5), 9))
        store.add_hypothesis(
            Hypothesis(
                hypothesis_id=hypothesis_id, title=f"MATRIX_LR {literal}", rationale="load benchmark",
                patch=patch, base_commit=head, source=HypothesisSource.AGENT,
                proposer_id=proposer_id, fingerprint=f"loadbench-{hypothesis_id}",
                constant_changes={"MATRIX_LR": literal},
            )
        )
        store.enqueue_unit(
            WorkUnit(
                unit_id=f"unit_bench{uuid.uuid4().hex[:15]}", kind=UnitKind.CANDIDATE,
                hardware_class=HARDWARE_CLASS, base_commit=head, train_py=changed,
                profiles_json=files["profiles.json"], hypothesis_id=hypothesis_id,
            )
        )


# ---------------------------------------------------------------------------------------------
# The core's own costs, in process (no gRPC): what each call costs as the store fills up
# ---------------------------------------------------------------------------------------------


def core_costs(store_kind: str, hypotheses: int, scratch: Path, cycles: int = 600) -> dict[str, Any]:
    """Times the policy pass with `hypotheses` open, then lease / extend / report cycles as
    results accumulate (median ms per call in each slice), then the pass again."""
    import statistics

    from coordinator.branch import GlobalBranch
    from coordinator.server import initial_branch_files
    from coordinator.service.auth import hash_token
    from coordinator.service.core import CoordinatorCore, SwarmConfig
    from coordinator.service.signing import SigningKeys
    from coordinator.service.work_loop import WorkLoop
    from coordinator.store.aio import hot_store_for
    from coordinator.store.base import open_store
    from coordinator.store.types import Role, RunMetrics, RunStatus

    directory = scratch / f"core-costs-{store_kind}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    redis_server = start_redis(directory / "redis") if store_kind == "redis" else None
    url = f"redis://{redis_server.address}/0?prefix=costs" if redis_server else f"sqlite:///{directory / 's.sqlite'}"
    store = open_store(url)
    out: dict[str, Any] = {"store": store_kind, "open_hypotheses": hypotheses, "slices": []}
    try:
        branch = GlobalBranch.open(directory / "branch.git", "global", initial_branch_files())
        core = CoordinatorCore(
            store, branch, SigningKeys.load_or_create(directory),
            SwarmConfig(budget_s=RUN_PERIOD_S, dataset="pydoc", data_manifest_id="m", proposer_enabled=False),
        )
        core.reconcile()
        volunteers = [
            store.create_principal(
                Role.VOLUNTEER, owner=f"o{i // VOLUNTEERS_PER_OWNER}", display_name=f"v{i}",
                token_hash=hash_token(f"costs-{i}"), hardware_class=HARDWARE_CLASS,
            )
            for i in range(400)
        ]
        proposer = store.create_principal(Role.PROPOSER, owner="p", display_name="p", token_hash=hash_token("p"))
        with fast_writes(store, redis_server.address if redis_server else ""):
            add_hypotheses(store, branch, hypotheses, proposer.principal_id)
        started = time.perf_counter()
        core.plan()
        out["plan_ms_first"] = round((time.perf_counter() - started) * 1000, 1)
        print(f"core costs, {store_kind}, {hypotheses} open hypotheses: first policy pass {out['plan_ms_first']:.0f} ms",
              flush=True)
        rng = random.Random(0)
        reported = 0
        loop = asyncio.new_event_loop()

        async def in_thread(fn: Any, *fn_args: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *fn_args)

        async def make_work_loop() -> WorkLoop:
            return WorkLoop(core, hot_store_for(store, in_thread), in_thread)  # decisions inline, as timed before

        work = loop.run_until_complete(make_work_loop())
        for slice_size in (cycles // 6, cycles // 3, cycles // 2):
            lease_s, extend_s, report_s = [], [], []
            for _ in range(slice_size):
                volunteer = volunteers[reported % len(volunteers)]
                t0 = time.perf_counter()
                grant = loop.run_until_complete(work.lease(volunteer, HARDWARE_CLASS, 0))
                t1 = time.perf_counter()
                if grant is None:
                    break
                loop.run_until_complete(work.heartbeat(volunteer, grant.lease.lease_id, 10, 0.1, 3.0))
                t2 = time.perf_counter()
                metrics = RunMetrics(
                    status=RunStatus.OK, val_bpb=rng.gauss(BASELINE_BPB, REPORT_SIGMA_BPB), tokenizer_hash="t",
                    data_manifest_id="m", training_s=RUN_PERIOD_S, total_s=RUN_PERIOD_S + 20,
                )
                loop.run_until_complete(work.report(volunteer, grant.lease.lease_id, metrics))
                t3 = time.perf_counter()
                lease_s.append(t1 - t0)
                extend_s.append(t2 - t1)
                report_s.append(t3 - t2)
                reported += 1
            if not report_s:
                break
            row = {
                "results": reported,
                "lease_ms": round(statistics.median(lease_s) * 1000, 2),
                "extend_ms": round(statistics.median(extend_s) * 1000, 2),
                "report_ms": round(statistics.median(report_s) * 1000, 2),
            }
            out["slices"].append(row)
            print(f"  up to {reported} results: median lease {row['lease_ms']} ms, extend {row['extend_ms']} ms, "
                  f"report {row['report_ms']} ms", flush=True)
        loop.run_until_complete(work.hot.close())
        loop.close()
        started = time.perf_counter()
        core.plan()
        out["plan_ms_after"] = round((time.perf_counter() - started) * 1000, 1)
        started = time.perf_counter()
        for _ in range(20):
            branch.head()
        out["branch_head_ms"] = round((time.perf_counter() - started) / 20 * 1000, 2)
        print(f"  policy pass after {reported} results: {out['plan_ms_after']:.0f} ms; "
              f"branch.head(): {out['branch_head_ms']} ms", flush=True)
    finally:
        store.close()
        if redis_server is not None:
            redis_server.stop()
    return out


# ---------------------------------------------------------------------------------------------
# One target after another
# ---------------------------------------------------------------------------------------------


def leases_needed(args: argparse.Namespace, max_rps_guess: float) -> int:
    """Units the phases will lease: 1 in 7 calls, plus a margin."""
    calls = max_rps_guess * (args.max_s + WARMUP_S) + sum(args.target_rps) * (args.rate_s + WARMUP_S)
    return int(calls / 7 * 1.3 + args.volunteers) + 200


def run_noop(args: argparse.Namespace, scratch: Path, kind: str) -> dict[str, Any]:
    server = start_noop(kind, scratch)
    gen = LoadGenerator(server.address, args.processes)
    try:
        meter = CpuMeter({"server": server.pid})
        spec = PhaseSpec("max", "health", time.time() + 1.0, WARMUP_S, args.max_s, args.concurrency)
        return measure(f"noop-{kind}", gen, spec, meter)
    finally:
        gen.close()
        server.stop()


def run_coordinator(args: argparse.Namespace, scratch: Path, store: str, baseline_rps: float) -> list[dict[str, Any]]:
    from coordinator_proc import coordinator_process

    data_dir = scratch / f"coordinator-{store}"
    shutil.rmtree(data_dir, ignore_errors=True)  # a kept --scratch must not carry state over
    shutil.rmtree(scratch / "redis", ignore_errors=True)
    redis_server: ChildServer | None = None
    if store == "redis":
        redis_server = start_redis(scratch / "redis")
        store_url = f"redis://{redis_server.address}/0?prefix=loadbench"
    else:
        store_url = f"sqlite:///{data_dir / 'state.sqlite'}"
    env: dict[str, str] = {}
    if args.profile_dir:
        hook_dir = scratch / "profile-hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(PROFILE_HOOK)
        profile_dir = Path(args.profile_dir).resolve() / store
        profile_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "PYTHONPATH": os.pathsep.join(str(p) for p in (hook_dir, REPO_ROOT, REPO_ROOT / "proto")),
            "LOADBENCH_PROFILE_DIR": str(profile_dir),
            "LOADBENCH_PROFILE_MODE": args.profile_mode,
        }
    coordinator = coordinator_process(
        data_dir, store_url, budget_s=RUN_PERIOD_S, extra=args.coordinator_args, env=env
    )
    coordinator.start()
    gen: LoadGenerator | None = None
    results: list[dict[str, Any]] = []
    try:
        setup: dict[str, Any] = {"store": store}
        with coordinator.admin() as admin:
            proposer_token = admin.create_token(pb.ROLE_PROPOSER, "loadbench-proposer").token
        with coordinator.client(proposer_token) as proposer:
            started = time.perf_counter()
            for index in range(GRPC_SUBMITS):
                proposer.submit(f"warmup {index}", constant_changes={"WARMDOWN_RATIO": repr(0.4 + 0.01 * index)})
            setup["grpc_submit_ms"] = round((time.perf_counter() - started) / GRPC_SUBMITS * 1000, 1)
        gen = LoadGenerator(coordinator.address, args.processes)
        setup["register_s"] = round(gen.register(args.volunteers), 1)
        setup["volunteers"] = args.volunteers
        seeded = args.hypotheses or leases_needed(args, baseline_rps * 0.5)
        setup.update(seed_queue(store_url, data_dir, seeded, redis_server.address if redis_server else ""))
        started = time.perf_counter()
        setup["primed_leases"] = gen.prime()
        setup["prime_s"] = round(time.perf_counter() - started, 1)
        print(f"{store}: {setup}", flush=True)
        pids = {"coordinator": coordinator.proc.pid}  # type: ignore[union-attr]
        ready = json.loads((data_dir / "coordinator.json").read_text())
        for index, pid in enumerate(ready.get("serving_pids", [])[1:], start=2):
            pids[f"serving-{index}"] = pid
        if ready.get("decider_pid"):
            pids["decider"] = ready["decider_pid"]  # nice +10: it gets what the RPCs leave
        if redis_server is not None:
            pids["redis"] = redis_server.pid
        meter = CpuMeter(pids)
        redis_meter = RedisCommandMeter(redis_server.address, redis_server.pid) if redis_server else None
        spec = PhaseSpec("max", "health", time.time() + 1.0, WARMUP_S, HEALTH_S, args.concurrency)
        results.append(measure(f"{store}-health", gen, spec, meter) | {"setup": setup})
        spec = PhaseSpec("max", "mix", time.time() + 1.0, WARMUP_S, args.max_s, args.concurrency)
        results.append(measure(store, gen, spec, meter, redis_meter) | {"setup": setup})
        print(format_methods(results[-1]), flush=True)
        for rate in args.target_rps:
            # A maximum-rate phase leaves reports the decider has not judged yet; judging that
            # backlog during the next phase would measure the recovery from overload, not the
            # steady state at this rate.
            started = time.perf_counter()
            with coordinator.admin() as admin:
                backlog = admin.status().undecided_results
            coordinator.settle(timeout_s=SETTLE_TIMEOUT_S)
            settled_s = round(time.perf_counter() - started, 1)
            print(f"  {backlog} reports awaited judgement; judged in {settled_s} s", flush=True)
            spec = PhaseSpec("rate", "mix", time.time() + 1.0, WARMUP_S, args.rate_s, rate=rate)
            results.append(
                measure(store, gen, spec, meter, redis_meter)
                | {"setup": setup, "backlog": backlog, "settled_s": settled_s}
            )
            print(format_methods(results[-1]), flush=True)
        return results
    finally:
        if gen is not None:
            gen.close()
        coordinator.kill9()  # a throwaway process; a graceful stop would wait for calls still queued
        if redis_server is not None:
            redis_server.stop()


def machine_conditions() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis")
    parser.add_argument("--target-rps", type=lambda text: [float(x) for x in text.split(",")], default=[float(TARGET_RPS)],
                        help="open-loop rates, comma-separated (default: 50,000 volunteers' traffic)")
    parser.add_argument("--processes", type=int, default=LOAD_PROCESSES, help="load processes")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="closed-loop calls in flight per process")
    parser.add_argument("--volunteers", type=int, default=VOLUNTEERS)
    parser.add_argument("--hypotheses", type=int, default=0, help="queued hypotheses to seed (0: enough for the run)")
    parser.add_argument("--max-s", type=float, default=MAX_S)
    parser.add_argument("--rate-s", type=float, default=RATE_S)
    parser.add_argument("--noop", default="aio", help="no-op servers to measure: aio, sync, both or none")
    parser.add_argument("--json-out", type=Path, default=None, help="default: benchmarks/results/load-<time>.json")
    parser.add_argument("--scratch", type=Path, default=None, help="keep data dirs and logs here (default: a temp dir)")
    parser.add_argument("--core-costs", type=int, default=0, metavar="HYPOTHESES",
                        help="instead: time the core in process with this many open hypotheses")
    parser.add_argument("--profile-dir", type=Path, default=None, help="cProfile the coordinator (all threads) into DIR/<store>/")
    parser.add_argument("--profile-mode", choices=["sample", "cprofile"], default="sample")
    parser.add_argument("--coordinator-args", nargs="*", action="extend", default=[],
                        help="extra `coordinator serve` arguments (repeat the option for several: --coordinator-args=--a=1 --coordinator-args=--b=2)")
    parser.add_argument("--serve-noop", choices=["aio", "sync"], help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--noop-workers", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop:
        serve_noop(args.serve_noop, args.port_file, args.noop_workers)
        return 0
    if args.core_costs:
        with tempfile.TemporaryDirectory(prefix="bench-load-costs-") as scratch_dir:
            costs = [core_costs(s.strip(), args.core_costs, Path(scratch_dir)) for s in args.stores.split(",") if s.strip()]
        if args.json_out:
            args.json_out.write_text(json.dumps({"machine": machine_conditions(), "core_costs": costs}, indent=1) + "\n")
        return 0

    conditions = machine_conditions()
    print(f"machine: {conditions}", flush=True)
    print(HEADER, flush=True)
    results: list[dict[str, Any]] = []
    baseline_rps = 2000.0
    with contextlib.ExitStack() as stack:
        if args.scratch:
            scratch = args.scratch
            scratch.mkdir(parents=True, exist_ok=True)
        else:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-")))
        kinds = {"both": ["aio", "sync"], "none": []}.get(args.noop, [args.noop])
        for kind in kinds:
            results.append(run_noop(args, scratch, kind))
            if kind == "aio":
                baseline_rps = results[-1]["achieved_rps"]
        for store in [s.strip() for s in args.stores.split(",") if s.strip()]:
            results.extend(run_coordinator(args, scratch, store, baseline_rps))
    conditions["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": conditions,
        "settings": {
            "processes": args.processes, "concurrency_per_process": args.concurrency,
            "volunteers": args.volunteers, "target_rps": args.target_rps, "max_s": args.max_s,
            "rate_s": args.rate_s, "warmup_s": WARMUP_S, "coordinator_args": args.coordinator_args,
        },
        "results": results,
    }
    out = args.json_out or REPO_ROOT / "benchmarks" / "results" / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("---")
    noop = next((r for r in results if r["target"] == "noop-aio"), None)
    for r in results:
        if r["target"] in ("sqlite", "redis") and r["mode"] == "max" and noop:
            print(f"{r['target']}_max_vs_noop: {r['achieved_rps'] / noop['achieved_rps']:.2f}")
        if r["target"] in ("sqlite", "redis") and r["mode"] == "rate":
            held = r["achieved_rps"] >= 0.98 * r["offered_rps"] and r["p99_ms"] <= TARGET_P99_MS and not r["errors"]
            print(f"{r['target']}_held_{r['offered_rps']:.0f}: {held} ({r['achieved_rps']:.0f} RPC/s, p99 {r['p99_ms']:.1f} ms)")
    print(f"loadavg: {conditions['loadavg']} -> {conditions['loadavg_after']}")
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
