"""Run one verified work unit in the sandbox and watch it until it ends.

The monitor writes the unit into a fresh working directory, starts `volunteer.child` inside the
sandbox, and then waits on it: heartbeats carry the latest progress and extend the lease; a
cancel from the coordinator, a lost lease or the owner's second Ctrl-C kills the run; the hard
deadline (twice the budget plus a start-up allowance) kills it as `timeout`. Whatever happens,
the outcome is one `autoswarm.v1.RunResult` with a classified status.

Working directory layout (kept until the result is spooled, so a restart can recover it):

    work/<lease id>/signed_unit.pb   the unit exactly as received (signature included)
    work/<lease id>/train.py         the code to run
    work/<lease id>/job.json         what the child needs (no secrets)
    work/<lease id>/child.pid        the sandboxed child's pid
    work/<lease id>/child.log        everything the child and trainer printed
    work/<lease id>/result.json      written by the child when the run ends
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from autoswarm.v1 import swarm_pb2 as pb
from volunteer.child import JOB_FILE, PROGRESS_MARKER, RESULT_FILE
from volunteer.sandbox import NetworkIsolation, ResourceLimits

log = logging.getLogger("autoswarm.volunteer.monitor")

SIGNED_UNIT_FILE = "signed_unit.pb"
PID_FILE = "child.pid"
LOG_FILE = "child.log"
KILL_GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL
BACKSTOP_GRACE_S = 10.0  # the runner kills at the deadline itself; this is the volunteer's own backstop
POLL_S = 0.2
LOG_TAIL_LINES = 80
MAX_LOG_TAIL_BYTES = 15_000  # under the coordinator's 16 000
MAX_ERROR_BYTES = 1_900  # under its 2 000
MAX_ENVIRONMENT_ENTRIES = 60  # under its 64, leaving room for the volunteer's own entries
MAX_TEXT_BYTES = 190  # short fields (backend, hashes, ids)

STATUS_TO_PB = {
    "ok": pb.RUN_STATUS_OK,
    "crash": pb.RUN_STATUS_CRASH,
    "timeout": pb.RUN_STATUS_TIMEOUT,
    "oom": pb.RUN_STATUS_OOM,
    "nan": pb.RUN_STATUS_NAN,
}


class Ending(StrEnum):
    FINISHED = "finished"  # the child wrote a result (any status)
    TIMEOUT = "timeout"  # killed at the hard deadline
    CANCELLED = "cancelled"  # the coordinator no longer wants it, or the lease is gone
    ABANDONED = "abandoned"  # the owner asked to stop now
    DIED = "died"  # the child ended without a result


@dataclass
class Progress:
    step: int = 0
    fraction: float = 0.0
    loss: float = 0.0
    tokens_per_s: float = 0.0
    phase: str = "start"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Progress:
        def number(key: str) -> float:
            try:
                value = float(raw.get(key, 0.0))
            except (TypeError, ValueError):
                return 0.0
            return value if math.isfinite(value) else 0.0

        return cls(step=int(number("step")), fraction=min(1.0, max(0.0, number("fraction"))),
                   loss=number("loss"), tokens_per_s=number("tokens_per_s"), phase=str(raw.get("phase", "train")))


@dataclass
class HeartbeatVerdict:
    cancel: bool = False  # stop the run: the coordinator does not want it any more
    reason: str = ""


@dataclass
class UnitJob:
    """Everything the monitor needs to run one unit (no secrets: `env` is already scrubbed)."""

    signed: pb.SignedWorkUnit
    unit: pb.WorkUnit
    unit_dir: Path
    env: dict[str, str]
    isolation: NetworkIsolation
    limits: ResourceLimits
    kill_after_s: float
    heartbeat_interval_s: float
    cache_dir: Path | None = None
    expected_tokenizer_hash: str = ""
    pinned_key_hex: str = ""  # for executors that verify again where the unit runs (Ray nodes)


@dataclass
class RunOutcome:
    ending: Ending
    result: pb.RunResult
    wall_s: float
    progress: Progress = field(default_factory=Progress)


def kill_deadline_s(budget_s: float, startup_allowance_s: float) -> float:
    """The hard kill: twice the training budget, plus time to start (imports, data, compile) and evaluate."""
    return 2.0 * budget_s + startup_allowance_s


def write_unit_dir(job: UnitJob, parent_pid: int | None = None) -> None:
    """Lay out the unit's fresh working directory (an old one for the same lease is replaced)."""
    if job.unit_dir.exists():
        shutil.rmtree(job.unit_dir)
    job.unit_dir.mkdir(parents=True, mode=0o700)
    (job.unit_dir / SIGNED_UNIT_FILE).write_bytes(job.signed.SerializeToString())
    (job.unit_dir / "train.py").write_text(job.unit.train_py, encoding="utf-8")
    settings = job.unit.settings
    body = {
        "train_py": "train.py",
        "hardware_class": job.unit.hardware_class,
        "budget_s": settings.budget_s,
        "dataset": settings.dataset_name,
        "profiles_json": job.unit.profiles_json or None,
        "kill_after_s": job.kill_after_s,
        "cache_dir": str(job.cache_dir) if job.cache_dir else None,
        "limits": job.limits.to_dict(),
        "parent_pid": parent_pid if parent_pid is not None else os.getpid(),
        "expected_manifest_id": settings.data_manifest_id or None,
        "expected_tokenizer_hash": job.expected_tokenizer_hash or settings.tokenizer_hash or None,
    }
    (job.unit_dir / JOB_FILE).write_text(json.dumps(body, indent=2), encoding="utf-8")


