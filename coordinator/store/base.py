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
11. Snapshots are whole. `export_snapshot` returns every record as of one moment (one read
    transaction / one script); `import_snapshot` writes one into an empty store, keeping ids,
    stamps, states and order, all or nothing. Export after import gives the same snapshot, on
    either backend (backups, restores and SQLite -> Redis migration rely on it).
12. Code is stored once. Each distinct `train_py` / `profiles_json` text is kept once, keyed by
    its sha256, in the same transaction / script as the unit that first names it; a unit record
    holds only the hashes. Every read (and a snapshot) gives units back with their full text.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import hashlib
import json
import math
import typing
from collections.abc import Iterable, Mapping, Sequence

from coordinator.store.errors import (
    ConflictError,
    InvalidValueError,
    PayloadTooLargeError,
    StoreError,
    StoreIntegrityError,
)
from coordinator.store.types import (
    MAX_ENVIRONMENT_ENTRIES,
    MAX_ERROR_BYTES,
    MAX_HARDWARE_JSON_BYTES,
    MAX_LIST_ENTRIES,
    MAX_LOG_TAIL_BYTES,
    MAX_META_VALUE_BYTES,
    MAX_PATCH_BYTES,
    MAX_PROFILES_BYTES,
    MAX_RATIONALE_BYTES,
    MAX_REASON_BYTES,
    MAX_SHORT_TEXT_BYTES,
    MAX_TITLE_BYTES,
    MAX_TRAIN_PY_BYTES,
    ClassStats,
    CodeStorage,
    Hypothesis,
    HypothesisSource,
    HypothesisState,
    Invite,
    Lease,
    LeaseExtension,
    LeaseState,
    MergeRecord,
    NormalizedScore,
    Principal,
    ReportContext,
    ResultFilter,
    ResultRecord,
    Role,
    RunMetrics,
    RunStatus,
    UnitKind,
    UnitState,
    WorkUnit,
)

_E = typing.TypeVar("_E", bound=enum.Enum)
_R = typing.TypeVar("_R")


