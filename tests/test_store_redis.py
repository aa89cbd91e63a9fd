"""The store contract on a real redis-server, plus what only Redis has: key layout, prefixes,
script reloading, URL parsing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from coordinator.store import redis_keys
from coordinator.store.base import Store, open_store
from coordinator.store.redis_store import RedisStore
from tests.store_contract import StoreContract, add_volunteer, make_hypothesis, make_unit


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
        store.enqueue_unit(make_unit(h.hypothesis_id))
        volunteer = add_volunteer(store)
        store.lease_unit(volunteer.principal_id, volunteer.owner, "cpu", 60.0)
        store.set_meta("head_commit", "abc")
        keys = set(raw.scan_iter(match=store.keys.pattern()))
        assert keys and all(key.startswith("{" + prefix + "}:") for key in keys)
        assert store.keys.key(redis_keys.HYPOTHESIS, h.hypothesis_id) in keys
        assert store.keys.key(redis_keys.LEASES_ACTIVE) in keys
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
