"""A response surface over every measured change, and the joint move it suggests.

The statistical policy needs z = 3 to merge, so it collects sub-sigma steps near the optimum
badly one at a time, while the one-machine loop keeps them for free. A joint move adds many such
steps up into one change large enough to confirm.

The model is additive: val_bpb = offset + sum over constants of a curve L_k, quadratic in a
transformed coordinate (log for rates, sizes and 1 - beta, linear for fractions; one value per
choice for strings and booleans). Coordinates are in steps (x1.25 for log axes, a doubling for
batch sizes, the constant's own step for fractions) and centred on the head. A measured change
from `before` to `after` with improvement y (positive = better: its unclipped delta in bpb over
one reference sigma, the median class sigma of recent changes) is one equation

    y = L(before) - L(after) + offset(its base) + noise,

so class offsets cancel and every change measured on any head, rejected or not, counts. The
per-base offset absorbs the error of the baseline (or lucky best run) every change on one base
was compared with; it is profiled out, so the system to solve has one row per curve parameter.
Ridge terms keep curves that few changes touch flat. Pure Python: tens of parameters. The fit is
memoized on its inputs, which leaves every function here a function of its arguments.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator.policy.literals import Value, constants_key, round_significant, same_value

if TYPE_CHECKING:  # the proposer imports this module
    from coordinator.policy.proposer import ConstantSpec

LOG_STEP = math.log(1.25)  # one step on a log axis
RIDGE = 0.5  # pseudo-observations of a flat curve behind every curve parameter
OFFSET_RIDGE = 3.0  # a baseline mean of ~3 runs: its error has variance 1/3 in sigma units
MIN_ROWS_PER_PARAMETER = 2  # fewer measured changes than this per parameter: no fit
FIT_WINDOW = 1500  # newest measured changes fitted (a fit of this many takes about 20 ms)
EXTRAPOLATION_STEPS = 1.0  # targets stay within the measured range plus this many steps
PART_MIN_GAIN = 0.25  # sigma: a constant joins a joint move for at least this predicted gain ...
PART_MIN_Z = 1.0  # ... and this many standard errors of it


@dataclass(frozen=True)
class JointMove:
    moves: tuple[tuple[str, Value, Value], ...]  # (NAME, head value, target), sorted by name
    gain_sigma: float  # predicted improvement, sigma units
    se_sigma: float  # its standard error under the fit
    gains: Mapping[str, float]  # per constant


@dataclass(frozen=True)
class _Axis:
    """One numeric coordinate of a constant (betas have one per element)."""

    name: str
    index: int  # element of a tuple value; -1 for a scalar
    kind: str  # rate | int_log | int_linear | pow2 | fraction | beta
    low: float
    high: float
    step: float  # int_linear / fraction: the value of one step


# -- coordinates ----------------------------------------------------------------------------------


def _axes(name: str, value: object, spec: ConstantSpec) -> list[_Axis]:
    from coordinator.policy.proposer import SpecKind

    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if spec.kind == SpecKind.RATE and numeric and value > 0:
        return [_Axis(name, -1, "rate", spec.low, spec.high, 0.0)]
    if spec.kind == SpecKind.POW2 and numeric and value > 0:
        return [_Axis(name, -1, "pow2", spec.low, spec.high, 0.0)]
    if spec.kind == SpecKind.INT and numeric:
        step = max(1.0, float(spec.step))
        kind = "int_log" if spec.low >= 1 and value >= 1 else "int_linear"
        return [_Axis(name, -1, kind, spec.low, spec.high, step)]
    if spec.kind == SpecKind.FRACTION and numeric:
        return [_Axis(name, -1, "fraction", spec.low, spec.high, spec.step or 0.05)]
    if spec.kind == SpecKind.BETAS and isinstance(value, tuple):
        return [_Axis(name, i, "beta", spec.low, spec.high, 0.0) for i in range(len(value))]
    return []


def _coordinate(axis: _Axis, value: object) -> float | None:
    if axis.index >= 0:
        if not isinstance(value, tuple) or len(value) <= axis.index:
            return None
        value = value[axis.index]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    if axis.kind in ("rate", "int_log"):
        return math.log(x) / LOG_STEP if x > 0 else None
    if axis.kind == "pow2":
        return math.log2(x) if x > 0 else None
    if axis.kind == "beta":
        return math.log(1.0 - x) / LOG_STEP if x < 1 else None
    return x / axis.step


def _value_at(axis: _Axis, t: float) -> float | int:
    """The legal value nearest to coordinate t, rounded the way a person would write it."""
    if axis.kind == "rate":
        return min(max(round_significant(math.exp(t * LOG_STEP)), axis.low), axis.high)
    if axis.kind == "pow2":
        return int(min(max(2 ** round(t), axis.low), axis.high))
    if axis.kind in ("int_log", "int_linear"):
        x = math.exp(t * LOG_STEP) if axis.kind == "int_log" else t * axis.step
        steps = round(x / axis.step)
        return int(min(max(steps * axis.step, axis.low, axis.step), axis.high))
    if axis.kind == "beta":
        return min(max(round(1.0 - math.exp(t * LOG_STEP), 4), axis.low), axis.high)
    # fraction: a fifth of a step is as fine as anyone tunes these
    grain = axis.step / 5
    return min(max(round(round(t * axis.step / grain) * grain, 6), axis.low), axis.high)


# -- the fit --------------------------------------------------------------------------------------


@dataclass
class _Fit:
    params: dict[object, int]  # ("a", axis) / ("b", axis) / ("c", name, value) / "intercept" -> index
    beta: list[float]
    chol: list[list[float]]  # Cholesky factor of the reduced normal matrix
    noise_var: float  # residual variance per unit weight, at least 1 (sigma units)
    ranges: dict[_Axis, tuple[float, float]]  # head-centred coordinates measured (OK runs)
    walls: dict[_Axis, list[float]]  # head-centred coordinates of changes that failed or diverged
    choices: dict[str, set[str]]  # values of choice/bool constants seen in OK runs

    def solve(self, d: Sequence[float]) -> list[float]:
        return _chol_solve(self.chol, d)


def _fit(head: Mapping[str, Value], history: Sequence, frozen: Collection[str]) -> _Fit | None:
    from coordinator.policy.proposer import SpecKind, spec_for

    axes: dict[str, list[_Axis]] = {}
    categorical: set[str] = set()
    for name in sorted(head):
        if name in frozen:
            continue
        spec = spec_for(name, head[name])
        if spec is None:
            continue
        if spec.kind in (SpecKind.CHOICE, SpecKind.BOOL):
            categorical.add(name)
        elif found := _axes(name, head[name], spec):
            axes[name] = found
    centre = {ax: _coordinate(ax, head[ax.name]) for found in axes.values() for ax in found}

    params: dict[object, int] = {"intercept": 0}
    rows: list[tuple[dict[int, float], float, float, str]] = []  # features, y, weight, base
    ranges: dict[_Axis, tuple[float, float]] = {}
    walls: dict[_Axis, list[float]] = defaultdict(list)
    choices: dict[str, set[str]] = defaultdict(set)

    def index(key: object) -> int:
        return params.setdefault(key, len(params))

    # Improvements in units of one reference sigma (the median class sigma of the newest changes):
    # the sigma each change was judged with was an estimate of its time and class.
    sigmas = sorted(c.sigma_bpb for c in history[-200:] if c.sigma_bpb and c.delta_bpb is not None)
    sigma_ref = sigmas[len(sigmas) // 2] if sigmas else 1.0

    for change in history[-FIT_WINDOW:]:
        failed = change.runs <= 0
        features: dict[int, float] = {0: 1.0}  # the intercept
        usable = True
        for name, before, after in change.moves:
            if name in categorical:
                if failed:
                    continue
                for value, sign in ((before, 1.0), (after, -1.0)):
                    j = index(("c", name, repr(value)))
                    features[j] = features.get(j, 0.0) + sign
                    choices[name].add(repr(value))
                continue
            if name not in axes:
                usable = False  # a constant the model does not cover moved: the row says nothing clean
                continue
            for ax in axes[name]:
                tb, ta, th = _coordinate(ax, before), _coordinate(ax, after), centre[ax]
                if tb is None or ta is None or th is None:
                    usable = False
                    continue
                ub, ua = tb - th, ta - th
                if failed:
                    walls[ax].append(ua)
                    continue
                if ub == ua:
                    continue
                lo, hi = ranges.get(ax, (0.0, 0.0))
                ranges[ax] = (min(lo, ub, ua), max(hi, ub, ua))
                ja, jb = index(("a", ax)), index(("b", ax))
                features[ja] = features.get(ja, 0.0) + (ub - ua)
                features[jb] = features.get(jb, 0.0) + (ub * ub - ua * ua)
        if failed or not usable or len(features) == 1:
            continue
        effect, weight = change.effect_sigma, float(change.runs)
        if change.delta_bpb is not None and change.sigma_bpb:
            effect = change.delta_bpb / sigma_ref
            weight *= (sigma_ref / change.sigma_bpb) ** 2  # noisier classes count less
        rows.append((features, effect, weight, change.key.split("|", 1)[0]))
    n_params = len(params)
    if len(rows) < MIN_ROWS_PER_PARAMETER * n_params:
        return None

    # Normal equations with each base's offset profiled out (a Schur complement per base).
    matrix = [[0.0] * n_params for _ in range(n_params)]
    rhs = [0.0] * n_params
    by_base: dict[str, list[int]] = defaultdict(list)
    for i, (features, y, w, base) in enumerate(rows):
        by_base[base].append(i)
        for j, xj in features.items():
            rhs[j] += w * xj * y
            row = matrix[j]
            for k, xk in features.items():
                row[k] += w * xj * xk
    for members in by_base.values():
        total_w = OFFSET_RIDGE
        s: dict[int, float] = defaultdict(float)
        sy = 0.0
        for i in members:
            features, y, w, _ = rows[i]
            total_w += w
            sy += w * y
            for j, xj in features.items():
                s[j] += w * xj
        for j, sj in s.items():
            rhs[j] -= sj * sy / total_w
            row = matrix[j]
            for k, sk in s.items():
                row[k] -= sj * sk / total_w
    for j in range(n_params):
        matrix[j][j] += RIDGE if j else 1e-3
    chol = _cholesky(matrix)
    if chol is None:
        return None
    beta = _chol_solve(chol, rhs)

    # Residual variance (offsets at their profiled values), for the standard error of a move.
    rss, weight_n = 0.0, 0.0
    for members in by_base.values():
        residuals = [
            (rows[i][1] - sum(beta[j] * x for j, x in rows[i][0].items()), rows[i][2]) for i in members
        ]
        offset = sum(w * r for r, w in residuals) / (OFFSET_RIDGE + sum(w for _, w in residuals))
        rss += sum(w * (r - offset) ** 2 for r, w in residuals)
        weight_n += len(members)
    dof = max(1.0, weight_n - n_params - len(by_base))
    noise_var = max(1.0, rss / dof)
    return _Fit(params, beta, chol, noise_var, ranges, dict(walls), dict(choices))


def _cholesky(a: list[list[float]]) -> list[list[float]] | None:
    n = len(a)
    lower = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            total = a[i][j] - math.fsum(lower[i][k] * lower[j][k] for k in range(j))
            if i == j:
                if total <= 0:
                    return None
                lower[i][i] = math.sqrt(total)
            else:
                lower[i][j] = total / lower[j][j]
    return lower


def _chol_solve(lower: list[list[float]], b: Sequence[float]) -> list[float]:
    n = len(lower)
    y = [0.0] * n
    for i in range(n):
        y[i] = (b[i] - sum(lower[i][k] * y[k] for k in range(i))) / lower[i][i]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum(lower[k][i] * x[k] for k in range(i + 1, n))) / lower[i][i]
    return x


# -- the joint move -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """One constant's share of a joint move."""

    target: Value
    gradient: tuple[float, ...]  # of its predicted gain in the fit's parameters
    gain: float


