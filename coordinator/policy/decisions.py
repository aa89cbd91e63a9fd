"""What to run next and what counts as a win: pure functions from a `PolicyView` to decisions.

The service calls these and applies what they return (enqueue units, change hypothesis states,
merge, revert); nothing here writes. Every function is idempotent: calling it twice on the same
state returns the same decision, so the service may re-run them after a crash or on a timer.

Life of a hypothesis as judged here:
  queued --first run--> rejected (early discard) | promising --replicates--> replicating
  replicating --> confirmed (pooled z >= confirm_z, >= 2 volunteers of >= 2 owners, holds without
  any one owner, verified on the head) | rejected (futility or max_samples) ;
  any open state --> superseded (the head changed a constant it changes), failed (crash retries
  spent), rejected (diverged).
Runs of one hypothesis may sit on several base commits (the head moved while it was measured);
each run is compared with the baseline of its own class and base commit, and new runs always go
to the head: a unit whose base_commit differs from the hypothesis's base runs the hypothesis's
change merged onto that commit. Runs of earlier hypotheses that made the same change on other
bases join the evidence the same way (pool_same_change).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from coordinator.policy.literals import LiteralError, parse_literal, same_value
from coordinator.policy.settings import AcceptanceSettings
from coordinator.policy.statistics import (
    EffectPrior,
    Evidence,
    Sample,
    SampleGroup,
    SigmaEstimate,
    estimate_sigma,
    fit_effect_prior,
    pooled_evidence,
    raised_towards_pool,
    shift_z,
    sigma_units,
    without_owner,
)
from coordinator.policy.view import PolicyView
from coordinator.store.types import (
    TERMINAL_HYPOTHESIS_STATES,
    ClassStats,
    Hypothesis,
    HypothesisState,
    MergeRecord,
    ResultRecord,
    RunStatus,
    UnitKind,
    UnitState,
    WorkUnit,
)

DEFAULT_SETTINGS = AcceptanceSettings()
FAILURE_STATUSES = frozenset({RunStatus.CRASH, RunStatus.TIMEOUT, RunStatus.OOM})
OPEN_STATES = tuple(s for s in HypothesisState if s not in TERMINAL_HYPOTHESIS_STATES)
# Earlier hypotheses whose runs never join a later one's evidence: a merged change's runs were
# selected to cross the bar (and a reverted one failed after landing).
_NOT_POOLED = frozenset({HypothesisState.MERGED, HypothesisState.REVERTED})
_MAX_ANCESTOR_STEPS = 20  # how far after_merge walks back to find a measured ancestor

WEAK_REASON = "weakly better"  # rejected after one run that was better, but not promising

# Priorities within a unit kind (the store leases baselines, then replicates, then candidates).
VERIFY_PRIORITY = 100.0  # a confirmed win's run on the head: the merge waits on it
MAX_REASON_TEXT = 1_900  # under the store's MAX_REASON_BYTES (2,000)


@dataclass(frozen=True)
class UnitRequest:
    """A unit the policy wants run; the service turns it into a WorkUnit."""

    kind: UnitKind
    hypothesis_id: str  # empty for baselines
    hardware_class: str
    base_commit: str
    priority: float = 0.0
    excluded_volunteers: tuple[str, ...] = ()
    excluded_owners: tuple[str, ...] = ()
    reason: str = ""


def _clip(reason: str) -> str:
    """Reasons are stored; the store refuses more than MAX_REASON_BYTES."""
    data = reason.encode("utf-8")
    if len(data) <= MAX_REASON_TEXT:
        return reason
    return data[: MAX_REASON_TEXT - 3].decode("utf-8", errors="ignore") + "..."


@dataclass(frozen=True)
class Judgement:
    """Where a hypothesis stands now and what it needs next."""

    hypothesis_id: str
    state: HypothesisState  # the state it should have now (may equal the current one)
    reason: str
    requests: tuple[UnitRequest, ...] = ()
    cancel_unit_ids: tuple[str, ...] = ()  # queued units no longer wanted (stale base, terminal)
    evidence: Evidence = field(default_factory=Evidence)
    merge_onto: str = ""  # with CONFIRMED: the head the evidence was verified on

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _clip(self.reason))

    @property
    def confirmed(self) -> bool:
        return self.state == HypothesisState.CONFIRMED


@dataclass(frozen=True)
class CrashDecision:
    """After a crash, timeout or OOM: run it again elsewhere, or give up."""

    retry: bool
    request: UnitRequest | None  # the retry, away from the volunteers that failed it
    state: HypothesisState | None  # FAILED once retries are spent (None for baselines)
    reason: str
    failures: int


@dataclass(frozen=True)
class ClassShift:
    """One class's baseline on a merge commit against its nearest measured ancestor."""

    hardware_class: str
    ancestor_commit: str
    new_runs: int
    old_runs: int
    delta_bpb: float  # new mean minus old mean: positive means the class got worse
    z: float
    crashed: bool = False


@dataclass(frozen=True)
class RevertDecision:
    merge_commit: str
    revert: bool  # revert the merge now (only when settings.revert_enabled)
    flagged: tuple[str, ...]  # classes significantly worse (flagged even when reverts are off)
    pending: tuple[str, ...]  # classes still measuring the merge commit
    shifts: tuple[ClassShift, ...]
    reason: str

    @property
    def final(self) -> bool:
        return self.revert or not self.pending


@dataclass(frozen=True)
class Plan:
    """One full pass: judgements of every open hypothesis, then baselines, then candidates."""

    judgements: tuple[Judgement, ...]
    cancel_unit_ids: tuple[str, ...]
    baseline_requests: tuple[UnitRequest, ...]
    candidate_requests: tuple[UnitRequest, ...]


# -- public functions ----------------------------------------------------------------------------


def class_sigma(
    view: PolicyView, hardware_class: str, settings: AcceptanceSettings = DEFAULT_SETTINGS
) -> SigmaEstimate:
    return _Context(view, settings).sigma(hardware_class)


def baseline_values(
    view: PolicyView,
    hardware_class: str,
    commit: str,
    settings: AcceptanceSettings = DEFAULT_SETTINGS,
    fresh_only: bool = False,
) -> list[Sample]:
    """Runs of `commit`'s exact code on the class: its baseline runs, and (with
    reuse_merged_samples) the merged hypothesis's runs on the merge parent."""
    return _Context(view, settings).baseline(hardware_class, commit, fresh_only)


