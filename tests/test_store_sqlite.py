"""The store contract on SQLite, plus what only SQLite has: schema versions, WAL, a movable clock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.store.base import Store, open_store
from coordinator.store.sqlite_store import SCHEMA_VERSION, SchemaError, SqliteStore
from tests.conftest import OffsetClock
from tests.store_contract import StoreContract, make_hypothesis


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