def kill_tree(pid: int, grace_s: float = KILL_GRACE_S) -> None:
    """Stop a child and everything below it: SIGTERM (the child kills its trainer), then SIGKILL."""
    try:
        import psutil

        try:
            root = psutil.Process(pid)
            victims = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(victims, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=grace_s)
    except ImportError:  # no psutil: the child's own process group is the best we can do
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _clamp(text: str, limit: int, keep_end: bool = False) -> str:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    data = data[-limit:] if keep_end else data[:limit]
    return data.decode("utf-8", errors="ignore")


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def result_to_pb(raw: Mapping[str, Any], extra_environment: Mapping[str, str] | None = None) -> pb.RunResult:
    """The runner's result (its JSON form) as the wire message, within the coordinator's limits."""
    status = STATUS_TO_PB.get(str(raw.get("status", "crash")).lower(), pb.RUN_STATUS_CRASH)
    environment = {str(k)[:MAX_TEXT_BYTES]: _clamp(str(v), MAX_TEXT_BYTES)
                   for k, v in dict(raw.get("environment") or {}).items()}
    environment = dict(sorted(environment.items())[:MAX_ENVIRONMENT_ENTRIES])
    environment.update(extra_environment or {})
    result = pb.RunResult(
        status=status,
        peak_memory_mb=_finite(raw.get("peak_memory_mb")),
        num_steps=max(0, int(_finite(raw.get("num_steps")))),
        total_tokens=max(0, int(_finite(raw.get("total_tokens")))),
        mfu_percent=_finite(raw.get("mfu_percent")),
        training_s=_finite(raw.get("training_s")),
        total_s=_finite(raw.get("total_s")),
        num_params_m=_finite(raw.get("num_params_m")),
        attention_backend=_clamp(str(raw.get("attention_backend") or ""), MAX_TEXT_BYTES),
        tokenizer_hash=_clamp(str(raw.get("tokenizer_hash") or ""), MAX_TEXT_BYTES),
        data_manifest_id=_clamp(str(raw.get("data_manifest_id") or ""), MAX_TEXT_BYTES),
        environment=environment,
        log_tail=_clamp(str(raw.get("log_tail") or ""), MAX_LOG_TAIL_BYTES, keep_end=True),
        error=_clamp(str(raw.get("error") or ""), MAX_ERROR_BYTES),
    )
    if status == pb.RUN_STATUS_OK:
        result.val_bpb = _finite(raw.get("val_bpb"))
        if result.val_bpb <= 0.0:  # an ok run without a number is not ok
            result.status = pb.RUN_STATUS_CRASH
            result.error = result.error or "the run ended without a val_bpb"
    return result


