"""The store contract on SQLite, plus what only SQLite has: schema versions and their migrations,
WAL, a movable clock."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.store.base import Store, content_hash, open_store, record_to_row
from coordinator.store.errors import StoreIntegrityError
from coordinator.store.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SchemaError, SqliteStore
from coordinator.store.types import UNIT_KIND_RANK, CodeStorage, UnitKind, UnitState, WorkUnit
from tests.conftest import OffsetClock
from tests.store_contract import StoreContract, add_volunteer, code_bytes, make_hypothesis, make_unit


class TestSqliteStore(StoreContract):
    SHORT_LEASE_S = 30.0  # the test clock jumps, so no stall can expire these early
    PAST_SHORT_LEASE_S = 31.0

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'state.sqlite'}"

    @pytest.fixture
    def make_store(self, tmp_path: Path, offset_clock: OffsetClock) -> Iterator[Callable[[], Store]]:
        opened: list[SqliteStore] = []

        def make() -> Store:
            opened.append(SqliteStore(tmp_path / "state.sqlite", clock=offset_clock))
            return opened[-1]

        yield make
        for store in opened:
            store.close()

    @pytest.fixture
    def advance_clock(self, offset_clock: OffsetClock) -> Callable[[float], None]:
        return offset_clock.advance


def test_file_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite")
    try:
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.schema_version() == SCHEMA_VERSION
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def test_schema_version_is_kept_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with SqliteStore(path) as store:
        store.add_hypothesis(make_hypothesis(hypothesis_id="h-keep"))
    with SqliteStore(path) as reopened:  # opening again migrates nothing and keeps the data
        assert reopened.schema_version() == SCHEMA_VERSION
        assert reopened.get_hypothesis("h-keep").hypothesis_id == "h-keep"
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(SchemaError):
        SqliteStore(path)


def test_open_store_accepts_urls_and_bare_paths(tmp_path: Path) -> None:
    for target in (f"sqlite:///{tmp_path / 'a.sqlite'}", str(tmp_path / "b.sqlite")):
        store = open_store(target)
        try:
            assert isinstance(store, SqliteStore)
        finally:
            store.close()
    assert (tmp_path / "a.sqlite").exists() and (tmp_path / "b.sqlite").exists()


def write_version_1_file(path: Path, units: list[WorkUnit]) -> None:
    """A store file as schema version 1 wrote it: every unit row holding its code inline."""
    raw = sqlite3.connect(path)
    with raw:
        for statement in MIGRATIONS[1]:
            raw.execute(statement)
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version (version) VALUES (1)")
        for unit in units:
            row = {**record_to_row(unit), "kind_rank": UNIT_KIND_RANK[unit.kind]}
            columns = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            raw.execute(f"INSERT INTO units ({columns}) VALUES ({marks})", tuple(row.values()))
    raw.close()


def test_version_1_file_moves_inline_code_into_blobs(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    shared_py, other_py = "MATRIX_LR = 0.04\n" * 300, "MATRIX_LR = 0.05\n" * 300
    profiles = '{"cpu": {"DEPTH": 2}}'
    units = [
        make_unit(
            unit_id=f"u-{i:02d}",
            kind=UnitKind.REPLICATE if i == 2 else UnitKind.BASELINE,
            train_py=other_py if i % 3 == 1 else shared_py,
            profiles_json=profiles,
            created_s=10.0 + i,
        )
        for i in range(30)
    ]
    write_version_1_file(path, units)
    version_1_bytes = path.stat().st_size
    with SqliteStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        assert store.integrity_check() == "ok"
        assert store.list_units() == units  # every field, and insertion order, kept
        assert store.code_storage() == CodeStorage(3, code_bytes(shared_py, other_py, profiles))
        columns = {row["name"] for row in store._conn.execute("PRAGMA table_info(units)")}
        assert {"train_py_sha256", "profiles_json_sha256"} <= columns
        assert not {"train_py", "profiles_json"} & columns  # the text left the rows
        assert store._conn.execute("PRAGMA freelist_count").fetchone()[0] == 0  # and the file shrank
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert path.stat().st_size < version_1_bytes
        hashes = store._conn.execute("SELECT train_py_sha256 FROM units ORDER BY seq").fetchall()
        assert [row[0] for row in hashes] == [content_hash(u.train_py) for u in units]
        # The rebuilt table still queues in order (kind rank first) and shares new code.
        volunteer = add_volunteer(store)
        granted = store.lease_unit(volunteer.principal_id, "alice", "cpu", 60.0)
        assert granted is not None
        assert granted[0] == dataclasses.replace(units[0], state=UnitState.LEASED, attempts=1)
        store.enqueue_unit(make_unit(train_py=other_py, profiles_json=profiles))
        assert store.code_storage().blobs == 3


def test_a_unit_whose_blob_is_gone_is_reported_as_damage(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.sqlite") as store:
        unit = store.enqueue_unit(make_unit())
        store._conn.execute("DELETE FROM blobs WHERE hash = ?", (content_hash(unit.train_py),))
        with pytest.raises(StoreIntegrityError, match=unit.unit_id):
            store.get_unit(unit.unit_id)
