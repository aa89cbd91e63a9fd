"""The volunteer daemon: set up once, then lease -> verify -> run -> spool -> report, on every slot.

Set-up (every start):
1. identity: load it from the data dir, or detect the hardware and register (invite token when
   the swarm needs one); the token and the coordinator's public key are stored 0600;
2. trust: the coordinator's current key must be the pinned one, or endorsed by it (a rotation);
   anything else stops the volunteer with a loud message;
3. data: prepare the dataset and tokenizer the coordinator pins (download, verify, train the
   tokenizer once); a manifest or tokenizer other than the pinned one stops the volunteer;
4. sandbox: probe network isolation and say whether the trainer will be cut off;
5. recovery: results left in working directories by a crash are spooled; interrupted runs are
   released so the coordinator can reissue them at once.

Then one worker per slot (one per GPU with `--gpus`, one per Ray slot with `--ray`) loops, and a
deliverer thread drains the spool with backoff while the coordinator is away. The first SIGINT or
SIGTERM lets every run in progress finish and be reported; a second abandons them (kills the
trainers and releases their leases). Either way the daemon exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.client import CoordinatorClient, CoordinatorUnavailable
from coordinator.service.errors import UnauthenticatedError
from coordinator.store import errors as store_errors
from volunteer import trust
from volunteer.child import RESULT_FILE
from volunteer.display import Display, LogMode, describe_unit
from volunteer.identity import (
    Identity,
    IdentityError,
    ensure_private_dir,
    load_identity,
    save_identity,
)
from volunteer.machine import Machine, MachineError, detect_machine, select_gpus, slot_environment
from volunteer.monitor import (
    PID_FILE,
    SIGNED_UNIT_FILE,
    Ending,
    HeartbeatVerdict,
    Progress,
    RunOutcome,
    UnitJob,
    UnitMonitor,
    kill_deadline_s,
    kill_tree,
    result_to_pb,
)
from volunteer.sandbox import (
    NICE_INCREMENT,
    IsolationUnavailableError,
    NetworkIsolation,
    NetworkMode,
    ResourceLimits,
    default_limits,
    probe_network_isolation,
    scrub_env,
)
from volunteer.spool import Spool, SpoolDeliverer, SpoolEntry

log = logging.getLogger("autoswarm.volunteer")

WORK_DIR = "work"
DEFAULT_STARTUP_ALLOWANCE_S = 180.0  # imports, data, compile, warm-up and evaluation on top of 2x budget (as the runner)
DEFAULT_HEARTBEAT_INTERVAL_S = 30.0
DEFAULT_DRAIN_TIMEOUT_S = 120.0
CONNECT_BACKOFF_MIN_S = 1.0
CONNECT_BACKOFF_MAX_S = 60.0
RPC_TIMEOUT_S = 15.0

EXIT_OK = 0
EXIT_SETUP = 1  # could not set up (bad flags, no data, no hardware)
EXIT_TRUST = 3  # the coordinator's key changed without endorsement
EXIT_REVOKED = 4  # the coordinator no longer accepts this volunteer


class FatalError(RuntimeError):
    """Stop the volunteer: the message tells the owner what is wrong and what to do."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class VolunteerOptions:
    coordinator: str
    data_dir: Path
    invite: str = ""
    owner: str = ""
    display_name: str = ""
    hardware_class: str = "auto"
    gpus: str = ""
    max_runs: int = 0  # 0: no limit
    cache_dir: Path | None = None
    tls_ca: Path | None = None
    network: NetworkMode = NetworkMode.AUTO
    memory_limit_gb: float | None = None
    nice: int = NICE_INCREMENT
    startup_allowance_s: float = DEFAULT_STARTUP_ALLOWANCE_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    log_mode: LogMode = LogMode.HUMAN
    ray: str = ""  # "" (off), "auto", "local" or a Ray address
    ray_resource: str = "GPU"
    ray_slots: int = 0  # 0: as many as the cluster has of ray_resource


HeartbeatFn = Callable[[Progress], HeartbeatVerdict]
ProgressFn = Callable[[Progress], None]


