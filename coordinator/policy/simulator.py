"""The policy simulator: the real acceptance policy and built-in proposer on synthetic landscapes,
against the naive upstream loop, with a known true val_bpb.

A landscape is a true val_bpb over upstream's tunable constants: a sum of per-constant bowls (in
log space for rates and sizes, linear for ratios, a table for the window pattern) with optima the
policy does not know, a few near-irrelevant constants (the changes that only noise can "win"),
and small interactions. Hardware classes add an offset, pin some constants (as class profiles do),
and draw each run with noise sigma plus a small per-volunteer bias; a few runs crash.

The swarm side runs `decisions.judge/plan_*`, `after_crash`, `after_merge` and the proposer through
an `InMemoryView`, with volunteers of several owners running units in parallel (event-driven, by
finish time); this file plays the service (enqueue, lease with exclusions, merge, revert). The
naive side is upstream's loop on one machine: run a change once, keep it when its number beats the
best number so far. Both get the same landscapes, the same run budget and the same proposer.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from coordinator.policy import decisions
from coordinator.policy.decisions import OPEN_STATES, Judgement, UnitRequest
from coordinator.policy.literals import Value, parse_constants, render_literal
from coordinator.policy.proposer import MeasuredChange, Proposer, ProposerSettings, measured_change
from coordinator.policy.settings import AcceptanceSettings
from coordinator.policy.view import InMemoryView
from coordinator.store.types import (
    TERMINAL_HYPOTHESIS_STATES,
    UNIT_KIND_RANK,
    HypothesisState,
    MergeRecord,
    RunMetrics,
    RunStatus,
    UnitKind,
    UnitState,
)

# Upstream's train.py defaults: every landscape starts here.
START_CONSTANTS: dict[str, Value] = {
    "DEPTH": 8,
    "ASPECT_RATIO": 64,
    "HEAD_DIM": 128,
    "WINDOW_PATTERN": "SSSL",
    "TOTAL_BATCH_SIZE": 2**19,
    "DEVICE_BATCH_SIZE": 128,
    "EMBEDDING_LR": 0.6,
    "UNEMBEDDING_LR": 0.004,
    "MATRIX_LR": 0.04,
    "SCALAR_LR": 0.5,
    "WEIGHT_DECAY": 0.2,
    "ADAM_BETAS": (0.8, 0.95),
    "WARMUP_RATIO": 0.0,
    "WARMDOWN_RATIO": 0.5,
    "FINAL_LR_FRAC": 0.0,
}
FROZEN = frozenset({"DEVICE_BATCH_SIZE"})  # memory only: no effect on val_bpb, pinned by every class
DEFAULT_SIGMAS = (3e-4, 1e-3, 3e-3, 1e-2)
BUDGET_S = 300.0
CRASH_PROBABILITY = 0.02  # transient failures (driver resets, preemption)


# -- landscapes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    kind: str  # log | log2 | linear | betas | table
    optimum: Value
    curvature: float  # bpb per unit^2 of the transformed distance
    scale: float = 1.0  # linear terms: distance unit
    table: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Landscape:
    terms: Mapping[str, Term]
    interactions: tuple[tuple[str, str, float], ...]
    base_bpb: float

    def true_bpb(self, constants: Mapping[str, Value]) -> float:
        total = self.base_bpb
        coords: dict[str, float] = {}
        for name, term in self.terms.items():
            x = constants[name]
            if term.kind == "table":
                total += term.table.get(str(x), 0.004)
                continue
            if term.kind == "betas":
                assert isinstance(x, tuple) and isinstance(term.optimum, tuple)
                total += term.curvature * sum(
                    math.log((1 - b) / (1 - o)) ** 2 for b, o in zip(x, term.optimum, strict=True)
                )
                continue
            d = _distance(term, x)
            coords[name] = d
            total += term.curvature * d * d
        for a, b, c in self.interactions:
            # Bounded coupling: it bends the bowls without opening a way downhill forever.
            total += c * math.tanh(coords.get(a, 0.0)) * math.tanh(coords.get(b, 0.0))
        return total


def _distance(term: Term, x: Value) -> float:
    xf, of = float(x), float(term.optimum)  # type: ignore[arg-type]
    if term.kind == "log":
        return math.log(xf / of)
    if term.kind == "log2":
        return math.log2(xf / of)
    return (xf - of) / term.scale


def make_landscape(rng: random.Random) -> Landscape:
    """A random landscape calibrated on upstream's overnight run: about 0.02-0.04 bpb to gain over
    the defaults, 1e-3 to 5e-3 from a good first step, a few constants that barely matter."""

    def curvature(typical: float) -> float:
        return typical * math.exp(rng.gauss(0.0, 0.5))

    terms: dict[str, Term] = {}
    for name in ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR"):
        start = float(START_CONSTANTS[name])  # type: ignore[arg-type]
        terms[name] = Term("log", start * math.exp(rng.gauss(0.0, 0.4)), curvature(0.03))
    terms["DEPTH"] = Term("log", 8 * math.exp(rng.gauss(0.0, 0.2)), curvature(0.04))
    terms["ASPECT_RATIO"] = Term("log", 64 * math.exp(rng.gauss(0.0, 0.25)), curvature(0.015))
    terms["HEAD_DIM"] = Term("log", 128 * math.exp(rng.gauss(0.0, 0.3)), curvature(0.008))
    terms["TOTAL_BATCH_SIZE"] = Term("log2", 2**19 * 2 ** rng.gauss(0.0, 0.8), curvature(0.003))
    terms["WEIGHT_DECAY"] = Term("linear", min(max(0.2 + rng.gauss(0.0, 0.12), 0.0), 1.0), curvature(0.002), 0.1)
    terms["WARMUP_RATIO"] = Term("linear", abs(rng.gauss(0.0, 0.04)), curvature(0.0008), 0.05)
    terms["WARMDOWN_RATIO"] = Term("linear", min(max(0.5 + rng.gauss(0.0, 0.15), 0.1), 0.9), curvature(0.002), 0.1)
    terms["FINAL_LR_FRAC"] = Term("linear", abs(rng.gauss(0.0, 0.06)), curvature(0.0006), 0.05)
    betas = tuple(1 - (1 - b) * math.exp(rng.gauss(0.0, 0.35)) for b in (0.8, 0.95))
    terms["ADAM_BETAS"] = Term("betas", betas, curvature(0.01))
    patterns = ("L", "SL", "SSL", "SSSL", "SSSSL", "SLSL")
    terms["WINDOW_PATTERN"] = Term(
        "table", "SSSL", 0.0, table={p: 0.0 if p == "SSSL" else rng.gauss(0.0015, 0.002) for p in patterns}
    )
    # A few constants barely matter here: their changes are the nulls only noise can "win".
    for name in rng.sample(sorted(n for n, t in terms.items() if t.kind != "table"), 3):
        t = terms[name]
        terms[name] = Term(t.kind, t.optimum, t.curvature * 0.02, t.scale)
    interactions = tuple(
        (a, b, rng.gauss(0.0, 0.002))
        for a, b in (("MATRIX_LR", "TOTAL_BATCH_SIZE"), ("EMBEDDING_LR", "MATRIX_LR"), ("DEPTH", "ASPECT_RATIO"))
    )
    return Landscape(terms, interactions, base_bpb=0.97)


# -- hardware classes and volunteers --------------------------------------------------------------


@dataclass(frozen=True)
class SimClass:
    name: str
    offset: float  # added to the true val_bpb (smaller budgets reach less)
    pins: Mapping[str, Value]  # the class profile's pinned constants
    volunteers: int


DEFAULT_CLASSES = (
    SimClass("sim-h100", 0.0, {"DEVICE_BATCH_SIZE": 128}, 8),
    SimClass("sim-4090", 0.25, {"DEVICE_BATCH_SIZE": 64, "TOTAL_BATCH_SIZE": 2**17}, 8),
    SimClass(
        "sim-3060", 0.45, {"DEVICE_BATCH_SIZE": 32, "DEPTH": 4, "TOTAL_BATCH_SIZE": 2**16, "WINDOW_PATTERN": "L"}, 8
    ),
)
DEFAULT_OWNERS = 6


@dataclass(frozen=True)
class _Volunteer:
    volunteer_id: str
    owner: str
    hardware_class: str
    bias: float


def _class_value(landscape: Landscape, cls: SimClass, constants: Mapping[str, Value]) -> float:
    return landscape.true_bpb({**constants, **cls.pins}) + cls.offset


def swarm_value(landscape: Landscape, constants: Mapping[str, Value], classes: Sequence[SimClass] = ()) -> float:
    """The swarm's true val_bpb of a train.py: the mean over classes of what each class gets from it
    (with its pins, without its offset). A change that helps the pinned consumer classes but hurts
    the H100 class is an improvement only if it helps on balance."""
    classes = classes or DEFAULT_CLASSES
    return math.fsum(landscape.true_bpb({**constants, **c.pins}) for c in classes) / len(classes)


def _diverges(landscape: Landscape, constants: Mapping[str, Value]) -> bool:
    """Learning rates far above their optimum blow up (NaN), as they do in real training."""
    for name, term in landscape.terms.items():
        if name.endswith("_LR") and float(constants[name]) > 8 * float(term.optimum):  # type: ignore[arg-type]
            return True
    return False


# -- outcomes -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    runs: int = 0
    merges: int = 0
    false_merges: int = 0
    reverts: int = 0
    false_reverts: int = 0  # reverted merges that were real improvements
    gain_bpb: float = 0.0  # true val_bpb of the start minus that of the final head (reference class)
    runs_by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, other: Outcome) -> None:
        self.runs += other.runs
        self.merges += other.merges
        self.false_merges += other.false_merges
        self.reverts += other.reverts
        self.false_reverts += other.false_reverts
        self.gain_bpb += other.gain_bpb
        for k, v in other.runs_by_kind.items():
            self.runs_by_kind[k] = self.runs_by_kind.get(k, 0) + v

    @property
    def false_share(self) -> float:
        return self.false_merges / self.merges if self.merges else 0.0

    @property
    def gain_per_run(self) -> float:
        return self.gain_bpb / self.runs if self.runs else 0.0


# -- the swarm side -------------------------------------------------------------------------------


class _Swarm:
    """Plays the service around the real policy: queue, leases, merges, reverts."""

    def __init__(
        self,
        landscape: Landscape,
        sigma: float,
        runs: int,
        settings: AcceptanceSettings,
        proposer: Proposer,
        rng: random.Random,
        classes: Sequence[SimClass] = DEFAULT_CLASSES,
        owners: int = DEFAULT_OWNERS,
        class_sigmas: Mapping[str, float] | None = None,
    ) -> None:
        self.land = landscape
        self.settings = settings
        self.proposer = proposer
        self.rng = rng
        self.budget = runs
        self.classes = {c.name: c for c in classes}
        self.sigmas = {c.name: (class_sigmas or {}).get(c.name, sigma) for c in classes}
        self.view = InMemoryView("c0", {k: render_literal(v) for k, v in START_CONSTANTS.items()})
        self.head_values: dict[str, Value] = dict(START_CONSTANTS)
        self.values_by_commit: dict[str, dict[str, Value]] = {"c0": dict(START_CONSTANTS)}
        self.volunteers: list[_Volunteer] = []
        index = 0
        for c in classes:
            self.view.set_pins(c.name, c.pins)
            for _ in range(c.volunteers):
                v = _Volunteer(f"v{index}", f"owner{index % owners}", c.name, rng.gauss(0.0, 0.25 * self.sigmas[c.name]))
                self.volunteers.append(v)
                self.view.add_volunteer(v.volunteer_id, v.owner, v.hardware_class)
                index += 1
        self.outcome = Outcome()
        self.class_list = tuple(classes)
        self.start_true = swarm_value(landscape, START_CONSTANTS, self.class_list)
        self.history: dict[str, MeasuredChange] = {}
        self.known_moves: set[str] = set()
        self.bare_keys: dict[str, str] = {}
        self.commits = 0
        self.leases = 0

    # -- the event loop ---------------------------------------------------------------------------

    def run(self) -> Outcome:
        events: list[tuple[float, int, str, str, RunMetrics]] = []
        idle = list(self.volunteers)
        now = 0.0
        seq = 0
        self.refresh()
        while True:
            still_idle = []
            for v in idle:
                started = self.lease(v, now) if self.leases < self.budget else None
                if started is None:
                    still_idle.append(v)
                    continue
                unit_id, metrics, duration = started
                seq += 1
                heapq.heappush(events, (now + duration, seq, v.volunteer_id, unit_id, metrics))
            idle = still_idle
            if not events:
                break
            now, _, volunteer_id, unit_id, metrics = heapq.heappop(events)
            self.report(volunteer_id, unit_id, metrics, now)
            idle.append(next(v for v in self.volunteers if v.volunteer_id == volunteer_id))
            self.refresh()
        self.outcome.runs = self.budget
        self.outcome.gain_bpb = self.start_true - swarm_value(self.land, self.head_values, self.class_list)
        return self.outcome

    def lease(self, v: _Volunteer, now: float) -> tuple[str, RunMetrics, float] | None:
        units = [
            u
            for u in self.view.queued_units(v.hardware_class)
            if v.volunteer_id not in u.excluded_volunteers and v.owner not in u.excluded_owners
        ]
        if not units:
            return None
        unit = min(units, key=lambda u: (UNIT_KIND_RANK[u.kind], -u.priority, int(u.unit_id[1:])))
        self.view.set_unit_state(unit.unit_id, UnitState.LEASED)
        self.leases += 1
        self.outcome.runs_by_kind[unit.kind.value] = self.outcome.runs_by_kind.get(unit.kind.value, 0) + 1
        if unit.hypothesis_id:
            h = self.view.hypothesis(unit.hypothesis_id)
            if h.state == HypothesisState.QUEUED:
                self.view.set_state(h.hypothesis_id, HypothesisState.LEASED, "leased")
        constants = dict(self.values_by_commit[unit.base_commit])
        if unit.hypothesis_id:
            constants.update(parse_constants(self.view.hypothesis(unit.hypothesis_id).constant_changes))
        cls = self.classes[v.hardware_class]
        duration = BUDGET_S * self.rng.uniform(1.0, 1.15) + 30.0
        if self.rng.random() < CRASH_PROBABILITY:
            return unit.unit_id, RunMetrics(RunStatus.CRASH, error="simulated transient crash"), duration / 2
        if _diverges(self.land, {**constants, **cls.pins}):
            return unit.unit_id, RunMetrics(RunStatus.NAN, error="loss is NaN"), duration / 3
        value = _class_value(self.land, cls, constants) + v.bias + self.rng.gauss(0.0, self.sigmas[cls.name])
        return unit.unit_id, RunMetrics(RunStatus.OK, val_bpb=value), duration

    def report(self, volunteer_id: str, unit_id: str, metrics: RunMetrics, now: float) -> None:
        if self.view.unit(unit_id).state != UnitState.LEASED:
            return
        record = self.view.add_result(unit_id, volunteer_id, metrics, reported_s=now)
        if metrics.status != RunStatus.OK:
            decision = decisions.after_crash(self.view, record, self.settings)
            if decision.request is not None:
                self.enqueue(decision.request)
        if record.kind == UnitKind.BASELINE:
            merge = self.view.merge_for(record.base_commit)
            if merge is not None and not merge.reverted_by and record.base_commit == self.view.head_commit():
                verdict = decisions.after_merge(self.view, merge, self.settings)
                if verdict.revert:
                    self.revert(merge, verdict.reason)
                    return
        for h in decisions.to_rejudge(self.view, record, self.settings):
            if self.view.hypothesis(h.hypothesis_id).state not in TERMINAL_HYPOTHESIS_STATES:
                self.apply(decisions.judge(self.view, self.view.hypothesis(h.hypothesis_id), self.settings))

    # -- applying decisions -----------------------------------------------------------------------

    def enqueue(self, r: UnitRequest) -> None:
        self.view.add_unit(
            r.kind, r.hardware_class, r.base_commit, r.hypothesis_id, r.priority, r.excluded_volunteers, r.excluded_owners
        )

    def apply(self, j: Judgement) -> None:
        h = self.view.hypothesis(j.hypothesis_id)
        for unit_id in j.cancel_unit_ids:
            if self.view.unit(unit_id).state == UnitState.QUEUED:
                self.view.set_unit_state(unit_id, UnitState.CANCELLED)
        if j.state != h.state or j.reason != h.state_reason:
            self.view.set_state(h.hypothesis_id, j.state, j.reason)
        for r in j.requests:
            self.enqueue(r)
        if j.evidence.runs or j.state == HypothesisState.FAILED or "diverged" in j.reason:
            entry = measured_change(self.view, self.view.hypothesis(h.hypothesis_id), settings=self.settings)
            if entry is not None:
                self.history[h.hypothesis_id] = entry
        if j.confirmed and j.merge_onto == self.view.head_commit():
            self.merge(h.hypothesis_id)

    def new_commit(self, values: dict[str, Value]) -> str:
        self.commits += 1
        commit = f"c{self.commits}"
        self.values_by_commit[commit] = values
        self.view.add_commit(commit, {k: render_literal(v) for k, v in values.items()})
        return commit

    def merge(self, hypothesis_id: str) -> None:
        h = self.view.hypothesis(hypothesis_id)
        parent = self.view.head_commit()
        before = swarm_value(self.land, self.head_values, self.class_list)
        values = {**self.head_values, **parse_constants(h.constant_changes)}
        commit = self.new_commit(values)
        self.view.add_merge(MergeRecord(commit, parent, hypothesis_id, h.title))
        self.view.set_state(hypothesis_id, HypothesisState.MERGED, f"merged as {commit}", merged_commit=commit)
        self.view.set_head(commit)
        self.head_values = values
        self.outcome.merges += 1
        if swarm_value(self.land, values, self.class_list) >= before:
            self.outcome.false_merges += 1
        self.after_head_change()

    def revert(self, merge: MergeRecord, reason: str) -> None:
        h = self.view.hypothesis(merge.hypothesis_id)
        parent_values = self.values_by_commit[merge.parent_commit]
        values = dict(self.head_values)
        for name in h.constant_changes:
            values[name] = parent_values[name]
        before = swarm_value(self.land, self.head_values, self.class_list)
        commit = self.new_commit(values)
        self.view.mark_reverted(merge.commit, commit, reason)
        self.view.set_state(h.hypothesis_id, HypothesisState.REVERTED, reason)
        self.view.set_head(commit)
        self.head_values = values
        self.outcome.reverts += 1
        if swarm_value(self.land, values, self.class_list) > before:
            self.outcome.false_reverts += 1
        self.after_head_change()

    def after_head_change(self) -> None:
        for u in decisions.stale_units(self.view, self.settings):
            if not u.hypothesis_id:
                self.view.set_unit_state(u.unit_id, UnitState.CANCELLED)
        for h in self.view.hypotheses(OPEN_STATES):
            self.apply(decisions.judge(self.view, h, self.settings))

    def refresh(self) -> None:
        for r in decisions.plan_baselines(self.view, self.settings):
            self.enqueue(r)
        self.propose()
        for r in decisions.plan_candidates(self.view, self.settings):
            self.enqueue(r)

    def propose(self) -> None:
        queued = len(self.view.hypotheses([HypothesisState.QUEUED]))
        count = self.proposer.wanted(queued, len(self.volunteers))
        if count <= 0:
            return
        in_flight: list[str] = []
        open_keys: set[str] = set()
        open_moves: list[tuple[str, Value, Value]] = []
        for h in self.view.hypotheses(OPEN_STATES):
            in_flight.extend(h.constant_changes)
            open_keys.add(self.bare_keys[h.hypothesis_id])
            base = self.values_by_commit[h.base_commit]
            open_moves.extend((n, base[n], v) for n, v in parse_constants(h.constant_changes).items())
        proposals = self.proposer.propose(
            self.head_values, list(self.history.values()), count,
            frozen=FROZEN, avoid=self.known_moves | open_keys, in_flight=in_flight, open_moves=open_moves,
        )
        for p in proposals:
            self.known_moves.add(p.key)
            h = self.view.add_hypothesis(p.literals, title=p.title, priority=p.priority)
            self.bare_keys[h.hypothesis_id] = p.key.split("|", 1)[1]


# -- the naive side -------------------------------------------------------------------------------


def run_naive(
    landscape: Landscape, sigma: float, runs: int, proposer: Proposer, rng: random.Random
) -> Outcome:
    """Upstream's loop on one machine of the reference class: keep a change whenever its single
    run beats the best single run so far."""
    cls = DEFAULT_CLASSES[0]
    bias = rng.gauss(0.0, 0.25 * sigma)
    outcome = Outcome()
    head = dict(START_CONSTANTS)
    start_true = swarm_value(landscape, head)
    best = _class_value(landscape, cls, head) + bias + rng.gauss(0.0, sigma)
    used = 1
    history: list[MeasuredChange] = []
    known: set[str] = set()
    while used < runs:
        proposals = proposer.propose(head, history, 1, frozen=FROZEN, avoid=known)
        if not proposals:
            break
        p = proposals[0]
        known.add(p.key)
        candidate = {**head, **p.constant_changes}
        used += 1
        moves = tuple((n, head[n], v) for n, v in p.constant_changes.items())
        if rng.random() < CRASH_PROBABILITY or _diverges(landscape, {**candidate, **cls.pins}):
            history.append(MeasuredChange(moves, -4.0, 0, "crash", p.key))
            continue
        value = _class_value(landscape, cls, candidate) + bias + rng.gauss(0.0, sigma)
        history.append(MeasuredChange(moves, (best - value) / sigma, 1, "keep" if value < best else "discard", p.key))
        if value < best:
            outcome.merges += 1
            if swarm_value(landscape, candidate) >= swarm_value(landscape, head):
                outcome.false_merges += 1
            head, best = candidate, value
    outcome.runs = runs
    outcome.gain_bpb = start_true - swarm_value(landscape, head)
    outcome.runs_by_kind = {"single": used}
    return outcome


def run_naive_swarm(
    landscape: Landscape,
    sigma: float,
    runs: int,
    proposer: Proposer,
    rng: random.Random,
    classes: Sequence[SimClass] = DEFAULT_CLASSES,
    owners: int = DEFAULT_OWNERS,
) -> Outcome:
    """The same rule in the same swarm, as the volunteer fork does it: every volunteer runs a
    change on the current head and merges it when its single run beats the best single run seen
    on its class (the fork keeps a best per hardware tier)."""
    volunteers: list[_Volunteer] = []
    for c in classes:
        for _ in range(c.volunteers):
            i = len(volunteers)
            volunteers.append(_Volunteer(f"v{i}", f"owner{i % owners}", c.name, rng.gauss(0.0, 0.25 * sigma)))
    by_name = {c.name: c for c in classes}
    outcome = Outcome()
    head = dict(START_CONSTANTS)
    start_true = swarm_value(landscape, head, classes)
    best: dict[str, float] = {}
    history: list[MeasuredChange] = []
    known: set[str] = set()
    in_flight: dict[str, tuple[tuple[str, Value, Value], ...]] = {}  # volunteer -> moves it is measuring
    events: list[tuple[float, int, _Volunteer, dict[str, Value], dict[str, Value], tuple, str, float]] = []
    now, seq, started = 0.0, 0, 0
    idle = list(volunteers)
    while True:
        for v in idle:
            if started >= runs:
                break
            cls = by_name[v.hardware_class]
            changes: dict[str, Value] = {}
            key = ""
            if v.hardware_class in best:
                measuring = [m for moves in in_flight.values() for m in moves]
                proposals = proposer.propose(
                    head, history, 1, frozen=FROZEN | set(cls.pins), avoid=known,
                    in_flight=[m[0] for m in measuring], open_moves=measuring,
                )
                if not proposals:
                    continue
                changes, key = dict(proposals[0].constant_changes), proposals[0].key
                known.add(key)
            started += 1
            base = dict(head)
            candidate = {**base, **changes}
            moves = tuple((n, base[n], val) for n, val in changes.items())
            duration = BUDGET_S * rng.uniform(1.0, 1.15) + 30.0
            value = math.nan
            if rng.random() >= CRASH_PROBABILITY and not _diverges(landscape, {**candidate, **cls.pins}):
                value = _class_value(landscape, cls, candidate) + v.bias + rng.gauss(0.0, sigma)
            seq += 1
            in_flight[v.volunteer_id] = moves
            heapq.heappush(events, (now + duration, seq, v, base, changes, moves, key, value))
        idle = [v for v in idle if v.volunteer_id not in in_flight]
        if not events:
            break
        now, _, v, base, changes, moves, key, value = heapq.heappop(events)
        del in_flight[v.volunteer_id]
        idle.append(v)
        c = v.hardware_class
        if not changes:  # the class's first run: its baseline, the first best
            if not math.isnan(value):
                best[c] = min(best.get(c, math.inf), value)
            continue
        if math.isnan(value):
            history.append(MeasuredChange(moves, -4.0, 0, "crash", key))
            continue
        history.append(MeasuredChange(moves, (best[c] - value) / sigma, 1, "keep" if value < best[c] else "discard", key))
        if value >= best[c]:
            continue
        best[c] = value
        if any(head[n] != base[n] for n in changes):
            continue  # someone changed the same constant meanwhile: the edit no longer applies
        new_head = {**head, **changes}
        outcome.merges += 1
        if swarm_value(landscape, new_head, classes) >= swarm_value(landscape, head, classes):
            outcome.false_merges += 1
        head = new_head
    outcome.runs = runs
    outcome.gain_bpb = start_true - swarm_value(landscape, head, classes)
    outcome.runs_by_kind = {"single": started}
    return outcome


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class LevelReport:
    sigma: float
    policy: Outcome
    naive: Outcome  # upstream's loop on one machine, sequential
    naive_swarm: Outcome  # the same rule in the same swarm

    @property
    def gain_ratio(self) -> float:
        """Policy gain per run over the one-machine naive loop's."""
        return _ratio(self.policy.gain_per_run, self.naive.gain_per_run)

    @property
    def swarm_gain_ratio(self) -> float:
        return _ratio(self.policy.gain_per_run, self.naive_swarm.gain_per_run)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