def class_stats(
    view: PolicyView,
    hardware_class: str,
    commit: str,
    settings: AcceptanceSettings = DEFAULT_SETTINGS,
    now_s: float = 0.0,
) -> ClassStats:
    """Baseline mean of (class, commit) and the class's sigma, as the store keeps them."""
    ctx = _Context(view, settings)
    values = [s.val_bpb for s in ctx.baseline(hardware_class, commit)]
    mean = math.fsum(values) / len(values) if values else 0.0
    return ClassStats(hardware_class, commit, len(values), mean, ctx.sigma(hardware_class).sigma, now_s)


def hypothesis_evidence(
    view: PolicyView, hypothesis: Hypothesis, settings: AcceptanceSettings = DEFAULT_SETTINGS
) -> Evidence:
    """Pooled evidence of every usable run of the hypothesis (for queries and the proposer)."""
    ctx = _Context(view, settings)
    ok = [
        r
        for r in view.counting_results(hypothesis_id=hypothesis.hypothesis_id)
        if r.metrics.status == RunStatus.OK
    ]
    groups, _, _ = ctx.groups(ok, view.head_commit())
    return pooled_evidence(groups, settings.clip_sigma)


def judge(
    view: PolicyView, hypothesis: Hypothesis, settings: AcceptanceSettings = DEFAULT_SETTINGS
) -> Judgement:
    """Decide the hypothesis's state from its runs so far and say which runs it needs next."""
    return _Context(view, settings).judge(hypothesis)


def after_crash(
    view: PolicyView, result: ResultRecord, settings: AcceptanceSettings = DEFAULT_SETTINGS
) -> CrashDecision:
    """A run ended in crash, timeout or OOM: retry it on another volunteer, a bounded number of times."""
    return _Context(view, settings).after_crash(result)


def plan_baselines(view: PolicyView, settings: AcceptanceSettings = DEFAULT_SETTINGS) -> list[UnitRequest]:
    """Baseline runs each active class still needs on the head (by different volunteers where possible)."""
    return _Context(view, settings).plan_baselines()


def plan_candidates(view: PolicyView, settings: AcceptanceSettings = DEFAULT_SETTINGS) -> list[UnitRequest]:
    """First runs for queued hypotheses, keeping each class's queue about as deep as its volunteers."""
    return _Context(view, settings).plan_candidates()


def candidate_request(
    view: PolicyView, hypothesis: Hypothesis, settings: AcceptanceSettings = DEFAULT_SETTINGS
) -> UnitRequest | None:
    """The first run of one hypothesis on the best allowed class, ignoring queue capacity."""
    ctx = _Context(view, settings)
    if ctx.conflict(hypothesis) or view.pending_units(hypothesis_id=hypothesis.hypothesis_id):
        return None
    classes = ctx.allowed_classes(hypothesis)
    if not classes:
        return None
    best = min(
        classes,
        key=lambda c: (len(ctx.queued(c)) / max(1, len(view.online_volunteers(c))), ctx.sigma(c).sigma, c),
    )
    return UnitRequest(
        UnitKind.CANDIDATE,
        hypothesis.hypothesis_id,
        best,
        view.head_commit(),
        hypothesis.priority,
        reason="first run",
    )


def allowed_classes(view: PolicyView, hypothesis: Hypothesis) -> list[str]:
    """Active classes the hypothesis may run on: not pinning a constant it changes, and, for a
    change to class profiles, only the classes it touches."""
    return _Context(view, DEFAULT_SETTINGS).allowed_classes(hypothesis)


def stale_units(view: PolicyView, settings: AcceptanceSettings = DEFAULT_SETTINGS) -> list[WorkUnit]:
    """Queued (not leased) units whose base is no longer a recent head: cancel them; the next
    judgement asks for their replacements on the head."""
    recent = set(_Context(view, settings).recent_heads())
    return [u for u in view.pending_units() if u.state == UnitState.QUEUED and u.base_commit not in recent]


# Hypotheses one baseline run wakes at most: in a swarm of thousands of open hypotheses on one
# head, waking every waiting one after each baseline run kept the decider minutes behind.
WAKE_LIMIT = 16


def to_rejudge(
    view: PolicyView, result: ResultRecord, settings: AcceptanceSettings = DEFAULT_SETTINGS
) -> list[Hypothesis]:
    """Open hypotheses to judge now because of a new result: its own hypothesis; after a baseline
    run, those whose runs it made judgeable. That is every hypothesis measured on its class when
    it completes the class's noise estimate, and every one measured on its (class, commit) when it
    completes that baseline; otherwise none. A later baseline run moves the evidence of judgeable
    hypotheses a little, but each of them has a run pending (an open hypothesis that is not
    waiting for a baseline always has) and is judged again when that run reports: re-judging
    them all after every baseline run cost a whole pass over the open hypotheses per run.

    The exception: a hypothesis whose head runs are judged against baseline runs still pending
    asks for nothing until they report (`judge` waits for them), so it has no run of its own
    pending. When the last baseline run pending on (class, head) reports, the promising and
    replicating hypotheses with nothing of their own pending are judged again (one pending-unit
    lookup each, not a read of the queue); without this they waited for the next merge, holding
    their constants' in-flight places, for as long as the head stood still."""
    if result.kind != UnitKind.BASELINE:
        return [h for h in view.hypotheses(OPEN_STATES) if h.hypothesis_id == result.hypothesis_id]
    context = _Context(view, settings)
    scope = context.unblocked_by(result)
    if not scope:
        return _idle_after_head_baselines(view, context, result)
    base_commit = result.base_commit if scope == "commit" else ""
    # One read of the results in scope, not one per open hypothesis.
    measured = {
        r.hypothesis_id
        for r in view.counting_results(hardware_class=result.hardware_class, base_commit=base_commit)
        if r.hypothesis_id
    }
    if not measured:
        return []
    return [h for h in view.hypotheses(OPEN_STATES) if h.hypothesis_id in measured]


def _idle_after_head_baselines(view: PolicyView, context: _Context, result: ResultRecord) -> list[Hypothesis]:
    """After the last baseline run pending on (class, head): up to WAKE_LIMIT promising or
    replicating hypotheses with nothing of their own pending, oldest first (one lookup each)."""
    c, commit = result.hardware_class, result.base_commit
    if not (
        context.s.baseline_on_demand
        and commit == view.head_commit()
        and view.pending_baselines(c, commit) == 0
        and context.baseline_ready(c, commit)
    ):
        return []
    idle: list[Hypothesis] = []
    for h in view.hypotheses([HypothesisState.PROMISING, HypothesisState.REPLICATING]):
        if not view.pending_units(hypothesis_id=h.hypothesis_id):
            idle.append(h)
            if len(idle) >= WAKE_LIMIT:
                break  # the rest on the next baseline run (each woken one may ask for one)
    return idle