class Executor(Protocol):
    """Runs one unit on one slot: locally (a sandboxed subprocess) or as a Ray task."""

    def slot_names(self) -> list[str]: ...

    def execute(
        self,
        slot: int,
        job: UnitJob,
        heartbeat: HeartbeatFn,
        on_progress: ProgressFn,
        abandon: threading.Event,
    ) -> RunOutcome: ...

    def close(self) -> None: ...


class LocalExecutor:
    """One sandboxed subprocess per slot on this machine, each pinned to its GPU."""

    def __init__(self, gpus: list[int | None]) -> None:
        self.gpus = gpus

    def slot_names(self) -> list[str]:
        return ["default devices" if gpu is None else f"GPU {gpu}" for gpu in self.gpus]

    def slot_env(self, slot: int) -> dict[str, str]:
        return slot_environment(self.gpus[slot])

    def execute(self, slot: int, job: UnitJob, heartbeat: HeartbeatFn, on_progress: ProgressFn,
                abandon: threading.Event) -> RunOutcome:
        job.env.update(self.slot_env(slot))
        return UnitMonitor(job, heartbeat, on_progress, abandon).run()

    def close(self) -> None:
        pass


class Backoff:
    def __init__(self, low_s: float = CONNECT_BACKOFF_MIN_S, high_s: float = CONNECT_BACKOFF_MAX_S) -> None:
        self.low_s, self.high_s, self.next_s = low_s, high_s, low_s

    def reset(self) -> None:
        self.next_s = self.low_s

    def take(self) -> float:
        wait_s = self.next_s * random.uniform(0.8, 1.2)
        self.next_s = min(self.high_s, self.next_s * 2)
        return wait_s