class Store(abc.ABC):
    """Coordinator state. Implementations: SqliteStore (default), RedisStore (deployment)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        invite atomically (InviteError when unknown, used up or expired) and take its owner;
        without one, owner is required. DuplicateError when the token hash is already in use."""

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
        """Change fields; with expected_state, only if the state still is that (ConflictError).
        A priority change shifts the priority of the hypothesis's queued units by the same amount."""

    @abc.abstractmethod
    def count_hypotheses(self, states: Iterable[HypothesisState] = ()) -> int: ...

    # -- work units and leases ------------------------------------------------------------------

    @abc.abstractmethod
    def enqueue_unit(self, unit: WorkUnit) -> WorkUnit:
        """Store a new queued unit (id given by the caller; created_s set by the store)."""

    @abc.abstractmethod
    def get_unit(self, unit_id: str, with_code: bool = True) -> WorkUnit:
        """One unit; `with_code=False` leaves train_py and profiles_json empty (no blob reads)."""

    @abc.abstractmethod
    def list_units(
        self, hypothesis_id: str = "", state: UnitState | None = None, hardware_class: str = ""
    ) -> list[WorkUnit]: ...

    def count_pending_units(self, kind: UnitKind, hardware_class: str, base_commit: str) -> int:
        """Units queued or leased of one kind, class and base commit (a hypothesis waits for the
        baseline runs on its head). This default reads them; backends count."""
        return sum(
            1
            for state in (UnitState.QUEUED, UnitState.LEASED)
            for u in self.list_units(state=state, hardware_class=hardware_class)
            if u.kind == kind and u.base_commit == base_commit
        )

    def count_queued(self, hardware_class: str) -> int:
        """Queued units of one class: what a scheduler balancing classes needs, without reading a
        queue that holds one unit per volunteer online. This default reads them; backends count."""
        return len(self.list_units(state=UnitState.QUEUED, hardware_class=hardware_class))

    @abc.abstractmethod
    def cancel_units(self, hypothesis_id: str) -> int:
        """Cancel the queued units of a hypothesis (leased ones finish). Returns how many."""

    @abc.abstractmethod
    def cancel_unit(self, unit_id: str) -> bool:
        """Cancel one queued unit; False (nothing changed) when it is leased, done or cancelled."""

    @abc.abstractmethod
    def requeue_unit(self, unit_id: str) -> WorkUnit:
        """Put a done (or cancelled) unit back in the queue (bounded crash retries are the policy's
        call). ConflictError when it is queued or leased."""

    @abc.abstractmethod
    def lease_unit(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> tuple[WorkUnit, Lease] | None:
        """Atomically expire stale leases, then lease the first eligible queued unit of the class
        (kind rank, then priority high to low, then oldest), or return None. The volunteer must be
        a known (NotFoundError), unrevoked volunteer-role principal (PermissionDeniedError) whose
        owner is `owner` (InvalidValueError). In the same transaction the volunteer is marked seen
        (`last_seen_s`, leased or not) and the unit's hypothesis, if `queued`, becomes `leased`."""

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

    def extend_leases(self, extensions: Sequence[LeaseExtension]) -> list[Lease | Exception]:
        """Many heartbeats at once (the server groups concurrent ones): each is applied exactly
        as extend_lease would, independently; a refused one is its error in the list, in order.
        Backends override this to make one round trip (and one fsync) for the whole group."""
        out: list[Lease | Exception] = []
        for e in extensions:
            try:
                out.append(
                    self.extend_lease(e.lease_id, e.volunteer_id, e.lease_duration_s, e.step, e.fraction, e.loss)
                )
            except StoreError as exc:
                out.append(exc)
        return out

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
        report of the same lease returns (stored record, True) and changes nothing (result_id of
        the retry is ignored). A result_id already used by another lease raises DuplicateError."""

    def report_context(self, lease_id: str) -> ReportContext:
        """The lease (NotFoundError if unknown), its unit without code, the lease's stored result
        when the lease is no longer active (a repeated report), and the class statistics of the
        unit's (class, base commit) as last put (None if none). Reads only; backends override it
        to make one round trip."""
        lease = self.get_lease(lease_id)
        existing = self.result_for_lease(lease_id) if lease.state != LeaseState.ACTIVE else None
        unit = self.get_unit(lease.unit_id, with_code=False)
        return ReportContext(lease, unit, existing, self.get_class_stats(unit.hardware_class, unit.base_commit))

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
    def add_merge(self, merge: MergeRecord) -> MergeRecord:
        """Record a merge (merged_s set by the store); DuplicateError when the commit is known.
        The hypothesis need not exist: the branch is the record of what was merged."""

    @abc.abstractmethod
    def mark_reverted(self, commit: str, reverted_by: str, reason: str) -> MergeRecord:
        """ConflictError when the merge was already reverted."""

    @abc.abstractmethod
    def list_merges(self, limit: int = 100) -> list[MergeRecord]:
        """Newest first."""

    # -- whole-store snapshots (backup, restore, migration) -----------------------------------
    # Not abstract, so a backend written before them still loads; both shipped backends have them.

    def export_snapshot(self) -> StoreSnapshot:
        """Every record as of one moment (invariant 11), each kind in insertion order."""
        raise NotImplementedError(f"{type(self).__name__} cannot export snapshots")

    def import_snapshot(self, snapshot: StoreSnapshot) -> None:
        """Write `snapshot` into this store, which must hold no record (ConflictError otherwise),
        keeping every id, stamp, state and the order of each kind. A snapshot that breaks the
        store's invariants (dangling references, duplicate ids or tokens, two active leases of one
        unit, bad values) raises InvalidValueError. All or nothing."""
        raise NotImplementedError(f"{type(self).__name__} cannot import snapshots")

    def code_storage(self) -> CodeStorage:
        """How many distinct code texts the store holds, and their bytes (invariant 12)."""
        raise NotImplementedError(f"{type(self).__name__} does not report its code storage")


def validate_texts(fields: Mapping[str, tuple[str, int]]) -> None:
    """Raise PayloadTooLargeError for the first field over its byte limit (shared by backends)."""
    for name, (value, limit) in fields.items():
        if len(value.encode("utf-8")) > limit:
            raise PayloadTooLargeError(f"{name} is {len(value.encode('utf-8'))} bytes; the limit is {limit}")


def validate_numbers(values: Mapping[str, float]) -> None:
    """Raise InvalidValueError for the first non-finite number (shared by backends)."""
    for name, value in values.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidValueError(f"{name} must be a finite number, got {value!r}")


# -- shared by backends: checks of whole records, and the row codec ------------------------------
# Both backends call these before they touch their storage, so both refuse the same input with
# the same error (invariants 2 and 7).


def check_text(name: str, value: object, limit: int = MAX_SHORT_TEXT_BYTES, *, required: bool = False) -> str:
    """A str within `limit` bytes (non-empty when required)."""
    if not isinstance(value, str):
        raise InvalidValueError(f"{name} must be a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidValueError(f"{name} is required")
    validate_texts({name: (value, limit)})
    return value


def check_count(name: str, value: object, minimum: int = 0) -> int:
    """An int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_positive(name: str, value: object) -> float:
    """A finite number above zero (durations)."""
    validate_numbers({name: value})  # type: ignore[dict-item]
    if value <= 0:  # type: ignore[operator]
        raise InvalidValueError(f"{name} must be positive, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_enum(enum_type: type[_E], name: str, value: object) -> _E:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)  # type: ignore[attr-defined]
        raise InvalidValueError(f"{name} must be one of {allowed}; got {value!r}") from None


def check_strings(name: str, values: object, limit: int = MAX_SHORT_TEXT_BYTES) -> tuple[str, ...]:
    """A list of short strings, at most MAX_LIST_ENTRIES of them."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidValueError(f"{name} must be a list of strings")
    items = tuple(values)
    if len(items) > MAX_LIST_ENTRIES:
        raise PayloadTooLargeError(f"{name} has {len(items)} entries; the limit is {MAX_LIST_ENTRIES}")
    for index, item in enumerate(items):
        check_text(f"{name}[{index}]", item, limit)
    return items


def check_mapping(
    name: str, mapping: object, max_entries: int = MAX_LIST_ENTRIES, *, numeric: bool = False
) -> dict[str, object]:
    """A str -> str (or str -> finite number) mapping of short entries."""
    if not isinstance(mapping, Mapping):
        raise InvalidValueError(f"{name} must be a mapping")
    if len(mapping) > max_entries:
        raise PayloadTooLargeError(f"{name} has {len(mapping)} entries; the limit is {max_entries}")
    for key, value in mapping.items():
        check_text(f"{name} key", key, required=True)
        if numeric:
            validate_numbers({f"{name}[{key}]": value})
        else:
            check_text(f"{name}[{key}]", value)
    return dict(mapping)


def check_json(name: str, value: object, limit: int) -> str:
    """Text within `limit` bytes that parses as JSON (empty is allowed: it means none)."""
    text = check_text(name, value, limit)
    if text:
        try:
            json.loads(text)
        except ValueError as exc:
            raise InvalidValueError(f"{name} is not valid JSON: {exc}") from None
    return text


def check_limit(limit: object) -> int:
    return check_count("limit", limit, minimum=1)


def check_hypothesis(hypothesis: Hypothesis) -> Hypothesis:
    """Every field of a new hypothesis within its limits; enums coerced from their values."""
    check_text("hypothesis_id", hypothesis.hypothesis_id, required=True)
    check_text("title", hypothesis.title, MAX_TITLE_BYTES)
    check_text("rationale", hypothesis.rationale, MAX_RATIONALE_BYTES)
    check_text("patch", hypothesis.patch, MAX_PATCH_BYTES)
    check_text("base_commit", hypothesis.base_commit)
    check_text("proposer_id", hypothesis.proposer_id)
    check_text("fingerprint", hypothesis.fingerprint, required=True)
    check_text("state_reason", hypothesis.state_reason, MAX_REASON_BYTES)
    check_text("merged_commit", hypothesis.merged_commit)
    validate_numbers({"priority": hypothesis.priority})
    return dataclasses.replace(
        hypothesis,
        source=check_enum(HypothesisSource, "source", hypothesis.source),
        state=check_enum(HypothesisState, "state", hypothesis.state),
        constant_changes=check_mapping("constant_changes", hypothesis.constant_changes),
        touched_classes=check_strings("touched_classes", hypothesis.touched_classes),
    )


def check_unit(unit: WorkUnit) -> WorkUnit:
    """Every field of a new unit within its limits; it must be a fresh queued unit."""
    check_text("unit_id", unit.unit_id, required=True)
    check_text("hardware_class", unit.hardware_class, required=True)
    check_text("base_commit", unit.base_commit)
    check_text("train_py", unit.train_py, MAX_TRAIN_PY_BYTES, required=True)
    check_json("profiles_json", unit.profiles_json, MAX_PROFILES_BYTES)
    check_text("hypothesis_id", unit.hypothesis_id)
    validate_numbers({"priority": unit.priority})
    if check_enum(UnitState, "state", unit.state) != UnitState.QUEUED or unit.attempts != 0:
        raise InvalidValueError("a new unit must be queued with no attempts")
    return dataclasses.replace(
        unit,
        kind=check_enum(UnitKind, "kind", unit.kind),
        excluded_volunteers=check_strings("excluded_volunteers", unit.excluded_volunteers),
        excluded_owners=check_strings("excluded_owners", unit.excluded_owners),
    )


def check_metrics(metrics: RunMetrics) -> RunMetrics:
    """Finite, non-negative numbers and bounded texts (invariant 7)."""
    numbers = metrics.numbers()
    validate_numbers(numbers)
    for name, value in numbers.items():
        if value < 0:
            raise InvalidValueError(f"{name} must not be negative, got {value!r}")
    check_count("num_steps", metrics.num_steps)
    check_count("total_tokens", metrics.total_tokens)
    check_text("attention_backend", metrics.attention_backend)
    check_text("tokenizer_hash", metrics.tokenizer_hash)
    check_text("data_manifest_id", metrics.data_manifest_id)
    check_text("log_tail", metrics.log_tail, MAX_LOG_TAIL_BYTES)
    check_text("error", metrics.error, MAX_ERROR_BYTES)
    return dataclasses.replace(
        metrics,
        status=check_enum(RunStatus, "status", metrics.status),
        environment=check_mapping("environment", metrics.environment, MAX_ENVIRONMENT_ENTRIES),
    )


def check_score(score: NormalizedScore) -> NormalizedScore:
    validate_numbers(
        {
            "baseline_val_bpb": score.baseline_val_bpb,
            "delta_bpb": score.delta_bpb,
            "delta_percent": score.delta_percent,
            "delta_sigma": score.delta_sigma,
            "class_sigma": score.class_sigma,
        }
    )
    check_count("baseline_samples", score.baseline_samples)
    return dataclasses.replace(score, has_baseline=bool(score.has_baseline))


def check_class_stats(stats: ClassStats) -> ClassStats:
    check_text("hardware_class", stats.hardware_class, required=True)
    check_text("commit", stats.commit, required=True)
    check_count("samples", stats.samples)
    validate_numbers({"mean_val_bpb": stats.mean_val_bpb, "sigma": stats.sigma})
    if stats.sigma < 0:
        raise InvalidValueError(f"sigma must not be negative, got {stats.sigma!r}")
    return stats


def check_merge(merge: MergeRecord) -> MergeRecord:
    check_text("commit", merge.commit, required=True)
    check_text("parent_commit", merge.parent_commit)
    check_text("hypothesis_id", merge.hypothesis_id)
    check_text("title", merge.title, MAX_TITLE_BYTES)
    check_text("reverted_by", merge.reverted_by)
    check_text("revert_reason", merge.revert_reason, MAX_REASON_BYTES)
    deltas = check_mapping("delta_bpb_by_class", merge.delta_bpb_by_class, numeric=True)
    return dataclasses.replace(merge, delta_bpb_by_class={k: float(v) for k, v in deltas.items()})  # type: ignore[arg-type]


def check_result_filter(result_filter: ResultFilter | None) -> ResultFilter:
    result_filter = result_filter or ResultFilter()
    validate_numbers({"since_s": result_filter.since_s})
    return dataclasses.replace(
        result_filter,
        status=None if result_filter.status is None else check_enum(RunStatus, "status", result_filter.status),
        kind=None if result_filter.kind is None else check_enum(UnitKind, "kind", result_filter.kind),
    )


def result_matches(record: ResultRecord, result_filter: ResultFilter) -> bool:
    """The filter's meaning, for backends that filter in Python (empty fields match everything)."""
    f = result_filter
    return (
        (not f.hardware_class or record.hardware_class == f.hardware_class)
        and (f.status is None or record.metrics.status == f.status)
        and record.reported_s >= f.since_s
        and (not f.hypothesis_id or record.hypothesis_id == f.hypothesis_id)
        and (not f.volunteer_id or record.volunteer_id == f.volunteer_id)
        and (not f.base_commit or record.base_commit == f.base_commit)
        and (f.kind is None or record.kind == f.kind)
        and (not f.counting_only or record.counts)
    )


# Row codec: a record <-> a flat mapping of its field names to str/int/float, nested values
# (mappings, tuples, RunMetrics, NormalizedScore) as compact JSON text. SQLite stores the rows as
# columns; Redis as hash fields (every value read back as text, so decoding also parses text).

RowValue = str | int | float


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _field_types(record_type: type) -> dict[str, object]:
    return typing.get_type_hints(record_type)


def to_json(value: object) -> str:
    """Compact JSON of a record or a nested value, exactly as record_to_row stores it."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def record_to_row(record: object) -> dict[str, RowValue]:
    row: dict[str, RowValue] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = _plain(getattr(record, f.name))
        if isinstance(value, dict | list):
            value = to_json(value)
        elif isinstance(value, bool):
            value = int(value)
        row[f.name] = value  # type: ignore[assignment]
    return row


def _revive(hint: object, value: object) -> object:
    if hint is str:
        return value if isinstance(value, str) else str(value)
    if hint is bool:
        return value in (True, 1, "1", "true", "True")
    if hint is int:
        return int(value)  # type: ignore[call-overload]
    if hint is float:
        return float(value)  # type: ignore[arg-type]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    data = json.loads(value) if isinstance(value, str | bytes) else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return record_from_row(hint, data)  # type: ignore[arg-type]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return tuple(_revive(args[0], item) for item in data)  # type: ignore[union-attr]
    if origin in (Mapping, dict):
        return {str(k): _revive(args[1], v) for k, v in data.items()}  # type: ignore[union-attr]
    raise TypeError(f"no codec for {hint!r}")


def record_from_row(record_type: type[_R], row: Mapping[str, object]) -> _R:
    """Build a record from a row; keys that are not fields (seq, kind_rank, ...) are ignored."""
    hints = _field_types(record_type)
    present = set(row.keys())  # also a sqlite3.Row, whose `in` tests values, not names
    return record_type(**{name: _revive(hint, row[name]) for name, hint in hints.items() if name in present})


# -- unit code, content-addressed (invariant 12) -------------------------------------------------------
# A unit's row holds `<field>_sha256` in place of each code field; the text lives once under its
# hash. Rows written before content addressing (Redis keeps them) still hold the text inline.

UNIT_CODE_HASH_FIELDS: dict[str, str] = {"train_py": "train_py_sha256", "profiles_json": "profiles_json_sha256"}


def content_hash(text: str) -> str:
    """Hex sha256 of the text's UTF-8: the key its blob is stored under."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unit_to_row(unit: WorkUnit) -> tuple[dict[str, RowValue], dict[str, str]]:
    """The unit's row with its code replaced by hashes, and the blobs to store ({hash: text})."""
    row = record_to_row(unit)
    blobs: dict[str, str] = {}
    for field, hash_field in UNIT_CODE_HASH_FIELDS.items():
        text = str(row.pop(field))
        digest = content_hash(text)
        row[hash_field] = digest
        blobs[digest] = text
    return row, blobs


def unit_code_hashes(row: Mapping[str, object]) -> set[str]:
    """The blob hashes a unit row needs resolved (none for a row holding its code inline)."""
    values = dict(row)  # also a sqlite3.Row, whose `in` tests values, not names
    return {
        str(values[hash_field])
        for field, hash_field in UNIT_CODE_HASH_FIELDS.items()
        if values.get(field) is None and values.get(hash_field) is not None
    }


def unit_from_row(row: Mapping[str, object], blobs: Mapping[str, str], with_code: bool = True) -> WorkUnit:
    """A unit with its full code: inline text when the row has it, else its blobs' text (or, with
    `with_code=False`, empty code)."""
    values = dict(row)
    for field, hash_field in UNIT_CODE_HASH_FIELDS.items():
        if values.get(field) is not None:
            continue
        if not with_code:
            values[field] = ""
            continue
        digest = values.get(hash_field)
        if not isinstance(digest, str) or digest not in blobs:
            raise StoreIntegrityError(
                f"unit {values.get('unit_id')!r} names {field} blob {digest!r}, which the store lacks"
            )
        values[field] = blobs[digest]
    return record_from_row(WorkUnit, values)


# -- whole-store snapshots ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoreSnapshot:
    """Every record of a store at one moment; each kind in insertion order (merges oldest first)."""

    meta: Mapping[str, str] = dataclasses.field(default_factory=dict)
    principals: tuple[Principal, ...] = ()
    invites: tuple[Invite, ...] = ()
    hypotheses: tuple[Hypothesis, ...] = ()
    units: tuple[WorkUnit, ...] = ()
    leases: tuple[Lease, ...] = ()
    results: tuple[ResultRecord, ...] = ()
    class_stats: tuple[ClassStats, ...] = ()
    merges: tuple[MergeRecord, ...] = ()

    def record_ids(self) -> dict[str, list[str]]:
        """The key of every record, per kind (what a restore or migration verifies)."""
        return {
            "meta": sorted(self.meta),
            "principals": [p.principal_id for p in self.principals],
            "invites": [i.token_hash for i in self.invites],
            "hypotheses": [h.hypothesis_id for h in self.hypotheses],
            "units": [u.unit_id for u in self.units],
            "leases": [lease.lease_id for lease in self.leases],
            "results": [r.result_id for r in self.results],
            "class_stats": [f"{s.hardware_class}@{s.commit}" for s in self.class_stats],
            "merges": [m.commit for m in self.merges],
        }

    def counts(self) -> dict[str, int]:
        return {kind: len(ids) for kind, ids in self.record_ids().items()}

    def is_empty(self) -> bool:
        return not any(self.counts().values())


def _unique(kind: str, keys: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise InvalidValueError(f"snapshot holds {kind} {key!r} twice")
        seen.add(key)
    return seen


def _typed(kind: str, records: object, record_type: type) -> tuple[typing.Any, ...]:
    items = tuple(records)  # type: ignore[call-overload]
    for item in items:
        if not isinstance(item, record_type):
            raise InvalidValueError(f"snapshot {kind} must be {record_type.__name__} records, got {item!r:.80}")
    return items


def check_snapshot(snapshot: StoreSnapshot) -> StoreSnapshot:
    """Every record within its limits and every reference resolved, before a backend writes any
    of it (invariant 2). Returns the snapshot with enum fields coerced from their values."""
    if not isinstance(snapshot, StoreSnapshot):
        raise InvalidValueError(f"expected a StoreSnapshot, got {type(snapshot).__name__}")
    if not isinstance(snapshot.meta, Mapping):
        raise InvalidValueError("snapshot meta must be a mapping")
    meta = dict(snapshot.meta)
    for key, value in meta.items():
        check_text("meta key", key, required=True)
        check_text(f"meta[{key}]", value, MAX_META_VALUE_BYTES)

    principals = []
    for p in _typed("principals", snapshot.principals, Principal):
        for name in ("principal_id", "token_hash"):
            check_text(name, getattr(p, name), required=True)
        for name in ("owner", "display_name", "hardware_class"):
            check_text(name, getattr(p, name))
        check_json("hardware_json", p.hardware_json, MAX_HARDWARE_JSON_BYTES)
        check_text("revoked_reason", p.revoked_reason, MAX_REASON_BYTES)
        validate_numbers({"created_s": p.created_s, "last_seen_s": p.last_seen_s})
        principals.append(dataclasses.replace(p, role=check_enum(Role, "role", p.role), revoked=bool(p.revoked)))
    _unique("principal", (p.principal_id for p in principals))
    _unique("principal token hash", (p.token_hash for p in principals))

    invites = _typed("invites", snapshot.invites, Invite)
    for invite in invites:
        check_text("token_hash", invite.token_hash, required=True)
        check_text("owner", invite.owner, required=True)
        check_count("max_uses", invite.max_uses, minimum=1)
        check_count("uses", invite.uses)
        validate_numbers({"expires_s": invite.expires_s, "created_s": invite.created_s})
    _unique("invite", (i.token_hash for i in invites))

    hypotheses = [check_hypothesis(h) for h in _typed("hypotheses", snapshot.hypotheses, Hypothesis)]
    for h in hypotheses:
        validate_numbers({"created_s": h.created_s, "updated_s": h.updated_s})
    hypothesis_ids = _unique("hypothesis", (h.hypothesis_id for h in hypotheses))
    _unique("hypothesis fingerprint", (h.fingerprint for h in hypotheses))

    units = []
    for unit in _typed("units", snapshot.units, WorkUnit):
        state = check_enum(UnitState, "state", unit.state)
        attempts = check_count("attempts", unit.attempts)
        fresh = check_unit(dataclasses.replace(unit, state=UnitState.QUEUED, attempts=0))
        validate_numbers({"created_s": unit.created_s})
        if fresh.hypothesis_id and fresh.hypothesis_id not in hypothesis_ids:
            raise InvalidValueError(f"unit {unit.unit_id} names unknown hypothesis {unit.hypothesis_id!r}")
        units.append(dataclasses.replace(fresh, state=state, attempts=attempts))
    unit_ids = _unique("unit", (u.unit_id for u in units))

    leases = []
    for lease in _typed("leases", snapshot.leases, Lease):
        for name in ("lease_id", "unit_id", "volunteer_id"):
            check_text(name, getattr(lease, name), required=True)
        check_text("owner", lease.owner)
        check_text("end_reason", lease.end_reason, MAX_REASON_BYTES)
        check_count("slot", lease.slot)
        check_count("progress_step", lease.progress_step)
        validate_numbers(
            {name: getattr(lease, name) for name in ("issued_s", "deadline_s", "progress_fraction",
                                                     "progress_loss", "heartbeat_s", "ended_s")}
        )
        if lease.unit_id not in unit_ids:
            raise InvalidValueError(f"lease {lease.lease_id} names unknown unit {lease.unit_id!r}")
        leases.append(dataclasses.replace(lease, state=check_enum(LeaseState, "state", lease.state)))
    _unique("lease", (lease.lease_id for lease in leases))
    _unique("active lease of unit", (lease.unit_id for lease in leases if lease.state == LeaseState.ACTIVE))
    lease_units = {lease.lease_id: lease.unit_id for lease in leases}

    results = []
    for r in _typed("results", snapshot.results, ResultRecord):
        for name in ("result_id", "lease_id", "unit_id", "hardware_class", "volunteer_id"):
            check_text(name, getattr(r, name), required=True)
        for name in ("hypothesis_id", "base_commit", "owner"):
            check_text(name, getattr(r, name))
        validate_numbers({"reported_s": r.reported_s})
        if lease_units.get(r.lease_id) != r.unit_id:
            raise InvalidValueError(f"result {r.result_id} does not match a lease of unit {r.unit_id!r}")
        results.append(
            dataclasses.replace(
                r, kind=check_enum(UnitKind, "kind", r.kind), metrics=check_metrics(r.metrics),
                score=check_score(r.score), counts=bool(r.counts),
            )
        )
    _unique("result", (r.result_id for r in results))
    _unique("result of lease", (r.lease_id for r in results))

    class_stats = [check_class_stats(s) for s in _typed("class_stats", snapshot.class_stats, ClassStats)]
    for stats in class_stats:
        validate_numbers({"updated_s": stats.updated_s})
    _unique("class stats", (f"{s.hardware_class}@{s.commit}" for s in class_stats))
    merges = [check_merge(m) for m in _typed("merges", snapshot.merges, MergeRecord)]
    for merge in merges:
        validate_numbers({"merged_s": merge.merged_s})
    _unique("merge", (m.commit for m in merges))
    return StoreSnapshot(
        meta=meta,  # type: ignore[arg-type]
        principals=tuple(principals),
        invites=invites,
        hypotheses=tuple(hypotheses),
        units=tuple(units),
        leases=tuple(leases),
        results=tuple(results),
        class_stats=tuple(class_stats),
        merges=tuple(merges),
    )


def refuse_unless_empty(what: str, non_empty: Sequence[str]) -> None:
    """ConflictError naming the kinds of record a store that should be empty already holds."""
    if non_empty:
        raise ConflictError(f"{what} is not empty (it holds {', '.join(non_empty)}); import into an empty store")


RESULT_PAGE_SIZE = 1000


def read_all_results(store: Store, result_filter: ResultFilter | None = None, after: str = "") -> list[ResultRecord]:
    """Every result matching the filter after `after`, in report order, read page by page."""
    results: list[ResultRecord] = []
    while True:
        page = store.list_results(result_filter, limit=RESULT_PAGE_SIZE, after=after)
        results.extend(page)
        if len(page) < RESULT_PAGE_SIZE:
            return results
        after = page[-1].result_id


def open_store(url: str) -> Store:
    """`sqlite:///path/to/state.sqlite` (or a bare path) or `redis://host:port/db[?prefix=name]`."""
    if url.startswith("redis://") or url.startswith("rediss://") or url.startswith("unix://"):
        from coordinator.store.redis_store import RedisStore

        return RedisStore.from_url(url)
    from coordinator.store.sqlite_store import SqliteStore

    path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SqliteStore(path)


__all__: Sequence[str] = [
    "Store",
    "open_store",
    "read_all_results",
    "validate_texts",
    "validate_numbers",
    "check_text",
    "check_count",
    "check_positive",
    "check_enum",
    "check_strings",
    "check_mapping",
    "check_json",
    "check_limit",
    "check_hypothesis",
    "check_unit",
    "check_metrics",
    "check_score",
    "check_class_stats",
    "check_merge",
    "check_result_filter",
    "check_snapshot",
    "refuse_unless_empty",
    "StoreSnapshot",
    "result_matches",
    "to_json",
    "record_to_row",
    "record_from_row",
    "UNIT_CODE_HASH_FIELDS",
    "content_hash",
    "unit_to_row",
    "unit_code_hashes",
    "unit_from_row",
]