def after_merge(
    view: PolicyView, merge: MergeRecord, settings: AcceptanceSettings = DEFAULT_SETTINGS
) -> RevertDecision:
    """Did a class get significantly worse on the merge commit than on its parent?"""
    return _Context(view, settings).after_merge(merge)


def sweep(view: PolicyView, settings: AcceptanceSettings = DEFAULT_SETTINGS) -> list[Judgement]:
    """Judge every open hypothesis (after a merge, a revert or a revocation)."""
    ctx = _Context(view, settings)
    return [ctx.judge(h) for h in view.hypotheses(OPEN_STATES)]


def plan(view: PolicyView, settings: AcceptanceSettings = DEFAULT_SETTINGS) -> Plan:
    """Everything at once: stale units to cancel, judgements, baselines, candidates.

    Requests assume the cancellations and judgements are applied first; the service applies the
    plan in field order.
    """
    ctx = _Context(view, settings)
    judgements = tuple(ctx.judge(h) for h in view.hypotheses(OPEN_STATES))
    cancel = {u.unit_id for u in stale_units(view, settings) if not u.hypothesis_id}
    for j in judgements:
        cancel.update(j.cancel_unit_ids)
    return Plan(judgements, tuple(sorted(cancel)), tuple(ctx.plan_baselines()), tuple(ctx.plan_candidates()))


# -- the implementation, with per-call caches -----------------------------------------------------


