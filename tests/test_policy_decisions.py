"""judge / plan / after_crash / after_merge scenarios on an in-memory view with chosen numbers."""

from __future__ import annotations

import pytest

from coordinator.policy import decisions
from coordinator.policy.decisions import VERIFY_PRIORITY
from coordinator.policy.settings import AcceptanceSettings, SettingsError
from coordinator.policy.statistics import normalize
from coordinator.policy.view import InMemoryView
from coordinator.store.types import (
    HypothesisState,
    MergeRecord,
    RunMetrics,
    RunStatus,
    UnitKind,
    UnitState,
)

# Baselines [1.0, 1.002, 0.998, 1.0] twice per class: mean 1.0 (gpu-a) / 1.3 (gpu-b),
# pooled spread sqrt(1.6e-5 / 7) = 0.001512 on 7 dof.
SIGMA = (1.6e-5 / 7) ** 0.5
SETTINGS = AcceptanceSettings(min_sigma_dof=6)
STRICT = SETTINGS.replace(verify_max_lag=0)
POOLED = SETTINGS.replace(pool_same_change=True)  # off by default (it reads every hypothesis)

VOLUNTEERS = {
    "a1": ("o1", "gpu-a"),
    "a2": ("o1", "gpu-a"),
    "a3": ("o2", "gpu-a"),
    "a4": ("o3", "gpu-a"),
    "b1": ("o2", "gpu-b"),
    "b2": ("o3", "gpu-b"),
    "b3": ("o4", "gpu-b"),
    "b4": ("o5", "gpu-b"),  # runs no baselines
}


def run(
    view: InMemoryView,
    volunteer: str,
    value: float,
    hypothesis_id: str = "",
    commit: str = "",
    kind: UnitKind | None = None,
    status: RunStatus = RunStatus.OK,
):
    cls = VOLUNTEERS[volunteer][1]
    kind = kind or (UnitKind.CANDIDATE if hypothesis_id else UnitKind.BASELINE)
    unit = view.add_unit(kind, cls, commit or view.head_commit(), hypothesis_id)
    error = "" if status == RunStatus.OK else f"{status.value} in step 3"
    return view.add_result(unit.unit_id, volunteer, RunMetrics(status, val_bpb=value, error=error))


def baselines(view: InMemoryView, commit: str, shift_a: float = 0.0, shift_b: float = 0.0) -> None:
    for i, d in enumerate([0.0, 0.002, -0.002, 0.0] * 2):
        run(view, ["a1", "a3", "a4", "a2"][i % 4], 1.0 + shift_a + d, commit=commit)
        run(view, ["b1", "b2", "b3", "b1"][i % 4], 1.3 + shift_b + d, commit=commit)


@pytest.fixture
def view() -> InMemoryView:
    v = InMemoryView("c0", {"DEPTH": "8", "MATRIX_LR": "0.04", "WINDOW_PATTERN": '"SSSL"'})
    for vid, (owner, cls) in VOLUNTEERS.items():
        v.add_volunteer(vid, owner, cls)
    v.set_pins("gpu-b", {"DEPTH", "DEVICE_BATCH_SIZE"})
    baselines(v, "c0")
    return v


def test_sigma_and_score_from_baselines(view):
    est = decisions.class_sigma(view, "gpu-a", SETTINGS)
    assert not est.from_prior and est.dof == 7 and est.sigma == pytest.approx(SIGMA)
    score = normalize(0.99, decisions.class_stats(view, "gpu-a", "c0", SETTINGS), SETTINGS.min_baseline_samples)
    assert score.has_baseline and score.baseline_samples == 8
    assert score.delta_bpb == pytest.approx(0.01) and score.delta_sigma == pytest.approx(0.01 / SIGMA)
    stats = decisions.class_stats(view, "gpu-b", "c0", SETTINGS)
    assert stats.mean_val_bpb == pytest.approx(1.3) and normalize(1.29, stats).delta_percent == pytest.approx(
        100 * 0.01 / 1.3
    )


def test_a_class_measured_unluckily_quiet_is_raised_towards_the_pooled_noise():
    v = InMemoryView("c0")
    for vid, (owner, cls) in VOLUNTEERS.items():
        v.add_volunteer(vid, owner, cls)
    for i, d in enumerate([0.0, 0.002, -0.002, 0.0] * 2):
        run(v, ["a1", "a3", "a4", "a2"][i % 4], 1.0 + d)
        run(v, ["b1", "b2", "b3", "b1"][i % 4], 1.3 + d / 5)  # a fifth of gpu-a's spread, same dof
    own_a, own_b = SIGMA, SIGMA / 5
    off = SETTINGS.replace(sigma_shrink_dof=0)
    assert decisions.class_sigma(v, "gpu-b", off).sigma == pytest.approx(own_b)
    k = SETTINGS.sigma_shrink_dof
    assert k > 0  # on by default
    pooled = (own_a**2 + own_b**2) / 2  # both on 7 dof
    raised = decisions.class_sigma(v, "gpu-b", SETTINGS)
    assert raised.sigma == pytest.approx(((7 * own_b**2 + k * pooled) / (7 + k)) ** 0.5)
    assert own_b < raised.sigma < own_a and raised.dof == 7  # the dof stay the class's own
    # Never lowered: the noisier class keeps its own estimate.
    assert decisions.class_sigma(v, "gpu-a", SETTINGS).sigma == pytest.approx(own_a)
    # A first run 3 own sigmas better on gpu-b is scored against the raised noise.
    stats = decisions.class_stats(v, "gpu-b", "c0", SETTINGS)
    assert normalize(1.3 - 3 * own_b, stats).delta_sigma == pytest.approx(3 * own_b / raised.sigma)
    with pytest.raises(SettingsError):
        SETTINGS.replace(sigma_shrink_dof=-1)


