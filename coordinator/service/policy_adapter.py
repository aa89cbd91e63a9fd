"""The policy's read-only window onto the real store and branch (coordinator.policy.view.PolicyView)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache

from coordinator.branch import BranchError, GlobalBranch
from coordinator.policy.view import VolunteerInfo
from coordinator.store.base import Store, read_all_results
from coordinator.store.types import (
    Hypothesis,
    HypothesisState,
    MergeRecord,
    ResultFilter,
    ResultRecord,
    Role,
    UnitKind,
    UnitState,
    WorkUnit,
)

ONLINE_WINDOW_S = 900.0
COUNTING = ResultFilter(counting_only=True)
MERGES_MAX_AGE_S = 2.0
PRINCIPAL_SNAPSHOT_TTL_S = 1.0  # volunteers change rarely; reading them per decision is wasteful


class StoreView:
    """Implements PolicyView over a Store and the GlobalBranch. Reads only."""

    def __init__(self, store: Store, branch: GlobalBranch, online_window_s: float = ONLINE_WINDOW_S) -> None:
        self.store = store
        self.branch = branch
        self.online_window_s = online_window_s
        self._merges: tuple[str, float, list[MergeRecord]] = ("", 0.0, [])  # (head, when read, merges)
        self._principals_at = 0.0
        self._online_snapshot: tuple[list[VolunteerInfo], dict[str, list[VolunteerInfo]]] = ([], {})
        self._snapshot = threading.local()  # pending units and "results read" during one pass, per thread
        self._results = _Results()  # every counting result, in report order, indexed
        self._results_lock = threading.Lock()
        self._profiles: tuple[str, str] = ("", "")  # (commit, its profiles.json): a commit never changes

    @contextmanager
    def pass_snapshot(self) -> Iterator[None]:
        """During one policy pass, pending units and new results are read once and everything
        else is filtered in memory: a sweep over thousands of open hypotheses costs a few store
        reads, not a few per hypothesis."""
        self._snapshot.pending = self._read_pending()
        with self.one_read_of_results():
            try:
                yield
            finally:
                self._snapshot.pending = None

    @contextmanager
    def one_read_of_results(self) -> Iterator[None]:
        """Within this block (this thread) new results are read from the store at most once: one
        decision sees one consistent set."""
        outer = getattr(self._snapshot, "polled", None)
        self._snapshot.polled = bool(outer)
        try:
            yield
        finally:
            self._snapshot.polled = outer

    def _read_pending(self, hypothesis_id: str = "", hardware_class: str = "") -> list[WorkUnit]:
        if hypothesis_id:  # one hypothesis has a handful of units: one read, filtered here
            units = [
                u for u in self.store.list_units(hypothesis_id=hypothesis_id, hardware_class=hardware_class)
                if u.state in (UnitState.QUEUED, UnitState.LEASED)
            ]
        else:
            units = self.store.list_units(hardware_class=hardware_class, state=UnitState.QUEUED)
            units += self.store.list_units(hardware_class=hardware_class, state=UnitState.LEASED)
        return sorted(units, key=lambda u: (u.created_s, u.unit_id))

    def forget_results(self) -> None:
        """Results stopped counting (a revocation): read them all again."""
        with self._results_lock:
            self._results = _Results()

    def _counting_results(
        self, hardware_class: str = "", base_commit: str = "", kind: UnitKind | None = None, hypothesis_id: str = ""
    ) -> list[ResultRecord]:
        """Counting results, from memory. Results are append-only (only a revocation changes
        `counts`, and it calls forget_results), so only rows newer than the last seen are read."""
        polled = getattr(self._snapshot, "polled", None)
        if not polled:
            after = self._results.last_id
            self._absorb(after, read_all_results(self.store, COUNTING, after))
            if polled is not None:
                self._snapshot.polled = True
        with self._results_lock:
            return self._results.select(hardware_class, base_commit, kind, hypothesis_id)

    def _absorb(self, read_after: str, records: list[ResultRecord]) -> None:
        """Add results read after `read_after` (the store is read outside the lock, so another
        reader may have added some of them, or more, meanwhile: only what is newer is kept)."""
        with self._results_lock:
            last = self._results.last_id
            if last != read_after:
                ids = [r.result_id for r in records]
                records = records[ids.index(last) + 1 :] if last and last in ids else []
            self._results.extend(_slim(r) for r in records)

    def _online(self) -> tuple[list[VolunteerInfo], dict[str, list[VolunteerInfo]]]:
        """Volunteers online, all and by class, from a snapshot at most PRINCIPAL_SNAPSHOT_TTL_S
        old: a decision asks several times per hypothesis, and filtering every registered
        volunteer (and asking the store's clock) each time cost milliseconds at 2,000 of them."""
        now = time.monotonic()
        if now - self._principals_at > PRINCIPAL_SNAPSHOT_TTL_S:
            principals = self.store.list_principals(role=Role.VOLUNTEER)
            store_now = self.store.now()
            everyone: list[VolunteerInfo] = []
            by_class: dict[str, list[VolunteerInfo]] = {}
            for p in principals:
                if p.revoked or store_now - p.last_seen_s > self.online_window_s:
                    continue
                info = VolunteerInfo(p.principal_id, p.owner, p.hardware_class)
                everyone.append(info)
                by_class.setdefault(p.hardware_class, []).append(info)
            self._online_snapshot = (everyone, by_class)
            self._principals_at = now
        return self._online_snapshot

    def forget_merges(self) -> None:
        """A merge record was written or marked reverted here."""
        self._merges = ("", 0.0, [])

    def invalidate(self) -> None:
        """Forget the volunteer snapshot (a volunteer registered or came back)."""
        self._principals_at = 0.0

    def head_commit(self) -> str:
        return self.branch.head()

    def active_classes(self) -> list[str]:
        return sorted(self._online()[1])

    def online_volunteers(self, hardware_class: str = "") -> list[VolunteerInfo]:
        everyone, by_class = self._online()
        return list(by_class.get(hardware_class, ()) if hardware_class else everyone)

    def counting_results(
        self,
        hypothesis_id: str = "",
        hardware_class: str = "",
        base_commit: str = "",
        kind: UnitKind | None = None,
    ) -> list[ResultRecord]:
        return self._counting_results(hardware_class, base_commit, kind, hypothesis_id)

    def pending_units(self, hypothesis_id: str = "", hardware_class: str = "") -> list[WorkUnit]:
        pending = getattr(self._snapshot, "pending", None)
        if pending is not None:
            return [
                u for u in pending
                if (not hypothesis_id or u.hypothesis_id == hypothesis_id)
                and (not hardware_class or u.hardware_class == hardware_class)
            ]
        return self._read_pending(hypothesis_id, hardware_class)

    def queued_count(self, hardware_class: str) -> int:
        pending = getattr(self._snapshot, "pending", None)
        if pending is not None:
            return sum(1 for u in pending if u.state == UnitState.QUEUED and u.hardware_class == hardware_class)
        return self.store.count_queued(hardware_class)

    def pending_baselines(self, hardware_class: str, commit: str) -> int:
        pending = getattr(self._snapshot, "pending", None)
        if pending is not None:
            return sum(
                1 for u in pending
                if u.kind == UnitKind.BASELINE and u.hardware_class == hardware_class and u.base_commit == commit
            )
        return self.store.count_pending_units(UnitKind.BASELINE, hardware_class, commit)

    def hypotheses(self, states: Iterable[HypothesisState] = ()) -> list[Hypothesis]:
        return self.store.list_hypotheses(states=list(states), limit=100_000)

    def pinned_constants(self, hardware_class: str) -> set[str]:
        head = self.head_commit()
        commit, text = self._profiles
        if commit != head:  # read from git once per head, not once per call (a few git processes)
            text = self.branch.read_file(head, "profiles.json")
            self._profiles = (head, text)
        return set(_pinned(text, hardware_class))

    def merges_current(self) -> bool:
        """The merge list merge_for would use is fresh (no store read needed)."""
        head, now = self.branch.head(), time.monotonic()
        return self._merges[0] == head and now - self._merges[1] <= MERGES_MAX_AGE_S

    def read_merges(self) -> None:
        """Read the merge list now (a blocking store read: off the event loop)."""
        head, now = self.branch.head(), time.monotonic()
        self._merges = (head, now, self.store.list_merges(limit=1000))

    def merge_for(self, commit: str) -> MergeRecord | None:
        # Merges and reverts both move the head, so a list read at the current head is current,
        # unless it was read between the ref update and the merge record (forget_merges, and a
        # short age limit for the merges another process makes).
        if not self.merges_current():
            self.read_merges()
        for merge in self._merges[2]:
            if merge.commit == commit:
                return merge
        return None

    def constants(self, commit: str) -> Mapping[str, str]:
        try:
            return _constants(self.branch.read_file(commit, "train.py"))
        except BranchError:
            return {}


class _Results:
    """Counting results in report order, with the indexes the policy's reads use."""

    def __init__(self) -> None:
        self.all: list[ResultRecord] = []
        self.by_class: dict[str, list[ResultRecord]] = {}
        self.by_class_kind: dict[tuple[str, UnitKind], list[ResultRecord]] = {}
        self.by_class_commit_kind: dict[tuple[str, str, UnitKind], list[ResultRecord]] = {}
        self.by_hypothesis: dict[str, list[ResultRecord]] = {}

    @property
    def last_id(self) -> str:
        return self.all[-1].result_id if self.all else ""

    def extend(self, records: Iterable[ResultRecord]) -> None:
        for r in records:
            self.all.append(r)
            self.by_class.setdefault(r.hardware_class, []).append(r)
            self.by_class_kind.setdefault((r.hardware_class, r.kind), []).append(r)
            self.by_class_commit_kind.setdefault((r.hardware_class, r.base_commit, r.kind), []).append(r)
            if r.hypothesis_id:
                self.by_hypothesis.setdefault(r.hypothesis_id, []).append(r)

    def select(self, hardware_class: str, base_commit: str, kind: UnitKind | None, hypothesis_id: str) -> list[ResultRecord]:
        if hypothesis_id:
            rows: list[ResultRecord] = self.by_hypothesis.get(hypothesis_id, [])
        elif hardware_class and base_commit and kind is not None:
            return list(self.by_class_commit_kind.get((hardware_class, base_commit, kind), ()))
        elif hardware_class and kind is not None:
            return list(self.by_class_kind.get((hardware_class, kind), ()))
        elif hardware_class:
            rows = self.by_class.get(hardware_class, [])
        else:
            rows = self.all
        return [
            r for r in rows
            if (not hardware_class or r.hardware_class == hardware_class)
            and (not base_commit or r.base_commit == base_commit)
            and (kind is None or r.kind == kind)
        ]


def _slim(record: ResultRecord) -> ResultRecord:
    """The record without its log tail and environment: the policy reads neither, and a months-long
    swarm keeps every result of a class in this cache."""
    metrics = dataclasses.replace(record.metrics, log_tail="", environment={})
    return dataclasses.replace(record, metrics=metrics)


@lru_cache(maxsize=64)
def _pinned(profiles_json: str, hardware_class: str) -> frozenset[str]:
    from trainer.profiles import ProfileError, pinned_constants

    try:
        return frozenset(pinned_constants(hardware_class, profiles_json))
    except (ProfileError, KeyError):
        return frozenset()


@lru_cache(maxsize=64)
def _constants(source: str) -> dict[str, str]:
    from coordinator.policy.literals import render_literal
    from trainer.constants import ConstantsError, read_constants

    try:
        values = read_constants(source)
    except ConstantsError:
        return {}
    rendered = {}
    for name, value in values.items():
        try:
            rendered[name] = render_literal(value)  # type: ignore[arg-type]
        except Exception:
            rendered[name] = repr(value)
    return rendered