@dataclass
class SimReport:
    seed: int
    runs: int
    landscapes: int
    volunteers: int
    classes: int
    levels: list[LevelReport]
    elapsed_s: float = 0.0


def _one_landscape(
    job: tuple[int, int, float, int, AcceptanceSettings, ProposerSettings | None, tuple[SimClass, ...]],
) -> tuple[Outcome, Outcome, Outcome]:
    seed, index, sigma, runs, settings, proposer_settings, classes = job
    landscape = make_landscape(random.Random(f"landscape:{seed}:{index}"))
    policy = _Swarm(
        landscape, sigma, runs, settings, Proposer(proposer_settings, seed=seed + index),
        random.Random(f"swarm:{seed}:{index}:{sigma}"), classes,
    ).run()
    naive = run_naive(
        landscape, sigma, runs, Proposer(proposer_settings, seed=seed + index), random.Random(f"naive:{seed}:{index}:{sigma}")
    )
    naive_swarm = run_naive_swarm(
        landscape, sigma, runs, Proposer(proposer_settings, seed=seed + index),
        random.Random(f"naive-swarm:{seed}:{index}:{sigma}"), classes,
    )
    return policy, naive, naive_swarm


def simulate(
    seed: int = 0,
    runs: int = 400,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    landscapes: int = 8,
    settings: AcceptanceSettings | None = None,
    proposer_settings: ProposerSettings | None = None,
    classes: Sequence[SimClass] = DEFAULT_CLASSES,
    workers: int = 0,
) -> SimReport:
    """Per noise level, `landscapes` landscapes, each run by the swarm under the policy and by
    both naive loops with `runs` runs. Landscape i is the same at every noise level.
    workers: processes to use (0: up to 2, the CPUs a small VM has; 1: in this process)."""
    settings = settings or AcceptanceSettings()
    started = time.perf_counter()
    jobs = [
        (seed, i, sigma, runs, settings, proposer_settings, tuple(classes)) for sigma in sigmas for i in range(landscapes)
    ]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_one_landscape, jobs))
    else:
        results = [_one_landscape(job) for job in jobs]
    levels: list[LevelReport] = []
    for k, sigma in enumerate(sigmas):
        policy, naive, naive_swarm = Outcome(), Outcome(), Outcome()
        for p, n, ns in results[k * landscapes : (k + 1) * landscapes]:
            policy.add(p)
            naive.add(n)
            naive_swarm.add(ns)
        levels.append(LevelReport(sigma, policy, naive, naive_swarm))
    return SimReport(
        seed, runs, landscapes, sum(c.volunteers for c in classes), len(classes), levels,
        time.perf_counter() - started,
    )


