"""Class noise, normalized scores and the pooled-evidence test. Pure arithmetic, standard library only.

Conventions: a *delta* is baseline minus candidate val_bpb, so positive means better (lower bpb);
z values are one-sided in that direction. Sigma is the run-to-run spread of val_bpb for identical
code on one hardware class, pooled over the within-commit spread of that class's baseline runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from coordinator.store.types import ClassStats, NormalizedScore

_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True)
class SigmaEstimate:
    sigma: float
    dof: int  # degrees of freedom of the measured spread (0: none)
    from_prior: bool  # true while the measured spread has fewer than min_dof dof
    measured_sigma: float = 0.0  # the plain pooled estimate (0 when dof is 0)


KNOWN_SIGMA_DOF = 0  # a sigma taken as exact (the prior, or a caller's known value)


def one_sided_p(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 1.0 - _STANDARD_NORMAL.cdf(z) if z < 5 else _normal_tail(z)


def _normal_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    return _STANDARD_NORMAL.inv_cdf(p)


def student_t_sf(t: float, dof: int) -> float:
    """P(T >= t) for Student's t with `dof` degrees of freedom (dof 0: the normal limit)."""
    if dof <= 0:
        return _normal_tail(t)
    tail = 0.5 * _incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_to_z(t: float, dof: int) -> float:
    """The normal deviate with the same one-sided tail as t on `dof` degrees of freedom.

    Sigma estimated from few runs makes t heavier-tailed than z: with 4 dof, t = 7.2 is as rare
    as z = 3. Thresholds stay in z units, so their false-positive rates hold whatever the dof.
    """
    if dof <= 0 or not math.isfinite(t):
        return t
    p = student_t_sf(abs(t), dof)
    if p <= 0.0:
        return math.copysign(38.0, t)
    z = -normal_quantile(p) if p < 0.5 else 0.0
    return math.copysign(z, t)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def pooled_spread(groups: Iterable[Sequence[float]]) -> tuple[float, int]:
    """Pooled within-group standard deviation and its degrees of freedom (sum of n_i - 1).

    Each group holds runs of identical code (one class, one commit), so commit-to-commit
    differences do not inflate the noise estimate. Groups of one run contribute nothing.
    """
    squares = 0.0
    dof = 0
    for values in groups:
        n = len(values)
        if n < 2:
            continue
        mean = math.fsum(values) / n
        squares += math.fsum((v - mean) ** 2 for v in values)
        dof += n - 1
    if dof == 0:
        return 0.0, 0
    return math.sqrt(squares / dof), dof


def estimate_sigma(
    groups: Iterable[Sequence[float]], prior_sigma: float, *, min_dof: int, floor: float = 0.0
) -> SigmaEstimate:
    """A class's noise: the prior until the groups give min_dof, then the pooled spread.

    The uncertainty of a measured sigma is not hidden in an inflated estimate: its dof travel
    with it and tests convert their t statistics with `t_to_z`.
    """
    measured, dof = pooled_spread(groups)
    if dof < min_dof:
        return SigmaEstimate(max(prior_sigma, floor), dof, True, measured)
    return SigmaEstimate(max(measured, floor), dof, False, measured)


def raised_towards_pool(own: SigmaEstimate, estimates: Iterable[SigmaEstimate], pool_dof: float) -> SigmaEstimate:
    """`own` raised, never lowered, to the blend of its variance (weighted by its dof) and the
    dof-weighted pooled variance of the measured `estimates` (weighted as `pool_dof`); its dof
    stay its own. Unchanged below two measured estimates, for a prior, or with pool_dof 0.

    Every test on a class shares its estimate: one 6-dof estimate at half the real noise doubles
    every z on the class at once, which the t conversion of each single test does not cover."""
    measured = [e for e in estimates if not e.from_prior]
    if pool_dof <= 0 or own.from_prior or len(measured) < 2:
        return own
    pooled = math.fsum(e.dof * e.sigma**2 for e in measured) / sum(e.dof for e in measured)
    blended = math.sqrt((own.dof * own.sigma**2 + pool_dof * pooled) / (own.dof + pool_dof))
    return dataclasses.replace(own, sigma=blended) if blended > own.sigma else own


