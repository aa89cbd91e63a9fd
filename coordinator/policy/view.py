"""The policy's read-only window on coordinator state, and an in-memory implementation.

The policy never writes: it reads through `PolicyView` and returns decisions; the service applies
them to the store and the branch. `InMemoryView` backs the unit tests and the simulator; its
mutators (`add_*`, `set_*`) play the service's part there.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from coordinator.store.types import (
    Hypothesis,
    HypothesisSource,
    HypothesisState,
    MergeRecord,
    NormalizedScore,
    ResultRecord,
    RunMetrics,
    UnitKind,
    UnitState,
    WorkUnit,
    replace,
)


@dataclass(frozen=True)
class VolunteerInfo:
    volunteer_id: str
    owner: str
    hardware_class: str


class PolicyView(Protocol):
    """What the policy may read. Every list is a snapshot; order is oldest first."""

    def head_commit(self) -> str:
        """The global branch's head."""
        ...

    def active_classes(self) -> list[str]:
        """Hardware classes with at least one volunteer online, sorted."""
        ...

    def online_volunteers(self, hardware_class: str = "") -> list[VolunteerInfo]:
        """Volunteers seen recently (not revoked), optionally of one class."""
        ...

    def counting_results(
        self,
        hypothesis_id: str = "",
        hardware_class: str = "",
        base_commit: str = "",
        kind: UnitKind | None = None,
    ) -> list[ResultRecord]:
        """Results that count (their volunteer and owner not revoked), any status, in report order.
        Empty strings and None mean "any"."""
        ...

    def pending_units(self, hypothesis_id: str = "", hardware_class: str = "") -> list[WorkUnit]:
        """Units queued or leased (not done, not cancelled)."""
        ...

    def queued_count(self, hardware_class: str) -> int:
        """How many units of the class are queued, not yet leased (the queue holds about one
        unit per volunteer online: counted by the store, not read)."""
        ...

    def pending_baselines(self, hardware_class: str, commit: str) -> int:
        """Baseline units of the class on `commit` queued or leased (counted by the store)."""
        ...

    def hypotheses(self, states: Iterable[HypothesisState] = ()) -> list[Hypothesis]:
        """Hypotheses in any of `states` (all when empty), oldest first."""
        ...

    def pinned_constants(self, hardware_class: str) -> set[str]:
        """Constants of train.py the class's profile pins (hypotheses changing them skip the class)."""
        ...

    def merge_for(self, commit: str) -> MergeRecord | None:
        """The merge that created `commit`, if it was a merge of a hypothesis."""
        ...

    def constants(self, commit: str) -> Mapping[str, str]:
        """NAME -> literal of train.py's constants block at `commit` (empty when unknown)."""
        ...


