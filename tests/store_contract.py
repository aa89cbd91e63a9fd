"""The store contract: one test class, run against every backend (and later a gRPC client).

A subclass provides two fixtures:
- `make_store`: a callable returning a new handle on ONE shared, initially empty store;
- `store_url`: a URL that `STORE_OPENER` (a "module:function" path) opens in a child process.
It may override `advance_clock` (a callable(seconds)) when its store's clock can be moved without
sleeping, and narrow `CAPABILITIES` to skip the tests of operations it does not offer.

The numbers in the docstrings refer to the invariants at the top of coordinator/store/base.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import multiprocessing
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from coordinator.store.base import Store, StoreSnapshot
from coordinator.store.errors import (
    ConflictError,
    DuplicateError,
    InvalidValueError,
    InviteError,
    LeaseExpiredError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from coordinator.store.types import (
    MAX_ENVIRONMENT_ENTRIES,
    MAX_LIST_ENTRIES,
    MAX_LOG_TAIL_BYTES,
    MAX_META_VALUE_BYTES,
    MAX_PATCH_BYTES,
    MAX_PROFILES_BYTES,
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
    ResultFilter,
    ResultRecord,
    Role,
    RunMetrics,
    RunStatus,
    UnitKind,
    UnitState,
    WorkUnit,
)

ALL_CAPABILITIES = frozenset(
    {
        "meta",
        "principals",
        "invites",
        "revocation",
        "hypotheses",
        "units",  # enqueue/cancel/requeue/list units (the service does these itself)
        "leases",
        "results",
        "stats",
        "merges",
        "processes",  # child processes open the store from store_url
        "snapshots",  # export_snapshot / import_snapshot (backup, restore, migration)
        "code_storage",  # code_storage(): how many distinct code texts are stored (invariant 12)
    }
)

LONG_LEASE_S = 600.0
SEEN_STEP_S = 1.0  # clock advance between leases: real seconds on stores whose clock is the server's
RACE_UNITS = 200  # units two processes fight over
RACE_TIMEOUT_S = 90.0
RACE_WORK_S = 0.002  # a racer "works" this long per lease; without any pause SQLite's busy
# handler (sleeping up to 100 ms between tries) can let one process take every unit in a burst


def requires(*capabilities: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a test as needing capabilities; subclasses without them skip it."""
    unknown = set(capabilities) - ALL_CAPABILITIES
    assert not unknown, f"unknown capabilities {unknown}"

    def mark(test: Callable[..., Any]) -> Callable[..., Any]:
        test.store_capabilities = frozenset(capabilities)  # type: ignore[attr-defined]
        return test

    return mark


# -- builders ---------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def add_volunteer(store: Store, owner: str = "alice", hardware_class: str = "cpu") -> Principal:
    return store.create_principal(
        Role.VOLUNTEER, owner, f"{owner}'s box", new_id("tok"), hardware_class, '{"gpu": "none"}'
    )


def make_hypothesis(**changes: Any) -> Hypothesis:
    fields: dict[str, Any] = dict(
        hypothesis_id=new_id("hyp"),
        title="Raise the matrix learning rate",
        rationale="Because the loss curve is still falling steeply at the end.",
        patch="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-MATRIX_LR = 0.04\n+MATRIX_LR = 0.05\n",
        base_commit="c0ffee",
        source=HypothesisSource.HUMAN,
        proposer_id="proposer-1",
        fingerprint=new_id("fp"),
    )
    fields.update(changes)
    return Hypothesis(**fields)


def make_unit(hypothesis_id: str = "", kind: UnitKind = UnitKind.BASELINE, **changes: Any) -> WorkUnit:
    fields: dict[str, Any] = dict(
        unit_id=new_id("unit"),
        kind=kind,
        hardware_class="cpu",
        base_commit="c0ffee",
        train_py="MATRIX_LR = 0.04\nprint('train')\n",
        profiles_json='{"cpu": {"DEPTH": 2}}',
        hypothesis_id=hypothesis_id,
    )
    fields.update(changes)
    return WorkUnit(**fields)


def fresh_code(label: str = "") -> tuple[str, str]:
    """A train.py and profiles.json no other test stores (blob counts start from a known state)."""
    tag = uuid.uuid4().hex
    train_py = f"# {label} {tag}\nMATRIX_LR = 0.04\n" + "print('step')\n" * 200
    return train_py, f'{{"cpu": {{"DEPTH": 2, "tag": "{tag}"}}}}'


def code_bytes(*texts: str) -> int:
    return sum(len(text.encode("utf-8")) for text in texts)


def ok_metrics(val_bpb: float = 1.25, **changes: Any) -> RunMetrics:
    fields: dict[str, Any] = dict(
        status=RunStatus.OK,
        val_bpb=val_bpb,
        peak_memory_mb=512.5,
        num_steps=40,
        total_tokens=163_840,
        mfu_percent=1.5,
        training_s=30.0,
        total_s=41.2,
        num_params_m=0.9,
        attention_backend="sdpa",
        tokenizer_hash="tok-abc",
        data_manifest_id="pydoc-1",
        environment={"torch": "2.13.0", "python": "3.11.7"},
        log_tail="step 40 loss 2.1\n---\nval_bpb: 1.25\n",
    )
    fields.update(changes)
    return RunMetrics(**fields)


def a_score(delta_bpb: float = 0.01) -> NormalizedScore:
    return NormalizedScore(True, 1.26, delta_bpb, 0.79, 2.5, 0.004, 3)


def open_by_path(opener: str, url: str) -> Store:
    module_name, function_name = opener.split(":")
    return getattr(importlib.import_module(module_name), function_name)(url)


def race_worker(opener: str, url: str, volunteer_id: str, owner: str, barrier: Any, results: Any) -> None:
    """Lease until the queue is empty; give every third lease back so units get re-leased."""
    try:
        store = open_by_path(opener, url)
        barrier.wait(timeout=60)
        taken: list[tuple[str, str]] = []
        while (granted := store.lease_unit(volunteer_id, owner, "cpu", LONG_LEASE_S)) is not None:
            unit, lease = granted
            taken.append((unit.unit_id, lease.lease_id))
            time.sleep(RACE_WORK_S)
            if len(taken) % 3 == 0:
                store.release_lease(lease.lease_id, volunteer_id, "race: give back")
            else:
                store.record_result(lease.lease_id, volunteer_id, ok_metrics(), a_score(), new_id("res"))
        store.close()
        results.put(("ok", taken))
    except BaseException:
        results.put(("error", traceback.format_exc()))


# -- 11. whole-store snapshots -----------------------------------------------------------------------


def a_snapshot(now_s: float) -> StoreSnapshot:
    """A hand-built store with every kind of record in a non-initial state: merged, revoked,
    expired, reported, cancelled, an invite half used, a reverted merge, a long meta value."""
    alice = Principal("vol-alice", Role.VOLUNTEER, "alice", "alice's box", "tok-alice", "cpu", '{"gpu": "none"}',
                      1000.25, now_s - 5.0)
    mallory = Principal("vol-mallory", Role.VOLUNTEER, "mallory", "m", "tok-mallory", "cpu", "{}", 1001.5,
                        1002.0, revoked=True, revoked_reason="forged numbers")
    admin = Principal("adm-1", Role.ADMIN, "operator", "operator", "tok-admin", created_s=999.0, last_seen_s=999.0)
    merged = make_hypothesis(hypothesis_id="hyp-merged", fingerprint="fp-merged", state=HypothesisState.MERGED,
                             state_reason="merged as c1", merged_commit="c1", constant_changes={"MATRIX_LR": "0.05"},
                             touched_classes=("cpu",), created_s=1003.0, updated_s=1010.0, priority=0.1)
    queued = make_hypothesis(hypothesis_id="hyp-queued", fingerprint="fp-queued", priority=2.0,
                             created_s=1004.0, updated_s=1004.0)
    units = (
        make_unit(unit_id="unit-done", state=UnitState.DONE, attempts=1, created_s=1005.0),
        make_unit("hyp-queued", UnitKind.CANDIDATE, unit_id="unit-queued", priority=2.0,
                  excluded_volunteers=("vol-elsewhere",), excluded_owners=("nobody",), created_s=1006.0),
        make_unit(unit_id="unit-leased", state=UnitState.LEASED, attempts=2, created_s=1007.0),
        make_unit("hyp-merged", UnitKind.REPLICATE, unit_id="unit-cancelled", state=UnitState.CANCELLED,
                  created_s=1008.0),
        make_unit(unit_id="unit-mallory", state=UnitState.DONE, attempts=1, created_s=1008.5),
    )
    leases = (
        Lease("lease-done", "unit-done", "vol-alice", "alice", 1009.0, 1700.0, LeaseState.REPORTED,
              progress_step=40, progress_fraction=1.0, progress_loss=2.5, heartbeat_s=1020.0, ended_s=1030.0),
        Lease("lease-expired", "unit-leased", "vol-alice", "alice", 1011.0, 1100.0, LeaseState.EXPIRED,
              ended_s=1101.0, end_reason="deadline passed"),
        Lease("lease-active", "unit-leased", "vol-alice", "alice", now_s - 1.0, now_s + LONG_LEASE_S, slot=1,
              heartbeat_s=now_s - 1.0),
        Lease("lease-mallory", "unit-mallory", "vol-mallory", "mallory", 1012.0, 1800.0, LeaseState.REPORTED,
              ended_s=1013.0),
    )
    results = (
        ResultRecord("res-alice", "lease-done", "unit-done", UnitKind.BASELINE, "", "cpu", "c0ffee", "vol-alice",
                     "alice", ok_metrics(1.2345678901234567), a_score(), 1030.0),
        ResultRecord("res-mallory", "lease-mallory", "unit-mallory", UnitKind.BASELINE, "", "cpu", "c0ffee",
                     "vol-mallory", "mallory", ok_metrics(0.5), a_score(0.7), 1013.0, counts=False),
    )
    return StoreSnapshot(
        meta={"head_commit": "c2", "flag:c1": "x" * 1000},
        principals=(alice, mallory, admin),
        invites=(Invite("inv-half", "alice", 2, 1, 0.0, 998.0), Invite("inv-old", "bob", 1, 0, 999.5, 998.5)),
        hypotheses=(merged, queued),
        units=units,
        leases=leases,
        results=results,
        class_stats=(ClassStats("cpu", "c0ffee", 2, 1.2345678901234567, 0.004, 1031.0),
                     ClassStats("mps", "c0ffee", 3, 1.5, 0.03, 1032.0)),
        merges=(MergeRecord("c1", "c0ffee", "hyp-merged", "Raise LR", {"cpu": 0.012}, 1040.0, "c2", "mps worse"),
                MergeRecord("c2", "c1", "", "Revert", {}, 1041.0)),
    )


