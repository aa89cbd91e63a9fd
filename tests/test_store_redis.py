"""The store contract on a real redis-server, plus what only Redis has: key layout, prefixes,
script reloading, URL parsing, unit records written before code blobs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from coordinator.store import redis_keys
from coordinator.store.base import Store, content_hash, open_store
from coordinator.store.errors import StoreIntegrityError
from coordinator.store.redis_store import RedisStore
from coordinator.store.types import CodeStorage, UnitState
from tests.store_contract import (
    StoreContract,
    a_score,
    add_volunteer,
    code_bytes,
    fresh_code,
    make_hypothesis,
    make_unit,
    ok_metrics,
)


class TestRedisStore(StoreContract):
    """Redis's clock is the server's TIME, so lease expiry waits for real (short) time."""

    @pytest.fixture
    def store_url(self, redis_url: str) -> str:
        return redis_url

    @pytest.fixture
    def make_store(self, store_url: str) -> Iterator[Callable[[], Store]]:
        opened: list[RedisStore] = []

        def make() -> Store:
            opened.append(RedisStore.from_url(store_url))
            return opened[-1]

        yield make
        cleaner = RedisStore.from_url(store_url)
        cleaner.delete_everything()
        cleaner.close()
        for store in opened:
            store.close()


def test_every_key_lives_under_the_prefix(redis_server: str) -> None:
    prefix = f"layout-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(f"{redis_server}/0?prefix={prefix}")
    neighbour = RedisStore.from_url(f"{redis_server}/0?prefix={prefix}-other")
    raw = redis.Redis.from_url(redis_server, decode_responses=True)
    try:
        h = store.add_hypothesis(make_hypothesis())
        unit = store.enqueue_unit(make_unit(h.hypothesis_id))
        volunteer = add_volunteer(store)
        store.lease_unit(volunteer.principal_id, volunteer.owner, "cpu", 60.0)
        store.set_meta("head_commit", "abc")
        keys = set(raw.scan_iter(match=store.keys.pattern()))
        assert keys and all(key.startswith("{" + prefix + "}:") for key in keys)
        assert store.keys.key(redis_keys.HYPOTHESIS, h.hypothesis_id) in keys
        assert store.keys.key(redis_keys.LEASES_ACTIVE) in keys
        assert store.keys.key(redis_keys.BLOB, content_hash(unit.train_py)) in keys
        # The same ids under another prefix are another store.
        assert neighbour.count_hypotheses() == 0
        assert neighbour.get_meta("head_commit") is None
        assert store.delete_everything() == len(keys)
        assert not list(raw.scan_iter(match=store.keys.pattern()))
    finally:
        store.delete_everything()
        for client in (store, neighbour, raw):
            client.close()


def test_scripts_are_reloaded_after_the_server_forgets_them(
    redis_store: RedisStore, redis_server: str
) -> None:
    redis_store.add_hypothesis(make_hypothesis(fingerprint="before-flush"))
    raw = redis.Redis.from_url(redis_server)
    try:
        raw.script_flush()
    finally:
        raw.close()
    redis_store.add_hypothesis(make_hypothesis(fingerprint="after-flush"))  # NOSCRIPT -> load -> run
    assert redis_store.count_hypotheses() == 2


def test_from_url_takes_db_and_prefix(redis_server: str) -> None:
    store = open_store(f"{redis_server}/3?prefix=url-{uuid.uuid4().hex[:8]}")
    try:
        assert isinstance(store, RedisStore)
        assert store._redis.connection_pool.connection_kwargs["db"] == 3
        store.set_meta("k", "v")
        raw = redis.Redis.from_url(f"{redis_server}/3", decode_responses=True)
        assert raw.hget(store.keys.key(redis_keys.META), "k") == "v"
        raw.close()
    finally:
        store.delete_everything()
        store.close()
    with pytest.raises(ValueError):
        RedisStore.from_url(f"{redis_server}/0?prefix=bad{{tag}}")


def test_durability_settings_are_reported(redis_store: RedisStore, caplog: pytest.LogCaptureFixture) -> None:
    assert redis_store.durability() == {"appendonly": "yes", "appendfsync": "always"}
    with caplog.at_level(logging.WARNING, logger="autoswarm.store.redis"):
        redis_store._warn_unless_durable()
    assert not caplog.records


def inline_code(raw: redis.Redis, store: RedisStore, unit_id: str, train_py: str, profiles_json: str) -> None:
    """Make a unit hash look as the store wrote it before code blobs: the text in the record."""
    key = store.keys.key(redis_keys.UNIT, unit_id)
    raw.hdel(key, "train_py_sha256", "profiles_json_sha256")
    raw.hset(key, mapping={"train_py": train_py, "profiles_json": profiles_json})


def test_units_written_with_inline_code_still_read(redis_store: RedisStore, redis_url: str) -> None:
    """Records from before code blobs keep working beside new ones, and move to blobs on import."""
    raw = redis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    train_py, profiles_json = fresh_code("inline")
    old = redis_store.enqueue_unit(make_unit(train_py=train_py, profiles_json=profiles_json))
    inline_code(raw, redis_store, old.unit_id, train_py, profiles_json)
    for text in (train_py, profiles_json):
        raw.delete(redis_store.keys.key(redis_keys.BLOB, content_hash(text)))
    assert redis_store.code_storage() == CodeStorage(0, 0)
    new = redis_store.enqueue_unit(make_unit(train_py=train_py.upper(), profiles_json=profiles_json))
    target = RedisStore.from_url(f"{redis_url}-copy")  # another prefix on the same server
    try:
        assert redis_store.get_unit(old.unit_id) == old
        assert redis_store.list_units() == [old, new]
        volunteer = add_volunteer(redis_store)
        granted = redis_store.lease_unit(volunteer.principal_id, "alice", "cpu", 60.0)
        assert granted is not None and (granted[0].unit_id, granted[0].train_py) == (old.unit_id, train_py)
        lease_id = granted[1].lease_id
        redis_store.record_result(lease_id, volunteer.principal_id, ok_metrics(), a_score(), "res-1")
        done = redis_store.get_unit(old.unit_id)
        assert (done.state, done.train_py, done.profiles_json) == (UnitState.DONE, train_py, profiles_json)
        snapshot = redis_store.export_snapshot()
        assert snapshot.units == (done, new)
        target.import_snapshot(snapshot)
        assert target.export_snapshot() == snapshot
        assert target.code_storage() == CodeStorage(3, code_bytes(train_py, train_py.upper(), profiles_json))
        assert not raw.hexists(target.keys.key(redis_keys.UNIT, old.unit_id), "train_py")
    finally:
        target.delete_everything()
        target.close()
        raw.close()


def test_a_unit_whose_blob_is_gone_is_reported_as_damage(redis_store: RedisStore, redis_server: str) -> None:
    unit = redis_store.enqueue_unit(make_unit())
    raw = redis.Redis.from_url(redis_server)
    try:
        raw.delete(redis_store.keys.key(redis_keys.BLOB, content_hash(unit.profiles_json)))
    finally:
        raw.close()
    with pytest.raises(StoreIntegrityError, match=unit.unit_id):
        redis_store.get_unit(unit.unit_id)
    with pytest.raises(StoreIntegrityError):
        redis_store.list_units()


def test_long_listings_are_read_in_short_scripts(redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """No page script reads more than PAGE_CHUNK records (each blocks Redis while it runs), and a
    listing across chunks is complete, in order, and has each record once."""
    from coordinator.store import redis_store as module
    from coordinator.store.types import HypothesisState

    monkeypatch.setattr(module, "PAGE_CHUNK", 7)
    added = [redis_store.add_hypothesis(make_hypothesis()).hypothesis_id for _ in range(30)]
    for hypothesis_id in added[::3]:
        redis_store.update_hypothesis(hypothesis_id, state=HypothesisState.LEASED)
    limits: list[int] = []
    run = redis_store._run

    def spy(script: str, *args: object) -> object:
        if script == "page":
            limits.append(int(args[2]))  # type: ignore[arg-type]
        return run(script, *args)

    monkeypatch.setattr(redis_store, "_run", spy)
    listed = [h.hypothesis_id for h in redis_store.list_hypotheses(limit=1000)]
    assert listed == added and len(limits) == 5 and max(limits) <= 7
    queued = [h.hypothesis_id for h in redis_store.list_hypotheses([HypothesisState.QUEUED], limit=1000)]
    assert queued == [h for i, h in enumerate(added) if i % 3]
    both = redis_store.list_hypotheses([HypothesisState.QUEUED, HypothesisState.LEASED], limit=1000)
    assert [h.hypothesis_id for h in both] == added  # merged across the two state indexes, in order
    assert [h.hypothesis_id for h in redis_store.list_hypotheses(limit=12)] == added[:12]


def test_pending_index_is_built_on_the_first_count_after_an_upgrade(redis_server: str) -> None:
    """Stores written before the units-pending index existed: the first count builds it from
    units-by-state, and later state changes keep it."""
    from coordinator.store.redis_store import PENDING_INDEX_FLAG
    from coordinator.store.types import UnitKind

    prefix = f"upgrade-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(f"{redis_server}/0?prefix={prefix}")
    raw = redis.Redis.from_url(redis_server, decode_responses=True)
    try:
        units = [store.enqueue_unit(make_unit()) for _ in range(3)]
        # As an older version left it: no index keys, no flag.
        raw.delete(store.keys.key(redis_keys.UNITS_PENDING, "baseline", "cpu", "c0ffee"))
        raw.hdel(store.keys.key(redis_keys.META), PENDING_INDEX_FLAG)
        assert store.count_pending_units(UnitKind.BASELINE, "cpu", "c0ffee") == 3
        assert raw.hget(store.keys.key(redis_keys.META), PENDING_INDEX_FLAG) == "1"
        store.cancel_unit(units[0].unit_id)
        assert store.count_pending_units(UnitKind.BASELINE, "cpu", "c0ffee") == 2
    finally:
        store.delete_everything()
        store.close()
        raw.close()

