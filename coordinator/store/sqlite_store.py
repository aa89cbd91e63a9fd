"""The embedded store: one SQLite file in WAL mode, safe to share between processes.

Every call is one transaction (`BEGIN IMMEDIATE` for writes, so writers queue on SQLite's lock
and wait up to `busy_timeout_s` instead of failing), `synchronous=FULL` makes a commit durable
before the call returns, and the clock is this host's (`clock`, injectable for tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from coordinator.store.base import (
    RowValue,
    Store,
    StoreSnapshot,
    check_class_stats,
    check_count,
    check_enum,
    check_hypothesis,
    check_json,
    check_limit,
    check_merge,
    check_metrics,
    check_positive,
    check_result_filter,
    check_score,
    check_snapshot,
    check_text,
    check_unit,
    content_hash,
    record_from_row,
    record_to_row,
    refuse_unless_empty,
    unit_code_hashes,
    unit_from_row,
    unit_to_row,
    validate_numbers,
)
from coordinator.store.errors import (
    ConflictError,
    DuplicateError,
    InvalidValueError,
    InviteError,
    LeaseExpiredError,
    NotFoundError,
    PermissionDeniedError,
    StoreError,
)
from coordinator.store.types import (
    MAX_HARDWARE_JSON_BYTES,
    MAX_META_VALUE_BYTES,
    MAX_REASON_BYTES,
    UNIT_KIND_RANK,
    ClassStats,
    CodeStorage,
    Hypothesis,
    HypothesisState,
    Invite,
    Lease,
    LeaseExtension,
    LeaseState,
    MergeRecord,
    NormalizedScore,
    Principal,
    ResultFilter,
    ResultRecord,
    Role,
    RunMetrics,
    UnitKind,
    UnitState,
    WorkUnit,
)

log = logging.getLogger("autoswarm.store.sqlite")

# ---------------------------------------------------------------------------------------------
# Schema. Version N is reached by running MIGRATIONS[1..N] in order; a file written by a newer
# version is refused rather than misread. Add a migration, never edit a released one.
# ---------------------------------------------------------------------------------------------

SCHEMA_VERSION = 2
DEFAULT_BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's transaction
BLOB_QUERY_CHUNK = 500  # hashes per `IN (...)` when a read resolves unit code
SHA256_SQL_FUNCTION = "autoswarm_sha256"  # base.content_hash, registered on every connection
CODE_BLOBS_VERSION = 2  # the first version storing unit code once; upgrading to it frees most pages

# The units table from version 2 on: code as hashes into `blobs` (invariant 12). Version 1 kept
# train_py and profiles_json inline in every row.
_UNITS_TABLE_V2 = """(
            seq INTEGER PRIMARY KEY, unit_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
            kind_rank INTEGER NOT NULL, hardware_class TEXT NOT NULL, base_commit TEXT NOT NULL,
            train_py_sha256 TEXT NOT NULL, profiles_json_sha256 TEXT NOT NULL, hypothesis_id TEXT NOT NULL,
            priority REAL NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
            excluded_volunteers TEXT NOT NULL, excluded_owners TEXT NOT NULL, created_s REAL NOT NULL)"""
_UNITS_COPIED_COLUMNS = (
    "seq, unit_id, kind, kind_rank, hardware_class, base_commit, hypothesis_id, priority, state, "
    "attempts, excluded_volunteers, excluded_owners, created_s"
)
_UNITS_INDEXES = (
    "CREATE INDEX units_queue ON units (hardware_class, state, kind_rank, priority DESC, seq)",
    "CREATE INDEX units_by_hypothesis ON units (hypothesis_id, seq)",
    "CREATE INDEX units_by_state ON units (state, seq)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE principals (
            seq INTEGER PRIMARY KEY, principal_id TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
            owner TEXT NOT NULL, display_name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
            hardware_class TEXT NOT NULL, hardware_json TEXT NOT NULL, created_s REAL NOT NULL,
            last_seen_s REAL NOT NULL, revoked INTEGER NOT NULL, revoked_reason TEXT NOT NULL)""",
        "CREATE INDEX principals_by_owner ON principals (owner, seq)",
        """CREATE TABLE invites (
            token_hash TEXT PRIMARY KEY, owner TEXT NOT NULL, max_uses INTEGER NOT NULL,
            uses INTEGER NOT NULL, expires_s REAL NOT NULL, created_s REAL NOT NULL)""",
        """CREATE TABLE hypotheses (
            seq INTEGER PRIMARY KEY, hypothesis_id TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
            rationale TEXT NOT NULL, patch TEXT NOT NULL, base_commit TEXT NOT NULL,
            source TEXT NOT NULL, proposer_id TEXT NOT NULL, fingerprint TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL, state_reason TEXT NOT NULL, priority REAL NOT NULL,
            constant_changes TEXT NOT NULL, touched_classes TEXT NOT NULL, created_s REAL NOT NULL,
            updated_s REAL NOT NULL, merged_commit TEXT NOT NULL)""",
        "CREATE INDEX hypotheses_by_state ON hypotheses (state, seq)",
        """CREATE TABLE units (
            seq INTEGER PRIMARY KEY, unit_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
            kind_rank INTEGER NOT NULL, hardware_class TEXT NOT NULL, base_commit TEXT NOT NULL,
            train_py TEXT NOT NULL, profiles_json TEXT NOT NULL, hypothesis_id TEXT NOT NULL,
            priority REAL NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
            excluded_volunteers TEXT NOT NULL, excluded_owners TEXT NOT NULL, created_s REAL NOT NULL)""",
        "CREATE INDEX units_queue ON units (hardware_class, state, kind_rank, priority DESC, seq)",
        "CREATE INDEX units_by_hypothesis ON units (hypothesis_id, seq)",
        "CREATE INDEX units_by_state ON units (state, seq)",
        """CREATE TABLE leases (
            seq INTEGER PRIMARY KEY, lease_id TEXT NOT NULL UNIQUE, unit_id TEXT NOT NULL,
            volunteer_id TEXT NOT NULL, owner TEXT NOT NULL, issued_s REAL NOT NULL,
            deadline_s REAL NOT NULL, state TEXT NOT NULL, slot INTEGER NOT NULL,
            progress_step INTEGER NOT NULL, progress_fraction REAL NOT NULL,
            progress_loss REAL NOT NULL, heartbeat_s REAL NOT NULL, ended_s REAL NOT NULL,
            end_reason TEXT NOT NULL)""",
        # Invariant 3 in the schema itself: a second active lease of a unit cannot be written.
        "CREATE UNIQUE INDEX leases_one_active_per_unit ON leases (unit_id) WHERE state = 'active'",
        "CREATE INDEX leases_active_by_deadline ON leases (deadline_s) WHERE state = 'active'",
        "CREATE INDEX leases_by_volunteer ON leases (volunteer_id, state)",
        """CREATE TABLE results (
            seq INTEGER PRIMARY KEY, result_id TEXT NOT NULL UNIQUE, lease_id TEXT NOT NULL UNIQUE,
            unit_id TEXT NOT NULL, kind TEXT NOT NULL, hypothesis_id TEXT NOT NULL,
            hardware_class TEXT NOT NULL, base_commit TEXT NOT NULL, volunteer_id TEXT NOT NULL,
            owner TEXT NOT NULL, status TEXT NOT NULL, metrics TEXT NOT NULL, score TEXT NOT NULL,
            reported_s REAL NOT NULL, counts INTEGER NOT NULL)""",
        "CREATE INDEX results_by_hypothesis ON results (hypothesis_id, seq)",
        "CREATE INDEX results_by_class ON results (hardware_class, seq)",
        "CREATE INDEX results_by_volunteer ON results (volunteer_id, seq)",
        """CREATE TABLE class_stats (
            hardware_class TEXT NOT NULL, "commit" TEXT NOT NULL, samples INTEGER NOT NULL,
            mean_val_bpb REAL NOT NULL, sigma REAL NOT NULL, updated_s REAL NOT NULL,
            PRIMARY KEY (hardware_class, "commit"))""",
        """CREATE TABLE merges (
            seq INTEGER PRIMARY KEY, "commit" TEXT NOT NULL UNIQUE, parent_commit TEXT NOT NULL,
            hypothesis_id TEXT NOT NULL, title TEXT NOT NULL, delta_bpb_by_class TEXT NOT NULL,
            merged_s REAL NOT NULL, reverted_by TEXT NOT NULL, revert_reason TEXT NOT NULL)""",
    ),
    # Code stored once per distinct text: every inline text moves into `blobs`, and units are
    # rebuilt holding hashes (a table rebuild, so the rows lose the text for real).
    2: (
        "CREATE TABLE blobs (hash TEXT PRIMARY KEY, text TEXT NOT NULL)",
        f"INSERT OR IGNORE INTO blobs (hash, text) "
        f"SELECT {SHA256_SQL_FUNCTION}(train_py), train_py FROM units ORDER BY seq",
        f"INSERT OR IGNORE INTO blobs (hash, text) "
        f"SELECT {SHA256_SQL_FUNCTION}(profiles_json), profiles_json FROM units ORDER BY seq",
        f"CREATE TABLE units_v2 {_UNITS_TABLE_V2}",
        f"INSERT INTO units_v2 ({_UNITS_COPIED_COLUMNS}, train_py_sha256, profiles_json_sha256) "
        f"SELECT {_UNITS_COPIED_COLUMNS}, {SHA256_SQL_FUNCTION}(train_py), "
        f"{SHA256_SQL_FUNCTION}(profiles_json) FROM units ORDER BY seq",
        "DROP TABLE units",  # its indexes go with it
        "ALTER TABLE units_v2 RENAME TO units",
        *_UNITS_INDEXES,
    ),
}