class SnapshotContract:
    """11: mixed into StoreContract below, kept apart for reading."""

    @requires("snapshots", "principals", "invites", "hypotheses", "units", "leases", "results", "stats", "merges")
    def test_import_then_export_gives_the_same_snapshot_and_a_working_store(self, store: Store) -> None:
        snapshot = a_snapshot(store.now())
        store.import_snapshot(snapshot)
        assert store.export_snapshot() == snapshot
        assert store.find_principal_by_token_hash("tok-alice") == snapshot.principals[0]
        # Invariants survive the import: fingerprints, invites, revocation, leases, idempotent reports.
        with pytest.raises(DuplicateError) as duplicate:
            store.add_hypothesis(make_hypothesis(fingerprint="fp-merged"))
        assert duplicate.value.original_id == "hyp-merged"
        joined = store.create_principal(Role.VOLUNTEER, "", "bob", "tok-bob", "cpu", invite_token_hash="inv-half")
        assert joined.owner == "alice"
        with pytest.raises(InviteError):
            store.create_principal(Role.VOLUNTEER, "", "carol", "tok-carol", "cpu", invite_token_hash="inv-half")
        with pytest.raises(PermissionDeniedError):
            store.lease_unit("vol-mallory", "mallory", "cpu", LONG_LEASE_S)
        granted = store.lease_unit("vol-alice", "alice", "cpu", LONG_LEASE_S)
        assert granted is not None and granted[0].unit_id == "unit-queued" and granted[0].attempts == 1
        assert store.lease_unit(joined.principal_id, "alice", "cpu", LONG_LEASE_S) is None
        record, again = store.record_result("lease-done", "vol-alice", ok_metrics(9.0), a_score(), "res-new")
        assert again and record == snapshot.results[0]
        fresh = self.report(store, snapshot.principals[0], "lease-active")
        assert store.get_unit("unit-leased").state == UnitState.DONE
        assert [r.result_id for r in store.list_results()] == ["res-alice", "res-mallory", fresh.result_id]
        assert [r.result_id for r in store.list_results(ResultFilter(counting_only=True))] == [
            "res-alice", fresh.result_id
        ]
        assert [m.commit for m in store.list_merges()] == ["c2", "c1"]
        # Its unit was leased above, which moved it on (indexes by state survive the import too).
        assert store.list_hypotheses([HypothesisState.QUEUED]) == []
        assert [h.hypothesis_id for h in store.list_hypotheses([HypothesisState.LEASED])] == ["hyp-queued"]
        assert store.get_meta("flag:c1") == "x" * 1000

    @requires("snapshots", "hypotheses", "units")
    def test_import_into_a_store_that_holds_records_is_refused(self, store: Store) -> None:
        store.set_meta("head_commit", "abc")
        with pytest.raises(ConflictError):
            store.import_snapshot(a_snapshot(store.now()))
        assert store.export_snapshot() == StoreSnapshot(meta={"head_commit": "abc"})

    @requires("snapshots", "principals", "units", "leases", "results")
    def test_broken_snapshots_are_refused_and_change_nothing(self, store: Store) -> None:
        good = a_snapshot(store.now())
        second_active = Lease("lease-2", "unit-leased", "vol-alice", "alice", 1.0, store.now() + 60)
        broken = {
            "dangling unit": dataclasses.replace(good, units=(*good.units, make_unit("hyp-404"))),
            "two active leases": dataclasses.replace(good, leases=(*good.leases, second_active)),
            "duplicate token": dataclasses.replace(
                good, principals=(*good.principals, dataclasses.replace(good.principals[0], principal_id="v2"))
            ),
            "result off its lease": dataclasses.replace(
                good, results=(dataclasses.replace(good.results[0], unit_id="unit-queued"),)
            ),
            "non-finite": dataclasses.replace(
                good, class_stats=(ClassStats("cpu", "c9", 1, math.nan, 0.0),)
            ),
            "oversize meta": dataclasses.replace(good, meta={"k": "x" * (MAX_META_VALUE_BYTES + 1)}),
        }
        for name, snapshot in broken.items():
            with pytest.raises((InvalidValueError, PayloadTooLargeError)):
                store.import_snapshot(snapshot)
            assert store.export_snapshot().is_empty(), name

    @requires("snapshots", "principals", "hypotheses", "units", "leases", "results", "revocation")
    def test_export_holds_every_write(self, store: Store) -> None:
        hypothesis = store.add_hypothesis(make_hypothesis())
        store.enqueue_unit(make_unit(hypothesis.hypothesis_id, UnitKind.CANDIDATE))
        store.enqueue_unit(make_unit())
        volunteer, other = add_volunteer(store, "alice"), add_volunteer(store, "bob")
        _, lease = self.lease(store, volunteer)
        record = self.report(store, volunteer, lease.lease_id)
        self.lease(store, other)
        store.revoke_principal(volunteer.principal_id, "test")
        store.create_invite("inv-1", "carol", 3)
        store.put_class_stats(ClassStats("cpu", "c0ffee", 2, 1.25, 0.01))
        store.add_merge(MergeRecord("c1", "c0ffee", hypothesis.hypothesis_id, "t"))
        store.set_meta("head_commit", "c1")
        snapshot = store.export_snapshot()
        assert snapshot.counts() == {
            "meta": 1, "principals": 2, "invites": 1, "hypotheses": 1, "units": 2, "leases": 2,
            "results": 1, "class_stats": 1, "merges": 1,
        }
        assert snapshot.results == (dataclasses.replace(record, counts=False),)
        assert [p.revoked for p in snapshot.principals] == [True, False]
        assert [lease.state for lease in snapshot.leases] == [LeaseState.REPORTED, LeaseState.ACTIVE]
        assert snapshot.hypotheses == (store.get_hypothesis(hypothesis.hypothesis_id),)


# -- the contract -------------------------------------------------------------------------------------


