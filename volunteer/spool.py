"""The result spool: a finished result is on disk before it is reported, and leaves only when acknowledged.

    <data dir>/spool/<lease id>.json            waiting for the coordinator's acknowledgement
    <data dir>/spool/rejected/<lease id>.json   refused for good (lease expired, revoked, ...), kept
                                                with the reason so the owner can see what was lost

Each file is written atomically (temp file, fsync, rename, fsync of the directory), so a crash
at any point leaves either no entry or a whole one. Delivery is at-least-once from here and
exactly-once overall, because the coordinator keys reports by lease: a retry of a report it
already stored comes back as `duplicate` and changes nothing.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from google.protobuf import json_format

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.client import CoordinatorClient, CoordinatorUnavailable
from coordinator.service.errors import PreconditionError
from coordinator.store import errors as store_errors
from volunteer.identity import atomic_write_private, ensure_private_dir, fsync_dir

log = logging.getLogger("autoswarm.volunteer.spool")

SPOOL_DIR = "spool"
REJECTED_DIR = "rejected"
ENTRY_FORMAT = 1
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")

# Refusals that will never turn into an acknowledgement: retrying them only hides the loss.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    store_errors.NotFoundError,
    store_errors.LeaseExpiredError,
    store_errors.PermissionDeniedError,
    store_errors.InvalidValueError,
    store_errors.PayloadTooLargeError,
    PreconditionError,  # measured on data or a tokenizer the swarm does not pin
)


class SpoolError(RuntimeError):
    """A spool entry that cannot be read or written."""


@dataclass
class SpoolEntry:
    lease_id: str
    unit_id: str
    hypothesis_id: str
    hardware_class: str
    result: dict[str, object]  # autoswarm.v1.RunResult as JSON (json_format)
    finished_unix_s: float = field(default_factory=time.time)
    attempts: int = 0
    last_error: str = ""

    @classmethod
    def from_result(cls, unit: pb.WorkUnit, result: pb.RunResult) -> SpoolEntry:
        return cls(
            lease_id=unit.lease_id,
            unit_id=unit.unit_id,
            hypothesis_id=unit.hypothesis_id,
            hardware_class=unit.hardware_class,
            result=json_format.MessageToDict(result, preserving_proto_field_name=True),
        )

    def run_result(self) -> pb.RunResult:
        return json_format.ParseDict(self.result, pb.RunResult())

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": ENTRY_FORMAT, **asdict(self)}, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SpoolEntry:
        raw = json.loads(data)
        if raw.pop("format", None) != ENTRY_FORMAT:
            raise ValueError("unknown spool entry format")
        return cls(**raw)


class Spool:
    def __init__(self, data_dir: Path) -> None:
        self.dir = ensure_private_dir(Path(data_dir) / SPOOL_DIR)
        self.rejected_dir = ensure_private_dir(self.dir / REJECTED_DIR)
        self._lock = threading.Lock()

    def _path(self, lease_id: str, directory: Path | None = None) -> Path:
        if not _SAFE_NAME.match(lease_id):
            raise SpoolError(f"lease id {lease_id!r} is not a safe file name")
        return (directory or self.dir) / f"{lease_id}.json"

    def put(self, entry: SpoolEntry) -> Path:
        """Durably store a finished result (replacing an older copy for the same lease)."""
        path = self._path(entry.lease_id)
        with self._lock:
            atomic_write_private(path, entry.to_bytes())
        return path

    def contains(self, lease_id: str) -> bool:
        return self._path(lease_id).exists()

    def pending(self) -> list[SpoolEntry]:
        """Unacknowledged entries, oldest first. Unreadable files are moved aside, not retried forever."""
        entries = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                entries.append(SpoolEntry.from_bytes(path.read_bytes()))
            except (OSError, ValueError, TypeError) as exc:
                log.error("spool entry %s is unreadable (%s); moved to %s", path.name, exc, self.rejected_dir)
                path.replace(self.rejected_dir / (path.name + ".unreadable"))
        return sorted(entries, key=lambda e: e.finished_unix_s)

    def acknowledge(self, lease_id: str) -> None:
        with self._lock:
            self._path(lease_id).unlink(missing_ok=True)
            fsync_dir(self.dir)

    def reject(self, entry: SpoolEntry, reason: str) -> Path:
        entry.last_error = reason
        target = self._path(entry.lease_id, self.rejected_dir)
        with self._lock:
            atomic_write_private(target, entry.to_bytes())
            self._path(entry.lease_id).unlink(missing_ok=True)
            fsync_dir(self.dir)
        return target

    def rejected(self) -> list[SpoolEntry]:
        return [SpoolEntry.from_bytes(p.read_bytes()) for p in sorted(self.rejected_dir.glob("*.json"))]

    def record_attempt(self, entry: SpoolEntry, error: str) -> None:
        entry.attempts += 1
        entry.last_error = error
        with self._lock:
            if self._path(entry.lease_id).exists():
                atomic_write_private(self._path(entry.lease_id), entry.to_bytes())


class DeliveryOutcome:
    """What one pass over the spool did."""

    def __init__(self) -> None:
        self.acknowledged: list[tuple[SpoolEntry, pb.ReportResultResponse]] = []
        self.rejected: list[tuple[SpoolEntry, str]] = []
        self.unavailable: str = ""  # set when the coordinator could not be reached; the rest waits

    @property
    def complete(self) -> bool:
        return not self.unavailable


def deliver_pending(spool: Spool, client: CoordinatorClient) -> DeliveryOutcome:
    """Report every pending entry once, oldest first; stop at the first transport failure."""
    outcome = DeliveryOutcome()
    for entry in spool.pending():
        try:
            response = client.report(entry.lease_id, entry.run_result())
        except CoordinatorUnavailable as exc:
            spool.record_attempt(entry, str(exc))
            outcome.unavailable = str(exc)
            return outcome
        except PERMANENT_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            path = spool.reject(entry, reason)
            log.error("the coordinator refused the result of lease %s for good (%s); kept in %s",
                      entry.lease_id, reason, path)
            outcome.rejected.append((entry, reason))
            continue
        except grpc.RpcError as exc:  # an untyped status (INTERNAL): a coordinator bug, maybe fixed later
            spool.record_attempt(entry, f"gRPC error: {exc}")
            outcome.unavailable = f"gRPC error: {exc}"
            return outcome
        except store_errors.StoreError as exc:
            # Refusals that may clear up (a precondition, an unknown token being fixed): retry later.
            spool.record_attempt(entry, f"{type(exc).__name__}: {exc}")
            outcome.unavailable = f"{type(exc).__name__}: {exc}"
            return outcome
        spool.acknowledge(entry.lease_id)
        outcome.acknowledged.append((entry, response))
    return outcome


class SpoolDeliverer:
    """A background thread that drains the spool, with exponential backoff while the coordinator is away."""

    def __init__(
        self,
        spool: Spool,
        client: CoordinatorClient,
        on_acknowledged: Callable[[SpoolEntry, pb.ReportResultResponse], None] | None = None,
        on_unavailable: Callable[[str, float], None] | None = None,
    ) -> None:
        self.spool = spool
        self.client = client
        self.on_acknowledged = on_acknowledged
        self.on_unavailable = on_unavailable
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-deliverer", daemon=True)
        self._backoff_s = BACKOFF_MIN_S

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Something new is in the spool (or the caller has reason to think the coordinator is back)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the spool is empty (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        self.wake()
        while time.monotonic() < deadline:
            if not self.spool.pending():
                return True
            self._stop.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        return not self.spool.pending()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                outcome = deliver_pending(self.spool, self.client)
            except Exception:  # never let the deliverer die: the spool is the only copy
                log.exception("spool delivery failed unexpectedly; retrying")
                outcome = DeliveryOutcome()
                outcome.unavailable = "unexpected error"
            for entry, response in outcome.acknowledged:
                if self.on_acknowledged is not None:
                    self.on_acknowledged(entry, response)
            if outcome.complete:
                self._backoff_s = BACKOFF_MIN_S
                self._wake.wait()
                continue
            wait_s = self._backoff_s * random.uniform(0.8, 1.2)
            if self.on_unavailable is not None:
                self.on_unavailable(outcome.unavailable, wait_s)
            self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)
            self._wake.wait(timeout=wait_s)
