"""Statistics of the acceptance policy, checked against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from coordinator.policy.statistics import (
    Sample,
    SampleGroup,
    estimate_sigma,
    fit_effect_prior,
    normalize,
    one_sided_p,
    pooled_evidence,
    pooled_spread,
    shift_z,
    student_t_sf,
    t_to_z,
    without_owner,
)
from coordinator.store.types import ClassStats


def _group(
    cls: str, mean: float, n: int, sigma: float, values: list[tuple[float, str, str]], dof: int = 0
) -> SampleGroup:
    return SampleGroup(cls, "c0", mean, n, sigma, tuple(Sample(v, vol, own) for v, vol, own in values), dof)


def test_pooled_spread_uses_within_group_deviations_only():
    # Group 1: mean 1.1, squares 0.01 + 0.01; group 2: mean 2.2, squares 0.04 + 0.04 + 0.
    sigma, dof = pooled_spread([[1.0, 1.2], [2.0, 2.4, 2.2], [5.0]])
    assert dof == 3
    assert sigma == pytest.approx(math.sqrt(0.10 / 3))


def test_pooled_spread_of_nothing():
    assert pooled_spread([[1.0], []]) == (0.0, 0)


def test_estimate_sigma_prior_until_enough_dof_then_measured_with_floor():
    few = estimate_sigma([[1.0, 1.2]], prior_sigma=0.05, min_dof=2)
    assert few.from_prior and few.sigma == 0.05 and few.dof == 1
    enough = estimate_sigma([[1.0, 1.2], [2.0, 2.4, 2.2]], prior_sigma=0.05, min_dof=2)
    assert not enough.from_prior and enough.sigma == pytest.approx(math.sqrt(0.10 / 3))
    identical = estimate_sigma([[1.0, 1.0, 1.0]], prior_sigma=0.05, min_dof=2, floor=1e-4)
    assert identical.sigma == 1e-4 and not identical.from_prior


def test_normalize_positive_is_better():
    stats = ClassStats("gpu", "c0", samples=4, mean_val_bpb=1.0, sigma=0.01)
    score = normalize(0.99, stats)
    assert score.has_baseline
    assert score.delta_bpb == pytest.approx(0.01)
    assert score.delta_percent == pytest.approx(1.0)
    assert score.delta_sigma == pytest.approx(1.0)
    assert score.baseline_val_bpb == 1.0 and score.baseline_samples == 4 and score.class_sigma == 0.01
    worse = normalize(1.02, stats)
    assert worse.delta_sigma == pytest.approx(-2.0)


def test_normalize_without_enough_baseline():
    assert not normalize(0.99, None).has_baseline
    thin = normalize(0.99, ClassStats("gpu", "c0", 1, 1.0, 0.01), min_samples=2)
    assert not thin.has_baseline and thin.baseline_samples == 1


def test_pooled_evidence_one_group():
    # delta = 1.0 - 0.985 = 0.015; variance = 0.01^2 (1/2 + 1/4) = 7.5e-5; z = 0.015 / 0.00866 = 1.732
    ev = pooled_evidence([_group("a", 1.0, 4, 0.01, [(0.98, "v1", "o1"), (0.99, "v2", "o2")])])
    assert ev.runs == 2
    assert ev.delta_bpb == pytest.approx(0.015)
    assert ev.se_bpb == pytest.approx(math.sqrt(7.5e-5))
    assert ev.z == pytest.approx(0.015 / math.sqrt(7.5e-5))
    assert ev.z == pytest.approx(1.7320508, rel=1e-6)
    assert ev.volunteers == {"v1", "v2"} and ev.owners == {"o1", "o2"}
    assert ev.effect_sigma == pytest.approx(1.5)


def test_pooled_evidence_combines_classes_by_inverse_variance():
    a = _group("a", 1.0, 4, 0.01, [(0.98, "v1", "o1"), (0.99, "v2", "o2")])  # delta .015, var 7.5e-5
    b = _group("b", 2.0, 2, 0.02, [(1.97, "v3", "o3")])  # delta .03, var 4e-4 * 1.5 = 6e-4
    ev = pooled_evidence([a, b])
    w_a, w_b = 1 / 7.5e-5, 1 / 6e-4
    assert ev.delta_bpb == pytest.approx((w_a * 0.015 + w_b * 0.03) / (w_a + w_b))
    assert ev.delta_bpb == pytest.approx(0.0166667, rel=1e-5)
    assert ev.se_bpb == pytest.approx(1 / math.sqrt(15000))
    assert ev.z == pytest.approx(2.0412415, rel=1e-6)
    assert ev.delta_bpb_by_class() == pytest.approx({"a": 0.015, "b": 0.03})
    assert ev.runs == 3 and len(ev.lines()) == 3
    assert "pooled: 3 run(s) from 3 volunteer(s) of 3 owner(s)" in ev.lines()[-1]


def test_clipping_bounds_one_number():
    honest = _group("a", 1.0, 4, 0.01, [(0.5, "liar", "o1")])
    ev = pooled_evidence([honest], clip_sigma=4.0)
    assert ev.delta_bpb == pytest.approx(0.04)  # 0.5 is clipped to 1.0 - 4 * 0.01
    assert ev.reported_delta_bpb == pytest.approx(0.5)
    assert pooled_evidence([honest]).delta_bpb == pytest.approx(0.5)


def test_without_owner_drops_that_owners_runs():
    g = _group("a", 1.0, 4, 0.01, [(0.98, "v1", "o1"), (0.97, "v2", "o1"), (0.99, "v3", "o2")])
    rest = without_owner([g], "o1")
    assert [s.volunteer_id for s in rest[0].samples] == ["v3"]
    assert without_owner([g], "o2")[0].samples[0].owner == "o1"
    assert without_owner([_group("a", 1.0, 4, 0.01, [(0.98, "v1", "o1")])], "o1") == []


def test_empty_evidence():
    ev = pooled_evidence([])
    assert ev.runs == 0 and ev.z == 0.0


def test_student_t_tails_match_closed_forms():
    assert student_t_sf(1.0, 1) == pytest.approx(0.25)  # Cauchy
    assert student_t_sf(2.0, 2) == pytest.approx(0.5 - 1 / math.sqrt(6))  # t_2 closed form
    assert student_t_sf(2.0, 10) == pytest.approx(0.036694, abs=1e-6)
    assert student_t_sf(-2.0, 10) == pytest.approx(1 - 0.036694, abs=1e-6)
    assert student_t_sf(3.0, 0) == pytest.approx(one_sided_p(3.0))
    assert one_sided_p(3.0) == pytest.approx(0.0013499, rel=1e-4)


def test_t_to_z_keeps_false_positive_rate():
    # 2.0 on 10 dof has the tail of z = 1.790; sign is kept; no dof means no change.
    assert t_to_z(2.0, 10) == pytest.approx(1.7904, abs=1e-3)
    assert t_to_z(-2.0, 10) == pytest.approx(-1.7904, abs=1e-3)
    assert t_to_z(2.0, 0) == 2.0
    # With 4 dof a t of 7.17 is only as rare as z ~ 3.09 (p = 0.001).
    assert t_to_z(7.173, 4) == pytest.approx(3.09, abs=0.01)
    assert abs(t_to_z(3.0, 10_000) - 3.0) < 0.01


def test_evidence_uses_t_with_sigma_dof():
    g = _group("a", 1.0, 4, 0.01, [(0.98, "v1", "o1"), (0.99, "v2", "o2")], dof=5)
    ev = pooled_evidence([g])
    assert ev.z_known_sigma == pytest.approx(1.7320508, rel=1e-6)
    assert ev.z == pytest.approx(t_to_z(1.7320508, 5), rel=1e-6)
    assert ev.z < ev.z_known_sigma and ev.sigma_dof == 5


def test_shift_z_positive_when_worse():
    # mean 1.03 vs 1.0; se = 0.01 * sqrt(1/2 + 1/2) = 0.01 -> z = 3
    assert shift_z([1.02, 1.04], [1.0, 1.0], 0.01) == pytest.approx(3.0)
    assert shift_z([0.98], [1.0, 1.0, 1.0], 0.01) < 0
    assert shift_z([], [1.0], 0.01) == 0.0


def test_effect_prior_rates_nulls_and_clear_wins():
    """A swarm where 10% of changes are 4-sigma wins, 30% do nothing, 60% hurt: the fitted
    distribution lets a clear win through on two runs and keeps nulls at a small rate."""
    rng = random.Random(7)
    first_se = math.sqrt(1.0 + 1.0 / 2)  # one run against a 2-run baseline
    truth = [4.0] * 10 + [0.0] * 30 + [-3.0] * 60
    prior = fit_effect_prior([(rng.choice(truth) + rng.gauss(0.0, first_se), first_se) for _ in range(200)])
    assert prior.observations == 200 and math.fsum(prior.weights) == pytest.approx(1.0)
    se = math.sqrt(1.0 / 2 + 1.0 / 2)  # two runs against a 2-run baseline

    def passes(effect: float) -> bool:
        estimate = effect + rng.gauss(0.0, se)
        return estimate / se >= 2.0 and prior.not_better_probability(estimate, se) <= 0.03

    nulls = sum(passes(0.0) for _ in range(2000)) / 2000
    wins = sum(passes(4.0) for _ in range(2000)) / 2000
    assert nulls < 0.01 and wins > 0.7
    assert prior.not_better_probability(1.0, se) > prior.not_better_probability(3.0, se)


def test_effect_prior_of_pure_noise_is_strict():
    rng = random.Random(3)
    first_se = math.sqrt(1.5)
    prior = fit_effect_prior([(rng.gauss(0.0, first_se), first_se) for _ in range(200)])
    assert prior.not_better_probability(2.5, 1.0) > 0.1  # z = 2.5 is not enough when nothing is real
    assert fit_effect_prior([]).observations == 0