class Volunteer:
    def __init__(self, options: VolunteerOptions, display: Display | None = None) -> None:
        self.options = options
        self.display = display or Display(options.log_mode)
        self.data_dir = ensure_private_dir(Path(options.data_dir))
        self.work_dir = ensure_private_dir(self.data_dir / WORK_DIR)
        self.spool = Spool(self.data_dir)
        self.stopping = threading.Event()  # first signal: finish the current runs, lease nothing new
        self.abandon = threading.Event()  # second signal: kill the runs, release their leases
        self.identity: Identity | None = None
        self.settings = pb.SwarmSettings()
        self.machine: Machine | None = None
        self.isolation = NetworkIsolation((), "not probed")
        self.limits = ResourceLimits()
        self.executor: Executor | None = None
        self.client: CoordinatorClient | None = None
        self.deliverer: SpoolDeliverer | None = None
        self._key_lock = threading.Lock()
        self._runs_lock = threading.Lock()
        self._runs_claimed = 0
        self.runs_done = 0
        self.fatal: FatalError | None = None
        self.tokenizer_hash = ""
        self._heartbeat_failing: set[str] = set()
        self._signals = 0

    # -- clients --------------------------------------------------------------------------------

    def _open_client(self, token: str | None) -> CoordinatorClient:
        return CoordinatorClient(self.options.coordinator, token, tls_ca=self.options.tls_ca, timeout_s=RPC_TIMEOUT_S)

    def _wait_for(self, what: str, call: object) -> object:
        """Call until the coordinator answers (with backoff) or we are told to stop."""
        backoff = Backoff()
        warned = False
        while True:
            try:
                return call()  # type: ignore[operator]
            except (CoordinatorUnavailable, grpc.RpcError) as exc:
                wait_s = backoff.take()
                if not warned:
                    self.display.warn(f"the coordinator at {self.options.coordinator} is unreachable or failing "
                                      f"({what}): {_describe_error(exc)}; retrying with backoff")
                    warned = True
                if self.stopping.wait(wait_s):
                    raise FatalError("stopped while waiting for the coordinator", EXIT_OK) from None

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        options = self.options
        anonymous = self._open_client(None)
        try:
            config: pb.GetSwarmConfigResponse = self._wait_for("swarm config", anonymous.config)  # type: ignore[assignment]
            identity = self._load_identity()
            if identity is None:
                identity = self._register(anonymous, config)
            else:
                identity = self._check_key(identity, config)
        finally:
            anonymous.close()
        self.identity = identity
        self.settings = config.settings
        self.client = self._open_client(identity.token)
        self.display.info(f"volunteer {identity.volunteer_id} (owner {identity.owner or '-'}, class "
                          f"{identity.hardware_class}) of the swarm at {options.coordinator}; coordinator key "
                          f"{trust.fingerprint(identity.pinned_key)} pinned",
                          volunteer_id=identity.volunteer_id, hardware_class=identity.hardware_class)
        self._prepare_data()
        self._prepare_sandbox()
        self._recover()
        self.executor = self._make_executor()

    def _load_identity(self) -> Identity | None:
        try:
            identity = load_identity(self.data_dir)
        except IdentityError as exc:
            raise FatalError(str(exc)) from exc
        if identity is None:
            return None
        requested = self.options.hardware_class
        if requested not in ("", "auto") and requested != identity.hardware_class:
            raise FatalError(
                f"this data dir's volunteer is registered as class {identity.hardware_class!r}, not {requested!r}; "
                "use another --data-dir to run a second identity on another class")
        if identity.coordinator != self.options.coordinator:
            self.display.warn(f"registered with {identity.coordinator}, now talking to {self.options.coordinator}; "
                              "the pinned key decides whether it is the same swarm")
        return identity

    def _machine(self) -> Machine:
        if self.machine is None:
            try:
                self.machine = detect_machine(self.options.hardware_class)
            except MachineError as exc:
                raise FatalError(str(exc)) from exc
        return self.machine

    def _register(self, anonymous: CoordinatorClient, config: pb.GetSwarmConfigResponse) -> Identity:
        machine = self._machine()
        try:
            gpus = select_gpus(self.options.gpus, machine) if not self.options.ray else [None]
        except MachineError as exc:
            raise FatalError(str(exc)) from exc
        self.display.info(f"first run: detected {machine.describe()}; local class {machine.local_class} "
                          f"({machine.class_reason})")
        if not machine.class_exact:
            self.display.warn(f"this GPU is not in the class profiles: {machine.class_reason}")
        try:
            response = self._wait_for("registration", lambda: anonymous.register(
                machine.fingerprint(len(gpus)), owner=self.options.owner, invite_token=self.options.invite,
                requested_class=self.options.hardware_class, display_name=self.options.display_name))
        except (store_errors.PermissionDeniedError, store_errors.InviteError) as exc:
            raise FatalError(f"the coordinator refused registration: {exc}", EXIT_REVOKED) from exc
        except store_errors.StoreError as exc:
            hint = " (pass --owner NAME: the person or team this volunteer counts for)" if (
                "owner" in str(exc) and not self.options.owner) else ""
            raise FatalError(f"the coordinator refused registration: {exc}{hint}") from exc
        assert isinstance(response, pb.RegisterVolunteerResponse)
        key = bytes(response.coordinator_public_key)
        if key != bytes(config.coordinator_public_key):
            # Both came from the same coordinator within a second; a mismatch means a rotation raced us.
            key = trust.follow_key(bytes(config.coordinator_public_key), key, config.endorsements)
        now = time.time()
        identity = Identity(
            coordinator=self.options.coordinator, volunteer_id=response.volunteer_id, token=response.token,
            hardware_class=response.hardware_class, owner=self.options.owner, display_name=self.options.display_name,
            pinned_key_hex=key.hex(), pinned_unix_s=now, registered_unix_s=now,
        )
        save_identity(self.data_dir, identity)
        self.display.info(f"registered as {identity.volunteer_id}, class {identity.hardware_class}; identity saved "
                          f"to {self.data_dir} (0600)")
        return identity

    def _check_key(self, identity: Identity, config: pb.GetSwarmConfigResponse) -> Identity:
        presented = bytes(config.coordinator_public_key)
        try:
            key = trust.follow_key(identity.pinned_key, presented, config.endorsements)
        except trust.KeyChangedError as exc:
            raise FatalError(str(exc), EXIT_TRUST) from exc
        if key != identity.pinned_key:
            self.display.warn(f"the coordinator rotated its key: {trust.fingerprint(identity.pinned_key)} -> "
                              f"{trust.fingerprint(key)}, endorsed by the pinned key; pinning the new one")
            identity = identity.with_pinned_key(key)
            save_identity(self.data_dir, identity)
        return identity

    def refresh_key(self) -> bytes:
        """Fetch the coordinator's key again and follow an endorsed rotation (or stop the volunteer)."""
        assert self.client is not None and self.identity is not None
        with self._key_lock:
            config = self.client.config()
            self.identity = self._check_key(self.identity, config)
            self.settings = config.settings
            return self.identity.pinned_key

    def _prepare_data(self) -> None:
        from shared_data.prepare import DataNotReadyError, PrepareError, prepare

        settings = self.settings
        name = settings.dataset_name
        if not name:
            raise FatalError("the coordinator did not say which dataset it pins")
        self.display.info(f"preparing dataset {name} (download, verify, tokenizer) before taking work")
        try:
            prepared = prepare(name, self.options.cache_dir, progress=self.options.log_mode == LogMode.HUMAN)
        except (DataNotReadyError, PrepareError) as exc:
            raise FatalError(f"could not prepare dataset {name}: {exc}") from exc
        except Exception as exc:  # downloads: network errors, checksum mismatches after retries
            raise FatalError(f"could not prepare dataset {name}: {type(exc).__name__}: {exc}") from exc
        if settings.data_manifest_id and prepared.manifest_id != settings.data_manifest_id:
            raise FatalError(
                f"the coordinator pins {name} manifest {settings.data_manifest_id[:16]}, but this installation's is "
                f"{prepared.manifest_id[:16]}: install the autoswarm version (and, for pydoc, the Python version) "
                "the swarm uses")
        if settings.tokenizer_hash and prepared.tokenizer_hash != settings.tokenizer_hash:
            raise FatalError(
                f"the coordinator pins tokenizer {settings.tokenizer_hash[:12]}, but the one trained here is "
                f"{prepared.tokenizer_hash[:12]}: results would not compare, so this volunteer will not run")
        self.tokenizer_hash = prepared.tokenizer_hash
        self.display.info(f"dataset {name} ready: manifest {prepared.manifest_id[:16]}, tokenizer "
                          f"{prepared.tokenizer_hash[:12]}")
        self._prefetch_kernels()

    def _prefetch_kernels(self) -> None:
        machine = self._machine()
        if machine.device_type != "cuda" or not machine.compute_capability:
            return
        try:
            from trainer.attention_kernels import prefetch_fa3
            from trainer.profiles import load_profiles

            major, minor = (int(x) for x in machine.compute_capability.split("."))
            for line in prefetch_fa3(load_profiles().kernels_for((major, minor))):
                self.display.info(f"attention kernels: {line}")
        except Exception as exc:  # the harness falls back to another attention backend, loudly
            self.display.warn(f"could not prefetch Flash Attention 3 ({exc}); runs will use another backend")

    def _prepare_sandbox(self) -> None:
        try:
            self.isolation = probe_network_isolation(self.options.network)
        except IsolationUnavailableError as exc:
            raise FatalError(str(exc)) from exc
        if self.isolation.enabled:
            self.display.info(f"sandbox: {self.isolation.description}")
        else:
            self.display.warn(f"sandbox: {self.isolation.description}")
        device_type = self._machine().device_type
        self.limits = default_limits(device_type, self.options.memory_limit_gb, self.options.nice)
        self.display.info(f"sandbox: scrubbed environment (no tokens), limits: {self.limits.describe()}")

    def _recover(self) -> None:
        """Bring working directories left by a crash to a safe state: spool results, release the rest."""
        assert self.client is not None
        for unit_dir in sorted(p for p in self.work_dir.iterdir() if p.is_dir()):
            lease_id = unit_dir.name
            self._kill_leftover(unit_dir)
            result_path = unit_dir / RESULT_FILE
            if self.spool.contains(lease_id):
                pass  # spooled before the crash; only the directory was left
            elif result_path.exists() and (unit_dir / SIGNED_UNIT_FILE).exists():
                try:
                    signed = pb.SignedWorkUnit.FromString((unit_dir / SIGNED_UNIT_FILE).read_bytes())
                    unit = pb.WorkUnit.FromString(signed.work_unit)
                    raw = json.loads(result_path.read_text(encoding="utf-8"))
                    extra = {"volunteer_recovered": "true"}
                    self.spool.put(SpoolEntry.from_result(unit, result_to_pb(raw, extra)))
                    self.display.info(f"recovered the finished result of lease {lease_id} from its working directory")
                except (OSError, ValueError) as exc:
                    self.display.warn(f"could not recover {unit_dir}: {exc}")
                    self._release(lease_id, "the volunteer restarted and could not read the result")
            else:
                self._release(lease_id, "the volunteer restarted mid-run")
                self.display.info(f"released lease {lease_id}, interrupted by a restart")
            shutil.rmtree(unit_dir, ignore_errors=True)

    def _kill_leftover(self, unit_dir: Path) -> None:
        try:
            pid = int((unit_dir / PID_FILE).read_text())
            import psutil

            process = psutil.Process(pid)
            if any(str(unit_dir) in part for part in process.cmdline()):
                self.display.warn(f"killing a run left over from before the restart (pid {pid})")
                kill_tree(pid)
        except (OSError, ValueError, ImportError):
            return
        except Exception:  # psutil.NoSuchProcess, AccessDenied
            return

    def _release(self, lease_id: str, reason: str) -> None:
        assert self.client is not None
        try:
            self.client.release(lease_id, reason)
        except (CoordinatorUnavailable, store_errors.StoreError) as exc:
            log.info("release of %s not possible (%s); it will expire", lease_id, exc)

    def _make_executor(self) -> Executor:
        if self.options.ray:
            from volunteer.ray_pool import RayExecutor, RayPoolError

            try:
                executor = RayExecutor(self.options.ray, self.options.ray_resource, self.options.ray_slots,
                                       display=self.display, network=self.options.network.value)
            except RayPoolError as exc:
                raise FatalError(str(exc)) from exc
        else:
            try:
                executor = LocalExecutor(select_gpus(self.options.gpus, self._machine()))
            except MachineError as exc:
                raise FatalError(str(exc)) from exc
        self.display.info(f"slots: {', '.join(executor.slot_names())}")
        return executor

    # -- the loop -------------------------------------------------------------------------------

    def _claim_run(self) -> bool:
        with self._runs_lock:
            if self.options.max_runs and self._runs_claimed >= self.options.max_runs:
                return False
            self._runs_claimed += 1
            return True

    def _unclaim_run(self) -> None:
        with self._runs_lock:
            self._runs_claimed -= 1

    def _stop_all(self, fatal: FatalError) -> None:
        if self.fatal is None:
            self.fatal = fatal
            self.display.error(str(fatal))
        self.stopping.set()

    def _lease(self, slot: int) -> tuple[pb.SignedWorkUnit, pb.WorkUnit] | None:
        assert self.client is not None and self.identity is not None
        backoff = Backoff()
        warned = False
        while not self.stopping.is_set():
            try:
                response = self.client.lease(self.identity.hardware_class, slot)
            except CoordinatorUnavailable as exc:
                if not warned:
                    self.display.warn(f"the coordinator is unreachable ({exc}); retrying with backoff")
                    warned = True
                self.stopping.wait(backoff.take())
                continue
            except (store_errors.PermissionDeniedError, UnauthenticatedError, store_errors.NotFoundError) as exc:
                self._stop_all(FatalError(f"the coordinator no longer accepts this volunteer: {exc}", EXIT_REVOKED))
                return None
            except (store_errors.StoreError, grpc.RpcError) as exc:
                self.display.warn(f"lease refused: {_describe_error(exc)}")
                self.stopping.wait(backoff.take())
                continue
            if warned:
                self.display.info("the coordinator is reachable again")
                warned = False
            backoff.reset()
            if not response.HasField("unit"):
                self.stopping.wait(max(1.0, response.retry_after_s or 5.0))
                continue
            unit = self._verify(response.unit)
            if unit is not None:
                return response.unit, unit
        return None

    def _verify(self, signed: pb.SignedWorkUnit) -> pb.WorkUnit | None:
        """The unit when trustworthy; otherwise refuse it (and tell the coordinator) and return None."""
        assert self.identity is not None and self.client is not None
        expect = trust.Expectations(self.identity.volunteer_id, self.identity.hardware_class,
                                    self.settings.data_manifest_id)
        try:
            try:
                return trust.verify_unit(signed, self.identity.pinned_key, expect)
            except trust.UnknownSigningKeyError:
                # Perhaps the coordinator rotated its key since we last looked: follow an endorsement.
                self.refresh_key()
                return trust.verify_unit(signed, self.identity.pinned_key, expect)
        except FatalError as exc:
            self._stop_all(exc)
            reason = "the coordinator's key changed without an endorsement by the pinned key"
            self._refuse(trust.lease_id_of(bytes(signed.work_unit)), reason)
            return None
        except trust.UntrustedUnitError as exc:
            self.display.error(f"refused a work unit: {exc.reason}", lease_id=exc.lease_id)
            self._refuse(exc.lease_id, exc.reason)
            return None
        except (CoordinatorUnavailable, grpc.RpcError) as exc:
            self.display.warn(f"could not check the coordinator's key ({_describe_error(exc)}); skipping that unit")
            return None

    def _refuse(self, lease_id: str, reason: str) -> None:
        assert self.client is not None
        if not lease_id:
            self.display.warn("the refused unit carries no readable lease id; it will expire on its own")
            return
        try:
            self.client.refuse(lease_id, reason)
        except (CoordinatorUnavailable, store_errors.StoreError) as exc:
            self.display.warn(f"could not report the refusal of {lease_id} ({exc}); it will expire")

    def _heartbeat(self, lease_id: str, progress: Progress) -> HeartbeatVerdict:
        assert self.client is not None
        try:
            response = self.client.heartbeat(lease_id, progress.step, progress.fraction, progress.loss,
                                             progress.tokens_per_s)
        except (CoordinatorUnavailable, grpc.RpcError) as exc:
            # Keep training: the result waits in the spool. Say so once per run, not once per beat.
            if lease_id not in self._heartbeat_failing:
                self._heartbeat_failing.add(lease_id)
                self.display.warn(f"heartbeats for {lease_id} fail ({_describe_error(exc)}); the run goes on and "
                                  "its result will be delivered when the coordinator answers, if the lease lasts")
            return HeartbeatVerdict()
        except (store_errors.LeaseExpiredError, store_errors.NotFoundError, store_errors.PermissionDeniedError) as exc:
            return HeartbeatVerdict(cancel=True, reason=f"the lease is gone: {exc}")
        if lease_id in self._heartbeat_failing:
            self._heartbeat_failing.discard(lease_id)
            self.display.info(f"heartbeats for {lease_id} get through again")
        if response.cancel:
            return HeartbeatVerdict(cancel=True, reason="the coordinator no longer needs this unit")
        return HeartbeatVerdict()

    def _execute(self, slot: int, signed: pb.SignedWorkUnit, unit: pb.WorkUnit) -> None:
        assert self.executor is not None and self.identity is not None
        settings = unit.settings
        env = scrub_env(_os_environ(), secrets=[self.identity.token])
        job = UnitJob(
            signed=signed, unit=unit, unit_dir=self.work_dir / unit.lease_id, env=env,
            isolation=self.isolation, limits=self.limits,
            kill_after_s=kill_deadline_s(settings.budget_s, self.options.startup_allowance_s),
            heartbeat_interval_s=settings.heartbeat_interval_s or DEFAULT_HEARTBEAT_INTERVAL_S,
            cache_dir=self.options.cache_dir, expected_tokenizer_hash=settings.tokenizer_hash,
            pinned_key_hex=self.identity.pinned_key_hex,
        )
        self.display.run_started(slot, unit)
        outcome = self.executor.execute(
            slot, job,
            lambda progress: self._heartbeat(unit.lease_id, progress),
            lambda progress: self.display.progress(slot, unit, progress),
            self.abandon,
        )
        self.display.run_finished(slot, unit, outcome)
        if outcome.ending in (Ending.ABANDONED, Ending.CANCELLED):
            if outcome.ending == Ending.ABANDONED:
                self._release(unit.lease_id, "the volunteer was stopped by its owner")
                self.display.info(f"abandoned {describe_unit(unit)}; lease released")
            shutil.rmtree(job.unit_dir, ignore_errors=True)
            return
        self.spool.put(SpoolEntry.from_result(unit, outcome.result))
        shutil.rmtree(job.unit_dir, ignore_errors=True)
        with self._runs_lock:
            self.runs_done += 1
        if self.deliverer is not None:
            self.deliverer.wake()

    def _slot_loop(self, slot: int) -> None:
        try:
            while not self.stopping.is_set():
                if not self._claim_run():
                    return
                leased = self._lease(slot)
                if leased is None:
                    self._unclaim_run()
                    return
                self._execute(slot, *leased)
        except FatalError as exc:
            self._stop_all(exc)
        except Exception as exc:  # a bug must not leave other slots running blind
            log.exception("slot %d failed", slot)
            self._stop_all(FatalError(f"slot {slot} failed: {type(exc).__name__}: {exc}"))

    def _on_acknowledged(self, entry: SpoolEntry, response: pb.ReportResultResponse) -> None:
        self.display.acknowledged(entry.lease_id, response, self._swarm_best(entry.hardware_class))

    def _swarm_best(self, hardware_class: str) -> str:
        assert self.client is not None
        try:
            board = self.client.leaderboard(pb.GetLeaderboardRequest.BY_CLASS, hardware_class)
        except (CoordinatorUnavailable, store_errors.StoreError):
            return ""
        for row in board.rows:
            if row.hardware_class == hardware_class or row.key == hardware_class:
                if row.best_val_bpb > 0:
                    return f"{hardware_class} val_bpb {row.best_val_bpb:.4f} (baseline {row.baseline_val_bpb:.4f})"
        return ""

    def request_stop(self) -> None:
        """First call: finish what runs, then exit. Second: abandon the runs now."""
        self._signals += 1
        if self._signals == 1:
            self.display.info("stopping: finishing the run(s) in progress (signal again to abandon them)")
            self.stopping.set()
        else:
            self.display.info("abandoning the run(s) in progress and releasing their leases")
            self.stopping.set()
            self.abandon.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: self.request_stop())

    def run(self) -> int:
        """Set up, run every slot until stopped or out of runs, drain the spool; returns the exit code."""
        try:
            self.setup()
        except FatalError as exc:
            if exc.exit_code != EXIT_OK:
                self.display.error(str(exc))
            return exc.exit_code
        except trust.KeyChangedError as exc:
            self.display.error(str(exc))
            return EXIT_TRUST
        except Exception as exc:  # a bug or an environment problem: one clear line, the details in the log
            log.exception("set-up failed")
            self.display.error(f"set-up failed: {type(exc).__name__}: {exc}")
            return EXIT_SETUP
        assert self.client is not None and self.executor is not None
        self.deliverer = SpoolDeliverer(
            self.spool, self.client, on_acknowledged=self._on_acknowledged,
            on_unavailable=lambda why, wait_s: log.info("spool: coordinator unavailable (%s); next try in %.0fs",
                                                        why, wait_s),
        )
        self.deliverer.start()
        pending = len(self.spool.pending())
        if pending:
            self.display.info(f"{pending} result(s) from earlier runs wait in the spool; delivering")
        workers = [threading.Thread(target=self._slot_loop, args=(slot,), name=f"slot-{slot}", daemon=True)
                   for slot in range(len(self.executor.slot_names()))]
        for worker in workers:
            worker.start()
        try:
            while any(worker.is_alive() for worker in workers):
                for worker in workers:
                    worker.join(timeout=0.2)
        finally:
            self._finish()
        return self.fatal.exit_code if self.fatal is not None else EXIT_OK

    def _finish(self) -> None:
        assert self.deliverer is not None and self.executor is not None
        if not self.abandon.is_set() and self.spool.pending():
            self.display.info(f"delivering {len(self.spool.pending())} result(s) before exiting "
                              f"(up to {self.options.drain_timeout_s:g}s)")
            self.deliverer.wait_idle(self.options.drain_timeout_s)
        self.deliverer.stop()
        left = len(self.spool.pending())
        if left:
            self.display.warn(f"{left} result(s) wait in the spool at {self.spool.dir}; they are delivered on the "
                              "next start")
        self.executor.close()
        if self.client is not None:
            self.client.close()
        self.display.info(f"volunteer stopped after {self.runs_done} run(s)")
        self.display.close()


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    return str(exc)


def _os_environ() -> dict[str, str]:
    return dict(os.environ)