_CACHE: dict[object, tuple[_Fit, dict[str, _Part]] | None] = {}
_CACHE_SIZE = 16


def joint_move(
    head: Mapping[str, Value],
    history: Sequence,
    frozen: Collection[str] = (),
    min_gain_each: float | None = None,
) -> JointMove | None:
    """The change that moves every constant the fit is sure enough about towards its fitted
    optimum (within the measured range plus a step, short of values that failed), or None while
    the history is too short."""
    found = _parts(head, history, frozen)
    if found is None:
        return None
    fit, parts = found
    floor = PART_MIN_GAIN if min_gain_each is None else min_gain_each
    chosen = {name: part for name, part in parts.items() if part.gain >= floor}
    if not chosen:
        return None
    total = [sum(p.gradient[j] for p in chosen.values()) for j in range(len(fit.params))]
    gain = sum(x * b for x, b in zip(total, fit.beta, strict=True))
    se = math.sqrt(fit.noise_var * _quadratic(fit, total))
    moves = tuple(sorted((name, head[name], part.target) for name, part in chosen.items()))
    return JointMove(moves, gain, se, {name: part.gain for name, part in chosen.items()})


def _parts(
    head: Mapping[str, Value], history: Sequence, frozen: Collection[str]
) -> tuple[_Fit, dict[str, _Part]] | None:
    """The fit and each constant's best move under it; memoized on the inputs (the decider asks
    after every report, and most reports change nothing the fit sees)."""
    window = tuple(history[-FIT_WINDOW:])
    cache_key = (constants_key(head), frozenset(frozen), hash(window), len(window))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    fit = _fit(head, window, frozen)
    result = None if fit is None else (fit, _best_parts(fit, head, window))
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[cache_key] = result
    return result