def test_prior_until_enough_baselines():
    v = InMemoryView("c0")
    v.add_volunteer("a1", "o1", "gpu-a")
    est = decisions.class_sigma(v, "gpu-a", SETTINGS.replace(prior_sigma_by_class={"gpu-a": 0.02}))
    assert est.from_prior and est.sigma == 0.02
    stats = decisions.class_stats(v, "gpu-a", "c0", SETTINGS)
    assert not normalize(1.0, stats, SETTINGS.min_baseline_samples).has_baseline


def test_early_discard(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 1.003, h.hypothesis_id)
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.REJECTED
    assert j.reason.startswith("early discard") and j.requests == ()


def test_weakly_better_is_not_replicated(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.9995, h.hypothesis_id)  # z about 0.3
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.REJECTED and j.reason.startswith("weakly better")


def test_promising_replicate_goes_to_another_volunteer_and_owner(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.PROMISING
    (req,) = j.requests
    assert req.kind == UnitKind.REPLICATE and req.hypothesis_id == h.hypothesis_id
    assert req.excluded_volunteers == ("a1",) and req.excluded_owners == ("o1",)
    assert req.base_commit == "c0"
    assert req.hardware_class == "gpu-b"  # the class it has not run on yet
    # Judging again with the replicate queued asks for nothing more.
    view.add_unit(
        req.kind,
        req.hardware_class,
        req.base_commit,
        h.hypothesis_id,
        req.priority,
        req.excluded_volunteers,
        req.excluded_owners,
    )
    again = decisions.judge(view, h, SETTINGS)
    assert again.requests == () and again.state == HypothesisState.PROMISING


def test_single_lucky_number_never_confirms(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.95, h.hypothesis_id)
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.PROMISING and not j.confirmed


def test_two_volunteers_of_one_owner_never_confirm(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    run(view, "a2", 0.989, h.hypothesis_id, kind=UnitKind.REPLICATE)
    j = decisions.judge(view, h, SETTINGS)
    assert j.evidence.z >= SETTINGS.confirm_z  # strong enough: only the owner rule holds it back
    assert j.state == HypothesisState.REPLICATING and not j.confirmed
    (req,) = j.requests
    assert req.kind == UnitKind.REPLICATE
    assert set(req.excluded_volunteers) == {"a1", "a2"} and req.excluded_owners == ("o1",)


def test_real_improvement_from_two_owners_confirms(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    run(view, "b1", 1.290, h.hypothesis_id, kind=UnitKind.REPLICATE)
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.CONFIRMED and j.merge_onto == "c0"
    assert j.evidence.owners == {"o1", "o2"} and j.evidence.runs == 2
    assert j.evidence.reported_delta_bpb == pytest.approx(0.01)
    assert j.evidence.delta_bpb == pytest.approx(4 * SIGMA)  # 6.6 sigma runs count as 4 in the test
    assert j.evidence.delta_bpb_by_class() == pytest.approx({"gpu-a": 0.01, "gpu-b": 0.01})
    assert "pooled: 2 run(s) from 2 volunteer(s) of 2 owner(s)" in j.evidence.lines()[-1]


def test_one_forged_number_with_an_honest_neutral_one_does_not_confirm(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.5, h.hypothesis_id)  # forged: clipped to 4 sigma
    run(view, "b1", 1.300, h.hypothesis_id, kind=UnitKind.REPLICATE)  # honest: no change
    j = decisions.judge(view, h, SETTINGS)
    assert not j.confirmed
    assert j.evidence.groups[0].delta_bpb == pytest.approx(4 * SIGMA)


def test_not_better_enough_after_replication(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.997, h.hypothesis_id)
    run(view, "b1", 1.302, h.hypothesis_id, kind=UnitKind.REPLICATE)
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.REJECTED and j.reason.startswith("not better enough")


def test_diverged_run_rejects(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.4"})
    run(view, "a1", 0.0, h.hypothesis_id, status=RunStatus.NAN)
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.REJECTED and "diverged" in j.reason


def test_crash_retries_are_bounded_then_failed(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    first = run(view, "a1", 0.0, h.hypothesis_id, status=RunStatus.CRASH)
    d1 = decisions.after_crash(view, first, SETTINGS)
    assert d1.retry and d1.state is None and d1.failures == 1
    assert d1.request is not None and d1.request.excluded_volunteers == ("a1",)
    assert d1.request.kind == UnitKind.CANDIDATE and d1.request.base_commit == "c0"
    second = run(view, "a3", 0.0, h.hypothesis_id, status=RunStatus.OOM)
    d2 = decisions.after_crash(view, second, SETTINGS)
    assert d2.retry and set(d2.request.excluded_volunteers) == {"a1", "a3"}
    third = run(view, "a4", 0.0, h.hypothesis_id, status=RunStatus.TIMEOUT)
    d3 = decisions.after_crash(view, third, SETTINGS)
    assert not d3.retry and d3.request is None and d3.state == HypothesisState.FAILED
    assert "failed 3 times" in d3.reason and "timeout in step 3" in d3.reason
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.FAILED


def test_baseline_crashes_are_retried_then_left_to_after_merge(view):
    view.add_commit("c1", view.constants("c0"))
    view.set_head("c1")
    first = run(view, "a1", 0.0, commit="c1", status=RunStatus.CRASH)
    retry = decisions.after_crash(view, first, SETTINGS)
    assert (
        retry.retry
        and retry.request.kind == UnitKind.BASELINE
        and retry.request.excluded_volunteers == ("a1",)
    )
    run(view, "a3", 0.0, commit="c1", status=RunStatus.CRASH)
    third = run(view, "a4", 0.0, commit="c1", status=RunStatus.CRASH)
    last = decisions.after_crash(view, third, SETTINGS)
    assert not last.retry and last.state is None and "the head fails on gpu-a" in last.reason
    assert all(r.hardware_class != "gpu-a" for r in decisions.plan_baselines(view, SETTINGS))


def test_pinned_constant_is_not_scheduled_on_that_class(view):
    h = view.add_hypothesis({"DEPTH": "10"})
    assert decisions.allowed_classes(view, h) == ["gpu-a"]
    reqs = decisions.plan_candidates(view, SETTINGS)
    assert [r.hardware_class for r in reqs] == ["gpu-a"]
    for vid in ("a1", "a2", "a3", "a4"):
        view.set_offline(vid)
    assert decisions.plan_candidates(view, SETTINGS) == []
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.QUEUED and "no active class" in j.reason


def test_plan_candidates_fills_each_class_queue_up_to_its_volunteers(view):
    for i in range(10):
        view.add_hypothesis({"MATRIX_LR": f"0.0{i + 1}1"}, priority=float(i))
    reqs = decisions.plan_candidates(view, SETTINGS)
    per_class = {c: sum(r.hardware_class == c for r in reqs) for c in ("gpu-a", "gpu-b")}
    assert per_class == {"gpu-a": 4, "gpu-b": 4}
    assert reqs[0].priority == 9.0  # highest priority first
    assert all(r.kind == UnitKind.CANDIDATE and r.base_commit == "c0" for r in reqs)


def test_plan_baselines_on_a_new_head_by_different_volunteers(view):
    view.add_commit("c1", view.constants("c0"))
    view.set_head("c1")
    reqs = decisions.plan_baselines(view, SETTINGS)
    per_class = SETTINGS.baseline_replicates
    assert sorted(r.hardware_class for r in reqs) == ["gpu-a"] * per_class + ["gpu-b"] * per_class
    assert all(r.kind == UnitKind.BASELINE and r.base_commit == "c1" and not r.hypothesis_id for r in reqs)
    run(view, "a1", 1.0, commit="c1")
    again = [r for r in decisions.plan_baselines(view, SETTINGS) if r.hardware_class == "gpu-a"]
    assert len(again) == per_class - 1 and all(r.excluded_volunteers == ("a1",) for r in again)


def test_extra_baselines_until_the_class_noise_is_measured():
    v = InMemoryView("c0")
    for i in range(3):
        v.add_volunteer(f"a{i}", f"o{i}", "gpu-a")
    reqs = decisions.plan_baselines(v, SETTINGS)
    # 0 runs yet: n runs on one commit give n - 1 dof, so min_sigma_dof + 1 runs, all at once
    # (one fewer would leave the class a run short and every decision waiting a round for it).
    assert len(reqs) == SETTINGS.min_sigma_dof + 1
    for r in reqs:
        unit = v.add_unit(r.kind, r.hardware_class, r.base_commit)
        v.add_result(unit.unit_id, "a0", RunMetrics(RunStatus.OK, val_bpb=1.0 + 0.001 * len(v.counting_results())))
    assert not decisions.class_sigma(v, "gpu-a", SETTINGS).from_prior
    assert decisions.plan_baselines(v, SETTINGS) == []


def test_confirmed_on_an_old_base_is_reverified_on_the_head(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    run(view, "b1", 1.290, h.hypothesis_id, kind=UnitKind.REPLICATE)
    view.add_commit("c1", {**view.constants("c0"), "WINDOW_PATTERN": '"L"'})
    view.set_head("c1")
    j = decisions.judge(view, h, STRICT)
    assert j.state == HypothesisState.REPLICATING and "re-verifying" in j.reason
    (req,) = j.requests
    assert req.base_commit == "c1" and req.priority == VERIFY_PRIORITY
    assert set(req.excluded_owners) == {"o1", "o2"}
    baselines(view, "c1", shift_a=-0.003)
    run(view, "a4", 0.986, h.hypothesis_id, commit="c1", kind=UnitKind.REPLICATE)
    done = decisions.judge(view, h, STRICT)
    assert done.state == HypothesisState.CONFIRMED and done.merge_onto == "c1"


def small_swarm(volunteers: dict[str, str]) -> InMemoryView:
    """One class, the given volunteer -> owner, baselines with sigma SIGMA on 7 dof."""
    v = InMemoryView("c0", {"MATRIX_LR": "0.04"})
    for vid, owner in volunteers.items():
        v.add_volunteer(vid, owner, "gpu-a")
    names = list(volunteers)
    for i, d in enumerate([0.0, 0.002, -0.002, 0.0] * 2):
        unit = v.add_unit(UnitKind.BASELINE, "gpu-a", "c0")
        v.add_result(unit.unit_id, names[i % len(names)], RunMetrics(RunStatus.OK, val_bpb=1.0 + d))
    return v


def small_swarm_run(v: InMemoryView, volunteer: str, value: float, hypothesis_id: str, commit: str = "c0"):
    unit = v.add_unit(UnitKind.REPLICATE, "gpu-a", commit, hypothesis_id)
    return v.add_result(unit.unit_id, volunteer, RunMetrics(RunStatus.OK, val_bpb=value))


def test_every_owner_has_run_it_the_replicate_excludes_volunteers_only():
    v = small_swarm({"a1": "o1", "a2": "o1", "a3": "o2", "a4": "o2"})
    h = v.add_hypothesis({"MATRIX_LR": "0.05"})
    small_swarm_run(v, "a1", 0.998, h.hypothesis_id)
    small_swarm_run(v, "a3", 0.998, h.hypothesis_id)  # pooled z about 1.5: another run is worth it
    j = decisions.judge(v, h, SETTINGS)
    assert j.state == HypothesisState.REPLICATING
    (req,) = j.requests
    # Excluding both owners would leave a unit nobody online can lease.
    assert req.excluded_owners == () and req.excluded_volunteers == ("a1", "a3")


def test_every_volunteer_has_run_it_rejected_not_left_waiting():
    v = small_swarm({"a1": "o1", "a2": "o1", "a3": "o2", "a4": "o2"})
    h = v.add_hypothesis({"MATRIX_LR": "0.05"})
    for vid in ("a1", "a3", "a2", "a4"):
        small_swarm_run(v, vid, 0.9985, h.hypothesis_id)
    j = decisions.judge(v, h, SETTINGS)
    assert j.state == HypothesisState.REJECTED and j.requests == ()
    assert "every volunteer online that may run it has" in j.reason and j.evidence.z < SETTINGS.confirm_z
    assert f"pooled z = {decisions._floor2(j.evidence.z)} < {SETTINGS.confirm_z}" in j.reason


def test_a_replicate_waiting_for_a_second_owner_waits():
    v = small_swarm({"a1": "o1", "a2": "o1"})
    h = v.add_hypothesis({"MATRIX_LR": "0.05"})
    small_swarm_run(v, "a1", 0.99, h.hypothesis_id)
    small_swarm_run(v, "a2", 0.99, h.hypothesis_id)
    j = decisions.judge(v, h, SETTINGS)
    assert j.state == HypothesisState.REPLICATING and not j.confirmed
    (req,) = j.requests
    assert req.excluded_owners == ("o1",)  # independence first: it waits for another owner


def test_head_run_may_come_from_a_volunteer_that_ran_it_on_an_older_base():
    v = small_swarm({"a1": "o1", "a3": "o2"})
    h = v.add_hypothesis({"MATRIX_LR": "0.05"})
    small_swarm_run(v, "a1", 0.990, h.hypothesis_id)
    small_swarm_run(v, "a3", 0.990, h.hypothesis_id)
    v.add_commit("c1", {"MATRIX_LR": "0.04", "DEPTH": "9"})
    v.set_head("c1")
    j = decisions.judge(v, h, STRICT)
    assert j.state == HypothesisState.REPLICATING and "re-verifying" in j.reason
    (req,) = j.requests
    assert req.base_commit == "c1" and req.excluded_volunteers == () and req.excluded_owners == ()


def test_inconclusive_says_which_rule_held_it_back():
    v = small_swarm({f"a{i}": "o1" for i in range(6)})
    h = v.add_hypothesis({"MATRIX_LR": "0.05"})
    for i in range(6):
        small_swarm_run(v, f"a{i}", 0.99, h.hypothesis_id)
    j = decisions.judge(v, h, SETTINGS)
    assert j.state == HypothesisState.REJECTED and j.evidence.z >= SETTINGS.confirm_z
    # Strong numbers, one owner: the reason names the owner rule, not a z "below" the bar.
    assert "inconclusive after 6 runs" in j.reason and "of 1 owner(s) (needs 2 of 2)" in j.reason
    assert f"< {SETTINGS.confirm_z}" not in j.reason


def test_z_in_reasons_is_rounded_down():
    assert decisions._floor2(2.996) == "2.99" and decisions._floor2(-0.004) == "-0.01"
    assert decisions._floor2(3.0) == "3.00" and decisions._floor2(float("-inf")) == "-inf"


def test_runs_one_merge_behind_count_as_on_the_head(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    run(view, "b1", 1.290, h.hypothesis_id, kind=UnitKind.REPLICATE)
    view.add_commit("c1", {**view.constants("c0"), "WINDOW_PATTERN": '"L"'})
    view.add_merge(MergeRecord("c1", "c0", "other", "WINDOW_PATTERN"))
    view.set_head("c1")
    j = decisions.judge(view, h, SETTINGS.replace(verify_max_lag=1))
    assert j.state == HypothesisState.CONFIRMED and j.merge_onto == "c1"


def test_head_changing_the_same_constant_supersedes(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.06"})
    view.add_commit("c1", {**view.constants("c0"), "MATRIX_LR": "0.05"})
    view.set_head("c1")
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.SUPERSEDED and "MATRIX_LR" in j.reason
    same = view.add_hypothesis({"MATRIX_LR": "0.05"}, base_commit="c0")
    assert decisions.judge(view, same, SETTINGS).reason == "the head already has these values"


def test_stale_queued_units_are_cancelled_and_asked_again_on_the_head(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    unit = view.add_unit(UnitKind.REPLICATE, "gpu-b", "c0", h.hypothesis_id, 1.0, ("a1",), ("o1",))
    view.add_commit("c1", {**view.constants("c0"), "WINDOW_PATTERN": '"L"'})
    view.set_head("c1")
    assert [u.unit_id for u in decisions.stale_units(view, STRICT)] == [unit.unit_id]
    baselines(view, "c1")
    j = decisions.judge(view, h, STRICT)
    assert j.cancel_unit_ids == (unit.unit_id,)
    assert [r.base_commit for r in j.requests] == ["c1"]


def _new_head_with_depth_9(view: InMemoryView) -> None:
    """A later head that changed another constant, with its own baselines."""
    view.add_commit("c1", {**view.constants("c0"), "DEPTH": "9"})
    view.set_head("c1")
    baselines(view, "c1")


def test_the_same_change_on_an_earlier_base_joins_the_evidence(view):
    earlier = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.9985, earlier.hypothesis_id)  # about 1 sigma better: weakly better alone
    assert decisions.judge(view, earlier, SETTINGS).reason.startswith("weakly better")
    view.set_state(earlier.hypothesis_id, HypothesisState.REJECTED, "weakly better")
    _new_head_with_depth_9(view)
    again = view.add_hypothesis({"MATRIX_LR": "0.05"})  # the proposer brings it back on c1
    run(view, "a3", 0.9985, again.hypothesis_id, commit="c1")
    alone = decisions.judge(view, again, SETTINGS)
    assert alone.state == HypothesisState.REJECTED and alone.reason.startswith("weakly better")
    pooled = decisions.judge(view, again, POOLED)
    assert pooled.evidence.runs == 2 and pooled.evidence.z > alone.evidence.z
    assert {g.base_commit for g in pooled.evidence.groups} == {"c0", "c1"}
    assert pooled.state == HypothesisState.REPLICATING
    (req,) = pooled.requests
    # Replicates exclude whoever ran this hypothesis; the earlier runs only add evidence.
    assert req.kind == UnitKind.REPLICATE and req.excluded_volunteers == ("a3",) and req.base_commit == "c1"


def test_pooled_runs_of_the_same_change_can_confirm_it(view):
    earlier = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.996, earlier.hypothesis_id)
    run(view, "a3", 0.996, earlier.hypothesis_id, kind=UnitKind.REPLICATE)
    view.set_state(earlier.hypothesis_id, HypothesisState.REJECTED, "inconclusive")
    _new_head_with_depth_9(view)
    again = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "b2", 1.296, again.hypothesis_id, commit="c1")
    assert decisions.judge(view, again, SETTINGS).state == HypothesisState.PROMISING
    j = decisions.judge(view, again, POOLED)
    assert j.state == HypothesisState.CONFIRMED and j.merge_onto == "c1" and j.evidence.z >= POOLED.confirm_z
    assert len(j.evidence.result_ids) == 3


def test_a_different_step_or_a_merged_change_is_not_pooled(view):
    view.add_commit("c2", {**view.constants("c0"), "MATRIX_LR": "0.03"})
    baselines(view, "c2")
    other_step = view.add_hypothesis({"MATRIX_LR": "0.05"}, base_commit="c2")  # 0.03 -> 0.05
    run(view, "a1", 0.996, other_step.hypothesis_id, commit="c2")
    merged = view.add_hypothesis({"MATRIX_LR": "0.05"}, base_commit="c0")
    run(view, "a4", 0.996, merged.hypothesis_id)
    view.set_state(merged.hypothesis_id, HypothesisState.MERGED, "merged")
    _new_head_with_depth_9(view)
    again = view.add_hypothesis({"MATRIX_LR": "0.05"})  # 0.04 -> 0.05, as `merged` was
    run(view, "a3", 0.9985, again.hypothesis_id, commit="c1")
    j = decisions.judge(view, again, POOLED)
    assert j.evidence.runs == 1 and j.reason.startswith("weakly better")


def _merge(view: InMemoryView) -> MergeRecord:
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    view.add_commit("c1", {**view.constants("c0"), "MATRIX_LR": "0.05"})
    merge = MergeRecord("c1", "c0", h.hypothesis_id, h.title)
    view.add_merge(merge)
    view.set_head("c1")
    return merge


def test_revert_when_a_class_got_significantly_worse(view):
    merge = _merge(view)
    for v, x in (("a1", 0.999), ("a3", 1.001), ("b1", 1.310), ("b2", 1.312)):
        run(view, v, x, commit="c1")
    d = decisions.after_merge(view, merge, SETTINGS)
    assert d.revert and d.flagged == ("gpu-b",) and d.final
    shift = next(s for s in d.shifts if s.hardware_class == "gpu-b")
    assert shift.delta_bpb == pytest.approx(0.011) and shift.z >= SETTINGS.revert_z
    assert "gpu-b: baseline +0.011000 bpb worse" in d.reason
    flag_only = decisions.after_merge(view, merge, SETTINGS.replace(revert_enabled=False))
    assert not flag_only.revert and flag_only.flagged == ("gpu-b",)


def test_no_revert_when_no_class_got_worse(view):
    merge = _merge(view)
    run(view, "a1", 0.999, commit="c1")
    pending = decisions.after_merge(view, merge, SETTINGS)
    assert not pending.revert and set(pending.pending) == {"gpu-a", "gpu-b"} and not pending.final
    for v, x in (("a3", 0.998), ("b1", 1.301), ("b2", 1.299)):
        run(view, v, x, commit="c1")
    done = decisions.after_merge(view, merge, SETTINGS)
    assert not done.revert and done.final and done.flagged == ()


def test_revert_when_the_new_head_fails_on_a_class(view):
    merge = _merge(view)
    for v in ("b1", "b2", "b3"):
        run(view, v, 0.0, commit="c1", status=RunStatus.CRASH)
    d = decisions.after_merge(view, merge, SETTINGS)
    assert d.revert and d.flagged == ("gpu-b",) and "fails its baseline runs" in d.reason


def test_merged_runs_serve_as_the_new_heads_baseline(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    run(view, "a3", 0.991, h.hypothesis_id, kind=UnitKind.REPLICATE)
    view.add_commit("c1", {**view.constants("c0"), "MATRIX_LR": "0.05"})
    view.add_merge(MergeRecord("c1", "c0", h.hypothesis_id, h.title))
    view.set_head("c1")
    assert [s.val_bpb for s in decisions.baseline_values(view, "gpu-a", "c1", SETTINGS)] == [0.990, 0.991]
    assert decisions.baseline_values(view, "gpu-a", "c1", SETTINGS, fresh_only=True) == []
    reqs = decisions.plan_baselines(view, SETTINGS)
    # gpu-a has two runs of the merged code already: it needs only the rest.
    per_class = SETTINGS.baseline_replicates
    assert sorted(r.hardware_class for r in reqs) == ["gpu-a"] * (per_class - 2) + ["gpu-b"] * per_class


def test_plan_applies_in_order(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    p = decisions.plan(view, SETTINGS)
    assert [j.hypothesis_id for j in p.judgements] == [h.hypothesis_id]
    assert p.baseline_requests == ()
    assert [r.hypothesis_id for r in p.candidate_requests] == [h.hypothesis_id]


def ids(hypotheses) -> list[str]:
    return [h.hypothesis_id for h in hypotheses]


def test_to_rejudge_a_run_is_its_own_hypothesis_and_a_later_baseline_run_nobody(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    other = view.add_hypothesis({"MATRIX_LR": "0.03"})
    mine = run(view, "a1", 0.99, h.hypothesis_id)
    assert ids(decisions.to_rejudge(view, mine, SETTINGS)) == [h.hypothesis_id]
    # c0's baseline and gpu-a's noise were complete before this run: nothing was waiting for it
    # (h is judged again when its own next run reports).
    view.add_unit(UnitKind.REPLICATE, "gpu-b", "c0", h.hypothesis_id)
    base = run(view, "a3", 1.0)
    assert decisions.to_rejudge(view, base, SETTINGS) == []
    assert other.state == HypothesisState.QUEUED


def test_to_rejudge_the_run_that_completes_a_commits_baseline(view):
    view.add_commit("c1", {"DEPTH": "8", "MATRIX_LR": "0.045", "WINDOW_PATTERN": '"SSSL"'})
    view.set_head("c1")
    on_c1 = view.add_hypothesis({"MATRIX_LR": "0.05"}, base_commit="c1")
    on_c0 = view.add_hypothesis({"MATRIX_LR": "0.03"})
    other_class = view.add_hypothesis({"WINDOW_PATTERN": '"SL"'}, base_commit="c1")
    run(view, "a1", 0.99, on_c1.hypothesis_id, commit="c1")
    run(view, "a2", 0.99, on_c0.hypothesis_id, commit="c0")
    run(view, "b1", 1.29, other_class.hypothesis_id, commit="c1")
    first = run(view, "a3", 1.0, commit="c1")
    second = run(view, "a4", 1.0, commit="c1")
    third = run(view, "a3", 1.001, commit="c1")  # already in the view when the first two are judged
    view.add_unit(UnitKind.REPLICATE, "gpu-a", "c1", on_c1.hypothesis_id)  # what judging it asks for
    assert decisions.to_rejudge(view, first, SETTINGS) == []  # one run: c1 still waits
    assert ids(decisions.to_rejudge(view, second, SETTINGS)) == [on_c1.hypothesis_id]
    assert decisions.to_rejudge(view, third, SETTINGS) == []
    failed = run(view, "a4", 0.0, commit="c1", status=RunStatus.CRASH)
    assert decisions.to_rejudge(view, failed, SETTINGS) == []


def test_to_rejudge_wakes_a_hypothesis_that_waited_for_the_heads_baseline_runs(view):
    # Two runs at a modest z on the head, while two baseline runs of gpu-a are pending there:
    # judge asks for nothing until they report.
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    busy = view.add_hypothesis({"MATRIX_LR": "0.03"})
    run(view, "a1", 1.0 - 1.5 * SIGMA, h.hypothesis_id)
    run(view, "b2", 1.3 - 1.5 * SIGMA, h.hypothesis_id, kind=UnitKind.REPLICATE)
    run(view, "a2", 0.999, busy.hypothesis_id)
    view.add_unit(UnitKind.REPLICATE, "gpu-b", "c0", busy.hypothesis_id)  # busy has its own run pending
    first_unit = view.add_unit(UnitKind.BASELINE, "gpu-a", "c0")
    second_unit = view.add_unit(UnitKind.BASELINE, "gpu-a", "c0")
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.REPLICATING and not j.requests and "waiting for 2 more" in j.reason
    view.set_state(h.hypothesis_id, j.state, j.reason)
    view.set_state(busy.hypothesis_id, HypothesisState.REPLICATING, "one more replicate")
    assert not view.pending_units(hypothesis_id=h.hypothesis_id)
    first = view.add_result(first_unit.unit_id, "a3", RunMetrics(RunStatus.OK, val_bpb=1.0))
    assert decisions.to_rejudge(view, first, SETTINGS) == []  # one is still pending: h still waits
    second = view.add_result(second_unit.unit_id, "a4", RunMetrics(RunStatus.OK, val_bpb=1.001))
    # The last one in: h, with nothing of its own pending, is judged again and asks for its next run;
    # busy is left to its own pending run.
    assert ids(decisions.to_rejudge(view, second, SETTINGS)) == [h.hypothesis_id]
    j = decisions.judge(view, h, SETTINGS)
    assert j.state == HypothesisState.REPLICATING and j.requests
    # Off with on-demand baselines (judge then never waits for them): nobody.
    assert decisions.to_rejudge(view, second, SETTINGS.replace(baseline_on_demand=False)) == []


def test_one_baseline_run_wakes_at_most_wake_limit_waiting_hypotheses(view):
    waiting = []
    for i in range(decisions.WAKE_LIMIT + 4):
        h = view.add_hypothesis({"MATRIX_LR": f"0.0{50 + i}"})
        run(view, "a1", 0.999, h.hypothesis_id)
        view.set_state(h.hypothesis_id, HypothesisState.REPLICATING, "waiting for 1 more")
        waiting.append(h.hypothesis_id)
    unit = view.add_unit(UnitKind.BASELINE, "gpu-a", "c0")
    last = view.add_result(unit.unit_id, "a3", RunMetrics(RunStatus.OK, val_bpb=1.0))
    # The oldest WAKE_LIMIT; the others on the next baseline run (each woken one may ask for one).
    assert ids(decisions.to_rejudge(view, last, SETTINGS)) == waiting[: decisions.WAKE_LIMIT]


def test_to_rejudge_the_run_that_completes_a_classs_noise_estimate():
    fresh = InMemoryView("c0", {"DEPTH": "8", "MATRIX_LR": "0.04", "WINDOW_PATTERN": '"SSSL"'})
    for vid, (owner, cls) in VOLUNTEERS.items():
        fresh.add_volunteer(vid, owner, cls)
    fresh.add_commit("c1", {"DEPTH": "8", "MATRIX_LR": "0.045", "WINDOW_PATTERN": '"SSSL"'})
    early = fresh.add_hypothesis({"MATRIX_LR": "0.05"})
    later = fresh.add_hypothesis({"MATRIX_LR": "0.03"}, base_commit="c1")
    run(fresh, "a1", 0.99, early.hypothesis_id, commit="c0")
    run(fresh, "a2", 0.98, later.hypothesis_id, commit="c1")
    values = [1.0, 1.002, 0.998, 1.0, 1.001, 0.999, 1.0]  # 7 runs on c0: 6 dof, min_sigma_dof
    scopes = [decisions.to_rejudge(fresh, run(fresh, ["a3", "a4"][i % 2], v, commit="c0"), SETTINGS)
              for i, v in enumerate(values)]
    assert scopes[:-1] == [[]] * 6  # the class's noise is unmeasured: nothing is judgeable yet
    # The seventh measures it: every open hypothesis with runs on the class, whatever its commit.
    assert sorted(ids(scopes[-1])) == sorted([early.hypothesis_id, later.hypothesis_id])


def test_revoked_results_stop_counting(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 0.990, h.hypothesis_id)
    run(view, "b4", 1.290, h.hypothesis_id, kind=UnitKind.REPLICATE)
    assert decisions.judge(view, h, SETTINGS).confirmed
    view.revoke("o5")
    j = decisions.judge(view, h, SETTINGS)
    assert not j.confirmed and j.evidence.owners == {"o1"}


def test_terminal_hypotheses_are_left_alone(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    view.set_state(h.hypothesis_id, HypothesisState.MERGED, "merged as c9")
    j = decisions.judge(view, view.hypothesis(h.hypothesis_id), SETTINGS)
    assert j.state == HypothesisState.MERGED and j.requests == () and j.reason == "merged as c9"
    assert view.unit(view.add_unit(UnitKind.BASELINE, "gpu-a", "c0").unit_id).state == UnitState.QUEUED


def test_reasons_fit_the_store():
    j = decisions.Judgement("h", HypothesisState.FAILED, "x" * 5000)
    assert len(j.reason.encode()) <= 1_900 and j.reason.endswith("...")


# -- the empirical-Bayes route (fdr_alpha) ---------------------------------------------------------

EB_SETTINGS = SETTINGS.replace(fdr_alpha=0.03, fdr_min_z=2.0, fdr_min_observations=40)


def swarm_history(view: InMemoryView, effects_sigma: list[float]) -> None:
    """Rejected hypotheses with one first run each on gpu-a: what the swarm tested before."""
    for i, effect in enumerate(effects_sigma):
        h = view.add_hypothesis({"MATRIX_LR": f"0.0{i + 10}"})
        run(view, ["a1", "a3", "a4", "a2"][i % 4], 1.0 - effect * SIGMA, h.hypothesis_id)
        view.set_state(h.hypothesis_id, HypothesisState.REJECTED, "history")


def moderate_win(view: InMemoryView):
    """Two runs of two owners, each 2.1 sigma better: pooled z between 2 and confirm_z."""
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    run(view, "a1", 1.0 - 2.1 * SIGMA, h.hypothesis_id)
    run(view, "b1", 1.3 - 2.1 * SIGMA, h.hypothesis_id, kind=UnitKind.REPLICATE)
    return h


def test_fdr_route_confirms_a_moderate_win_where_real_wins_are_common(view):
    swarm_history(view, [5.0, -3.0] * 30)  # half of what the swarm tests is a clear win
    h = moderate_win(view)
    strict = decisions.judge(view, h, SETTINGS)
    assert EB_SETTINGS.fdr_min_z <= strict.evidence.z < SETTINGS.confirm_z and not strict.confirmed
    assert decisions.judge(view, h, EB_SETTINGS).confirmed


def test_fdr_route_stays_strict_where_changes_are_noise(view):
    swarm_history(view, [-1.0, -0.5, 0.0, 0.5, 1.0] * 12)  # nothing real: only noise-sized effects
    j = decisions.judge(view, moderate_win(view), EB_SETTINGS)
    assert not j.confirmed and j.state == HypothesisState.REPLICATING


def test_fdr_route_needs_enough_first_runs(view):
    swarm_history(view, [5.0, -3.0] * 10)  # 20 < fdr_min_observations
    assert not decisions.judge(view, moderate_win(view), EB_SETTINGS).confirmed


NEAR_MISS = SETTINGS  # on by default: extend_z 2.3, extended_max_samples 10
NO_EXTENSION = SETTINGS.replace(extend_z=0.0)


def near_miss_runs(view: InMemoryView, hypothesis_id: str, count: int, delta: float) -> None:
    """`count` runs of a real but modest improvement, over both classes and five owners."""
    for i in range(count):
        volunteer = ["a1", "b1", "a3", "b2", "a4", "b3", "a2", "b4"][i % 8]
        base = 1.0 if volunteer.startswith("a") else 1.3
        run(view, volunteer, base - delta + (0.0003 if i % 2 else -0.0003), hypothesis_id, kind=UnitKind.REPLICATE)


def test_a_near_miss_at_max_samples_is_rejected_without_the_extension(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    near_miss_runs(view, h.hypothesis_id, 6, 1.5 * SIGMA)
    j = decisions.judge(view, h, NO_EXTENSION)
    assert NEAR_MISS.extend_z <= j.evidence.z < SETTINGS.confirm_z  # the premise: close, not there
    assert j.state == HypothesisState.REJECTED and j.reason.startswith("inconclusive after 6 runs")


def test_a_near_miss_keeps_replicating_up_to_the_extended_limit(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    near_miss_runs(view, h.hypothesis_id, 6, 1.5 * SIGMA)
    j = decisions.judge(view, h, NEAR_MISS)
    assert j.state == HypothesisState.REPLICATING and not j.confirmed
    (req,) = j.requests
    assert req.kind == UnitKind.REPLICATE
    assert "one more replicate" in j.reason
    # Four more runs that bear it out reach the bar: the near miss becomes a merge.
    near_miss_runs(view, h.hypothesis_id, 4, 2.5 * SIGMA)
    j = decisions.judge(view, h, NEAR_MISS)
    assert j.confirmed and j.evidence.runs == 10


def test_the_extension_ends_at_its_limit_and_spares_weak_evidence(view):
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    near_miss_runs(view, h.hypothesis_id, 10, 0.6 * SIGMA)
    j = decisions.judge(view, h, NEAR_MISS)
    assert j.evidence.z < NEAR_MISS.confirm_z
    assert j.state == HypothesisState.REJECTED and j.reason.startswith("inconclusive after 10 runs")
    weak = view.add_hypothesis({"MATRIX_LR": "0.06"})
    near_miss_runs(view, weak.hypothesis_id, 6, 0.7 * SIGMA)
    j = decisions.judge(view, weak, NEAR_MISS)
    assert j.evidence.z < NEAR_MISS.extend_z  # below the extension's bar: rejected at max_samples
    assert j.state == HypothesisState.REJECTED and j.reason.startswith("inconclusive after 6 runs")