def normalize(val_bpb: float, stats: ClassStats | None, min_samples: int = 1) -> NormalizedScore:
    """A result against its class baseline on the same commit; positive deltas are better."""
    if stats is None or stats.samples < min_samples or stats.mean_val_bpb <= 0 or stats.sigma <= 0:
        return NormalizedScore(
            has_baseline=False,
            baseline_samples=0 if stats is None else stats.samples,
            class_sigma=0.0 if stats is None else stats.sigma,
        )
    delta = stats.mean_val_bpb - val_bpb
    return NormalizedScore(
        has_baseline=True,
        baseline_val_bpb=stats.mean_val_bpb,
        delta_bpb=delta,
        delta_percent=100.0 * delta / stats.mean_val_bpb,
        delta_sigma=delta / stats.sigma,
        class_sigma=stats.sigma,
        baseline_samples=stats.samples,
    )


@dataclass(frozen=True)
class Sample:
    """One counting run of a hypothesis."""

    val_bpb: float
    volunteer_id: str
    owner: str
    result_id: str = ""


@dataclass(frozen=True)
class SampleGroup:
    """Runs of one hypothesis on one class and base commit, with that pair's baseline."""

    hardware_class: str
    base_commit: str
    baseline_mean: float
    baseline_samples: int
    sigma: float
    samples: tuple[Sample, ...]
    sigma_dof: int = KNOWN_SIGMA_DOF  # dof of the sigma estimate (0: taken as exact)


@dataclass(frozen=True)
class GroupEvidence:
    hardware_class: str
    base_commit: str
    runs: int
    delta_bpb: float  # baseline mean minus mean of the (clipped) runs
    se_bpb: float
    reported_delta_bpb: float  # the same without clipping: what the runs said
    z: float  # t statistic converted to z (see t_to_z)
    sigma: float
    baseline_val_bpb: float
    baseline_samples: int


@dataclass(frozen=True)
class Evidence:
    """Pooled evidence over groups (inverse-variance weighted, a fixed-effect combination)."""

    runs: int = 0
    delta_bpb: float = 0.0  # from runs clipped to +- clip_sigma: what the test uses
    reported_delta_bpb: float = 0.0  # the same weighting without clipping
    se_bpb: float = math.inf
    z: float = 0.0  # one-sided, t converted to z with the smallest sigma dof involved
    z_known_sigma: float = 0.0  # the same test if the sigmas were exact
    sigma_dof: int = KNOWN_SIGMA_DOF
    effect_sigma: float = 0.0  # weighted mean of per-group delta/sigma: size, not significance
    volunteers: frozenset[str] = frozenset()
    owners: frozenset[str] = frozenset()
    result_ids: tuple[str, ...] = ()
    groups: tuple[GroupEvidence, ...] = field(default_factory=tuple)

    @property
    def p_value(self) -> float:
        return one_sided_p(self.z)

    def delta_bpb_by_class(self) -> dict[str, float]:
        """Per class, the weighted reported delta over its groups (commit messages, leaderboards)."""
        sums: dict[str, tuple[float, float]] = {}
        for g in self.groups:
            weight = 1.0 / (g.se_bpb**2)
            total, weights = sums.get(g.hardware_class, (0.0, 0.0))
            sums[g.hardware_class] = (total + weight * g.reported_delta_bpb, weights + weight)
        return {c: total / weights for c, (total, weights) in sorted(sums.items())}

    def lines(self) -> list[str]:
        """Human-readable evidence, one line per class and base, then the pooled line."""
        out = [
            f"{g.hardware_class} @ {g.base_commit[:10]}: {g.runs} run(s), delta {g.reported_delta_bpb:+.6f} bpb "
            f"({100.0 * g.reported_delta_bpb / g.baseline_val_bpb:+.3f}%, {g.reported_delta_bpb / g.sigma:+.2f} sigma, "
            f"sigma {g.sigma:.6f}, baseline {g.baseline_val_bpb:.6f} over {g.baseline_samples} runs)"
            for g in self.groups
        ]
        out.append(
            f"pooled: {self.runs} run(s) from {len(self.volunteers)} volunteer(s) of {len(self.owners)} "
            f"owner(s), delta {self.reported_delta_bpb:+.6f} +- {self.se_bpb:.6f} bpb, z = {self.z:.2f} "
            f"(one-sided p = {self.p_value:.2g})"
        )
        return out