def _best_parts(fit: _Fit, head: Mapping[str, Value], history: Sequence) -> dict[str, _Part]:
    n = len(fit.params)
    per_constant: dict[str, tuple[Value, list[float]]] = {}  # NAME -> (target, gradient of its gain)

    numeric: dict[str, list[_Axis]] = defaultdict(list)
    for key in fit.params:
        if isinstance(key, tuple) and key[0] == "a":
            numeric[key[1].name].append(key[1])
    for name, axes in numeric.items():
        target: list[object] = list(head[name]) if isinstance(head[name], tuple) else [head[name]]
        d = [0.0] * n
        for ax in sorted(axes, key=lambda a: a.index):
            ja, jb = fit.params[("a", ax)], fit.params[("b", ax)]
            a, b = fit.beta[ja], fit.beta[jb]
            lo, hi = fit.ranges.get(ax, (0.0, 0.0))
            lo, hi = lo - EXTRAPOLATION_STEPS, hi + EXTRAPOLATION_STEPS
            for wall in fit.walls.get(ax, ()):
                if wall > 0:
                    hi = min(hi, wall - 0.5)
                elif wall < 0:
                    lo = max(lo, wall + 0.5)
            if lo > 0 or hi < 0:
                continue
            candidates = [lo, hi] + ([-a / (2 * b)] if b > 0 else [])
            best_u = min((min(max(u, lo), hi) for u in candidates), key=lambda u: a * u + b * u * u)
            centre = _coordinate(ax, head[name])
            assert centre is not None
            value = _value_at(ax, centre + best_u)
            u = (_coordinate(ax, value) or centre) - centre
            if a * u + b * u * u >= 0:
                continue
            target[max(ax.index, 0)] = value
            d[ja] -= u
            d[jb] -= u * u
        new_value: Value = tuple(target) if isinstance(head[name], tuple) else target[0]  # type: ignore[assignment]
        if not same_value(new_value, head[name]):
            per_constant[name] = (_typed(head[name], new_value), d)

    for name, seen in fit.choices.items():
        here = fit.params.get(("c", name, repr(head[name])))
        if here is None:
            continue
        options = [(fit.beta[fit.params[("c", name, v)]], v) for v in sorted(seen) if v != repr(head[name])]
        if not options:
            continue
        level, best = min(options)
        if level >= fit.beta[here]:
            continue
        d = [0.0] * n
        d[here], d[fit.params[("c", name, best)]] = 1.0, -1.0
        value = next(v for v in _choice_values(history, name) if repr(v) == best)
        per_constant[name] = (value, d)

    parts: dict[str, _Part] = {}
    for name, (value, d) in per_constant.items():
        gain = sum(x * b for x, b in zip(d, fit.beta, strict=True))
        se = math.sqrt(fit.noise_var * _quadratic(fit, d))
        if gain >= PART_MIN_Z * se:  # more likely good than not, by a margin
            parts[name] = _Part(value, tuple(d), gain)
    return parts


def _quadratic(fit: _Fit, d: Sequence[float]) -> float:
    return max(0.0, sum(x * y for x, y in zip(d, fit.solve(d), strict=True)))


def _typed(template: object, value: object) -> Value:
    """Keep the head's types: an int stays an int, a float a float."""
    if isinstance(template, tuple) and isinstance(value, tuple):
        return tuple(float(v) for v in value)
    if isinstance(template, int) and not isinstance(template, bool):
        return int(value)  # type: ignore[arg-type]
    if isinstance(template, float):
        return float(value)  # type: ignore[arg-type]
    return value  # type: ignore[return-value]


def _choice_values(history: Sequence, name: str) -> list[Value]:
    out: list[Value] = []
    for change in history:
        for n, before, after in change.moves:
            if n == name:
                out += [before, after]
    return out