class InMemoryView:
    """A complete in-memory state for tests and the simulator (indexed for speed)."""

    def __init__(self, head: str = "c0", constants: Mapping[str, str] | None = None) -> None:
        self._head = head
        self._constants: dict[str, dict[str, str]] = {head: dict(constants or {})}
        self._volunteers: dict[str, VolunteerInfo] = {}
        self._offline: set[str] = set()
        self._pins: dict[str, set[str]] = {}
        self._hypotheses: dict[str, Hypothesis] = {}
        self._units: dict[str, WorkUnit] = {}
        self._pending: dict[str, WorkUnit] = {}  # queued or leased
        self._results: list[ResultRecord] = []
        self._by_hypothesis: dict[str, list[ResultRecord]] = defaultdict(list)
        self._by_class: dict[str, list[ResultRecord]] = defaultdict(list)
        self._by_class_kind: dict[tuple[str, UnitKind], list[ResultRecord]] = defaultdict(list)
        self._by_class_commit_kind: dict[tuple[str, str, UnitKind], list[ResultRecord]] = defaultdict(list)
        self._merges: dict[str, MergeRecord] = {}
        self._revoked: set[str] = set()  # volunteer ids and owners whose results stop counting
        self._ids = itertools.count(1)

    # -- PolicyView -------------------------------------------------------------------------------

    def head_commit(self) -> str:
        return self._head

    def active_classes(self) -> list[str]:
        return sorted({v.hardware_class for v in self.online_volunteers()})

    def online_volunteers(self, hardware_class: str = "") -> list[VolunteerInfo]:
        return [
            v
            for v in self._volunteers.values()
            if v.volunteer_id not in self._offline
            and not self._is_revoked(v.volunteer_id, v.owner)
            and (not hardware_class or v.hardware_class == hardware_class)
        ]

    def counting_results(
        self,
        hypothesis_id: str = "",
        hardware_class: str = "",
        base_commit: str = "",
        kind: UnitKind | None = None,
    ) -> list[ResultRecord]:
        if hypothesis_id:
            pool: list[ResultRecord] = self._by_hypothesis.get(hypothesis_id, [])
        elif hardware_class and kind is not None and base_commit:
            pool = self._by_class_commit_kind.get((hardware_class, base_commit, kind), [])
        elif hardware_class and kind is not None:
            pool = self._by_class_kind.get((hardware_class, kind), [])
        elif hardware_class:
            pool = self._by_class.get(hardware_class, [])
        else:
            pool = self._results
        return [
            r
            for r in pool
            if not self._is_revoked(r.volunteer_id, r.owner)
            and (not hypothesis_id or r.hypothesis_id == hypothesis_id)
            and (not hardware_class or r.hardware_class == hardware_class)
            and (not base_commit or r.base_commit == base_commit)
            and (kind is None or r.kind == kind)
        ]

    def pending_units(self, hypothesis_id: str = "", hardware_class: str = "") -> list[WorkUnit]:
        return [
            u
            for u in self._pending.values()
            if (not hypothesis_id or u.hypothesis_id == hypothesis_id)
            and (not hardware_class or u.hardware_class == hardware_class)
        ]

    def hypotheses(self, states: Iterable[HypothesisState] = ()) -> list[Hypothesis]:
        wanted = set(states)
        return [h for h in self._hypotheses.values() if not wanted or h.state in wanted]

    def pinned_constants(self, hardware_class: str) -> set[str]:
        return set(self._pins.get(hardware_class, set()))

    def merge_for(self, commit: str) -> MergeRecord | None:
        return self._merges.get(commit)

    def constants(self, commit: str) -> Mapping[str, str]:
        return self._constants.get(commit, {})

    # -- mutators (the service's part in tests and the simulator) ---------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def hypothesis(self, hypothesis_id: str) -> Hypothesis:
        return self._hypotheses[hypothesis_id]

    def unit(self, unit_id: str) -> WorkUnit:
        return self._units[unit_id]

    def add_volunteer(self, volunteer_id: str, owner: str, hardware_class: str) -> VolunteerInfo:
        info = VolunteerInfo(volunteer_id, owner, hardware_class)
        self._volunteers[volunteer_id] = info
        self._offline.discard(volunteer_id)
        return info

    def set_offline(self, volunteer_id: str, offline: bool = True) -> None:
        (self._offline.add if offline else self._offline.discard)(volunteer_id)

    def revoke(self, volunteer_or_owner: str) -> None:
        self._revoked.add(volunteer_or_owner)

    def _is_revoked(self, volunteer_id: str, owner: str) -> bool:
        return bool(self._revoked) and (volunteer_id in self._revoked or owner in self._revoked)

    def set_pins(self, hardware_class: str, names: Iterable[str]) -> None:
        self._pins[hardware_class] = set(names)

    def add_commit(self, commit: str, constants: Mapping[str, str]) -> None:
        self._constants[commit] = dict(constants)

    def set_head(self, commit: str) -> None:
        if commit not in self._constants:
            raise KeyError(f"unknown commit {commit!r}")
        self._head = commit

    def add_merge(self, merge: MergeRecord) -> None:
        self._merges[merge.commit] = merge

    def mark_reverted(self, commit: str, reverted_by: str, reason: str) -> None:
        merge = self._merges[commit]
        self._merges[commit] = replace(merge, reverted_by=reverted_by, revert_reason=reason)  # type: ignore[assignment]

    def merges(self) -> list[MergeRecord]:
        return list(self._merges.values())

    def add_hypothesis(
        self,
        constant_changes: Mapping[str, str],
        *,
        title: str = "",
        base_commit: str = "",
        priority: float = 0.0,
        hypothesis_id: str = "",
        touched_classes: tuple[str, ...] = (),
    ) -> Hypothesis:
        hypothesis_id = hypothesis_id or self.new_id("h")
        changes = dict(constant_changes)
        hypothesis = Hypothesis(
            hypothesis_id=hypothesis_id,
            title=title or ", ".join(f"{k}={v}" for k, v in sorted(changes.items())),
            rationale="",
            patch="",
            base_commit=base_commit or self._head,
            source=HypothesisSource.BUILTIN,
            proposer_id="builtin",
            fingerprint=hypothesis_id,
            priority=priority,
            constant_changes=changes,
            touched_classes=touched_classes,
        )
        self._hypotheses[hypothesis_id] = hypothesis
        return hypothesis

    def set_state(self, hypothesis_id: str, state: HypothesisState, reason: str = "", merged_commit: str = "") -> None:
        h = self._hypotheses[hypothesis_id]
        self._hypotheses[hypothesis_id] = replace(  # type: ignore[assignment]
            h, state=state, state_reason=reason, merged_commit=merged_commit or h.merged_commit
        )

    def add_unit(
        self,
        kind: UnitKind,
        hardware_class: str,
        base_commit: str,
        hypothesis_id: str = "",
        priority: float = 0.0,
        excluded_volunteers: tuple[str, ...] = (),
        excluded_owners: tuple[str, ...] = (),
    ) -> WorkUnit:
        unit = WorkUnit(
            unit_id=self.new_id("u"),
            kind=kind,
            hardware_class=hardware_class,
            base_commit=base_commit,
            train_py="",
            profiles_json="{}",
            hypothesis_id=hypothesis_id,
            priority=priority,
            excluded_volunteers=tuple(excluded_volunteers),
            excluded_owners=tuple(excluded_owners),
        )
        self._units[unit.unit_id] = unit
        self._pending[unit.unit_id] = unit
        return unit

    def set_unit_state(self, unit_id: str, state: UnitState, attempts_delta: int = 0) -> WorkUnit:
        unit = replace(self._units[unit_id], state=state, attempts=self._units[unit_id].attempts + attempts_delta)
        self._units[unit_id] = unit  # type: ignore[assignment]
        if state in (UnitState.QUEUED, UnitState.LEASED):
            self._pending[unit_id] = unit  # type: ignore[assignment]
        else:
            self._pending.pop(unit_id, None)
        return unit  # type: ignore[return-value]

    def queued_units(self, hardware_class: str = "") -> list[WorkUnit]:
        return [u for u in self.pending_units(hardware_class=hardware_class) if u.state == UnitState.QUEUED]

    def queued_count(self, hardware_class: str) -> int:
        return len(self.queued_units(hardware_class))

    def pending_baselines(self, hardware_class: str, commit: str) -> int:
        return sum(
            1
            for u in self.pending_units(hardware_class=hardware_class)
            if u.kind == UnitKind.BASELINE and u.base_commit == commit
        )

    def add_result(
        self,
        unit_id: str,
        volunteer_id: str,
        metrics: RunMetrics,
        score: NormalizedScore | None = None,
        reported_s: float = 0.0,
    ) -> ResultRecord:
        """Record a run of `unit_id` by `volunteer_id` and mark the unit done."""
        unit = self._units[unit_id]
        volunteer = self._volunteers[volunteer_id]
        record = ResultRecord(
            result_id=self.new_id("r"),
            lease_id=self.new_id("l"),
            unit_id=unit_id,
            kind=unit.kind,
            hypothesis_id=unit.hypothesis_id,
            hardware_class=unit.hardware_class,
            base_commit=unit.base_commit,
            volunteer_id=volunteer_id,
            owner=volunteer.owner,
            metrics=metrics,
            score=score or NormalizedScore(),
            reported_s=reported_s,
        )
        self._results.append(record)
        if record.hypothesis_id:
            self._by_hypothesis[record.hypothesis_id].append(record)
        self._by_class[record.hardware_class].append(record)
        self._by_class_kind[(record.hardware_class, record.kind)].append(record)
        self._by_class_commit_kind[(record.hardware_class, record.base_commit, record.kind)].append(record)
        self.set_unit_state(unit_id, UnitState.DONE, attempts_delta=1)
        return record