def format_report(report: SimReport) -> str:
    head = (
        f"autoswarm simulate: seed {report.seed}, {report.landscapes} landscapes per noise level, {report.runs} runs "
        f"each; swarm of {report.volunteers} volunteers in {report.classes} classes"
    )
    lines = [
        head,
        "",
        f"{'':>8} | {'policy (this swarm)':^33} | {'naive, one machine':^24} | {'naive, same swarm':^24} | gain ratio",
        f"{'sigma':>8} | {'merges':>6} {'false':>6} {'reverts':>7} {'gain/run':>10} | {'merges':>6} {'false':>6} "
        f"{'gain/run':>10} | {'merges':>6} {'false':>6} {'gain/run':>10} | {'1 mach.':>7} {'swarm':>6}",
    ]
    for lv in report.levels:
        p, n, ns = lv.policy, lv.naive, lv.naive_swarm
        lines.append(
            f"{lv.sigma:>8.0e} | {p.merges:>6d} {100 * p.false_share:>5.1f}% {p.reverts:>7d} {1e5 * p.gain_per_run:>10.2f} | "
            f"{n.merges:>6d} {100 * n.false_share:>5.1f}% {1e5 * n.gain_per_run:>10.2f} | "
            f"{ns.merges:>6d} {100 * ns.false_share:>5.1f}% {1e5 * ns.gain_per_run:>10.2f} | "
            f"{lv.gain_ratio:>7.2f} {lv.swarm_gain_ratio:>6.2f}"
        )
    lines += [
        "",
        "false: share of merges whose true val_bpb is not lower than the previous head's. gain/run: true bpb gained "
        "per run, in 1e-5 bpb; every run counts (baselines, replicates, crashes).",
        f"elapsed {report.elapsed_s:.1f} s",
    ]
    return "\n".join(lines)


def report_dict(report: SimReport) -> dict[str, object]:
    def side(o: Outcome) -> dict[str, object]:
        return {
            "runs": o.runs,
            "merges": o.merges,
            "false_merges": o.false_merges,
            "false_share": o.false_share,
            "reverts": o.reverts,
            "false_reverts": o.false_reverts,
            "gain_bpb": o.gain_bpb,
            "gain_per_run": o.gain_per_run,
            "runs_by_kind": dict(o.runs_by_kind),
        }

    return {
        "seed": report.seed,
        "runs": report.runs,
        "landscapes": report.landscapes,
        "volunteers": report.volunteers,
        "classes": report.classes,
        "elapsed_s": report.elapsed_s,
        "levels": [
            {
                "sigma": lv.sigma,
                "policy": side(lv.policy),
                "naive": side(lv.naive),
                "naive_swarm": side(lv.naive_swarm),
                "gain_ratio": lv.gain_ratio,
                "swarm_gain_ratio": lv.swarm_gain_ratio,
            }
            for lv in report.levels
        ],
    }