class StoreContract(SnapshotContract):
    CAPABILITIES: frozenset[str] = ALL_CAPABILITIES
    STORE_OPENER = "coordinator.store.base:open_store"
    # A lease meant to expire during a test, and how far advance_clock moves to get past it. With
    # a real clock the lease must outlive any stall of a loaded machine between two calls, so it
    # is not much shorter; a subclass with a movable clock makes both long.
    SHORT_LEASE_S = 1.0
    PAST_SHORT_LEASE_S = 1.1

    @pytest.fixture(autouse=True)
    def _skip_unsupported(self, request: pytest.FixtureRequest) -> None:
        needed = getattr(request.function, "store_capabilities", frozenset())
        missing = needed - self.CAPABILITIES
        if missing:
            pytest.skip(f"{type(self).__name__} does not support {', '.join(sorted(missing))}")

    @pytest.fixture
    def store(self, make_store: Callable[[], Store]) -> Store:
        return make_store()

    @pytest.fixture
    def advance_clock(self) -> Callable[[float], None]:
        """Move the store's clock forward; by default real time has to pass."""
        return time.sleep

    # -- helpers ------------------------------------------------------------------------------

    def lease(self, store: Store, volunteer: Principal, duration_s: float = LONG_LEASE_S) -> tuple[Any, Any]:
        granted = store.lease_unit(
            volunteer.principal_id, volunteer.owner, volunteer.hardware_class, duration_s
        )
        assert granted is not None, "expected a unit to lease"
        return granted

    def report(self, store: Store, volunteer: Principal, lease_id: str, **metrics: Any) -> Any:
        record, duplicate = store.record_result(
            lease_id, volunteer.principal_id, ok_metrics(**metrics), a_score(), new_id("res")
        )
        assert not duplicate
        return record

    # -- 1. the store's clock ---------------------------------------------------------------

    @requires("hypotheses")
    def test_stamps_come_from_the_store_clock(self, store: Store) -> None:
        """1: created/updated stamps are the store's now(), whatever the caller wrote."""
        before = store.now()
        stored = store.add_hypothesis(make_hypothesis(created_s=1.0, updated_s=2.0))
        after = store.now()
        assert before <= stored.created_s <= after
        assert stored.updated_s == stored.created_s
        assert store.get_hypothesis(stored.hypothesis_id) == stored

    # -- metadata ---------------------------------------------------------------------------------

    @requires("meta")
    def test_meta_set_get_and_compare_and_set(self, store: Store) -> None:
        assert store.get_meta("head_commit") is None
        assert store.compare_and_set_meta("head_commit", "abc", "def") is False
        assert store.get_meta("head_commit") is None
        assert store.compare_and_set_meta("head_commit", None, "abc") is True
        assert store.compare_and_set_meta("head_commit", None, "zzz") is False
        assert store.compare_and_set_meta("head_commit", "wrong", "zzz") is False
        assert store.get_meta("head_commit") == "abc"
        assert store.compare_and_set_meta("head_commit", "abc", "def") is True
        store.set_meta("head_commit", "ghi")
        assert store.get_meta("head_commit") == "ghi"
        with pytest.raises(PayloadTooLargeError):
            store.set_meta("big", "x" * (MAX_META_VALUE_BYTES + 1))
        assert store.get_meta("big") is None

    # -- principals and invites --------------------------------------------------------------

    @requires("principals")
    def test_principals_round_trip_and_lookup(self, store: Store) -> None:
        alice = add_volunteer(store, "alice")
        bob = add_volunteer(store, "bob", "rtx3090-24g")
        admin = store.create_principal(Role.ADMIN, "ops", "operator", new_id("tok"))
        assert len({alice.principal_id, bob.principal_id, admin.principal_id}) == 3
        assert len(alice.principal_id) >= 16  # store-made, unguessable
        assert store.get_principal(alice.principal_id) == alice
        assert store.find_principal_by_token_hash(bob.token_hash) == bob
        assert store.find_principal_by_token_hash("no-such-hash") is None
        assert [p.principal_id for p in store.list_principals()] == [
            alice.principal_id,
            bob.principal_id,
            admin.principal_id,
        ]
        assert store.list_principals(role=Role.ADMIN) == [admin]
        assert store.list_principals(owner="bob") == [bob]
        assert store.list_principals(role=Role.ADMIN, owner="bob") == []
        assert alice.last_seen_s == alice.created_s > 0
        store.touch_principal(alice.principal_id)
        assert store.get_principal(alice.principal_id).last_seen_s >= alice.last_seen_s
        with pytest.raises(NotFoundError):
            store.get_principal("nobody")
        with pytest.raises(NotFoundError):
            store.touch_principal("nobody")

    @requires("principals")
    def test_principal_refusals_change_nothing(self, store: Store) -> None:
        """2: each refused create leaves the principal list as it was."""
        alice = add_volunteer(store)
        with pytest.raises(DuplicateError) as duplicate:
            store.create_principal(Role.VOLUNTEER, "mallory", "copy", alice.token_hash, "cpu")
        assert duplicate.value.original_id == alice.principal_id
        with pytest.raises(InvalidValueError):
            store.create_principal(Role.VOLUNTEER, "", "no owner", new_id("tok"), "cpu")
        with pytest.raises(InvalidValueError):
            store.create_principal("superuser", "alice", "x", new_id("tok"))  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError):
            store.create_principal(Role.VOLUNTEER, "alice", "x", new_id("tok"), "cpu", "{not json")
        with pytest.raises(PayloadTooLargeError):
            store.create_principal(Role.VOLUNTEER, "alice", "x" * 201, new_id("tok"), "cpu")
        assert store.list_principals() == [alice]

    @requires("invites")
    def test_invites_count_uses_and_expire(self, store: Store) -> None:
        invite = store.create_invite("invite-hash", "lab-7", max_uses=2)
        assert (invite.owner, invite.max_uses, invite.uses, invite.expires_s) == ("lab-7", 2, 0, 0.0)
        first = store.create_principal(
            Role.VOLUNTEER, "ignored", "a", new_id("tok"), "cpu", "{}", "invite-hash"
        )
        second = store.create_principal(Role.VOLUNTEER, "", "b", new_id("tok"), "cpu", "{}", "invite-hash")
        assert first.owner == second.owner == "lab-7"  # the invite decides the owner
        with pytest.raises(InviteError):
            store.create_principal(Role.VOLUNTEER, "", "c", new_id("tok"), "cpu", "{}", "invite-hash")
        with pytest.raises(InviteError):
            store.create_principal(Role.VOLUNTEER, "", "d", new_id("tok"), "cpu", "{}", "no-such-invite")
        store.create_invite("stale-hash", "lab-8", expires_s=store.now() - 1.0)
        with pytest.raises(InviteError):
            store.create_principal(Role.VOLUNTEER, "", "e", new_id("tok"), "cpu", "{}", "stale-hash")
        store.create_invite("fresh-hash", "lab-9", expires_s=store.now() + 3600.0)
        assert (
            store.create_principal(Role.VOLUNTEER, "", "f", new_id("tok"), "cpu", "{}", "fresh-hash").owner
            == "lab-9"
        )
        assert [p.display_name for p in store.list_principals()] == ["a", "b", "f"]
        with pytest.raises(DuplicateError):
            store.create_invite("invite-hash", "lab-7")
        with pytest.raises(InvalidValueError):
            store.create_invite("zero-hash", "lab-7", max_uses=0)
        with pytest.raises(InvalidValueError):
            store.create_invite("nan-hash", "lab-7", expires_s=math.nan)

    @requires("invites")
    def test_refused_registration_does_not_use_up_an_invite(self, store: Store) -> None:
        """2: a create refused for its token hash consumes no invite use."""
        alice = add_volunteer(store)
        store.create_invite("one-use", "lab-7", max_uses=1)
        with pytest.raises(DuplicateError):
            store.create_principal(Role.VOLUNTEER, "", "dup", alice.token_hash, "cpu", "{}", "one-use")
        assert (
            store.create_principal(Role.VOLUNTEER, "", "ok", new_id("tok"), "cpu", "{}", "one-use").owner
            == "lab-7"
        )

    # -- hypotheses ---------------------------------------------------------------------------

    @requires("hypotheses")
    def test_hypothesis_round_trip(self, store: Store) -> None:
        hypothesis = make_hypothesis(
            title="Wärmer: ünïcode ✓",
            priority=2.5,
            constant_changes={"MATRIX_LR": "0.05", "WINDOW_PATTERN": "'SSSL'"},
            touched_classes=("cpu", "mps"),
        )
        stored = store.add_hypothesis(hypothesis)
        assert stored.title == hypothesis.title
        assert dict(stored.constant_changes) == dict(hypothesis.constant_changes)
        assert stored.touched_classes == ("cpu", "mps")
        assert stored.state == HypothesisState.QUEUED
        assert store.get_hypothesis(hypothesis.hypothesis_id) == stored
        with pytest.raises(NotFoundError):
            store.get_hypothesis("no-such-hypothesis")

    @requires("hypotheses")
    def test_duplicate_fingerprint_names_the_original(self, store: Store) -> None:
        """8: the same change twice is refused, naming the first."""
        first = store.add_hypothesis(make_hypothesis(fingerprint="same-change"))
        with pytest.raises(DuplicateError) as refused:
            store.add_hypothesis(make_hypothesis(fingerprint="same-change", title="again"))
        assert refused.value.original_id == first.hypothesis_id
        with pytest.raises(DuplicateError) as same_id:
            store.add_hypothesis(make_hypothesis(hypothesis_id=first.hypothesis_id))
        assert same_id.value.original_id == first.hypothesis_id
        assert store.count_hypotheses() == 1

    @requires("hypotheses")
    def test_hypothesis_oversize_and_non_finite_refused(self, store: Store) -> None:
        """7 and 2: refused whole, nothing stored, nothing truncated."""
        with pytest.raises(PayloadTooLargeError):
            store.add_hypothesis(make_hypothesis(title="t" * (MAX_TITLE_BYTES + 1)))
        with pytest.raises(PayloadTooLargeError):
            store.add_hypothesis(make_hypothesis(title="é" * (MAX_TITLE_BYTES // 2 + 1)))  # bytes, not chars
        with pytest.raises(PayloadTooLargeError):
            store.add_hypothesis(make_hypothesis(patch="+" * (MAX_PATCH_BYTES + 1)))
        with pytest.raises(PayloadTooLargeError):
            store.add_hypothesis(
                make_hypothesis(touched_classes=tuple(f"c{i}" for i in range(MAX_LIST_ENTRIES + 1)))
            )
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(InvalidValueError):
                store.add_hypothesis(make_hypothesis(priority=bad))
        with pytest.raises(InvalidValueError):
            store.add_hypothesis(make_hypothesis(fingerprint=""))
        assert store.count_hypotheses() == 0
        exact = store.add_hypothesis(make_hypothesis(title="t" * MAX_TITLE_BYTES))
        assert len(exact.title) == MAX_TITLE_BYTES

    @requires("hypotheses")
    def test_hypothesis_pages_and_state_filter(self, store: Store) -> None:
        added = [store.add_hypothesis(make_hypothesis(title=f"h{i}")) for i in range(7)]
        for h in added[::2]:
            store.update_hypothesis(h.hypothesis_id, state=HypothesisState.PROMISING)
        pages, after = [], ""
        while page := store.list_hypotheses(limit=3, after=after):
            pages.append([h.title for h in page])
            after = page[-1].hypothesis_id
        assert pages == [["h0", "h1", "h2"], ["h3", "h4", "h5"], ["h6"]]
        promising = store.list_hypotheses(states=[HypothesisState.PROMISING], limit=2)
        assert [h.title for h in promising] == ["h0", "h2"]
        rest = store.list_hypotheses(
            states=[HypothesisState.PROMISING], limit=10, after=promising[-1].hypothesis_id
        )
        assert [h.title for h in rest] == ["h4", "h6"]
        both = store.list_hypotheses(states=[HypothesisState.QUEUED, HypothesisState.PROMISING], limit=100)
        assert [h.title for h in both] == [f"h{i}" for i in range(7)]
        assert store.count_hypotheses() == 7
        assert store.count_hypotheses([HypothesisState.PROMISING]) == 4
        assert store.count_hypotheses([HypothesisState.QUEUED, HypothesisState.MERGED]) == 3
        with pytest.raises(NotFoundError):
            store.list_hypotheses(after="no-such-hypothesis")
        with pytest.raises(InvalidValueError):
            store.list_hypotheses(limit=0)

    @requires("hypotheses")
    def test_update_hypothesis_with_expected_state(
        self, store: Store, advance_clock: Callable[[float], None]
    ) -> None:
        h = store.add_hypothesis(make_hypothesis())
        advance_clock(0.01)
        moved = store.update_hypothesis(
            h.hypothesis_id, state=HypothesisState.LEASED, expected_state=HypothesisState.QUEUED
        )
        assert moved.state == HypothesisState.LEASED and moved.updated_s > h.updated_s
        with pytest.raises(ConflictError):
            store.update_hypothesis(
                h.hypothesis_id,
                state=HypothesisState.MEASURED,
                state_reason="x",
                expected_state=HypothesisState.QUEUED,
            )
        assert store.get_hypothesis(h.hypothesis_id) == moved
        merged = store.update_hypothesis(
            h.hypothesis_id, state=HypothesisState.MERGED, merged_commit="beef", state_reason="merged as beef"
        )
        assert (merged.merged_commit, merged.state_reason) == ("beef", "merged as beef")
        assert store.count_hypotheses([HypothesisState.LEASED]) == 0
        assert store.count_hypotheses([HypothesisState.MERGED]) == 1
        with pytest.raises(InvalidValueError):
            store.update_hypothesis(h.hypothesis_id, priority=math.nan)
        with pytest.raises(NotFoundError):
            store.update_hypothesis("no-such-hypothesis", priority=1.0)
        assert store.get_hypothesis(h.hypothesis_id) == merged

    @requires("hypotheses", "units", "leases")
    def test_priority_change_moves_queued_units(self, store: Store) -> None:
        low = store.add_hypothesis(make_hypothesis(priority=0.0))
        high = store.add_hypothesis(make_hypothesis(priority=5.0))
        store.enqueue_unit(make_unit(low.hypothesis_id, UnitKind.CANDIDATE, priority=0.0))
        store.enqueue_unit(make_unit(low.hypothesis_id, UnitKind.CANDIDATE, priority=1.0))
        store.enqueue_unit(make_unit(high.hypothesis_id, UnitKind.CANDIDATE, priority=5.0))
        store.update_hypothesis(low.hypothesis_id, priority=10.0)
        assert sorted(u.priority for u in store.list_units(hypothesis_id=low.hypothesis_id)) == [10.0, 11.0]
        volunteer = add_volunteer(store)
        order = [self.lease(store, volunteer)[0].priority for _ in range(3)]
        assert order == [11.0, 10.0, 5.0]

    # -- work units and leases ----------------------------------------------------------------

    @requires("units", "leases")
    def test_leasing_order_kind_then_priority_then_age(self, store: Store) -> None:
        h = store.add_hypothesis(make_hypothesis())
        expected = [
            store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.CANDIDATE, priority=9.0)),
            store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.REPLICATE, priority=0.0)),
            store.enqueue_unit(make_unit(kind=UnitKind.BASELINE, priority=-1.0)),
            store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.CANDIDATE, priority=1.0)),
            store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.REPLICATE, priority=3.0)),
            store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.CANDIDATE, priority=1.0)),
            store.enqueue_unit(make_unit(kind=UnitKind.BASELINE, priority=-1.0)),
        ]
        store.enqueue_unit(make_unit(hardware_class="mps"))
        order = [2, 6, 4, 1, 0, 3, 5]  # baselines (oldest first), replicates by priority, candidates
        volunteer = add_volunteer(store)
        leased = [self.lease(store, volunteer)[0].unit_id for _ in order]
        assert leased == [expected[i].unit_id for i in order]
        assert store.lease_unit(volunteer.principal_id, "alice", "cpu", LONG_LEASE_S) is None
        assert [u.hardware_class for u in store.list_units(state=UnitState.QUEUED)] == ["mps"]

    @requires("units", "leases")
    def test_one_unit_one_active_lease(self, store: Store) -> None:
        """3: a leased unit is not handed out again while its lease is active."""
        unit = store.enqueue_unit(make_unit())
        first, second = add_volunteer(store, "alice"), add_volunteer(store, "bob")
        leased_unit, lease = self.lease(store, first)
        assert leased_unit.unit_id == unit.unit_id
        assert leased_unit.state == UnitState.LEASED and leased_unit.attempts == 1
        assert lease.state == LeaseState.ACTIVE and lease.volunteer_id == first.principal_id
        assert lease.deadline_s == pytest.approx(lease.issued_s + LONG_LEASE_S)
        assert len(lease.lease_id) >= 16
        assert store.lease_unit(second.principal_id, "bob", "cpu", LONG_LEASE_S) is None
        assert store.get_lease(lease.lease_id) == lease
        assert store.list_leases() == [lease]
        assert store.get_unit(unit.unit_id) == leased_unit
        with pytest.raises(NotFoundError):
            store.get_lease("no-such-lease")
        with pytest.raises(NotFoundError):
            store.get_unit("no-such-unit")

    @requires("units", "leases")
    def test_lease_marks_the_volunteer_seen_and_the_hypothesis_leased(
        self, store: Store, advance_clock: Callable[[float], None]
    ) -> None:
        volunteer = add_volunteer(store)
        seen_before = store.get_principal(volunteer.principal_id).last_seen_s
        advance_clock(SEEN_STEP_S)
        assert store.lease_unit(volunteer.principal_id, "alice", "cpu", LONG_LEASE_S) is None
        seen_idle = store.get_principal(volunteer.principal_id).last_seen_s
        assert seen_idle >= seen_before + SEEN_STEP_S  # seen even when there was nothing to lease
        queued = store.add_hypothesis(make_hypothesis())
        running = store.add_hypothesis(make_hypothesis())
        store.update_hypothesis(running.hypothesis_id, state=HypothesisState.REPLICATING)
        unit = store.enqueue_unit(make_unit(queued.hypothesis_id, UnitKind.CANDIDATE, priority=1.0))
        store.enqueue_unit(make_unit(running.hypothesis_id, UnitKind.CANDIDATE))
        advance_clock(SEEN_STEP_S)
        leased, _ = self.lease(store, volunteer)
        assert leased.unit_id == unit.unit_id
        assert store.get_hypothesis(queued.hypothesis_id).state == HypothesisState.LEASED
        assert [h.hypothesis_id for h in store.list_hypotheses(states=[HypothesisState.LEASED])] == [
            queued.hypothesis_id
        ]
        assert store.list_hypotheses(states=[HypothesisState.QUEUED]) == []
        assert store.get_principal(volunteer.principal_id).last_seen_s >= seen_idle + SEEN_STEP_S
        self.lease(store, volunteer)  # a hypothesis past `queued` keeps its state
        assert store.get_hypothesis(running.hypothesis_id).state == HypothesisState.REPLICATING

    @requires("units")
    def test_unit_without_code(self, store: Store) -> None:
        unit = store.enqueue_unit(make_unit())
        light = store.get_unit(unit.unit_id, with_code=False)
        assert light.train_py == "" and light.profiles_json == ""
        assert light == dataclasses.replace(store.get_unit(unit.unit_id), train_py="", profiles_json="")
        with pytest.raises(NotFoundError):
            store.get_unit("no-such-unit", with_code=False)

    @requires("units", "leases")
    def test_replicates_respect_volunteer_and_owner_exclusions(self, store: Store) -> None:
        """9: never to the volunteer it checks, nor to anyone of an excluded owner."""
        checked = add_volunteer(store, "alice")
        same_owner = add_volunteer(store, "alice")
        excluded_owner = add_volunteer(store, "bob")
        stranger = add_volunteer(store, "carol")
        unit = store.enqueue_unit(
            make_unit(
                kind=UnitKind.REPLICATE, excluded_volunteers=(checked.principal_id,), excluded_owners=("bob",)
            )
        )
        assert store.lease_unit(checked.principal_id, "alice", "cpu", LONG_LEASE_S) is None
        assert store.lease_unit(excluded_owner.principal_id, "bob", "cpu", LONG_LEASE_S) is None
        other = store.enqueue_unit(make_unit(kind=UnitKind.CANDIDATE))
        assert self.lease(store, checked)[0].unit_id == other.unit_id  # skips what it may not take
        assert self.lease(store, same_owner)[0].unit_id == unit.unit_id  # volunteer-level exclusion only
        assert store.get_unit(unit.unit_id).excluded_owners == ("bob",)
        assert store.lease_unit(stranger.principal_id, "carol", "cpu", LONG_LEASE_S) is None

    @requires("units", "leases", "results")
    def test_expired_lease_is_reissued(self, store: Store, advance_clock: Callable[[float], None]) -> None:
        """4: past its deadline (store clock) the unit is leasable again and attempts keep counting."""
        unit = store.enqueue_unit(make_unit())
        slow, fast = add_volunteer(store, "alice"), add_volunteer(store, "bob")
        _, stale = self.lease(store, slow, self.SHORT_LEASE_S)
        assert store.lease_unit(fast.principal_id, "bob", "cpu", LONG_LEASE_S) is None
        advance_clock(self.PAST_SHORT_LEASE_S)
        reissued_unit, fresh = self.lease(store, fast)
        assert reissued_unit.unit_id == unit.unit_id and reissued_unit.attempts == 2
        expired = store.get_lease(stale.lease_id)
        assert expired.state == LeaseState.EXPIRED and expired.ended_s >= expired.deadline_s
        with pytest.raises(LeaseExpiredError):
            store.record_result(stale.lease_id, slow.principal_id, ok_metrics(), a_score(), new_id("res"))
        with pytest.raises(LeaseExpiredError):
            store.extend_lease(stale.lease_id, slow.principal_id, LONG_LEASE_S)
        record = self.report(store, fast, fresh.lease_id)
        assert record.volunteer_id == fast.principal_id
        assert [lease.lease_id for lease in store.list_leases(active_only=False)] == [
            stale.lease_id,
            fresh.lease_id,
        ]
        assert store.list_leases() == []

    @requires("units", "leases", "results")
    def test_late_report_is_refused_even_before_a_sweep(
        self, store: Store, advance_clock: Callable[[float], None]
    ) -> None:
        """5: the deadline alone decides; the refusal changes nothing (2)."""
        unit = store.enqueue_unit(make_unit())
        volunteer = add_volunteer(store)
        _, lease = self.lease(store, volunteer, self.SHORT_LEASE_S)
        advance_clock(self.PAST_SHORT_LEASE_S)
        with pytest.raises(LeaseExpiredError):
            store.record_result(
                lease.lease_id, volunteer.principal_id, ok_metrics(), a_score(), new_id("res")
            )
        assert store.get_lease(lease.lease_id).state == LeaseState.ACTIVE  # not yet swept
        assert store.result_for_lease(lease.lease_id) is None
        assert store.get_unit(unit.unit_id).state == UnitState.LEASED
        assert self.lease(store, volunteer)[0].unit_id == unit.unit_id

    @requires("units", "leases")
    def test_expire_leases_sweeps_only_past_deadlines(
        self, store: Store, advance_clock: Callable[[float], None]
    ) -> None:
        for _ in range(3):
            store.enqueue_unit(make_unit())
        volunteer = add_volunteer(store)
        _, short_a = self.lease(store, volunteer, self.SHORT_LEASE_S)
        _, short_b = self.lease(store, volunteer, self.SHORT_LEASE_S)
        _, long_lease = self.lease(store, volunteer, LONG_LEASE_S)
        assert store.expire_leases() == []
        advance_clock(self.PAST_SHORT_LEASE_S)
        swept = store.expire_leases()
        assert sorted(lease.lease_id for lease in swept) == sorted([short_a.lease_id, short_b.lease_id])
        assert all(lease.state == LeaseState.EXPIRED and lease.end_reason for lease in swept)
        assert store.expire_leases() == []
        assert [lease.lease_id for lease in store.list_leases()] == [long_lease.lease_id]
        assert len(store.list_units(state=UnitState.QUEUED)) == 2

    @requires("units", "leases")
    def test_heartbeat_extends_and_records_progress(
        self, store: Store, advance_clock: Callable[[float], None]
    ) -> None:
        store.enqueue_unit(make_unit())
        volunteer, other = add_volunteer(store, "alice"), add_volunteer(store, "bob")
        _, lease = self.lease(store, volunteer, self.SHORT_LEASE_S)
        extended = store.extend_lease(
            lease.lease_id, volunteer.principal_id, 60.0, step=12, fraction=0.4, loss=3.25
        )
        assert extended.deadline_s > lease.deadline_s
        assert (extended.progress_step, extended.progress_fraction, extended.progress_loss) == (12, 0.4, 3.25)
        assert extended.heartbeat_s >= lease.issued_s
        advance_clock(self.PAST_SHORT_LEASE_S)
        assert store.expire_leases() == []  # the heartbeat kept it alive
        with pytest.raises(PermissionDeniedError):
            store.extend_lease(lease.lease_id, other.principal_id, 60.0)
        with pytest.raises(InvalidValueError):
            store.extend_lease(lease.lease_id, volunteer.principal_id, 60.0, loss=math.nan)
        with pytest.raises(InvalidValueError):
            store.extend_lease(lease.lease_id, volunteer.principal_id, 0.0)
        with pytest.raises(NotFoundError):
            store.extend_lease("no-such-lease", volunteer.principal_id, 60.0)
        assert store.get_lease(lease.lease_id) == extended

    @requires("units", "leases")
    def test_grouped_heartbeats_answer_each_on_its_own(self, store: Store) -> None:
        """extend_leases: one group, each extension applied or refused exactly as alone."""
        store.enqueue_unit(make_unit())
        store.enqueue_unit(make_unit())
        alice, bob = add_volunteer(store, "alice"), add_volunteer(store, "bob")
        _, first = self.lease(store, alice)
        _, second = self.lease(store, bob)
        results = store.extend_leases([
            LeaseExtension(first.lease_id, alice.principal_id, 90.0, 7, 0.25, 3.5),
            LeaseExtension(second.lease_id, alice.principal_id, 90.0),  # bob's lease
            LeaseExtension("no-such-lease", alice.principal_id, 90.0),
            LeaseExtension(second.lease_id, bob.principal_id, 90.0, loss=math.inf),
            LeaseExtension(second.lease_id, bob.principal_id, 0.0),
            LeaseExtension(second.lease_id, bob.principal_id, 90.0, 3),
        ])
        assert [type(r).__name__ for r in results] == [
            "Lease", "PermissionDeniedError", "NotFoundError", "InvalidValueError", "InvalidValueError", "Lease",
        ]
        extended, last = results[0], results[-1]
        assert isinstance(extended, Lease) and isinstance(last, Lease)
        assert (extended.progress_step, extended.progress_fraction, extended.progress_loss) == (7, 0.25, 3.5)
        assert extended.deadline_s == pytest.approx(extended.heartbeat_s + 90.0)
        assert store.get_lease(first.lease_id) == extended
        assert store.get_lease(second.lease_id) == last and last.progress_step == 3
        assert store.extend_leases([]) == []

    @requires("units", "leases", "results")
    def test_release_gives_the_unit_back(self, store: Store) -> None:
        unit = store.enqueue_unit(make_unit())
        volunteer, other = add_volunteer(store, "alice"), add_volunteer(store, "bob")
        _, lease = self.lease(store, volunteer)
        with pytest.raises(PermissionDeniedError):
            store.release_lease(lease.lease_id, other.principal_id)
        released = store.release_lease(lease.lease_id, volunteer.principal_id, "shutting down")
        assert (released.state, released.end_reason) == (LeaseState.RELEASED, "shutting down")
        assert store.get_unit(unit.unit_id).state == UnitState.QUEUED
        with pytest.raises(LeaseExpiredError):
            store.release_lease(lease.lease_id, volunteer.principal_id)
        with pytest.raises(LeaseExpiredError):
            store.record_result(
                lease.lease_id, volunteer.principal_id, ok_metrics(), a_score(), new_id("res")
            )
        again, _ = self.lease(store, other)
        assert again.unit_id == unit.unit_id and again.attempts == 2

    @requires("units", "leases")
    def test_lease_refusals(self, store: Store) -> None:
        unit = store.enqueue_unit(make_unit())
        volunteer = add_volunteer(store, "alice")
        proposer = store.create_principal(Role.PROPOSER, "alice", "agent", new_id("tok"))
        with pytest.raises(NotFoundError):
            store.lease_unit("nobody", "alice", "cpu", LONG_LEASE_S)
        with pytest.raises(PermissionDeniedError):
            store.lease_unit(proposer.principal_id, "alice", "cpu", LONG_LEASE_S)
        with pytest.raises(InvalidValueError):
            store.lease_unit(volunteer.principal_id, "mallory", "cpu", LONG_LEASE_S)
        for bad in (0.0, -1.0, math.nan, math.inf):
            with pytest.raises(InvalidValueError):
                store.lease_unit(volunteer.principal_id, "alice", "cpu", bad)
        assert store.get_unit(unit.unit_id).state == UnitState.QUEUED
        assert store.list_leases(active_only=False) == []

    @requires("hypotheses", "units")
    def test_enqueue_refusals(self, store: Store) -> None:
        h = store.add_hypothesis(make_hypothesis())
        first = store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.CANDIDATE, created_s=5.0))
        assert first.state == UnitState.QUEUED and first.attempts == 0 and first.created_s > 5.0
        with pytest.raises(NotFoundError):
            store.enqueue_unit(make_unit("no-such-hypothesis", UnitKind.CANDIDATE))
        with pytest.raises(DuplicateError):
            store.enqueue_unit(make_unit(unit_id=first.unit_id))
        with pytest.raises(PayloadTooLargeError):
            store.enqueue_unit(make_unit(train_py="#" * (MAX_TRAIN_PY_BYTES + 1)))
        with pytest.raises(PayloadTooLargeError):
            store.enqueue_unit(make_unit(excluded_owners=tuple(f"o{i}" for i in range(MAX_LIST_ENTRIES + 1))))
        with pytest.raises(InvalidValueError):
            store.enqueue_unit(make_unit(priority=math.nan))
        with pytest.raises(InvalidValueError):
            store.enqueue_unit(make_unit(state=UnitState.DONE))
        with pytest.raises(InvalidValueError):
            store.enqueue_unit(make_unit(profiles_json="{broken"))
        with pytest.raises(InvalidValueError):
            store.enqueue_unit(make_unit(hardware_class=""))
        assert store.list_units() == [first]

    @requires("hypotheses", "units", "leases", "results")
    def test_cancel_and_requeue_units(self, store: Store) -> None:
        h = store.add_hypothesis(make_hypothesis())
        units = [store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.CANDIDATE)) for _ in range(3)]
        volunteer = add_volunteer(store)
        leased, lease = self.lease(store, volunteer)
        assert store.cancel_units(h.hypothesis_id) == 2  # the leased one finishes
        assert store.cancel_units(h.hypothesis_id) == 0
        assert {u.unit_id: u.state for u in store.list_units(hypothesis_id=h.hypothesis_id)} == {
            units[0].unit_id: UnitState.LEASED,
            units[1].unit_id: UnitState.CANCELLED,
            units[2].unit_id: UnitState.CANCELLED,
        }
        assert store.lease_unit(volunteer.principal_id, "alice", "cpu", LONG_LEASE_S) is None
        with pytest.raises(ConflictError):
            store.requeue_unit(leased.unit_id)
        self.report(store, volunteer, lease.lease_id, status=RunStatus.CRASH, val_bpb=0.0)
        assert store.get_unit(leased.unit_id).state == UnitState.DONE
        requeued = store.requeue_unit(leased.unit_id)
        assert requeued.state == UnitState.QUEUED and requeued.attempts == 1
        retried, _ = self.lease(store, volunteer)
        assert retried.unit_id == leased.unit_id and retried.attempts == 2
        assert store.requeue_unit(units[1].unit_id).state == UnitState.QUEUED
        with pytest.raises(ConflictError):
            store.requeue_unit(units[1].unit_id)
        with pytest.raises(NotFoundError):
            store.requeue_unit("no-such-unit")
        with pytest.raises(NotFoundError):
            store.cancel_units("no-such-hypothesis")
        assert len(store.list_units(hardware_class="cpu")) == 3
        assert store.list_units(hardware_class="mps") == []
        queued = store.list_units(state=UnitState.QUEUED, hardware_class="cpu")
        assert store.count_queued("cpu") == len(queued) == 1 and store.count_queued("mps") == 0

    @requires("hypotheses", "units", "leases", "results")
    def test_pending_count_follows_every_state_change(self, store: Store) -> None:
        def pending() -> int:
            return store.count_pending_units(UnitKind.BASELINE, "cpu", "c0ffee")

        first, second = store.enqueue_unit(make_unit()), store.enqueue_unit(make_unit())
        store.enqueue_unit(make_unit(base_commit="other"))  # another head: not counted
        assert pending() == 2
        volunteer = add_volunteer(store)
        _, lease = self.lease(store, volunteer)
        assert pending() == 2  # leased still pending
        self.report(store, volunteer, lease.lease_id)
        assert pending() == 1  # done
        assert store.cancel_unit(second.unit_id) and pending() == 0
        store.requeue_unit(first.unit_id)
        assert pending() == 1
        assert pending() == sum(
            1
            for state in (UnitState.QUEUED, UnitState.LEASED)
            for u in store.list_units(state=state, hardware_class="cpu")
            if u.kind == UnitKind.BASELINE and u.base_commit == "c0ffee"
        )

    @requires("units", "leases")
    def test_cancel_one_queued_unit(self, store: Store) -> None:
        first, second = store.enqueue_unit(make_unit()), store.enqueue_unit(make_unit())
        volunteer = add_volunteer(store)
        leased, _ = self.lease(store, volunteer)
        assert leased.unit_id == first.unit_id
        assert store.cancel_unit(first.unit_id) is False  # leased: it finishes
        assert store.get_unit(first.unit_id).state == UnitState.LEASED
        assert store.count_queued("cpu") == 1  # the leased one no longer counts
        # Both pending (one leased, one queued), both baseline units of "cpu" on one commit.
        assert store.count_pending_units(UnitKind.BASELINE, "cpu", first.base_commit) == 2
        assert store.count_pending_units(UnitKind.CANDIDATE, "cpu", first.base_commit) == 0
        assert store.count_pending_units(UnitKind.BASELINE, "mps", first.base_commit) == 0
        assert store.count_pending_units(UnitKind.BASELINE, "cpu", "another-commit") == 0
        assert store.cancel_unit(second.unit_id) is True
        assert store.count_queued("cpu") == 0
        assert store.count_pending_units(UnitKind.BASELINE, "cpu", first.base_commit) == 1  # the leased one
        assert store.cancel_unit(second.unit_id) is False  # already cancelled: nothing changes
        assert store.get_unit(second.unit_id).state == UnitState.CANCELLED
        assert store.lease_unit(volunteer.principal_id, "alice", "cpu", LONG_LEASE_S) is None
        with pytest.raises(NotFoundError):
            store.cancel_unit("no-such-unit")

    # -- 12. code stored once ----------------------------------------------------------------

    @requires("units", "code_storage")
    def test_units_with_identical_code_share_one_blob(self, store: Store) -> None:
        """12: N units running the same code add its two texts once; reads give every unit all of it."""
        before = store.code_storage()
        train_py, profiles_json = fresh_code("shared")
        shared = [make_unit(train_py=train_py, profiles_json=profiles_json) for _ in range(5)]
        shared = [store.enqueue_unit(unit) for unit in shared]
        added = code_bytes(train_py, profiles_json)
        assert store.code_storage() == CodeStorage(before.blobs + 2, before.blob_bytes + added)
        for unit in shared:
            assert store.get_unit(unit.unit_id) == unit
            assert (unit.train_py, unit.profiles_json) == (train_py, profiles_json)
        # A text used as both fields (valid Python and JSON alike) is one blob too.
        both = '{"cpu": {"DEPTH": 3}}'
        store.enqueue_unit(make_unit(train_py=both, profiles_json=both))
        assert store.code_storage().blobs == before.blobs + 3
        assert [u.train_py for u in store.list_units()][-1] == both

    @requires("units", "code_storage")
    def test_different_code_stays_distinct(self, store: Store) -> None:
        before = store.code_storage()
        train_a, profiles = fresh_code("a")
        train_b = train_a.replace("0.04", "0.05")
        a = store.enqueue_unit(make_unit(train_py=train_a, profiles_json=profiles))
        b = store.enqueue_unit(make_unit(train_py=train_b, profiles_json=profiles))
        after = store.code_storage()
        added = code_bytes(train_a, train_b, profiles)
        assert after == CodeStorage(before.blobs + 3, before.blob_bytes + added)
        assert store.get_unit(a.unit_id).train_py == train_a
        assert store.get_unit(b.unit_id).train_py == train_b
        assert {u.unit_id: u.train_py for u in store.list_units()} == {a.unit_id: train_a, b.unit_id: train_b}
        # Non-ASCII text keeps every character and counts UTF-8 bytes.
        accented = "# déjà vu ✓\n" + train_a
        c = store.enqueue_unit(make_unit(train_py=accented, profiles_json=profiles))
        assert store.get_unit(c.unit_id).train_py == accented
        assert store.code_storage() == CodeStorage(after.blobs + 1, after.blob_bytes + code_bytes(accented))

    @requires("hypotheses", "units", "code_storage")
    def test_refused_code_stores_nothing(self, store: Store) -> None:
        """2 and 7: oversize code is refused (never cut), and no refused enqueue leaves a blob."""
        first = store.enqueue_unit(make_unit())
        before = store.code_storage()
        train_py, profiles_json = fresh_code("refused")
        refusals: list[tuple[type[Exception], WorkUnit]] = [
            (PayloadTooLargeError, make_unit(train_py="#" * (MAX_TRAIN_PY_BYTES + 1))),
            # The limit is in bytes, not characters.
            (PayloadTooLargeError, make_unit(train_py="é" * (MAX_TRAIN_PY_BYTES // 2 + 1))),
            (PayloadTooLargeError, make_unit(profiles_json='{"k": "' + "x" * MAX_PROFILES_BYTES + '"}')),
            (NotFoundError, make_unit("no-such-hypothesis", UnitKind.CANDIDATE, train_py=train_py)),
            (DuplicateError, make_unit(unit_id=first.unit_id, train_py=train_py)),
            (InvalidValueError, make_unit(train_py=train_py, profiles_json="{broken")),
        ]
        for error, unit in refusals:
            with pytest.raises(error):
                store.enqueue_unit(unit)
        assert store.code_storage() == before
        assert store.list_units() == [first]
        # The limit itself is allowed, and comes back whole.
        at_limit = "é" * (MAX_TRAIN_PY_BYTES // 2)
        stored = store.enqueue_unit(make_unit(train_py=at_limit))
        assert store.get_unit(stored.unit_id).train_py == at_limit
        assert store.code_storage().blob_bytes == before.blob_bytes + MAX_TRAIN_PY_BYTES

    @requires("hypotheses", "units", "leases", "results")
    def test_finished_units_keep_their_full_code(self, store: Store) -> None:
        """Done and cancelled units (kept forever) still return the code they ran or would have."""
        h = store.add_hypothesis(make_hypothesis())
        codes = [fresh_code(f"unit {i}") for i in range(3)]
        units = [
            store.enqueue_unit(make_unit(h.hypothesis_id, UnitKind.CANDIDATE, train_py=t, profiles_json=p))
            for t, p in codes
        ]
        volunteer = add_volunteer(store)
        leased, lease = self.lease(store, volunteer)
        assert (leased.train_py, leased.profiles_json) == codes[0]
        self.report(store, volunteer, lease.lease_id)
        assert store.cancel_unit(units[1].unit_id) is True
        assert store.cancel_units(h.hypothesis_id) == 1
        by_id = {u.unit_id: u for u in store.list_units(hypothesis_id=h.hypothesis_id)}
        for unit, state, (train_py, profiles_json) in zip(
            units, (UnitState.DONE, UnitState.CANCELLED, UnitState.CANCELLED), codes, strict=True
        ):
            for read in (store.get_unit(unit.unit_id), by_id[unit.unit_id]):
                assert (read.state, read.train_py, read.profiles_json) == (state, train_py, profiles_json)
        assert [u.train_py for u in store.list_units(state=UnitState.CANCELLED)] == [codes[1][0], codes[2][0]]
        requeued = store.requeue_unit(units[0].unit_id)
        assert (requeued.state, requeued.train_py, requeued.profiles_json) == (UnitState.QUEUED, *codes[0])

    @requires("snapshots", "units", "code_storage")
    def test_snapshots_carry_full_code_and_import_stores_it_once(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        snapshot = a_snapshot(store.now())
        store.import_snapshot(snapshot)
        unit = snapshot.units[0]
        code = (unit.train_py, unit.profiles_json)
        assert store.code_storage() == CodeStorage(2, code_bytes(*code))
        exported = make_store().export_snapshot()
        assert exported == snapshot
        assert {(u.train_py, u.profiles_json) for u in exported.units} == {code}

    # -- results --------------------------------------------------------------------------------

    @requires("units", "leases", "results")
    def test_report_is_idempotent(self, store: Store) -> None:
        """5: the second report of a lease returns the first record and changes nothing."""
        unit = store.enqueue_unit(make_unit())
        volunteer = add_volunteer(store)
        _, lease = self.lease(store, volunteer)
        record, duplicate = store.record_result(
            lease.lease_id, volunteer.principal_id, ok_metrics(1.2345678901234567), a_score(), "res-1"
        )
        assert not duplicate
        assert record.metrics == ok_metrics(1.2345678901234567)  # every digit kept
        assert record.score == a_score()
        assert (record.unit_id, record.kind, record.hardware_class, record.owner) == (
            unit.unit_id,
            UnitKind.BASELINE,
            "cpu",
            "alice",
        )
        assert isinstance(record.kind, UnitKind)  # typed as the stored one, not its text
        again, duplicate = store.record_result(
            lease.lease_id, volunteer.principal_id, ok_metrics(9.0), a_score(0.5), "res-2"
        )
        assert duplicate and again == record
        assert store.result_for_lease(lease.lease_id) == record
        assert store.get_result("res-1") == record
        with pytest.raises(NotFoundError):
            store.get_result("res-2")
        assert store.list_results() == [record]
        assert store.get_lease(lease.lease_id).state == LeaseState.REPORTED
        assert store.get_unit(unit.unit_id).state == UnitState.DONE
        assert store.list_leases() == []

    @requires("units", "leases", "results")
    def test_report_context_reads_lease_unit_and_a_stored_result(self, store: Store) -> None:
        """What a report reads before it is scored: the stored result only once the lease ended."""
        unit = store.enqueue_unit(make_unit())
        volunteer = add_volunteer(store)
        _, lease = self.lease(store, volunteer)
        context = store.report_context(lease.lease_id)
        assert context.lease == store.get_lease(lease.lease_id)
        assert context.unit == store.get_unit(unit.unit_id, with_code=False)
        assert context.unit.train_py == "" and context.existing is None
        record = self.report(store, volunteer, lease.lease_id)
        after = store.report_context(lease.lease_id)
        assert after.lease.state == LeaseState.REPORTED and after.existing == record
        with pytest.raises(NotFoundError):
            store.report_context("no-such-lease")

    @requires("units", "leases", "stats")
    @pytest.mark.parametrize("hardware_class", ["rtx-4090", "gpu/Ärger \"x\""])
    def test_report_context_carries_the_class_stats_of_the_units_commit(
        self, store: Store, hardware_class: str
    ) -> None:
        """A report is scored against the statistics last put for its unit's (class, base
        commit): none before they are put, the newest after, never another commit's or class's.
        Names with quotes, slashes and non-ASCII letters find theirs too."""
        store.enqueue_unit(make_unit(hardware_class=hardware_class, base_commit="c1"))
        store.put_class_stats(ClassStats(hardware_class, "c0", 3, 1.1, 0.004))  # another commit
        store.put_class_stats(ClassStats("cpu", "c1", 3, 1.2, 0.004))  # another class
        volunteer = add_volunteer(store, hardware_class=hardware_class)
        _, lease = self.lease(store, volunteer)
        assert store.report_context(lease.lease_id).class_stats is None
        store.put_class_stats(ClassStats(hardware_class, "c1", 2, 1.3, 0.005))
        store.put_class_stats(ClassStats(hardware_class, "c1", 3, 1.25, 0.006))
        stats = store.report_context(lease.lease_id).class_stats
        assert stats == store.get_class_stats(hardware_class, "c1")
        assert stats is not None and (stats.samples, stats.mean_val_bpb, stats.sigma) == (3, 1.25, 0.006)

    @requires("units", "leases", "results")
    def test_report_refusals_change_nothing(self, store: Store) -> None:
        """5, 7 and 2: typed errors, and the lease stays reportable."""
        store.enqueue_unit(make_unit())
        store.enqueue_unit(make_unit())
        volunteer, other = add_volunteer(store, "alice"), add_volunteer(store, "bob")
        _, lease = self.lease(store, volunteer)
        _, other_lease = self.lease(store, other)
        report = store.record_result
        vid = volunteer.principal_id
        with pytest.raises(NotFoundError):
            report("no-such-lease", vid, ok_metrics(), a_score(), new_id("res"))
        with pytest.raises(PermissionDeniedError):
            report(lease.lease_id, other.principal_id, ok_metrics(), a_score(), new_id("res"))
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(InvalidValueError):
                report(lease.lease_id, vid, ok_metrics(val_bpb=bad), a_score(), new_id("res"))
        with pytest.raises(InvalidValueError):
            report(lease.lease_id, vid, ok_metrics(mfu_percent=math.nan), a_score(), new_id("res"))
        with pytest.raises(InvalidValueError):
            report(lease.lease_id, vid, ok_metrics(), a_score(delta_bpb=math.inf), new_id("res"))
        with pytest.raises(InvalidValueError):
            report(lease.lease_id, vid, ok_metrics(num_steps=-1), a_score(), new_id("res"))
        with pytest.raises(InvalidValueError):
            report(lease.lease_id, vid, ok_metrics(status="exploded"), a_score(), new_id("res"))
        with pytest.raises(PayloadTooLargeError):
            report(
                lease.lease_id,
                vid,
                ok_metrics(log_tail="x" * (MAX_LOG_TAIL_BYTES + 1)),
                a_score(),
                new_id("res"),
            )
        too_many = {f"k{i}": "v" for i in range(MAX_ENVIRONMENT_ENTRIES + 1)}
        with pytest.raises(PayloadTooLargeError):
            report(lease.lease_id, vid, ok_metrics(environment=too_many), a_score(), new_id("res"))
        assert store.list_results() == []
        assert store.get_lease(lease.lease_id).state == LeaseState.ACTIVE
        self.report(store, other, other_lease.lease_id)
        taken_id = store.list_results()[0].result_id
        with pytest.raises(DuplicateError):
            report(lease.lease_id, vid, ok_metrics(), a_score(), taken_id)
        record = self.report(store, volunteer, lease.lease_id, log_tail="x" * MAX_LOG_TAIL_BYTES)
        assert len(record.metrics.log_tail) == MAX_LOG_TAIL_BYTES

    @requires("hypotheses", "units", "leases", "results")
    def test_results_pages_and_filters(self, store: Store, advance_clock: Callable[[float], None]) -> None:
        h1, h2 = store.add_hypothesis(make_hypothesis()), store.add_hypothesis(make_hypothesis())
        alice, bob = add_volunteer(store, "alice"), add_volunteer(store, "bob", "mps")
        plan = [
            (alice, make_unit(kind=UnitKind.BASELINE), RunStatus.OK),
            (alice, make_unit(h1.hypothesis_id, UnitKind.CANDIDATE), RunStatus.OK),
            (alice, make_unit(h1.hypothesis_id, UnitKind.CANDIDATE), RunStatus.CRASH),
            (bob, make_unit(h1.hypothesis_id, UnitKind.REPLICATE, hardware_class="mps"), RunStatus.OK),
            (
                bob,
                make_unit(h2.hypothesis_id, UnitKind.CANDIDATE, hardware_class="mps", base_commit="d00d"),
                RunStatus.OOM,
            ),
            (alice, make_unit(h2.hypothesis_id, UnitKind.CANDIDATE), RunStatus.OK),
            (bob, make_unit(kind=UnitKind.BASELINE, hardware_class="mps"), RunStatus.OK),
        ]
        records = []
        for i, (volunteer, unit, status) in enumerate(plan):
            store.enqueue_unit(unit)
            leased, lease = self.lease(store, volunteer)
            assert leased.unit_id == unit.unit_id
            records.append(
                self.report(store, volunteer, lease.lease_id, status=status, val_bpb=1.0 + i / 100)
            )
            if i == 3:
                advance_clock(0.05)
                midpoint = store.now()
                advance_clock(0.05)

        def ids(result_filter: ResultFilter | None = None, **page: Any) -> list[str]:
            return [r.result_id for r in store.list_results(result_filter, **page)]

        every = [r.result_id for r in records]
        assert ids() == every
        pages, after = [], ""
        while page := ids(limit=3, after=after):
            pages.append(page)
            after = page[-1]
        assert pages == [every[0:3], every[3:6], every[6:]]
        assert ids(ResultFilter(hardware_class="mps")) == [every[i] for i in (3, 4, 6)]
        assert ids(ResultFilter(status=RunStatus.OK)) == [every[i] for i in (0, 1, 3, 5, 6)]
        assert ids(ResultFilter(hypothesis_id=h1.hypothesis_id)) == every[1:4]
        assert ids(ResultFilter(volunteer_id=bob.principal_id)) == [every[i] for i in (3, 4, 6)]
        assert ids(ResultFilter(kind=UnitKind.BASELINE)) == [every[0], every[6]]
        assert ids(ResultFilter(base_commit="d00d")) == [every[4]]
        assert ids(ResultFilter(since_s=midpoint)) == every[4:]
        assert ids(
            ResultFilter(hypothesis_id=h1.hypothesis_id, status=RunStatus.OK, hardware_class="cpu")
        ) == [every[1]]
        assert ids(ResultFilter(status=RunStatus.OK), limit=2, after=every[1]) == [every[3], every[5]]
        assert ids(ResultFilter(hardware_class="rtx4090-24g")) == []
        with pytest.raises(NotFoundError):
            store.list_results(after="no-such-result")
        with pytest.raises(InvalidValueError):
            store.list_results(ResultFilter(since_s=math.nan))
        with pytest.raises(InvalidValueError):
            store.list_results(limit=-1)

    # -- revocation -------------------------------------------------------------------------------

    @requires("units", "leases", "results", "revocation")
    def test_revocation_stops_results_counting(self, store: Store) -> None:
        """10: data kept, counts false, active leases cancelled, and it stays revoked."""
        for _ in range(3):
            store.enqueue_unit(make_unit())
        cheat, honest = add_volunteer(store, "mallory"), add_volunteer(store, "alice")
        reported = []
        for _ in range(2):
            _, lease = self.lease(store, cheat)
            reported.append(self.report(store, cheat, lease.lease_id))
        held_unit, held = self.lease(store, cheat)
        assert store.revoke_principal(cheat.principal_id, "forged numbers") == 2
        revoked = store.get_principal(cheat.principal_id)
        assert revoked.revoked and revoked.revoked_reason == "forged numbers"
        for record in reported:
            kept = store.get_result(record.result_id)
            assert not kept.counts and kept.metrics == record.metrics
        assert store.get_lease(held.lease_id).state == LeaseState.RELEASED
        assert store.get_unit(held_unit.unit_id).state == UnitState.QUEUED
        with pytest.raises(PermissionDeniedError):
            store.lease_unit(cheat.principal_id, "mallory", "cpu", LONG_LEASE_S)
        with pytest.raises(LeaseExpiredError):
            store.record_result(held.lease_id, cheat.principal_id, ok_metrics(), a_score(), new_id("res"))
        assert store.revoke_principal(cheat.principal_id, "second time") == 0
        assert store.get_principal(cheat.principal_id).revoked_reason == "forged numbers"
        _, lease = self.lease(store, honest)
        honest_record = self.report(store, honest, lease.lease_id)
        assert store.list_results(ResultFilter(counting_only=True)) == [honest_record]
        assert len(store.list_results()) == 3
        with pytest.raises(NotFoundError):
            store.revoke_principal("nobody", "x")

    @requires("units", "leases", "results", "revocation")
    def test_revoke_owner(self, store: Store) -> None:
        for _ in range(3):
            store.enqueue_unit(make_unit())
        first, second, bystander = (
            add_volunteer(store, "lab"),
            add_volunteer(store, "lab"),
            add_volunteer(store, "uni"),
        )
        for volunteer in (first, second, bystander):
            _, lease = self.lease(store, volunteer)
            self.report(store, volunteer, lease.lease_id)
        store.revoke_principal(second.principal_id, "earlier")
        revoked, discounted = store.revoke_owner("lab", "sybil accounts")
        assert (revoked, discounted) == ([first.principal_id], 1)
        assert all(p.revoked for p in store.list_principals(owner="lab"))
        assert not store.get_principal(bystander.principal_id).revoked
        assert [r.volunteer_id for r in store.list_results(ResultFilter(counting_only=True))] == [
            bystander.principal_id
        ]
        assert store.revoke_owner("lab", "again") == ([], 0)
        assert store.revoke_owner("nobody-owns-this", "x") == ([], 0)

    # -- statistics and merges -----------------------------------------------------------------

    @requires("stats")
    def test_class_stats(self, store: Store) -> None:
        assert store.get_class_stats("cpu", "c0") is None
        before = store.now()
        store.put_class_stats(ClassStats("cpu", "c0", 3, 1.2345678901234567, 0.004, updated_s=1.0))
        store.put_class_stats(ClassStats("mps", "c0", 2, 1.5, 0.03))
        store.put_class_stats(ClassStats("cpu", "c1", 1, 1.3, 0.0))
        stats = store.get_class_stats("cpu", "c0")
        assert stats is not None and stats.mean_val_bpb == 1.2345678901234567 and stats.updated_s >= before
        store.put_class_stats(ClassStats("cpu", "c0", 4, 1.24, 0.005))
        assert store.get_class_stats("cpu", "c0").samples == 4  # type: ignore[union-attr]
        assert [(s.hardware_class, s.commit) for s in store.list_class_stats()] == [
            ("cpu", "c0"),
            ("cpu", "c1"),
            ("mps", "c0"),
        ]
        assert [s.hardware_class for s in store.list_class_stats("c0")] == ["cpu", "mps"]
        with pytest.raises(InvalidValueError):
            store.put_class_stats(ClassStats("cpu", "c0", 5, math.nan, 0.0))
        with pytest.raises(InvalidValueError):
            store.put_class_stats(ClassStats("cpu", "c0", -1, 1.0, 0.0))
        assert store.get_class_stats("cpu", "c0").samples == 4  # type: ignore[union-attr]

    @requires("merges")
    def test_merges(self, store: Store) -> None:
        first = store.add_merge(MergeRecord("c1", "c0", "h1", "Raise LR", {"cpu": 0.012, "mps": -0.001}))
        assert first.merged_s > 0 and dict(first.delta_bpb_by_class) == {"cpu": 0.012, "mps": -0.001}
        second = store.add_merge(MergeRecord("c2", "c1", "h2", "Deeper"))
        assert store.list_merges() == [second, first]
        assert store.list_merges(limit=1) == [second]
        with pytest.raises(DuplicateError):
            store.add_merge(MergeRecord("c1", "c0", "h9", "again"))
        with pytest.raises(InvalidValueError):
            store.add_merge(MergeRecord("c3", "c2", "h3", "bad", {"cpu": math.inf}))
        reverted = store.mark_reverted("c1", "c1-revert", "mps got worse")
        assert (reverted.reverted_by, reverted.revert_reason) == ("c1-revert", "mps got worse")
        with pytest.raises(ConflictError):
            store.mark_reverted("c1", "c1-revert-2", "again")
        with pytest.raises(NotFoundError):
            store.mark_reverted("c404", "x", "y")
        assert store.list_merges() == [second, reverted]

    # -- several handles, several processes -----------------------------------------------------

    @requires("hypotheses")
    def test_second_handle_sees_every_write(self, make_store: Callable[[], Store]) -> None:
        writer, reader = make_store(), make_store()
        h = writer.add_hypothesis(make_hypothesis())
        assert reader.get_hypothesis(h.hypothesis_id) == h
        writer.close()
        assert reader.count_hypotheses() == 1

    @requires("processes", "units", "leases", "results")
    def test_processes_racing_never_share_a_unit(self, store: Store, store_url: str) -> None:
        """3: two real processes lease, report and give back from one queue until it is empty."""
        units = {store.enqueue_unit(make_unit()).unit_id for _ in range(RACE_UNITS)}
        volunteers = [add_volunteer(store, "alice"), add_volunteer(store, "bob")]
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(len(volunteers)), context.Queue()
        workers = [
            context.Process(
                target=race_worker,
                args=(self.STORE_OPENER, store_url, v.principal_id, v.owner, barrier, results),
            )
            for v in volunteers
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=RACE_TIMEOUT_S) for _ in workers]
        for worker in workers:
            worker.join(timeout=10)
        errors = [detail for status, detail in outcomes if status == "error"]
        assert not errors, errors[0]
        taken = [pair for _, pairs in outcomes for pair in pairs]
        assert all(pairs for _, pairs in outcomes), "both processes should have won some units"
        assert {unit_id for unit_id, _ in taken} == units
        assert len({lease_id for _, lease_id in taken}) == len(taken)
        # Every unit ends with exactly one result, and its leases never overlap in time.
        leases_by_unit: dict[str, list[Any]] = defaultdict(list)
        for lease in store.list_leases(active_only=False):
            leases_by_unit[lease.unit_id].append(lease)
        assert sum(len(v) for v in leases_by_unit.values()) == len(taken)
        for unit_id in units:
            history = sorted(leases_by_unit[unit_id], key=lambda lease: lease.issued_s)
            assert [lease.state for lease in history[:-1]] == [LeaseState.RELEASED] * (len(history) - 1)
            assert history[-1].state == LeaseState.REPORTED
            for earlier, later in zip(history, history[1:], strict=False):
                assert earlier.ended_s <= later.issued_s
            assert store.get_unit(unit_id).attempts == len(history)
            assert store.get_unit(unit_id).state == UnitState.DONE
        assert len(store.list_results()) == RACE_UNITS
        assert store.list_leases() == []