class _Context:
    """One decision pass over a view: caches sigma and baselines, which many decisions share."""

    def __init__(self, view: PolicyView, settings: AcceptanceSettings) -> None:
        self.view = view
        self.s = settings
        self._sigma: dict[str, SigmaEstimate] = {}
        self._raw: dict[str, SigmaEstimate] = {}  # each class's own estimate, before shrinkage
        self._baseline: dict[tuple[str, str, bool], list[Sample]] = {}
        self._queued: dict[str, int] = {}  # class -> how many units it has queued
        self._online: dict[str, int] | None = None
        self._online_in: dict[str, list] = {}  # class -> its volunteers online, read once per call
        self._allowed: dict[str, list[str]] = {}  # hypothesis -> classes it may run on
        self._head_constants: dict[str, object] | None = None
        self._recent: list[str] | None = None
        self._prior: EffectPrior | None = None
        self._change_index: dict[tuple[tuple[str, str], ...], list[Hypothesis]] | None = None
        self._commit_values: dict[str, dict[str, object]] = {}

    # -- noise and baselines ----------------------------------------------------------------------

    def sigma(self, hardware_class: str) -> SigmaEstimate:
        """The class's noise, pooled over the within-commit spread of its baseline runs.

        Only baseline runs: replicates of a hypothesis would add dof, but its first run was
        selected for looking good, which inflates their spread (about +13% in the simulator)."""
        if hardware_class not in self._sigma:
            own = self._raw_sigma(hardware_class)
            if self.s.sigma_shrink_dof > 0 and not own.from_prior:
                others = [self._raw_sigma(c) for c in self.view.active_classes()]
                own = raised_towards_pool(own, others, self.s.sigma_shrink_dof)
            self._sigma[hardware_class] = own
        return self._sigma[hardware_class]

    def _raw_sigma(self, hardware_class: str) -> SigmaEstimate:
        """The class's own estimate, before `raised_towards_pool`."""
        if hardware_class not in self._raw:
            self._raw[hardware_class] = self._sigma_of(hardware_class, self._ok_baseline_runs(hardware_class))
        return self._raw[hardware_class]

    def _ok_baseline_runs(self, hardware_class: str) -> list[ResultRecord]:
        return [
            r
            for r in self.view.counting_results(hardware_class=hardware_class, kind=UnitKind.BASELINE)
            if r.metrics.status == RunStatus.OK
        ]

    def _sigma_of(self, hardware_class: str, runs: Sequence[ResultRecord]) -> SigmaEstimate:
        by_commit: dict[str, list[float]] = {}
        for r in runs:
            by_commit.setdefault(r.base_commit, []).append(r.metrics.val_bpb)
        groups = [g for g in by_commit.values() if len(g) > 1][-self.s.sigma_window_groups :]
        return estimate_sigma(
            groups,
            self.s.prior_sigma_for(hardware_class),
            min_dof=self.s.min_sigma_dof,
            floor=self.s.sigma_floor,
        )

    def unblocked_by(self, result: ResultRecord) -> str:
        """What a baseline run made judgeable, counting the runs reported up to it (later ones
        may be in the view already): "class" when it completed the class's noise estimate,
        "commit" when it completed the baseline of its (class, commit), "" when neither."""
        if result.kind != UnitKind.BASELINE or result.metrics.status != RunStatus.OK:
            return ""
        c, commit = result.hardware_class, result.base_commit
        runs = self._ok_baseline_runs(c)
        position = next((i for i, r in enumerate(runs) if r.result_id == result.result_id), None)
        if position is None:  # it does not count (a revoked volunteer)
            return ""
        before, through = runs[:position], runs[: position + 1]
        if self._sigma_of(c, through).from_prior:
            return ""  # nothing on this class is judgeable yet
        if self._sigma_of(c, before).from_prior:
            return "class"
        reused = len(self.baseline(c, commit)) - sum(1 for r in runs if r.base_commit == commit)
        count_before = reused + sum(1 for r in before if r.base_commit == commit)
        if count_before < self.s.min_baseline_samples <= count_before + 1:
            return "commit"
        return ""

    def baseline(self, hardware_class: str, commit: str, fresh_only: bool = False) -> list[Sample]:
        key = (hardware_class, commit, fresh_only)
        if key not in self._baseline:
            records = [
                r
                for r in self.view.counting_results(
                    hardware_class=hardware_class, base_commit=commit, kind=UnitKind.BASELINE
                )
                if r.metrics.status == RunStatus.OK
            ]
            if not fresh_only and self.s.reuse_merged_samples:
                merge = self.view.merge_for(commit)
                if merge is not None and merge.hypothesis_id:
                    records += [
                        r
                        for r in self.view.counting_results(
                            hypothesis_id=merge.hypothesis_id,
                            hardware_class=hardware_class,
                            base_commit=merge.parent_commit,
                        )
                        if r.metrics.status == RunStatus.OK
                    ]
            self._baseline[key] = [_sample(r) for r in records]
        return self._baseline[key]

    def recent_heads(self) -> list[str]:
        """The head and the merge parents up to verify_max_lag merges back: runs on these still
        count as runs "on the head" (a verification run is not lost because one more merge
        landed while it ran)."""
        if self._recent is None:
            commits = [self.view.head_commit()]
            for _ in range(self.s.verify_max_lag):
                merge = self.view.merge_for(commits[-1])
                if merge is None or not merge.parent_commit:
                    break
                commits.append(merge.parent_commit)
            self._recent = commits
        return self._recent

    def baseline_ready(self, hardware_class: str, commit: str) -> bool:
        """Runs on (class, commit) can be judged: a baseline, and the class's noise measured."""
        return (
            len(self.baseline(hardware_class, commit)) >= self.s.min_baseline_samples
            and not self.sigma(hardware_class).from_prior
        )

    # -- queue and classes ------------------------------------------------------------------------

    def queued(self, hardware_class: str) -> int:
        """How many units of the class are queued (read once per call)."""
        if hardware_class not in self._queued:
            self._queued[hardware_class] = self.view.queued_count(hardware_class)
        return self._queued[hardware_class]

    def online_in(self, hardware_class: str) -> list:
        """The class's volunteers online (read once per call: each read asks the store's clock)."""
        if hardware_class not in self._online_in:
            self._online_in[hardware_class] = self.view.online_volunteers(hardware_class)
        return self._online_in[hardware_class]

    def online(self, hardware_class: str) -> int:
        if self._online is None:
            counts: dict[str, int] = defaultdict(int)
            for v in self.view.online_volunteers():
                counts[v.hardware_class] += 1
            self._online = counts
        return self._online.get(hardware_class, 0)

    def allowed_classes(self, hypothesis: Hypothesis) -> list[str]:
        if hypothesis.hypothesis_id not in self._allowed:
            self._allowed[hypothesis.hypothesis_id] = self._allowed_classes(hypothesis)
        return self._allowed[hypothesis.hypothesis_id]

    def _allowed_classes(self, hypothesis: Hypothesis) -> list[str]:
        changed = set(hypothesis.constant_changes)
        out = []
        for c in self.view.active_classes():
            if hypothesis.touched_classes and c not in hypothesis.touched_classes:
                continue
            if changed & self.view.pinned_constants(c):
                continue
            out.append(c)
        return out

    def head_constants(self) -> dict[str, object]:
        if self._head_constants is None:
            self._head_constants = _values(self.view.constants(self.view.head_commit()))
        return self._head_constants

    def commit_values(self, commit: str) -> dict[str, object]:
        if commit not in self._commit_values:
            self._commit_values[commit] = _values(self.view.constants(commit))
        return self._commit_values[commit]

    def same_change_results(self, h: Hypothesis) -> list[ResultRecord]:
        """Usable runs of earlier hypotheses that made the same change as `h` (the same constants
        from the same values to the same values) on another base.

        The proposer brings a change back on a later head when its direction still looks good; each
        run is compared with the baseline of its own class and base, as a hypothesis's own runs on
        several bases are, so pooling them is the same test with more runs."""
        if not self.s.pool_same_change or not h.constant_changes:
            return []
        if self._change_index is None:
            index: dict[tuple[tuple[str, str], ...], list[Hypothesis]] = defaultdict(list)
            for other in self.view.hypotheses():
                if other.constant_changes and other.state not in _NOT_POOLED:
                    index[tuple(sorted(other.constant_changes.items()))].append(other)
            self._change_index = index
        twins = [
            o
            for o in self._change_index.get(tuple(sorted(h.constant_changes.items())), ())
            if o.hypothesis_id != h.hypothesis_id
        ]
        if not twins:
            return []
        base = self.commit_values(h.base_commit)
        names = list(h.constant_changes)
        if not all(n in base for n in names):
            return []
        out: list[ResultRecord] = []
        for other in twins:
            values = self.commit_values(other.base_commit)
            if not all(n in values and same_value(values[n], base[n]) for n in names):
                continue  # the same targets from other values: a different step
            out += [
                r
                for r in self.view.counting_results(hypothesis_id=other.hypothesis_id)
                if r.metrics.status == RunStatus.OK and self.baseline_ready(r.hardware_class, r.base_commit)
            ]
        return out

    def conflict(self, hypothesis: Hypothesis) -> str:
        """Why the head makes this hypothesis moot (empty when it does not)."""
        if not hypothesis.constant_changes or hypothesis.base_commit == self.view.head_commit():
            return ""
        base = _values(self.view.constants(hypothesis.base_commit))
        head = self.head_constants()
        if not base or not head:
            return ""
        targets = _values(hypothesis.constant_changes)
        if targets and all(n in head and same_value(head[n], v) for n, v in targets.items()):
            return "the head already has these values"
        moved = sorted(
            n
            for n in hypothesis.constant_changes
            if n in base and n in head and not same_value(base[n], head[n])
        )
        if moved:
            return f"the head changed {', '.join(moved)} since this hypothesis's base"
        return ""

    def anyone_eligible(self, classes: Sequence[str], excluded_volunteers: set[str], excluded_owners: set[str]) -> bool:
        """Whether a volunteer online in one of `classes` may take a unit with these exclusions."""
        return any(
            v.volunteer_id not in excluded_volunteers and v.owner not in excluded_owners
            for c in classes
            for v in self.online_in(c)
        )

    def pick_class(
        self,
        classes: Sequence[str],
        excluded_volunteers: set[str],
        excluded_owners: set[str],
        measured_on: Collection[str] = (),
    ) -> str:
        """The most informative class with an eligible volunteer online and room in its queue.

        Classes the hypothesis has not run on yet count double: the evidence then spans classes,
        and once merged its runs give those classes a head baseline for free."""
        best, best_score = "", -math.inf
        for c in classes:
            eligible = [
                v
                for v in self.online_in(c)
                if v.volunteer_id not in excluded_volunteers and v.owner not in excluded_owners
            ]
            if not eligible:
                continue
            information = 1.0 / self.sigma(c).sigma ** 2
            load = 1.0 + self.queued(c) / len(eligible)
            score = information / load * (1.0 if c in measured_on else 2.0)
            if score > best_score or (score == best_score and c < best):
                best, best_score = c, score
        if best:
            return best
        # Nobody eligible online right now: queue it where most volunteers are; it waits for one.
        return max(classes, key=lambda c: (self.online(c), c)) if classes else ""

    # -- judging ----------------------------------------------------------------------------------

    def groups(self, ok: Sequence[ResultRecord], head: str) -> tuple[list[SampleGroup], int, int]:
        """Usable groups, runs waiting for a baseline that will come, runs that never will."""
        by_key: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        for r in ok:
            by_key[(r.hardware_class, r.base_commit)].append(_sample(r))
        groups: list[SampleGroup] = []
        waiting = dropped = 0
        for (c, base), samples in by_key.items():
            if self.baseline_ready(c, base):
                values = [s.val_bpb for s in self.baseline(c, base)]
                sigma = self.sigma(c)
                groups.append(
                    SampleGroup(
                        c,
                        base,
                        math.fsum(values) / len(values),
                        len(values),
                        sigma.sigma,
                        tuple(samples),
                        sigma.dof,
                    )
                )
            elif base in self.recent_heads() or any(
                u.kind == UnitKind.BASELINE and u.base_commit == base
                for u in self.view.pending_units(hardware_class=c)
            ):
                waiting += len(samples)
            else:
                dropped += len(samples)
        return groups, waiting, dropped

    def judge(self, h: Hypothesis) -> Judgement:
        s = self.s
        if h.state in TERMINAL_HYPOTHESIS_STATES:
            return Judgement(h.hypothesis_id, h.state, h.state_reason)
        head = self.view.head_commit()
        pending = self.view.pending_units(hypothesis_id=h.hypothesis_id)
        queued_ids = tuple(u.unit_id for u in pending if u.state == UnitState.QUEUED)

        def end(state: HypothesisState, reason: str, evidence: Evidence | None = None) -> Judgement:
            return Judgement(h.hypothesis_id, state, reason, (), queued_ids, evidence or Evidence())

        conflict = self.conflict(h)
        if conflict:
            return end(HypothesisState.SUPERSEDED, conflict)
        results = self.view.counting_results(hypothesis_id=h.hypothesis_id)
        diverged = [r for r in results if r.metrics.status == RunStatus.NAN]
        if diverged:
            return end(HypothesisState.REJECTED, f"diverged (NaN loss) on {diverged[0].hardware_class}")
        failures = [r for r in results if r.metrics.status in FAILURE_STATUSES]
        if len(failures) > s.max_crash_retries:
            return end(HypothesisState.FAILED, _failure_reason(failures))

        ok = [r for r in results if r.metrics.status == RunStatus.OK]
        groups, waiting, _ = self.groups(ok, head)
        own_runs = sum(len(g.samples) for g in groups)
        earlier = self.same_change_results(h) if own_runs else []
        if earlier:
            groups = self.groups(ok + earlier, head)[0]
        evidence = pooled_evidence(groups, s.clip_sigma)
        # Queued units on an old base are cancelled and asked for again on the head.
        recent = self.recent_heads()
        stale = tuple(
            u.unit_id for u in pending if u.state == UnitState.QUEUED and u.base_commit not in recent
        )
        live = [u for u in pending if u.unit_id not in stale]
        in_flight = len(live) + waiting
        runs = evidence.runs  # with the runs of the same change on earlier bases

        def keep(state: HypothesisState, reason: str, requests: Iterable[UnitRequest] = ()) -> Judgement:
            return Judgement(h.hypothesis_id, state, reason, tuple(requests), stale, evidence)

        if own_runs == 0:
            if in_flight:
                return keep(
                    _waiting_state(h.state),
                    "waiting for its first run" if not waiting else "waiting for a baseline",
                )
            if not self.allowed_classes(h):
                return keep(
                    HypothesisState.QUEUED,
                    "no active class may run it (pinned constants or no volunteer online)",
                )
            if h.state in (HypothesisState.QUEUED, HypothesisState.LEASED):
                return keep(HypothesisState.QUEUED, "queued for its first run")
            # It had runs that no longer count (revoked volunteer, lost baseline): start over.
            return keep(HypothesisState.QUEUED, "its earlier runs no longer count; queued again")

        if runs == 1 and evidence.z < s.discard_z and not in_flight:
            return end(
                HypothesisState.REJECTED,
                f"early discard: first run {evidence.delta_bpb:+.6f} bpb vs baseline, z = {_floor2(evidence.z)} < {s.discard_z}",
                evidence,
            )
        if runs == 1 and evidence.z < s.promising_z and not in_flight:
            # Mostly noise: replicating every such result costs more runs than the few small
            # real gains among them are worth (see README: simulator figures).
            return end(
                HypothesisState.REJECTED,
                f"{WEAK_REASON}: first run {evidence.delta_bpb:+.6f} bpb vs baseline, z = {_floor2(evidence.z)} "
                f"< {s.promising_z}; not replicated alone",
                evidence,
            )

        if runs >= 2:
            verdict = self.confirmation(groups, evidence, head)
            if verdict == "confirmed":
                return Judgement(
                    h.hypothesis_id,
                    HypothesisState.CONFIRMED,
                    _confirm_reason(evidence),
                    (),
                    queued_ids,
                    evidence,
                    head,
                )
            if verdict.startswith("refuted"):
                return end(HypothesisState.REJECTED, verdict.removeprefix("refuted: "), evidence)
            needs_head_run = verdict == "verify"
            if needs_head_run and own_runs >= 2 * s.max_samples and not in_flight:
                return end(
                    HypothesisState.REJECTED,
                    f"could not be verified on a moving head after {runs} runs",
                    evidence,
                )
            # Projected z if the remaining runs up to max_samples showed the same effect.
            projected = evidence.z * math.sqrt(max(s.max_samples, runs) / runs)
            if not needs_head_run and projected < s.futility_z and not in_flight:
                return end(
                    HypothesisState.REJECTED,
                    f"not better enough: pooled z = {evidence.z:.2f} after {runs} runs, projected "
                    f"{_floor2(projected)} at {s.max_samples} < {s.futility_z}",
                    evidence,
                )
            limit = s.max_samples
            if 0 < s.extend_z <= evidence.z < s.confirm_z:
                # A near miss on strength alone (not on owners): a few more runs may settle it.
                limit = max(limit, s.extended_max_samples)
            if not needs_head_run and own_runs + in_flight >= limit:
                if in_flight:
                    return keep(HypothesisState.REPLICATING, f"{runs} runs in, waiting for {in_flight} more")
                return end(
                    HypothesisState.REJECTED,
                    f"inconclusive after {own_runs} runs: {verdict.removeprefix('short: ')}"
                    + (f" (over {runs} runs with earlier runs of the same change)" if runs != own_runs else ""),
                    evidence,
                )
        else:
            needs_head_run = False

        if runs >= 2 and not needs_head_run and s.baseline_on_demand:
            # Its head runs are judged against baselines still being measured: wait for them.
            in_flight += sum(self.view.pending_baselines(g.hardware_class, head) for g in groups if g.base_commit == head)
        if in_flight:
            state = HypothesisState.PROMISING if runs == 1 else HypothesisState.REPLICATING
            return keep(state, f"{runs} run(s) in, z = {evidence.z:.2f}; waiting for {in_flight} more")
        request = self.replicate_request(h, results, evidence, head, verify=needs_head_run)
        if request is None:
            return keep(HypothesisState.QUEUED, "no active class may run it")
        if (
            runs >= 2
            and len({r.owner for r in results}) >= s.min_owners
            and not self.anyone_eligible(self.allowed_classes(h), set(request.excluded_volunteers), set())
        ):
            # Every volunteer online that may run it has: a replicate would wait in the queue for
            # good, its queue room lost to new hypotheses. (A replicate that waits for a second
            # owner to come online is different: it waits, as it should.)
            return end(
                HypothesisState.REJECTED,
                f"inconclusive after {runs} runs: {verdict.removeprefix('short: ')}; every volunteer online "
                "that may run it has",
                evidence,
            )
        if runs >= 2 and not needs_head_run and s.baseline_on_demand:
            baseline = self.baseline_instead(groups, evidence, head, request)
            if baseline is not None:
                return keep(
                    HypothesisState.REPLICATING,
                    f"{runs} runs, pooled z = {evidence.z:.2f}; the {baseline.hardware_class} baseline is the "
                    "larger uncertainty: one more baseline run",
                    [baseline],
                )
        if runs == 1:
            return keep(
                HypothesisState.PROMISING,
                f"promising: first run {evidence.delta_bpb:+.6f} bpb, z = {evidence.z:.2f}; replicating elsewhere",
                [request],
            )
        if needs_head_run:
            return keep(
                HypothesisState.REPLICATING,
                f"evidence holds (z = {evidence.z:.2f}); re-verifying on the head",
                [request],
            )
        return keep(
            HypothesisState.REPLICATING,
            f"{runs} runs, pooled z = {evidence.z:.2f}; one more replicate",
            [request],
        )

    def confirmation(self, groups: Sequence[SampleGroup], evidence: Evidence, head: str) -> str:
        """'confirmed', 'verify' (holds, but needs a run on the head), 'refuted: why', or
        'short: why' (not yet: more runs may still confirm it)."""
        s = self.s
        few = len(evidence.volunteers) < s.min_volunteers or len(evidence.owners) < s.min_owners
        # (probably_better fits the effect prior: only for evidence that passes the cheap rules)
        if evidence.z < s.confirm_z and (few or not self.probably_better(evidence)):
            return f"short: pooled z = {_floor2(evidence.z)} < {s.confirm_z}"
        if few:
            return (
                f"short: pooled z = {evidence.z:.2f}, but from {len(evidence.volunteers)} volunteer(s) of "
                f"{len(evidence.owners)} owner(s) (needs {s.min_volunteers} of {s.min_owners})"
            )
        for owner in sorted(evidence.owners):
            rest = pooled_evidence(without_owner(groups, owner), s.clip_sigma)
            if rest.z < s.loo_min_z:
                # Leans on one owner's numbers: needs more runs from others.
                return (
                    f"short: pooled z = {evidence.z:.2f}, but {_floor2(rest.z)} without {owner}'s runs "
                    f"< {s.loo_min_z}"
                )
        recent = self.recent_heads()
        head_groups = [g for g in groups if g.base_commit in recent]
        if not head_groups:
            return "verify"
        on_head = pooled_evidence(head_groups, s.clip_sigma)
        if on_head.z < s.verify_z:
            return f"refuted: held on older bases (z = {evidence.z:.2f}) but not on the head (z = {on_head.z:.2f})"
        return "confirmed"

    def probably_better(self, evidence: Evidence) -> bool:
        """The empirical-Bayes route: P(not an improvement | evidence) <= fdr_alpha under the
        effect distribution fitted to the swarm's recent first runs. Lenient where real wins are
        common among what the swarm tests, strict where nearly everything is noise."""
        s = self.s
        if s.fdr_alpha <= 0.0 or evidence.z < s.fdr_min_z:
            return False
        prior = self.effect_prior()
        if prior.observations < s.fdr_min_observations:
            return False
        estimate, se = sigma_units(evidence)
        return prior.not_better_probability(estimate, se) <= s.fdr_alpha

    def effect_prior(self) -> EffectPrior:
        """Effects of the newest fdr_window first runs (one per hypothesis), in sigma units of
        their class, with their standard errors sqrt(1 + 1/n) against n baseline runs."""
        if self._prior is None:
            firsts: dict[str, ResultRecord] = {}
            for c in self.view.active_classes():
                for r in self.view.counting_results(hardware_class=c, kind=UnitKind.CANDIDATE):
                    if r.metrics.status != RunStatus.OK or not r.hypothesis_id:
                        continue
                    seen = firsts.get(r.hypothesis_id)
                    if seen is None or r.reported_s < seen.reported_s:
                        firsts[r.hypothesis_id] = r
            newest = sorted(firsts.values(), key=lambda r: r.reported_s)[-self.s.fdr_window :]
            observations: list[tuple[float, float]] = []
            for r in newest:
                if not self.baseline_ready(r.hardware_class, r.base_commit):
                    continue
                values = [x.val_bpb for x in self.baseline(r.hardware_class, r.base_commit)]
                sigma = self.sigma(r.hardware_class).sigma
                effect = (math.fsum(values) / len(values) - r.metrics.val_bpb) / sigma
                observations.append((effect, self.s.fdr_noise_factor * math.sqrt(1.0 + 1.0 / len(values))))
            self._prior = fit_effect_prior(observations)
        return self._prior

    def baseline_instead(
        self, groups: Sequence[SampleGroup], evidence: Evidence, head: str, replicate: UnitRequest
    ) -> UnitRequest | None:
        """A baseline run on the head, when it would tighten the evidence more than the replicate.

        The variance of a group's delta is sigma^2 (1/k + 1/n): with few baseline runs n, more
        candidate runs k stop helping. Baseline runs also serve every other hypothesis on the head.
        """
        s = self.s
        if len(evidence.volunteers) < s.min_volunteers or len(evidence.owners) < s.min_owners:
            return None  # independent replicates are needed anyway

        def weight(k: int, n: int, sigma: float) -> float:
            return 1.0 / (sigma * sigma * (1.0 / k + 1.0 / n))

        best_gain, best_class = 0.0, ""
        for g in groups:
            if g.base_commit != head or g.baseline_samples >= s.baseline_max:
                continue
            k = len(g.samples)
            gain = weight(k, g.baseline_samples + 1, g.sigma) - weight(k, g.baseline_samples, g.sigma)
            if gain > best_gain:
                best_gain, best_class = gain, g.hardware_class
        if not best_class:
            return None
        c = replicate.hardware_class
        sigma = self.sigma(c).sigma
        group = next((g for g in groups if g.base_commit == head and g.hardware_class == c), None)
        n = len(self.baseline(c, head))
        if group is not None:
            replicate_gain = weight(len(group.samples) + 1, n, sigma) - weight(len(group.samples), n, sigma)
        else:
            replicate_gain = weight(1, max(n, s.min_baseline_samples), sigma)
        if best_gain <= replicate_gain:
            return None
        done_by = {x.volunteer_id for x in self.baseline(best_class, head, fresh_only=True)}
        excluded = (
            self._retry_exclusions(best_class, done_by) if len(done_by) < self.online(best_class) else ()
        )
        return UnitRequest(
            UnitKind.BASELINE,
            "",
            best_class,
            head,
            0.0,
            excluded,
            (),
            reason="baseline run: the larger uncertainty",
        )

    def replicate_request(
        self, h: Hypothesis, results: Sequence[ResultRecord], evidence: Evidence, head: str, verify: bool
    ) -> UnitRequest | None:
        excluded_volunteers = {r.volunteer_id for r in results}
        excluded_owners = {r.owner for r in results}
        classes = self.allowed_classes(h)
        if not classes:
            return None
        if len(excluded_owners) >= self.s.min_owners and not self.anyone_eligible(
            classes, excluded_volunteers, excluded_owners
        ):
            # Every owner online has run it. Its runs already span min_owners owners (and the
            # leave-one-owner-out rule still holds), so the next run only has to come from a
            # volunteer that has not run it; excluding owners would leave a unit nobody can lease.
            excluded_owners = set()
        if verify and not self.anyone_eligible(classes, excluded_volunteers, excluded_owners):
            # A head run only checks that a win measured on older bases still points the right
            # way on the head; with every volunteer online already among its runs, anyone may.
            excluded_volunteers = set()
        # Only classes whose head baseline exists or is on its way can judge the run.
        measured_on = {r.hardware_class for r in results}
        c = self.pick_class(classes, excluded_volunteers, excluded_owners, measured_on)
        priority = VERIFY_PRIORITY if verify else h.priority + max(evidence.z, 0.0)
        return UnitRequest(
            UnitKind.REPLICATE,
            h.hypothesis_id,
            c,
            head,
            priority,
            tuple(sorted(excluded_volunteers)),
            tuple(sorted(excluded_owners)),
            reason="re-verify on the head" if verify else "replicate by another volunteer and owner",
        )

    # -- crashes ----------------------------------------------------------------------------------

    def after_crash(self, result: ResultRecord) -> CrashDecision:
        s = self.s
        status = result.metrics.status
        if status not in FAILURE_STATUSES:
            return CrashDecision(False, None, None, f"status {status.value} is not retried", 0)
        head = self.view.head_commit()
        if result.kind == UnitKind.BASELINE:
            runs = self.view.counting_results(
                hardware_class=result.hardware_class, base_commit=result.base_commit, kind=UnitKind.BASELINE
            )
            failures = [r for r in runs if r.metrics.status in FAILURE_STATUSES]
            if result.base_commit != head:
                return CrashDecision(
                    False, None, None, "baseline of a commit that is no longer the head", len(failures)
                )
            if len(failures) > s.max_crash_retries:
                return CrashDecision(
                    False,
                    None,
                    None,
                    f"the head fails on {result.hardware_class}: {_failure_reason(failures)}",
                    len(failures),
                )
            excluded = self._retry_exclusions(result.hardware_class, {r.volunteer_id for r in failures})
            request = UnitRequest(
                UnitKind.BASELINE,
                "",
                result.hardware_class,
                head,
                0.0,
                excluded,
                (),
                reason=f"retry {len(failures)}/{s.max_crash_retries} after {status.value}",
            )
            return CrashDecision(True, request, None, request.reason, len(failures))
        runs = self.view.counting_results(hypothesis_id=result.hypothesis_id)
        failures = [r for r in runs if r.metrics.status in FAILURE_STATUSES]
        if len(failures) > s.max_crash_retries:
            return CrashDecision(
                False, None, HypothesisState.FAILED, _failure_reason(failures), len(failures)
            )
        excluded = self._retry_exclusions(result.hardware_class, {r.volunteer_id for r in runs})
        request = UnitRequest(
            result.kind,
            result.hypothesis_id,
            result.hardware_class,
            head,
            0.0,
            excluded,
            tuple(sorted({r.owner for r in runs})) if result.kind == UnitKind.REPLICATE else (),
            reason=f"retry {len(failures)}/{s.max_crash_retries} after {status.value}",
        )
        return CrashDecision(True, request, None, request.reason, len(failures))

    def _retry_exclusions(self, hardware_class: str, failed_on: set[str]) -> tuple[str, ...]:
        others = [v for v in self.online_in(hardware_class) if v.volunteer_id not in failed_on]
        return tuple(sorted(failed_on)) if others else ()

    # -- scheduling -------------------------------------------------------------------------------

    def plan_baselines(self) -> list[UnitRequest]:
        s = self.s
        head = self.view.head_commit()
        requests: list[UnitRequest] = []
        for c in self.view.active_classes():
            runs = self.view.counting_results(hardware_class=c, base_commit=head, kind=UnitKind.BASELINE)
            if sum(r.metrics.status in FAILURE_STATUSES for r in runs) > s.max_crash_retries:
                continue  # the head fails on this class; after_merge decides what to do
            have = len(self.baseline(c, head))
            fresh = [r for r in runs if r.metrics.status == RunStatus.OK]
            target = s.baseline_replicates
            sigma = self.sigma(c)
            if sigma.from_prior:
                # Until the class's noise is measured, its first heads get extra baseline runs:
                # enough for min_sigma_dof dof with the other commits' runs (n runs on one commit
                # give n - 1 dof, so a first commit needs min_sigma_dof + 1 runs, all at once).
                other_dof = sigma.dof - max(len(fresh) - 1, 0)
                target = max(
                    target,
                    min(s.min_sigma_dof - other_dof + 1, s.baseline_replicates + s.min_sigma_dof),
                )
            in_flight = sum(
                1
                for u in self.view.pending_units(hardware_class=c)
                if u.kind == UnitKind.BASELINE and u.base_commit == head
            )
            missing = target - have - in_flight
            if missing <= 0:
                continue
            done_by = {r.volunteer_id for r in fresh}
            excluded = self._retry_exclusions(c, done_by) if len(done_by) < self.online(c) else ()
            requests += [
                UnitRequest(
                    UnitKind.BASELINE,
                    "",
                    c,
                    head,
                    0.0,
                    excluded,
                    (),
                    reason=f"baseline {have + i + 1}/{target}",
                )
                for i in range(missing)
            ]
        return requests

    def plan_candidates(self) -> list[UnitRequest]:
        head = self.view.head_commit()
        room = {
            c: math.ceil(self.s.queue_factor * self.online(c)) - self.queued(c)
            for c in self.view.active_classes()
        }
        if not any(v > 0 for v in room.values()):
            return []  # every queue is deep enough: no need to read the queued hypotheses
        queued = [
            h
            for h in self.view.hypotheses([HypothesisState.QUEUED])
            if not self.view.pending_units(hypothesis_id=h.hypothesis_id)
        ]
        queued.sort(key=lambda h: -h.priority)  # stable: equal priorities stay oldest first
        requests: list[UnitRequest] = []
        for h in queued:
            if not any(v > 0 for v in room.values()):
                break
            if self.conflict(h):
                continue
            classes = [c for c in self.allowed_classes(h) if room.get(c, 0) > 0]
            if not classes:
                continue
            c = max(classes, key=lambda c: (room[c] / max(1, self.online(c)), -self.sigma(c).sigma, c))
            room[c] -= 1
            requests.append(
                UnitRequest(UnitKind.CANDIDATE, h.hypothesis_id, c, head, h.priority, reason="first run")
            )
        return requests

    # -- after a merge ----------------------------------------------------------------------------

    def after_merge(self, merge: MergeRecord) -> RevertDecision:
        s = self.s
        classes = set(self.view.active_classes())
        for r in self.view.counting_results(base_commit=merge.commit, kind=UnitKind.BASELINE):
            classes.add(r.hardware_class)
        shifts: list[ClassShift] = []
        pending: list[str] = []
        flagged: list[str] = []
        for c in sorted(classes):
            runs = self.view.counting_results(
                hardware_class=c, base_commit=merge.commit, kind=UnitKind.BASELINE
            )
            new = [r.metrics.val_bpb for r in runs if r.metrics.status == RunStatus.OK]
            failures = [r for r in runs if r.metrics.status in FAILURE_STATUSES]
            ancestor, old = self._measured_ancestor(c, merge.parent_commit)
            if len(failures) > s.max_crash_retries and len(new) < s.revert_min_samples:
                shifts.append(ClassShift(c, ancestor, len(new), len(old), math.inf, math.inf, crashed=True))
                flagged.append(c)
                continue
            if len(new) < s.revert_min_samples:
                if old:
                    pending.append(c)
                continue
            if not old:
                continue  # nothing measured before on this class: nothing to compare
            sigma = self.sigma(c)
            if sigma.from_prior:
                pending.append(c)
                continue
            z = shift_z(new, old, sigma.sigma, sigma.dof)
            delta = math.fsum(new) / len(new) - math.fsum(old) / len(old)
            shifts.append(ClassShift(c, ancestor, len(new), len(old), delta, z))
            if z >= s.revert_z:
                flagged.append(c)
        revert = bool(flagged) and s.revert_enabled
        if flagged:
            parts = []
            for sh in shifts:
                if sh.hardware_class not in flagged:
                    continue
                if sh.crashed:
                    parts.append(f"{sh.hardware_class}: the new head fails its baseline runs")
                else:
                    parts.append(
                        f"{sh.hardware_class}: baseline {sh.delta_bpb:+.6f} bpb worse than on "
                        f"{sh.ancestor_commit[:10]} (z = {sh.z:.2f} >= {s.revert_z}, {sh.new_runs} vs {sh.old_runs} runs)"
                    )
            reason = "; ".join(parts)
        elif pending:
            reason = f"still measuring: {', '.join(pending)}"
        else:
            reason = "no class got significantly worse"
        return RevertDecision(
            merge.commit, revert, tuple(flagged), tuple(pending), tuple(shifts), _clip(reason)
        )

    def _measured_ancestor(self, hardware_class: str, commit: str) -> tuple[str, list[float]]:
        """The nearest commit up the merge chain with a usable baseline on the class."""
        for _ in range(_MAX_ANCESTOR_STEPS):
            if not commit:
                break
            values = [x.val_bpb for x in self.baseline(hardware_class, commit)]
            if len(values) >= self.s.min_baseline_samples:
                return commit, values
            parent = self.view.merge_for(commit)
            if parent is None:
                break
            commit = parent.parent_commit
        return commit, []