_T = TypeVar("_T")

# Every table that holds records (what an import requires to be empty).
_SNAPSHOT_TABLES = ("meta", "principals", "invites", "hypotheses", "units", "leases", "results", "class_stats", "merges")


class SchemaError(StoreError):
    """The database was written by a newer autoswarm (its schema version is unknown here)."""


def _insert(conn: sqlite3.Connection, table: str, row: Mapping[str, RowValue]) -> None:
    columns = ", ".join(f'"{name}"' for name in row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))


def _where(clauses: Iterable[tuple[str, object]]) -> tuple[str, list[object]]:
    parts, params = [], []
    for clause, param in clauses:
        parts.append(clause)
        params.append(param)
    return (" WHERE " + " AND ".join(parts) if parts else ""), params


class SqliteStore(Store):
    """SQLite backend. Several processes may open the same file; each call is one transaction."""

    def __init__(
        self,
        path: str | Path,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every call opens its own explicitly.
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        # The migration to version 2 hashes the code already stored, inside SQL.
        self._conn.create_function(SHA256_SQL_FUNCTION, 1, content_hash, deterministic=True)
        self._lock = threading.RLock()  # one connection, shared by the service's worker threads
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        if 0 < self._migrate() < CODE_BLOBS_VERSION:  # an existing file whose units held their code
            self._reclaim_space()

    # -- plumbing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One call, one transaction: committed when the body returns, rolled back when it raises
        (a StoreError included, so a refusal leaves nothing behind)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> int:
        """Bring the file to SCHEMA_VERSION in one transaction; returns the version it had."""
        with self._transaction(write=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = row["version"] if row else 0
            if current > SCHEMA_VERSION:
                raise SchemaError(
                    f"{self.path} has schema version {current}; this autoswarm knows up to {SCHEMA_VERSION}"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        return int(current)

    def _reclaim_space(self) -> None:
        """After code left the unit rows, VACUUM once so the file shrinks (SQLite otherwise keeps
        the freed pages for reuse). The migration is committed already: a VACUUM that cannot run
        now (a full disk, a lock held past the busy timeout) is logged and the store works on."""
        with self._lock:
            free_pages = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free_pages == 0:
                return
            try:
                self._conn.execute("VACUUM")
            except sqlite3.OperationalError as exc:
                log.warning("%s: VACUUM after moving unit code into blobs failed (%s); run it later",
                            self.path, exc)

    def schema_version(self) -> int:
        with self._transaction(write=False) as conn:
            return int(conn.execute("SELECT version FROM schema_version").fetchone()["version"])

    def now(self) -> float:
        return float(self._clock())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- metadata -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        check_text("key", key, required=True)
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        check_text("key", key, required=True)
        check_text("value", value, MAX_META_VALUE_BYTES)
        with self._transaction(write=True) as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def compare_and_set_meta(self, key: str, expected: str | None, value: str) -> bool:
        check_text("key", key, required=True)
        check_text("value", value, MAX_META_VALUE_BYTES)
        with self._transaction(write=True) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if (None if row is None else row["value"]) != expected:
                return False
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            return True

    # -- principals and invites --------------------------------------------------------------------

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
        role = check_enum(Role, "role", role)
        check_text("owner", owner, required=invite_token_hash is None)
        check_text("display_name", display_name)
        check_text("token_hash", token_hash, required=True)
        check_text("hardware_class", hardware_class)
        check_json("hardware_json", hardware_json, MAX_HARDWARE_JSON_BYTES)
        if invite_token_hash is not None:
            check_text("invite_token_hash", invite_token_hash, required=True)
        with self._transaction(write=True) as conn:
            now = self.now()
            existing = conn.execute(
                "SELECT principal_id FROM principals WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            if existing is not None:
                raise DuplicateError("a principal with this token already exists", existing["principal_id"])
            if invite_token_hash is not None:
                invite = conn.execute(
                    "SELECT * FROM invites WHERE token_hash = ?", (invite_token_hash,)
                ).fetchone()
                if invite is None:
                    raise InviteError("unknown invite token")
                if invite["uses"] >= invite["max_uses"]:
                    raise InviteError("this invite has been used up")
                if invite["expires_s"] > 0 and now >= invite["expires_s"]:
                    raise InviteError("this invite has expired")
                conn.execute("UPDATE invites SET uses = uses + 1 WHERE token_hash = ?", (invite_token_hash,))
                owner = invite["owner"]
            principal = Principal(
                principal_id=secrets.token_hex(12),
                role=role,
                owner=owner,
                display_name=display_name,
                token_hash=token_hash,
                hardware_class=hardware_class,
                hardware_json=hardware_json,
                created_s=now,
                last_seen_s=now,
            )
            _insert(conn, "principals", record_to_row(principal))
        return principal

    def get_principal(self, principal_id: str) -> Principal:
        with self._transaction(write=False) as conn:
            return self._principal(conn, principal_id)

    def _principal(self, conn: sqlite3.Connection, principal_id: str) -> Principal:
        row = conn.execute("SELECT * FROM principals WHERE principal_id = ?", (principal_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown principal {principal_id!r}")
        return record_from_row(Principal, row)

    def find_principal_by_token_hash(self, token_hash: str) -> Principal | None:
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM principals WHERE token_hash = ?", (token_hash,)).fetchone()
        return None if row is None else record_from_row(Principal, row)

    def list_principals(self, role: Role | None = None, owner: str | None = None) -> list[Principal]:
        clauses: list[tuple[str, object]] = []
        if role is not None:
            clauses.append(("role = ?", check_enum(Role, "role", role).value))
        if owner is not None:
            clauses.append(("owner = ?", owner))
        where, params = _where(clauses)
        with self._transaction(write=False) as conn:
            rows = conn.execute(f"SELECT * FROM principals{where} ORDER BY seq", params).fetchall()
        return [record_from_row(Principal, row) for row in rows]

    def touch_principal(self, principal_id: str) -> None:
        with self._transaction(write=True) as conn:
            updated = conn.execute(
                "UPDATE principals SET last_seen_s = ? WHERE principal_id = ?", (self.now(), principal_id)
            ).rowcount
            if updated == 0:
                raise NotFoundError(f"unknown principal {principal_id!r}")

    def revoke_principal(self, principal_id: str, reason: str) -> int:
        check_text("reason", reason, MAX_REASON_BYTES)
        with self._transaction(write=True) as conn:
            self._principal(conn, principal_id)
            return self._revoke(conn, principal_id, reason, self.now())

    def revoke_owner(self, owner: str, reason: str) -> tuple[list[str], int]:
        check_text("owner", owner, required=True)
        check_text("reason", reason, MAX_REASON_BYTES)
        with self._transaction(write=True) as conn:
            now = self.now()
            ids = [
                row["principal_id"]
                for row in conn.execute(
                    "SELECT principal_id FROM principals WHERE owner = ? AND revoked = 0 ORDER BY seq",
                    (owner,),
                )
            ]
            discounted = sum(self._revoke(conn, principal_id, reason, now) for principal_id in ids)
        return ids, discounted

    def _revoke(self, conn: sqlite3.Connection, principal_id: str, reason: str, now: float) -> int:
        """Revoke once (a second revocation keeps the first reason and changes nothing)."""
        revoked = conn.execute(
            "UPDATE principals SET revoked = 1, revoked_reason = ? WHERE principal_id = ? AND revoked = 0",
            (reason, principal_id),
        ).rowcount
        if revoked == 0:
            return 0
        active = conn.execute(
            "SELECT lease_id FROM leases WHERE volunteer_id = ? AND state = 'active'", (principal_id,)
        ).fetchall()
        for row in active:
            self._end_lease(conn, row["lease_id"], LeaseState.RELEASED, f"revoked: {reason}", now)
        return conn.execute(
            "UPDATE results SET counts = 0 WHERE volunteer_id = ? AND counts = 1", (principal_id,)
        ).rowcount

    def create_invite(self, token_hash: str, owner: str, max_uses: int = 1, expires_s: float = 0.0) -> Invite:
        check_text("token_hash", token_hash, required=True)
        check_text("owner", owner, required=True)
        check_count("max_uses", max_uses, minimum=1)
        validate_numbers({"expires_s": expires_s})
        if expires_s < 0:
            raise InvalidValueError("expires_s must be 0 (never) or a time")
        with self._transaction(write=True) as conn:
            if conn.execute("SELECT 1 FROM invites WHERE token_hash = ?", (token_hash,)).fetchone():
                raise DuplicateError("an invite with this token already exists", token_hash)
            invite = Invite(token_hash, owner, max_uses, 0, float(expires_s), self.now())
            _insert(conn, "invites", record_to_row(invite))
        return invite

    # -- hypotheses -------------------------------------------------------------------------------

    def add_hypothesis(self, hypothesis: Hypothesis) -> Hypothesis:
        hypothesis = check_hypothesis(hypothesis)
        with self._transaction(write=True) as conn:
            original = conn.execute(
                "SELECT hypothesis_id FROM hypotheses WHERE fingerprint = ?", (hypothesis.fingerprint,)
            ).fetchone()
            if original is not None:
                raise DuplicateError(
                    f"the same change was submitted as {original['hypothesis_id']}", original["hypothesis_id"]
                )
            if conn.execute(
                "SELECT 1 FROM hypotheses WHERE hypothesis_id = ?", (hypothesis.hypothesis_id,)
            ).fetchone():
                raise DuplicateError(
                    f"hypothesis {hypothesis.hypothesis_id!r} exists", hypothesis.hypothesis_id
                )
            now = self.now()
            stored = _replace(hypothesis, created_s=now, updated_s=now)
            _insert(conn, "hypotheses", record_to_row(stored))
        return stored

    def get_hypothesis(self, hypothesis_id: str) -> Hypothesis:
        with self._transaction(write=False) as conn:
            return self._hypothesis(conn, hypothesis_id)

    def _hypothesis(self, conn: sqlite3.Connection, hypothesis_id: str) -> Hypothesis:
        row = conn.execute("SELECT * FROM hypotheses WHERE hypothesis_id = ?", (hypothesis_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown hypothesis {hypothesis_id!r}")
        return record_from_row(Hypothesis, row)

    def _state_clause(self, states: Iterable[HypothesisState]) -> tuple[str, list[str]]:
        values = sorted({check_enum(HypothesisState, "state", s).value for s in states})
        if not values:
            return "", []
        return f"state IN ({', '.join('?' for _ in values)})", values

    def list_hypotheses(
        self, states: Iterable[HypothesisState] = (), limit: int = 100, after: str = ""
    ) -> list[Hypothesis]:
        check_limit(limit)
        state_clause, params = self._state_clause(states)
        clauses = [state_clause] if state_clause else []
        with self._transaction(write=False) as conn:
            if after:
                clauses.append("seq > ?")
                params.append(self._seq(conn, "hypotheses", "hypothesis_id", after))
            where = " WHERE " + " AND ".join(clauses) if clauses else ""
            rows = conn.execute(
                f"SELECT * FROM hypotheses{where} ORDER BY seq LIMIT ?", (*params, limit)
            ).fetchall()
        return [record_from_row(Hypothesis, row) for row in rows]

    def _seq(self, conn: sqlite3.Connection, table: str, id_column: str, record_id: str) -> int:
        row = conn.execute(f"SELECT seq FROM {table} WHERE {id_column} = ?", (record_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown page position {record_id!r}")
        return int(row["seq"])

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
        changes: dict[str, RowValue] = {}
        if state is not None:
            changes["state"] = check_enum(HypothesisState, "state", state).value
        if state_reason is not None:
            changes["state_reason"] = check_text("state_reason", state_reason, MAX_REASON_BYTES)
        if priority is not None:
            validate_numbers({"priority": priority})
            changes["priority"] = float(priority)
        if merged_commit is not None:
            changes["merged_commit"] = check_text("merged_commit", merged_commit)
        if expected_state is not None:
            expected_state = check_enum(HypothesisState, "expected_state", expected_state)
        with self._transaction(write=True) as conn:
            current = self._hypothesis(conn, hypothesis_id)
            if expected_state is not None and current.state != expected_state:
                raise ConflictError(
                    f"hypothesis {hypothesis_id} is {current.state.value}, not {expected_state.value}"
                )
            changes["updated_s"] = self.now()
            assignments = ", ".join(f"{name} = ?" for name in changes)
            conn.execute(
                f"UPDATE hypotheses SET {assignments} WHERE hypothesis_id = ?",
                (*changes.values(), hypothesis_id),
            )
            if priority is not None and float(priority) != current.priority:
                conn.execute(
                    "UPDATE units SET priority = priority + ? WHERE hypothesis_id = ? AND state = 'queued'",
                    (float(priority) - current.priority, hypothesis_id),
                )
            return self._hypothesis(conn, hypothesis_id)

    def count_hypotheses(self, states: Iterable[HypothesisState] = ()) -> int:
        state_clause, params = self._state_clause(states)
        where = f" WHERE {state_clause}" if state_clause else ""
        with self._transaction(write=False) as conn:
            return int(conn.execute(f"SELECT COUNT(*) AS n FROM hypotheses{where}", params).fetchone()["n"])

    # -- work units and leases --------------------------------------------------------------------

    def enqueue_unit(self, unit: WorkUnit) -> WorkUnit:
        unit = check_unit(unit)
        with self._transaction(write=True) as conn:
            if unit.hypothesis_id:
                self._hypothesis(conn, unit.hypothesis_id)
            if conn.execute("SELECT 1 FROM units WHERE unit_id = ?", (unit.unit_id,)).fetchone():
                raise DuplicateError(f"unit {unit.unit_id!r} exists", unit.unit_id)
            stored = _replace(unit, created_s=self.now())
            row, blobs = unit_to_row(stored)
            conn.executemany("INSERT OR IGNORE INTO blobs (hash, text) VALUES (?, ?)", blobs.items())
            _insert(conn, "units", {**row, "kind_rank": UNIT_KIND_RANK[unit.kind]})
        return stored

    def get_unit(self, unit_id: str, with_code: bool = True) -> WorkUnit:
        with self._transaction(write=False) as conn:
            if not with_code:
                return unit_from_row(self._unit_row(conn, unit_id), {}, with_code=False)
            return self._unit(conn, unit_id)

    def _unit(self, conn: sqlite3.Connection, unit_id: str) -> WorkUnit:
        return self._units_with_code(conn, [self._unit_row(conn, unit_id)])[0]

    def _unit_row(self, conn: sqlite3.Connection, unit_id: str) -> sqlite3.Row:
        """The stored row: code as hashes (enough for state checks and results)."""
        row = conn.execute("SELECT * FROM units WHERE unit_id = ?", (unit_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown unit {unit_id!r}")
        return row

    def _units_with_code(self, conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[WorkUnit]:
        """Units with their code, each distinct text read once and shared by the units naming it."""
        needed = sorted(set().union(*(unit_code_hashes(row) for row in rows)))
        blobs: dict[str, str] = {}
        for start in range(0, len(needed), BLOB_QUERY_CHUNK):
            chunk = needed[start : start + BLOB_QUERY_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            found = conn.execute(f"SELECT hash, text FROM blobs WHERE hash IN ({marks})", chunk)
            blobs.update((row["hash"], row["text"]) for row in found)
        return [unit_from_row(row, blobs) for row in rows]

    def code_storage(self) -> CodeStorage:
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT COUNT(*) AS n, COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) AS size FROM blobs"
            ).fetchone()
        return CodeStorage(blobs=int(row["n"]), blob_bytes=int(row["size"]))

    def list_units(
        self, hypothesis_id: str = "", state: UnitState | None = None, hardware_class: str = ""
    ) -> list[WorkUnit]:
        clauses: list[tuple[str, object]] = []
        if hypothesis_id:
            clauses.append(("hypothesis_id = ?", hypothesis_id))
        if state is not None:
            clauses.append(("state = ?", check_enum(UnitState, "state", state).value))
        if hardware_class:
            clauses.append(("hardware_class = ?", hardware_class))
        where, params = _where(clauses)
        with self._transaction(write=False) as conn:
            rows = conn.execute(f"SELECT * FROM units{where} ORDER BY seq", params).fetchall()
            return self._units_with_code(conn, rows)

    def count_queued(self, hardware_class: str) -> int:
        with self._transaction(write=False) as conn:  # the units_queue index covers it
            row = conn.execute(
                "SELECT COUNT(*) FROM units WHERE hardware_class = ? AND state = 'queued'", (hardware_class,)
            ).fetchone()
            return int(row[0])

    def count_pending_units(self, kind: UnitKind, hardware_class: str, base_commit: str) -> int:
        kind = check_enum(UnitKind, "kind", kind)
        with self._transaction(write=False) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM units WHERE hardware_class = ? AND state IN ('queued', 'leased') "
                "AND kind = ? AND base_commit = ?",
                (hardware_class, kind.value, base_commit),
            ).fetchone()
            return int(row[0])

    def cancel_units(self, hypothesis_id: str) -> int:
        with self._transaction(write=True) as conn:
            self._hypothesis(conn, hypothesis_id)
            return conn.execute(
                "UPDATE units SET state = 'cancelled' WHERE hypothesis_id = ? AND state = 'queued'",
                (hypothesis_id,),
            ).rowcount

    def cancel_unit(self, unit_id: str) -> bool:
        with self._transaction(write=True) as conn:
            if self._unit_row(conn, unit_id)["state"] != UnitState.QUEUED:
                return False
            conn.execute("UPDATE units SET state = 'cancelled' WHERE unit_id = ? AND state = 'queued'", (unit_id,))
            return True

    def requeue_unit(self, unit_id: str) -> WorkUnit:
        with self._transaction(write=True) as conn:
            state = self._unit_row(conn, unit_id)["state"]
            if state not in (UnitState.DONE, UnitState.CANCELLED):
                raise ConflictError(f"unit {unit_id} is {state}; only done or cancelled units requeue")
            conn.execute("UPDATE units SET state = 'queued' WHERE unit_id = ?", (unit_id,))
            return self._unit(conn, unit_id)

    def lease_unit(
        self, volunteer_id: str, owner: str, hardware_class: str, lease_duration_s: float, slot: int = 0
    ) -> tuple[WorkUnit, Lease] | None:
        check_text("hardware_class", hardware_class, required=True)
        check_positive("lease_duration_s", lease_duration_s)
        check_count("slot", slot)
        with self._transaction(write=True) as conn:
            volunteer = self._principal(conn, volunteer_id)
            _check_may_lease(volunteer, owner)
            now = self.now()
            conn.execute("UPDATE principals SET last_seen_s = ? WHERE principal_id = ?", (now, volunteer_id))
            self._expire(conn, now)
            row = conn.execute(
                """SELECT * FROM units
                   WHERE hardware_class = ? AND state = 'queued'
                     AND NOT EXISTS (SELECT 1 FROM json_each(units.excluded_volunteers) WHERE value = ?)
                     AND NOT EXISTS (SELECT 1 FROM json_each(units.excluded_owners) WHERE value = ?)
                   ORDER BY kind_rank, priority DESC, seq LIMIT 1""",
                (hardware_class, volunteer_id, owner),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE units SET state = 'leased', attempts = attempts + 1 WHERE unit_id = ?",
                (row["unit_id"],),
            )
            lease = Lease(
                lease_id=secrets.token_hex(16),
                unit_id=row["unit_id"],
                volunteer_id=volunteer_id,
                owner=owner,
                issued_s=now,
                deadline_s=now + float(lease_duration_s),
                slot=slot,
                heartbeat_s=now,
            )
            _insert(conn, "leases", record_to_row(lease))
            if row["hypothesis_id"]:
                conn.execute(
                    "UPDATE hypotheses SET state = 'leased', updated_s = ? WHERE hypothesis_id = ? AND state = 'queued'",
                    (now, row["hypothesis_id"]),
                )
            return self._unit(conn, row["unit_id"]), lease

    def get_lease(self, lease_id: str) -> Lease:
        with self._transaction(write=False) as conn:
            return self._lease(conn, lease_id)

    def _lease(self, conn: sqlite3.Connection, lease_id: str) -> Lease:
        row = conn.execute("SELECT * FROM leases WHERE lease_id = ?", (lease_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown lease {lease_id!r}")
        return record_from_row(Lease, row)

    def list_leases(self, active_only: bool = True) -> list[Lease]:
        where = " WHERE state = 'active'" if active_only else ""
        with self._transaction(write=False) as conn:
            rows = conn.execute(f"SELECT * FROM leases{where} ORDER BY seq").fetchall()
        return [record_from_row(Lease, row) for row in rows]

    def _live_lease(self, conn: sqlite3.Connection, lease_id: str, volunteer_id: str, now: float) -> Lease:
        lease = self._lease(conn, lease_id)
        if lease.volunteer_id != volunteer_id:
            raise PermissionDeniedError(f"lease {lease_id} belongs to another volunteer")
        if lease.state != LeaseState.ACTIVE:
            raise LeaseExpiredError(f"lease {lease_id} is {lease.state.value}")
        if lease.deadline_s <= now:
            raise LeaseExpiredError(f"lease {lease_id} passed its deadline")
        return lease

    def extend_lease(
        self,
        lease_id: str,
        volunteer_id: str,
        lease_duration_s: float,
        step: int = 0,
        fraction: float = 0.0,
        loss: float = 0.0,
    ) -> Lease:
        extension = LeaseExtension(lease_id, volunteer_id, lease_duration_s, step, fraction, loss)
        with self._transaction(write=True) as conn:
            return self._extend(conn, extension, self.now())

    def extend_leases(self, extensions: Sequence[LeaseExtension]) -> list[Lease | Exception]:
        """One transaction (one fsync) for the group; each checked before anything of it is written."""
        out: list[Lease | Exception] = []
        with self._transaction(write=True) as conn:
            now = self.now()
            for extension in extensions:
                try:
                    out.append(self._extend(conn, extension, now))
                except StoreError as exc:
                    out.append(exc)
        return out

    def _extend(self, conn: sqlite3.Connection, e: LeaseExtension, now: float) -> Lease:
        check_positive("lease_duration_s", e.lease_duration_s)
        check_count("step", e.step)
        validate_numbers({"fraction": e.fraction, "loss": e.loss})
        self._live_lease(conn, e.lease_id, e.volunteer_id, now)
        conn.execute(
            """UPDATE leases SET deadline_s = ?, progress_step = ?, progress_fraction = ?,
               progress_loss = ?, heartbeat_s = ? WHERE lease_id = ?""",
            (now + float(e.lease_duration_s), e.step, float(e.fraction), float(e.loss), now, e.lease_id),
        )
        return self._lease(conn, e.lease_id)

    def release_lease(self, lease_id: str, volunteer_id: str, reason: str = "") -> Lease:
        check_text("reason", reason, MAX_REASON_BYTES)
        with self._transaction(write=True) as conn:
            now = self.now()
            self._live_lease(conn, lease_id, volunteer_id, now)
            self._end_lease(conn, lease_id, LeaseState.RELEASED, reason, now)
            return self._lease(conn, lease_id)

    def expire_leases(self) -> list[Lease]:
        with self._transaction(write=True) as conn:
            return self._expire(conn, self.now())

    def _expire(self, conn: sqlite3.Connection, now: float) -> list[Lease]:
        due = conn.execute(
            "SELECT lease_id FROM leases WHERE state = 'active' AND deadline_s <= ? ORDER BY seq", (now,)
        ).fetchall()
        for row in due:
            self._end_lease(conn, row["lease_id"], LeaseState.EXPIRED, "deadline passed", now)
        return [self._lease(conn, row["lease_id"]) for row in due]

    def _end_lease(
        self, conn: sqlite3.Connection, lease_id: str, state: LeaseState, reason: str, now: float
    ) -> None:
        """An active lease stops; unless it was reported, its unit becomes leasable again."""
        conn.execute(
            "UPDATE leases SET state = ?, ended_s = ?, end_reason = ? WHERE lease_id = ?",
            (state.value, now, reason, lease_id),
        )
        if state != LeaseState.REPORTED:
            conn.execute(
                "UPDATE units SET state = 'queued' WHERE state = 'leased' AND unit_id = "
                "(SELECT unit_id FROM leases WHERE lease_id = ?)",
                (lease_id,),
            )

    # -- results ------------------------------------------------------------------------------------

    def record_result(
        self, lease_id: str, volunteer_id: str, metrics: RunMetrics, score: NormalizedScore, result_id: str
    ) -> tuple[ResultRecord, bool]:
        metrics = check_metrics(metrics)
        score = check_score(score)
        check_text("result_id", result_id, required=True)
        with self._transaction(write=True) as conn:
            lease = self._lease(conn, lease_id)
            if lease.volunteer_id != volunteer_id:
                raise PermissionDeniedError(f"lease {lease_id} belongs to another volunteer")
            stored = conn.execute("SELECT * FROM results WHERE lease_id = ?", (lease_id,)).fetchone()
            if stored is not None:
                return record_from_row(ResultRecord, stored), True
            if conn.execute("SELECT 1 FROM results WHERE result_id = ?", (result_id,)).fetchone():
                raise DuplicateError(f"result id {result_id!r} is taken by another lease", result_id)
            now = self.now()
            self._live_lease(conn, lease_id, volunteer_id, now)
            if self._principal(conn, volunteer_id).revoked:
                raise PermissionDeniedError(f"volunteer {volunteer_id} is revoked")
            unit = self._unit_row(conn, lease.unit_id)  # the result copies no code
            record = ResultRecord(
                result_id=result_id,
                lease_id=lease_id,
                unit_id=unit["unit_id"],
                kind=UnitKind(unit["kind"]),
                hypothesis_id=unit["hypothesis_id"],
                hardware_class=unit["hardware_class"],
                base_commit=unit["base_commit"],
                volunteer_id=volunteer_id,
                owner=lease.owner,
                metrics=metrics,
                score=score,
                reported_s=now,
            )
            _insert(conn, "results", {**record_to_row(record), "status": metrics.status.value})
            self._end_lease(conn, lease_id, LeaseState.REPORTED, "", now)
            conn.execute("UPDATE units SET state = 'done' WHERE unit_id = ?", (lease.unit_id,))
        return record, False

    def get_result(self, result_id: str) -> ResultRecord:
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM results WHERE result_id = ?", (result_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown result {result_id!r}")
        return record_from_row(ResultRecord, row)

    def result_for_lease(self, lease_id: str) -> ResultRecord | None:
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT * FROM results WHERE lease_id = ?", (lease_id,)).fetchone()
        return None if row is None else record_from_row(ResultRecord, row)

    def list_results(
        self, result_filter: ResultFilter | None = None, limit: int = 1000, after: str = ""
    ) -> list[ResultRecord]:
        f = check_result_filter(result_filter)
        check_limit(limit)
        clauses: list[tuple[str, object]] = []
        for column, value in (
            ("hardware_class", f.hardware_class),
            ("hypothesis_id", f.hypothesis_id),
            ("volunteer_id", f.volunteer_id),
            ("base_commit", f.base_commit),
        ):
            if value:
                clauses.append((f"{column} = ?", value))
        if f.status is not None:
            clauses.append(("status = ?", f.status.value))
        if f.kind is not None:
            clauses.append(("kind = ?", f.kind.value))
        if f.since_s:
            clauses.append(("reported_s >= ?", float(f.since_s)))
        if f.counting_only:
            clauses.append(("counts = ?", 1))
        with self._transaction(write=False) as conn:
            if after:
                clauses.append(("seq > ?", self._seq(conn, "results", "result_id", after)))
            where, params = _where(clauses)
            rows = conn.execute(
                f"SELECT * FROM results{where} ORDER BY seq LIMIT ?", (*params, limit)
            ).fetchall()
        return [record_from_row(ResultRecord, row) for row in rows]

    # -- statistics and merges ------------------------------------------------------------------

    def put_class_stats(self, stats: ClassStats) -> None:
        stats = check_class_stats(stats)
        with self._transaction(write=True) as conn:
            row = record_to_row(_replace(stats, updated_s=self.now()))
            conn.execute(
                'INSERT OR REPLACE INTO class_stats (hardware_class, "commit", samples, mean_val_bpb, sigma, '
                "updated_s) VALUES (:hardware_class, :commit, :samples, :mean_val_bpb, :sigma, :updated_s)",
                row,
            )

    def get_class_stats(self, hardware_class: str, commit: str) -> ClassStats | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(
                'SELECT * FROM class_stats WHERE hardware_class = ? AND "commit" = ?',
                (hardware_class, commit),
            ).fetchone()
        return None if row is None else record_from_row(ClassStats, row)

    def list_class_stats(self, commit: str = "") -> list[ClassStats]:
        where, params = _where([('"commit" = ?', commit)] if commit else [])
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                f'SELECT * FROM class_stats{where} ORDER BY hardware_class, "commit"', params
            ).fetchall()
        return [record_from_row(ClassStats, row) for row in rows]

    def add_merge(self, merge: MergeRecord) -> MergeRecord:
        merge = check_merge(merge)
        with self._transaction(write=True) as conn:
            if conn.execute('SELECT 1 FROM merges WHERE "commit" = ?', (merge.commit,)).fetchone():
                raise DuplicateError(f"merge {merge.commit} is already recorded", merge.commit)
            stored = _replace(merge, merged_s=self.now())
            _insert(conn, "merges", record_to_row(stored))
        return stored

    def mark_reverted(self, commit: str, reverted_by: str, reason: str) -> MergeRecord:
        check_text("reverted_by", reverted_by, required=True)
        check_text("reason", reason, MAX_REASON_BYTES)
        with self._transaction(write=True) as conn:
            row = conn.execute('SELECT * FROM merges WHERE "commit" = ?', (commit,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown merge {commit!r}")
            if row["reverted_by"]:
                raise ConflictError(f"merge {commit} was already reverted by {row['reverted_by']}")
            conn.execute(
                'UPDATE merges SET reverted_by = ?, revert_reason = ? WHERE "commit" = ?',
                (reverted_by, reason, commit),
            )
            return record_from_row(
                MergeRecord, conn.execute('SELECT * FROM merges WHERE "commit" = ?', (commit,)).fetchone()
            )

    def list_merges(self, limit: int = 100) -> list[MergeRecord]:
        check_limit(limit)
        with self._transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM merges ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [record_from_row(MergeRecord, row) for row in rows]

    # -- whole-store snapshots ------------------------------------------------------------------

    def export_snapshot(self) -> StoreSnapshot:
        # One read transaction: WAL gives it a single consistent view while writers go on.
        units_query = "SELECT * FROM units ORDER BY seq"
        with self._transaction(write=False) as conn:

            def rows(record_type: type[_T], query: str) -> tuple[_T, ...]:
                return tuple(record_from_row(record_type, row) for row in conn.execute(query).fetchall())

            return StoreSnapshot(
                meta={row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta ORDER BY key")},
                principals=rows(Principal, "SELECT * FROM principals ORDER BY seq"),
                invites=rows(Invite, "SELECT * FROM invites ORDER BY created_s, token_hash"),
                hypotheses=rows(Hypothesis, "SELECT * FROM hypotheses ORDER BY seq"),
                units=tuple(self._units_with_code(conn, conn.execute(units_query).fetchall())),
                leases=rows(Lease, "SELECT * FROM leases ORDER BY seq"),
                results=rows(ResultRecord, "SELECT * FROM results ORDER BY seq"),
                class_stats=rows(ClassStats, 'SELECT * FROM class_stats ORDER BY hardware_class, "commit"'),
                merges=rows(MergeRecord, "SELECT * FROM merges ORDER BY seq"),
            )

    def import_snapshot(self, snapshot: StoreSnapshot) -> None:
        snapshot = check_snapshot(snapshot)
        with self._transaction(write=True) as conn:
            refuse_unless_empty(
                self.path,
                [table for table in _SNAPSHOT_TABLES if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()],
            )
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(snapshot.meta.items()))
            # Rows go in in snapshot order, so each table's seq keeps the original insertion order.
            for principal in snapshot.principals:
                _insert(conn, "principals", record_to_row(principal))
            for invite in snapshot.invites:
                _insert(conn, "invites", record_to_row(invite))
            for hypothesis in snapshot.hypotheses:
                _insert(conn, "hypotheses", record_to_row(hypothesis))
            for unit in snapshot.units:
                row, blobs = unit_to_row(unit)
                conn.executemany("INSERT OR IGNORE INTO blobs (hash, text) VALUES (?, ?)", blobs.items())
                _insert(conn, "units", {**row, "kind_rank": UNIT_KIND_RANK[unit.kind]})
            for lease in snapshot.leases:
                _insert(conn, "leases", record_to_row(lease))
            for result in snapshot.results:
                _insert(conn, "results", {**record_to_row(result), "status": result.metrics.status.value})
            for stats in snapshot.class_stats:
                _insert(conn, "class_stats", record_to_row(stats))
            for merge in snapshot.merges:
                _insert(conn, "merges", record_to_row(merge))

    # -- checks -------------------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """SQLite's own consistency check ("ok" when the file is sound)."""
        with self._transaction(write=False) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _check_may_lease(volunteer: Principal, owner: str) -> None:
    """Only a live volunteer leases, for its own owner (the Redis script checks the same)."""
    if volunteer.revoked:
        raise PermissionDeniedError(f"volunteer {volunteer.principal_id} is revoked")
    if volunteer.role != Role.VOLUNTEER:
        raise PermissionDeniedError(
            f"principal {volunteer.principal_id} is a {volunteer.role.value}, not a volunteer"
        )
    if volunteer.owner != owner:
        raise InvalidValueError(
            f"volunteer {volunteer.principal_id} belongs to {volunteer.owner!r}, not {owner!r}"
        )


def _replace(record: _T, **changes: object) -> _T:
    return dataclasses.replace(record, **changes)  # type: ignore[type-var]
