"""The state store interface. Every backend (SQLite, Redis) honours these invariants; one contract
test class (tests/store_contract.py) checks them against each.

Invariants
1. Time is the store's. Deadlines, expiry and `*_s` stamps are judged by `now()` of the store
   (SQLite: the coordinator host's clock; Redis: the server's `TIME`), never by a caller's clock.
2. Refusal changes nothing. Every method either applies completely or raises a `StoreError`
   subclass and leaves the state as it was (one transaction / one Lua script per call).
3. One unit, at most one active lease. `lease_unit` is atomic across processes: two callers
   racing for the last unit never both get it.
4. Expired leases are reissued. A lease past its deadline is expired by the next `lease_unit` or
   `expire_leases`; its unit becomes leasable again and `attempts` keeps counting.
5. Results are keyed by lease. `record_result` stores at most one result per lease; reporting the
   same lease again returns the stored result with `duplicate=True` and changes nothing. A report
   on an unknown lease raises NotFoundError, on an expired/released one LeaseExpiredError, by
   another volunteer PermissionDeniedError.
6. Durable before acknowledged. When a write method returns, the write survives a `kill -9` of
   the process (SQLite WAL + synchronous=FULL) or of redis-server with AOF `appendfsync always`.
7. Numbers are finite. Non-finite floats raise InvalidValueError; text over the `MAX_*_BYTES`
   limits raises PayloadTooLargeError. Nothing is truncated silently.
8. Hypothesis fingerprints are unique: `add_hypothesis` with a known fingerprint raises
   DuplicateError naming the original.
9. Replicates respect exclusions: `lease_unit` never hands a unit to a volunteer in its
   `excluded_volunteers` or whose owner is in `excluded_owners`.
10. Revocation is remembered: a revoked principal stays revoked; its results keep their data but
    `counts` becomes false, and policy reads only counting results.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence

from coordinator.store.types import (
    ClassStats,
    Hypothesis,
    HypothesisState,
    Invite,
    Lease,
    MergeRecord,
    NormalizedScore,
    Principal,
    ResultFilter,
    ResultRecord,
    Role,
    RunMetrics,
    UnitState,
    WorkUnit,
)


class Store(abc.ABC):
    """Coordinator state. Implementations: SqliteStore (default), RedisStore (deployment)."""

    # -- lifecycle and clock ---------------------------------------------------------------------

    @abc.abstractmethod
    def now(self) -> float:
        """Seconds since the epoch on the store's clock."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- metadata (head commit, settings, key ids) ---------------------------------------------

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def compare_and_set_meta(self, key: str, expected: str | None, value: str) -> bool:
        """Set key to value only if it currently equals expected (None: absent). True if set."""

    # -- principals (volunteers, proposers, admins) and invites ---------------------------------

    @abc.abstractmethod
    def create_principal(
        self,
        role: Role,
        owner: str,
        display_name: str,
        token_hash: str,
        hardware_class: str = "",
        hardware_json: str = "{}",
        invite_token_hash: str | None = None,
    ) -> Principal:
        """Create a principal with a fresh id. With invite_token_hash, consume one use of that
        invite atomically (InviteError when unknown, used up or expired) and take its owner."""

    @abc.abstractmethod
    def get_principal(self, principal_id: str) -> Principal: ...

    @abc.abstractmethod
    def find_principal_by_token_hash(self, token_hash: str) -> Principal | None: ...

    @abc.abstractmethod
    def list_principals(self, role: Role | None = None, owner: str | None = None) -> list[Principal]: ...

    @abc.abstractmethod
    def touch_principal(self, principal_id: str) -> None:
        """Record that the principal was seen now (for 'online' counts)."""

    @abc.abstractmethod
    def revoke_principal(self, principal_id: str, reason: str) -> int:
        """Revoke; cancel its active leases (units back to queued); mark its results not counting.
        Returns the number of results that stopped counting."""

    @abc.abstractmethod
    def revoke_owner(self, owner: str, reason: str) -> tuple[list[str], int]:
        """Revoke every principal of owner. Returns (revoked ids, results that stopped counting)."""

    @abc.abstractmethod
    def create_invite(self, token_hash: str, owner: str, max_uses: int = 1, expires_s: float = 0.0) -> Invite: ...

    # -- hypotheses -----------------------------------------------------------------------------

    @abc.abstractmethod
    def add_hypothesis(self, hypothesis: Hypothesis) -> Hypothesis:
        """Store a new hypothesis (its id given by the caller, created_s set by the store).
        DuplicateError when its fingerprint is known."""

    @abc.abstractmethod
    def get_hypothesis(self, hypothesis_id: str) -> Hypothesis: ...

    @abc.abstractmethod
    def list_hypotheses(
        self, states: Iterable[HypothesisState] = (), limit: int = 100, after: str = ""
    ) -> list[Hypothesis]:
        """Oldest first; `after` is the last id of the previous page."""

    @abc.abstractmethod
    def update_hypothesis(
        self,
        hypothesis_id: str,
        *,
        state: HypothesisState | None = None,
        state_reason: str | None = None,
        priority: float | None = None,
        merged_commit: str | None = None,
        expected_state: HypothesisState | None = None,
    ) -> Hypothesis:
        """Change fields; with expected_state, only if the state still is that (ConflictError)."""

    @abc.abstractmethod
    def count_hypotheses(self, states: Iterable[HypothesisState] = ()) -> int: ...

    # -- work units and leases ------------------------------------------------------------------

    @abc.abstractmethod
    def enqueue_unit(self, unit: WorkUnit) -> WorkUnit:
        """Store a new queued unit (id given by the caller; created_s set by the store)."""

    @abc.abstractmethod
    def get_unit(self, unit_id: str) -> WorkUnit: ...

    @abc.abstractmethod
    def list_units(
        self, hypothesis_id: str = "", state: UnitState | None = None, hardware_class: str = ""
    ) -> list[WorkUnit]: ...

    @abc.abstractmethod
    def cancel_units(self, hypothesis_id: str) -> int:
        """Cancel the queued units of a hypothesis (leased ones finish). Returns how many."""

    @abc.abstractmethod
    def requeue_unit(self, unit_id: str) -> WorkUnit:
        """Put a done unit back in the queue (bounded crash retries are the policy's call)."""

    @abc.abstractmethod
    def lease_unit(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> tuple[WorkUnit, Lease] | None:
        """Atomically expire stale leases, then lease the first eligible queued unit of the class
        (kind rank, then priority high to low, then oldest), or return None."""

    @abc.abstractmethod
    def get_lease(self, lease_id: str) -> Lease: ...

    @abc.abstractmethod
    def list_leases(self, active_only: bool = True) -> list[Lease]: ...

    @abc.abstractmethod
    def extend_lease(
        self,
        lease_id: str,
        volunteer_id: str,
        lease_duration_s: float,
        step: int = 0,
        fraction: float = 0.0,
        loss: float = 0.0,
    ) -> Lease:
        """Heartbeat: deadline = now + lease_duration_s, progress recorded."""

    @abc.abstractmethod
    def release_lease(self, lease_id: str, volunteer_id: str, reason: str = "") -> Lease:
        """Give a lease back early; its unit becomes leasable again."""

    @abc.abstractmethod
    def expire_leases(self) -> list[Lease]:
        """Expire every active lease past its deadline; their units become leasable again."""

    # -- results --------------------------------------------------------------------------------

    @abc.abstractmethod
    def record_result(
        self, lease_id: str, volunteer_id: str, metrics: RunMetrics, score: NormalizedScore, result_id: str
    ) -> tuple[ResultRecord, bool]:
        """Store the result of a lease; mark lease reported and unit done. Idempotent: a second
        report of the same lease returns (stored record, True) and changes nothing."""

    @abc.abstractmethod
    def get_result(self, result_id: str) -> ResultRecord: ...

    @abc.abstractmethod
    def result_for_lease(self, lease_id: str) -> ResultRecord | None: ...

    @abc.abstractmethod
    def list_results(
        self, result_filter: ResultFilter | None = None, limit: int = 1000, after: str = ""
    ) -> list[ResultRecord]:
        """Oldest first (report order); `after` is the last result id of the previous page.
        No filter: every result."""

    # -- statistics and merges ------------------------------------------------------------------

    @abc.abstractmethod
    def put_class_stats(self, stats: ClassStats) -> None: ...

    @abc.abstractmethod
    def get_class_stats(self, hardware_class: str, commit: str) -> ClassStats | None: ...

    @abc.abstractmethod
    def list_class_stats(self, commit: str = "") -> list[ClassStats]: ...

    @abc.abstractmethod
    def add_merge(self, merge: MergeRecord) -> MergeRecord: ...

    @abc.abstractmethod
    def mark_reverted(self, commit: str, reverted_by: str, reason: str) -> MergeRecord: ...

    @abc.abstractmethod
    def list_merges(self, limit: int = 100) -> list[MergeRecord]:
        """Newest first."""


def validate_texts(fields: Mapping[str, tuple[str, int]]) -> None:
    """Raise PayloadTooLargeError for the first field over its byte limit (shared by backends)."""
    from coordinator.store.errors import PayloadTooLargeError

    for name, (value, limit) in fields.items():
        if len(value.encode("utf-8")) > limit:
            raise PayloadTooLargeError(f"{name} is {len(value.encode('utf-8'))} bytes; the limit is {limit}")


def validate_numbers(values: Mapping[str, float]) -> None:
    """Raise InvalidValueError for the first non-finite number (shared by backends)."""
    import math

    from coordinator.store.errors import InvalidValueError

    for name, value in values.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidValueError(f"{name} must be a finite number, got {value!r}")


def open_store(url: str) -> Store:
    """`sqlite:///path/to/state.sqlite` (or a bare path) or `redis://host:port/db[?prefix=name]`."""
    if url.startswith("redis://") or url.startswith("rediss://") or url.startswith("unix://"):
        from coordinator.store.redis_store import RedisStore

        return RedisStore.from_url(url)
    from coordinator.store.sqlite_store import SqliteStore

    path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SqliteStore(path)


__all__: Sequence[str] = ["Store", "open_store", "validate_texts", "validate_numbers"]