# -- helpers --------------------------------------------------------------------------------------


def _floor2(z: float) -> str:
    """z to two places, rounded down: a z of 2.996 below a bar of 3 reads 2.99, not 3.00."""
    return f"{math.floor(z * 100.0) / 100.0:.2f}" if math.isfinite(z) else str(z)


def _sample(r: ResultRecord) -> Sample:
    return Sample(r.metrics.val_bpb, r.volunteer_id, r.owner, r.result_id)


def _values(literals: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, text in dict(literals).items():  # type: ignore[call-overload]
        try:
            out[name] = parse_literal(str(text))
        except LiteralError:
            continue
    return out


def _waiting_state(state: HypothesisState) -> HypothesisState:
    return state if state in (HypothesisState.QUEUED, HypothesisState.LEASED) else HypothesisState.LEASED


def _failure_reason(failures: Sequence[ResultRecord]) -> str:
    last = failures[-1]
    detail = last.metrics.error or last.metrics.log_tail.strip().splitlines()[-1:] or [""]
    text = detail if isinstance(detail, str) else (detail[0] if detail else "")
    statuses = ", ".join(sorted({r.metrics.status.value for r in failures}))
    reason = f"failed {len(failures)} times ({statuses}) on {', '.join(sorted({r.hardware_class for r in failures}))}"
    if text:
        reason += f"; last error: {text[:400]}"
    return reason


def _confirm_reason(evidence: Evidence) -> str:
    return (
        f"confirmed: {evidence.runs} runs from {len(evidence.volunteers)} volunteers of {len(evidence.owners)} owners, "
        f"delta {evidence.delta_bpb:+.6f} bpb, z = {evidence.z:.2f}"
    )