def pooled_evidence(groups: Sequence[SampleGroup], clip_sigma: float = math.inf) -> Evidence:
    """Combine a hypothesis's runs into one z against the class baselines.

    Within a group the runs share one baseline mean, so the group's delta has variance
    sigma^2 (1/k + 1/n); groups are independent and combined with weights 1/variance. Each run is
    first clipped to baseline mean +- clip_sigma * sigma, so no single number (honest outlier or
    forged report) can move the evidence by more than a bounded amount.
    """
    weight_sum = 0.0
    weighted_delta = 0.0
    weighted_reported = 0.0
    weighted_effect = 0.0
    parts: list[GroupEvidence] = []
    volunteers: set[str] = set()
    owners: set[str] = set()
    result_ids: list[str] = []
    dofs: list[int] = []
    runs = 0
    for group in groups:
        if not group.samples or group.baseline_samples < 1 or group.sigma <= 0:
            continue
        low = group.baseline_mean - clip_sigma * group.sigma
        high = group.baseline_mean + clip_sigma * group.sigma
        clipped = [min(max(s.val_bpb, low), high) for s in group.samples]
        k = len(clipped)
        delta = group.baseline_mean - math.fsum(clipped) / k
        reported = group.baseline_mean - math.fsum(x.val_bpb for x in group.samples) / k
        variance = group.sigma**2 * (1.0 / k + 1.0 / group.baseline_samples)
        se = math.sqrt(variance)
        parts.append(
            GroupEvidence(
                hardware_class=group.hardware_class,
                base_commit=group.base_commit,
                runs=k,
                delta_bpb=delta,
                se_bpb=se,
                reported_delta_bpb=reported,
                z=t_to_z(delta / se, group.sigma_dof),
                sigma=group.sigma,
                baseline_val_bpb=group.baseline_mean,
                baseline_samples=group.baseline_samples,
            )
        )
        weight_sum += 1.0 / variance
        weighted_delta += delta / variance
        weighted_reported += reported / variance
        weighted_effect += (delta / group.sigma) / variance
        runs += k
        dofs.append(group.sigma_dof)
        for s in group.samples:
            volunteers.add(s.volunteer_id)
            owners.add(s.owner)
            if s.result_id:
                result_ids.append(s.result_id)
    if weight_sum == 0.0:
        return Evidence()
    delta = weighted_delta / weight_sum
    se = 1.0 / math.sqrt(weight_sum)
    # The weakest sigma estimate sets the tails (conservative when classes are mixed).
    dof = KNOWN_SIGMA_DOF if all(d == KNOWN_SIGMA_DOF for d in dofs) else min(d for d in dofs if d > 0)
    return Evidence(
        runs=runs,
        delta_bpb=delta,
        reported_delta_bpb=weighted_reported / weight_sum,
        se_bpb=se,
        z=t_to_z(delta / se, dof),
        z_known_sigma=delta / se,
        sigma_dof=dof,
        effect_sigma=weighted_effect / weight_sum,
        volunteers=frozenset(volunteers),
        owners=frozenset(owners),
        result_ids=tuple(result_ids),
        groups=tuple(parts),
    )


def without_owner(groups: Sequence[SampleGroup], owner: str) -> list[SampleGroup]:
    """The same groups with one owner's runs removed (for the leave-one-owner-out check)."""
    out: list[SampleGroup] = []
    for group in groups:
        kept = tuple(s for s in group.samples if s.owner != owner)
        if kept:
            out.append(
                SampleGroup(
                    group.hardware_class,
                    group.base_commit,
                    group.baseline_mean,
                    group.baseline_samples,
                    group.sigma,
                    kept,
                    group.sigma_dof,
                )
            )
    return out