class UnitMonitor:
    """Runs one unit's child process and watches it (one instance per run)."""

    def __init__(
        self,
        job: UnitJob,
        heartbeat: Callable[[Progress], HeartbeatVerdict],
        on_progress: Callable[[Progress], None] | None = None,
        abandon: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.heartbeat = heartbeat
        self.on_progress = on_progress
        self.abandon = abandon or threading.Event()
        self.progress = Progress()
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._cancel = threading.Event()
        self._cancel_reason = ""
        self._done = threading.Event()

    # -- child output ---------------------------------------------------------------------------

    def _read_output(self, stream: Any) -> None:
        with open(self.job.unit_dir / LOG_FILE, "a", encoding="utf-8", errors="replace") as log_file:
            for line in iter(stream.readline, ""):
                if line.startswith(PROGRESS_MARKER):
                    try:
                        self.progress = Progress.from_dict(json.loads(line[len(PROGRESS_MARKER):]))
                    except (ValueError, TypeError):
                        continue
                    if self.on_progress is not None:
                        with contextlib.suppress(Exception):
                            self.on_progress(self.progress)
                    continue
                log_file.write(line)
                self._tail.append(line.rstrip("\n"))
        stream.close()

    # -- heartbeats -----------------------------------------------------------------------------

    def _beat(self) -> None:
        interval_s = max(0.5, self.job.heartbeat_interval_s)
        while not self._done.wait(timeout=interval_s):
            try:
                verdict = self.heartbeat(self.progress)
            except Exception as exc:  # the daemon's callback decides what is fatal; anything else is logged
                log.warning("heartbeat for %s failed: %s", self.job.unit.lease_id, exc)
                continue
            if verdict.cancel:
                self._cancel_reason = verdict.reason or "cancelled by the coordinator"
                self._cancel.set()
                return

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        job = self.job
        write_unit_dir(job)
        command = [*job.isolation.prefix, sys.executable, "-m", "volunteer.child", str(job.unit_dir)]
        started = time.monotonic()
        process = subprocess.Popen(
            command, cwd=job.unit_dir, env=job.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, start_new_session=True,
        )
        (job.unit_dir / PID_FILE).write_text(str(process.pid))
        reader = threading.Thread(target=self._read_output, args=(process.stdout,), daemon=True, name="child-output")
        reader.start()
        beater = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
        beater.start()
        deadline = started + job.kill_after_s + BACKSTOP_GRACE_S
        ending = Ending.FINISHED
        try:
            while process.poll() is None:
                if time.monotonic() >= deadline:
                    ending = Ending.TIMEOUT
                elif self._cancel.is_set():
                    ending = Ending.CANCELLED
                elif self.abandon.is_set():
                    ending = Ending.ABANDONED
                if ending != Ending.FINISHED:
                    log.warning("stopping the run of %s: %s", job.unit.lease_id, ending.value)
                    kill_tree(process.pid)
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=POLL_S)
        finally:
            self._done.set()
            if process.poll() is None:
                kill_tree(process.pid)
            process.wait()
            reader.join(timeout=10)
            beater.join(timeout=1)
        wall_s = time.monotonic() - started
        result = self._classify(ending, process.returncode, wall_s)
        if ending == Ending.FINISHED and not (job.unit_dir / RESULT_FILE).exists():
            ending = Ending.DIED
        return RunOutcome(ending, result, wall_s, self.progress)

    def _classify(self, ending: Ending, returncode: int, wall_s: float) -> pb.RunResult:
        extra = {"volunteer_network_isolated": "true" if self.job.isolation.enabled else "false"}
        tail = "\n".join(self._tail)
        result_path = self.job.unit_dir / RESULT_FILE
        if ending == Ending.FINISHED and result_path.exists():
            try:
                raw = json.loads(result_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raw = {"status": "crash", "error": f"unreadable result.json: {exc}"}
            if not raw.get("log_tail"):
                raw["log_tail"] = tail
            return result_to_pb(raw, extra)
        common = {"total_s": wall_s, "log_tail": tail, "num_steps": self.progress.step}
        if ending == Ending.TIMEOUT:
            error = (f"killed at the hard deadline after {wall_s:.1f}s "
                     f"(budget {self.job.unit.settings.budget_s:g}s, limit {self.job.kill_after_s:g}s)")
            return result_to_pb({"status": "timeout", "error": error, **common}, extra)
        if ending in (Ending.CANCELLED, Ending.ABANDONED):
            reason = self._cancel_reason if ending == Ending.CANCELLED else "abandoned by the volunteer's owner"
            return result_to_pb({"status": "crash", "error": reason, **common}, extra)
        if returncode == -signal.SIGKILL:
            # Nobody here sent it: on Linux that is almost always the kernel's out-of-memory killer.
            return result_to_pb({"status": "oom", "error": "the run was killed by SIGKILL (out of host memory?)",
                                 **common}, extra)
        return result_to_pb({"status": "crash", "error": f"the sandboxed run exited with code {returncode} "
                             "without a result", **common}, extra)