def shift_z(
    new_values: Sequence[float], old_values: Sequence[float], sigma: float, sigma_dof: int = KNOWN_SIGMA_DOF
) -> float:
    """How far the mean of new_values lies above (worse than) old_values, as a one-sided z."""
    if not new_values or not old_values or sigma <= 0:
        return 0.0
    diff = math.fsum(new_values) / len(new_values) - math.fsum(old_values) / len(old_values)
    return t_to_z(diff / (sigma * math.sqrt(1.0 / len(new_values) + 1.0 / len(old_values))), sigma_dof)


# -- empirical Bayes: how likely a change is not an improvement ------------------------------------

PRIOR_GRID_STEP = 0.5  # sigma units between the support points of the fitted effect distribution
PRIOR_GRID_LIMIT = 12.0  # the fitted effects span +- this many sigmas
_PRIOR_ITERATIONS = 60


@dataclass(frozen=True)
class EffectPrior:
    """The distribution of true effects (sigma units, positive = better) among the changes a
    swarm tests, fitted to their first runs: support points and their weights."""

    support: tuple[float, ...]
    weights: tuple[float, ...]
    observations: int

    def not_better_probability(self, estimate: float, se: float) -> float:
        """P(true effect <= 0 | an estimate with standard error se), both in sigma units."""
        if se <= 0 or not math.isfinite(estimate):
            return 0.0 if estimate > 0 else 1.0
        worse = total = 0.0
        for point, weight in zip(self.support, self.weights, strict=True):
            if weight <= 0.0:
                continue
            u = (estimate - point) / se
            likelihood = weight * math.exp(-0.5 * u * u)
            total += likelihood
            if point <= 0.0:
                worse += likelihood
        return worse / total if total > 0 else 1.0


def fit_effect_prior(observations: Sequence[tuple[float, float]]) -> EffectPrior:
    """The effect distribution that best explains noisy measurements (estimate, se) of many
    changes: a nonparametric maximum-likelihood fit on a grid (EM). Measurements are rounded
    (0.05 sigma) and memoized, so refitting on the same runs costs nothing."""
    rounded = tuple(
        sorted(
            (round(min(max(e, -PRIOR_GRID_LIMIT), PRIOR_GRID_LIMIT) * 20) / 20, round(s * 20) / 20)
            for e, s in observations
        )
    )
    return _fit_effect_prior(rounded)


@functools.lru_cache(maxsize=256)
def _fit_effect_prior(observations: tuple[tuple[float, float], ...]) -> EffectPrior:
    steps = int(round(PRIOR_GRID_LIMIT / PRIOR_GRID_STEP))
    support = tuple(k * PRIOR_GRID_STEP for k in range(-steps, steps + 1))
    if not observations:
        return EffectPrior(support, tuple(1.0 / len(support) for _ in support), 0)
    counts: dict[tuple[float, float], int] = {}
    for obs in observations:
        counts[obs] = counts.get(obs, 0) + 1
    rows = []
    for (estimate, se), count in counts.items():
        se = max(se, 0.05)
        rows.append((count, [math.exp(-0.5 * ((estimate - p) / se) ** 2) for p in support]))
    # EM from a narrow start (most changes do about nothing): with a bounded number of
    # iterations the fit widens only where the runs demand it, which errs on the strict side.
    start = [math.exp(-0.5 * p * p) for p in support]
    weights = [w / math.fsum(start) for w in start]
    n = len(observations)
    for _ in range(_PRIOR_ITERATIONS):
        new = [0.0] * len(support)
        for count, likelihood in rows:
            mix = math.fsum(w * lk for w, lk in zip(weights, likelihood, strict=True))
            if mix <= 0.0:
                continue
            scale = count / mix
            for j, (w, lk) in enumerate(zip(weights, likelihood, strict=True)):
                new[j] += w * lk * scale
        weights = [w / n for w in new]
    return EffectPrior(support, tuple(weights), n)


def sigma_units(evidence: Evidence) -> tuple[float, float]:
    """The pooled effect in sigma units and its standard error, scaled so their ratio is the
    evidence's z (the t-to-z conversion carries over: an estimated sigma is not taken as exact)."""
    weight_sum = 0.0
    for g in evidence.groups:
        weight_sum += (g.sigma / g.se_bpb) ** 2
    if weight_sum <= 0.0:
        return 0.0, math.inf
    se = 1.0 / math.sqrt(weight_sum)
    return evidence.z * se, se
