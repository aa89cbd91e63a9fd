"""The built-in proposer: bounded perturbations of the current best's constants that learn which
directions help.

Moves: multiplicative for rates and ratios (x1.25 / x0.8, bold x1.6 / x0.625), +- steps for
integers, doubling or halving for batch sizes, alternatives for string patterns, element-wise for
Adam betas (on 1 - beta). A change already measured (the same constants moved from the same values
to the same values, on any base) or waiting in the queue is never proposed again.

Learning: each (constant, direction) keeps a recency-weighted mean of the effects measured for it
(in sigma units, positive = better), shrunk towards zero; moves are ranked by a Thompson draw from
that estimate, so a direction that helped is tried again first (from the new head, after a merge),
one that hurt is avoided, and untried ones still get explored. Deterministic given the seed and
the inputs.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
import random
import zlib
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from coordinator.policy.literals import (
    Value,
    change_key,
    constants_key,
    move_key,
    parse_constants,
    render_literal,
    round_significant,
    same_value,
)
from coordinator.policy.settings import AcceptanceSettings, SettingsError, SettingsFromJson
from coordinator.policy.surface import joint_move
from coordinator.policy.view import PolicyView
from coordinator.store.types import Hypothesis, HypothesisState


class SpecKind(enum.StrEnum):
    RATE = "rate"  # positive float, multiplicative steps
    FRACTION = "fraction"  # float in [low, high], multiplicative steps, an additive step away from zero
    INT = "int"  # +- step
    POW2 = "pow2"  # doubling / halving
    CHOICE = "choice"  # one of a few strings
    BETAS = "betas"  # tuple of floats in (0, 1), stepped on 1 - beta
    BOOL = "bool"


@dataclass(frozen=True)
class ConstantSpec:
    kind: SpecKind
    low: float = -math.inf
    high: float = math.inf
    step: float = 0.0  # INT: the +- step; RATE/FRACTION: the first value away from zero
    choices: tuple[str, ...] = ()


# Upstream's constants and their sane ranges; anything else is inferred from its name and type.
KNOWN_SPECS: dict[str, ConstantSpec] = {
    "DEPTH": ConstantSpec(SpecKind.INT, 1, 64, 1),
    "ASPECT_RATIO": ConstantSpec(SpecKind.INT, 8, 512, 8),
    "HEAD_DIM": ConstantSpec(SpecKind.INT, 32, 256, 32),
    "TOTAL_BATCH_SIZE": ConstantSpec(SpecKind.POW2, 2**10, 2**24),
    "DEVICE_BATCH_SIZE": ConstantSpec(SpecKind.POW2, 1, 1024),
    "WINDOW_PATTERN": ConstantSpec(SpecKind.CHOICE, choices=("L", "SL", "SSL", "SSSL", "SSSSL", "SLSL")),
    "EMBEDDING_LR": ConstantSpec(SpecKind.RATE, 1e-5, 10.0),
    "UNEMBEDDING_LR": ConstantSpec(SpecKind.RATE, 1e-6, 1.0),
    "MATRIX_LR": ConstantSpec(SpecKind.RATE, 1e-5, 1.0),
    "SCALAR_LR": ConstantSpec(SpecKind.RATE, 1e-5, 10.0),
    "WEIGHT_DECAY": ConstantSpec(SpecKind.FRACTION, 0.0, 2.0, 0.05),
    "ADAM_BETAS": ConstantSpec(SpecKind.BETAS, 0.5, 0.9999),
    "WARMUP_RATIO": ConstantSpec(SpecKind.FRACTION, 0.0, 0.5, 0.05),
    "WARMDOWN_RATIO": ConstantSpec(SpecKind.FRACTION, 0.0, 1.0, 0.1),
    "FINAL_LR_FRAC": ConstantSpec(SpecKind.FRACTION, 0.0, 1.0, 0.05),
}


def spec_for(name: str, value: object) -> ConstantSpec | None:
    """The perturbation rule for a constant, or None when it is not something to perturb."""
    if name in KNOWN_SPECS:
        return KNOWN_SPECS[name]
    if isinstance(value, bool):
        return ConstantSpec(SpecKind.BOOL)
    if isinstance(value, int):
        if name.endswith("BATCH_SIZE") and value > 0 and value & (value - 1) == 0:
            return ConstantSpec(SpecKind.POW2, 1, 2**24)
        return ConstantSpec(SpecKind.INT, 1, max(4 * value, 4), max(1, round(value / 8)))
    if isinstance(value, float):
        if name.endswith(("_RATIO", "_FRAC")):
            return ConstantSpec(SpecKind.FRACTION, 0.0, 1.0, 0.05)
        if value > 0:
            return ConstantSpec(SpecKind.RATE, value / 100, value * 100)
        return None
    if isinstance(value, tuple) and value and all(isinstance(v, float) and 0 < v < 1 for v in value):
        return ConstantSpec(SpecKind.BETAS, 0.5, 0.9999)
    return None


HISTORY_WINDOW = 500  # newest measured changes that feed the direction estimates


@dataclass(frozen=True)
class ProposerSettings(SettingsFromJson):
    SETTINGS_NAME: ClassVar[str] = "proposer"

    small_factor: float = 1.25  # multiplicative step for rates and ratios
    large_factor: float = 1.6  # bold step, preferred only where a direction is known to help
    exploration: float = 1.0  # width of the Thompson draw (0: greedy on the estimates)
    shrinkage: float = 1.0  # pseudo-observations of zero effect behind every estimate
    recency: float = 0.7  # weight of an observation per newer one of the same direction
    max_in_flight_per_constant: int = 2  # open hypotheses touching one constant
    queue_share: float = 1.0  # untried hypotheses kept queued per volunteer online
    opposite_penalty: float = 3.0  # (x effect scale) for a direction opposite to one being measured
    empirical_prior: bool = True  # untried directions start at the mean measured effect, not at zero
    joint_moves: bool = True  # propose the response surface's joint move (surface.py) when it looks good
    joint_min_gain: float = 3.0  # predicted improvement (sigma) for a joint move: about what confirms
    joint_min_z: float = 2.0  # ... and that prediction over its standard error
    max_open_joint: int = 1  # open multi-constant changes at once (each joint move waits for the last)
    shield_joint: bool = True  # no new single moves on the constants of an open multi-constant change

    def __post_init__(self) -> None:
        problems = []
        if not self.small_factor > 1.0:
            problems.append(f"small_factor must be > 1, got {self.small_factor}")
        if not self.large_factor > 1.0:
            problems.append(f"large_factor must be > 1, got {self.large_factor}")
        if not 0.0 < self.recency <= 1.0:
            problems.append(f"recency must be in (0, 1], got {self.recency}")
        if not self.shrinkage > 0.0:
            problems.append(f"shrinkage must be > 0, got {self.shrinkage}")  # untried moves divide by it
        if self.max_in_flight_per_constant < 1:
            problems.append(f"max_in_flight_per_constant must be >= 1, got {self.max_in_flight_per_constant}")
        for name in ("exploration", "queue_share", "opposite_penalty", "joint_min_gain", "joint_min_z", "max_open_joint"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise SettingsError("; ".join(problems))


@dataclass(frozen=True)
class Proposal:
    title: str
    rationale: str
    constant_changes: dict[str, Value]  # NAME -> new value
    literals: dict[str, str]  # NAME -> literal text, as Hypothesis.constant_changes stores it
    priority: float
    key: str  # move_key of the change


@dataclass(frozen=True)
class MeasuredChange:
    """What the history says about one change: its moves and the effect measured for it."""

    moves: tuple[tuple[str, Value, Value], ...]  # (NAME, before, after)
    effect_sigma: float  # pooled improvement in sigma units; positive = better
    runs: int = 1
    outcome: str = ""  # merged, rejected, failed, open ...
    key: str = ""  # change_key on its base: never proposed again on that base
    # For the response surface: the pooled improvement without clipping, in bpb, and the class
    # sigma it was measured against (sigma estimates move; bpb does not). None: use effect_sigma.
    delta_bpb: float | None = None
    sigma_bpb: float | None = None


@dataclass(frozen=True)
class _Move:
    name: str
    before: Value
    after: Value
    direction: str
    bold: bool
    key: str = ""  # move_key of this single move


@dataclass
class _Estimate:
    weighted_sum: float = 0.0
    weight: float = 0.0
    observations: int = 0
    effects: list[float] = field(default_factory=list)


class Proposer:
    def __init__(self, settings: ProposerSettings | None = None, seed: int = 0) -> None:
        self.settings = settings or ProposerSettings()
        self.seed = seed

    def wanted(self, queue_depth: int, volunteers_online: int) -> int:
        """How many new proposals keep the queue of untried hypotheses at queue_share x the
        volunteers online (at least one while anyone is online)."""
        if volunteers_online <= 0:
            return 0
        target = max(1, math.ceil(self.settings.queue_share * volunteers_online))
        return max(0, target - queue_depth)

    def propose(
        self,
        head_constants: Mapping[str, object],
        history: Sequence[MeasuredChange],
        count: int,
        *,
        frozen: Collection[str] = (),
        avoid: Collection[str] = (),
        in_flight: Iterable[str] = (),
        open_moves: Iterable[tuple[str, Value, Value]] = (),
    ) -> list[Proposal]:
        """Up to `count` new proposals from the head's constants, best first.

        frozen: constants not to touch (fixed layer, or pinned by every class). avoid: keys not to
        propose, either `change_key`s (that change on that base: measured or queued) or bare
        `move_key`s (that move anywhere, e.g. still being measured on an older base). in_flight:
        constant names of open hypotheses, once per hypothesis. open_moves: their (NAME, before,
        after) moves; while one direction of a constant is being measured, the opposite one waits
        (one of the two is nearly always worse). Single-constant moves come first;
        finer and coarser steps, then pairs of promising moves, only when those run out.
        """
        if count <= 0:
            return []
        s = self.settings
        estimates = self._estimates(history)
        scale = _effect_scale(history)
        prior = _prior_effect(history) if s.empirical_prior else 0.0

        def posterior_mean(est: _Estimate) -> float:
            return (est.weighted_sum + s.shrinkage * prior) / (est.weight + s.shrinkage)
        rng = random.Random(self._rng_seed(head_constants, history))
        busy = Counter(in_flight)
        if s.shield_joint:
            # A merge of a single move supersedes every open change on that constant: while a
            # multi-constant change is open, its constants get no new single moves.
            for k in avoid:
                if "|" not in k and ";" in k:  # bare keys are open changes
                    for part in k.split(";"):
                        busy[part.split(":", 1)[0]] += s.max_in_flight_per_constant
        blocked = set(avoid) | {m.key for m in history if m.key}
        base = constants_key(head_constants)
        measuring: dict[str, set[str]] = defaultdict(set)
        for name, before, after in open_moves:
            spec = spec_for(name, before)
            if spec is not None and spec.kind not in (SpecKind.CHOICE, SpecKind.BOOL):
                measuring[name].add(_direction(spec, before, after))
        proposals: list[Proposal] = []
        chosen: list[tuple[float, _Move]] = []
        joint = self._joint(head_constants, history, frozen, avoid, blocked, base)
        if joint is not None:
            proposals.append(joint)
            blocked.add(joint.key)
            busy.update(list(joint.constant_changes))
        for tier in (0, 1):
            scored: list[tuple[float, int, _Move, _Estimate]] = []
            for name in sorted(head_constants):
                if name in frozen:
                    continue
                value = head_constants[name]
                spec = spec_for(name, value)
                if spec is None:
                    continue
                for move in _moves(name, value, spec, s, tier):
                    if move.key in blocked or f"{base}|{move.key}" in blocked:
                        continue
                    est = estimates.get((name, move.direction), _Estimate())
                    mean = posterior_mean(est)
                    spread = scale / math.sqrt(est.weight + s.shrinkage)
                    draw = mean + s.exploration * spread * rng.gauss(0.0, 1.0)
                    if move.bold:
                        # A bold step pays off only where the direction is known to help.
                        draw = 1.3 * mean - 0.5 * scale + s.exploration * spread * rng.gauss(0.0, 1.0)
                    if measuring.get(name) and move.direction not in measuring[name]:
                        draw -= s.opposite_penalty * scale
                    scored.append((draw, len(scored), move, est))
            scored.sort(key=lambda t: (-t[0], t[1]))
            for draw, _, move, est in scored:
                if len(proposals) >= count:
                    return proposals
                if busy[move.name] >= s.max_in_flight_per_constant:
                    continue
                busy[move.name] += 1
                blocked.add(f"{base}|{move.key}")
                proposals.append(self._proposal([move], [est], draw, scale, head_constants))
                chosen.append((draw, move))
            if len(proposals) >= count:
                return proposals
        # Still short: combine the most promising untried directions pairwise.
        singles = sorted(
            (
                (posterior_mean(est), name, direction)
                for (name, direction), est in estimates.items()
                if name in head_constants and name not in frozen
            ),
            reverse=True,
        )
        steps: list[tuple[_Move, _Estimate]] = []
        for _, name, direction in singles:
            spec = spec_for(name, head_constants[name])
            if spec is None:
                continue
            for move in _moves(name, head_constants[name], spec, s, 0):
                if move.direction == direction and not move.bold:
                    steps.append((move, estimates[(name, direction)]))
                    break
        for (a, ea), (b, eb) in itertools.combinations(steps, 2):
            if len(proposals) >= count:
                break
            if a.name == b.name or busy[a.name] >= s.max_in_flight_per_constant or busy[b.name] >= s.max_in_flight_per_constant:
                continue
            moves = [(a.name, a.before, a.after), (b.name, b.before, b.after)]
            if move_key(moves) in blocked or f"{base}|{move_key(moves)}" in blocked:
                continue
            blocked.add(f"{base}|{move_key(moves)}")
            busy[a.name] += 1
            busy[b.name] += 1
            mean = posterior_mean(ea) + posterior_mean(eb)
            proposals.append(self._proposal([a, b], [ea, eb], mean, scale, head_constants))
        return proposals

    def _joint(
        self,
        head_constants: Mapping[str, object],
        history: Sequence[MeasuredChange],
        frozen: Collection[str],
        avoid: Collection[str],
        blocked: Collection[str],
        base: str,
    ) -> Proposal | None:
        """The response surface's joint move, when its predicted gain is large and sure enough to
        be confirmed, no open change already moves most of the same constants (an earlier joint
        move: wait for it), and it is not a change already known."""
        s = self.settings
        if not s.joint_moves:
            return None
        plan = joint_move(head_constants, history, frozen)  # type: ignore[arg-type]
        if plan is None or len(plan.moves) < 2:  # one constant: the usual moves reach it
            return None
        if plan.gain_sigma < s.joint_min_gain or plan.gain_sigma < s.joint_min_z * plan.se_sigma:
            return None
        key = move_key(plan.moves)
        if key in blocked or f"{base}|{key}" in blocked:
            return None
        names = {name for name, _, _ in plan.moves}
        overlapping = 0
        for k in avoid:
            if "|" in k or ";" not in k:
                continue  # bare multi-constant keys are the open joint moves and pairs
            shared = len(names & {part.split(":", 1)[0] for part in k.split(";")})
            overlapping += shared >= max(2, len(names) / 2)
        if overlapping >= s.max_open_joint:
            return None
        parts = [f"{name} {render_literal(old)} -> {render_literal(new)}" for name, old, new in plan.moves]
        return Proposal(
            title=", ".join(parts),
            rationale=(
                "Built-in proposer, joint move: a quadratic response surface fitted to "
                f"{len(history)} measured change(s) predicts {plan.gain_sigma:+.1f} +- "
                f"{plan.se_sigma:.1f} sigma from moving these together towards its optimum."
            ),
            constant_changes={name: after for name, _, after in plan.moves},
            literals={name: render_literal(after) for name, _, after in plan.moves},
            priority=round(plan.gain_sigma, 3),
            key=change_key(head_constants, plan.moves),
        )

    def _proposal(
        self,
        moves: Sequence[_Move],
        estimates: Sequence[_Estimate],
        draw: float,
        scale: float,
        head_constants: Mapping[str, object],
    ) -> Proposal:
        parts, reasons = [], []
        for move, est in zip(moves, estimates, strict=True):
            before, after = render_literal(move.before), render_literal(move.after)
            parts.append(f"{move.name} {before} -> {after}")
            if est.observations:
                mean = est.weighted_sum / (est.weight + self.settings.shrinkage)
                basis = f"this direction measured {est.observations} time(s), estimated effect {mean:+.2f} sigma"
            else:
                basis = "this direction is untried"
            reasons.append(f"{_verb(move)} {move.name} from {before} to {after} ({basis})")
        triples = [(m.name, m.before, m.after) for m in moves]
        return Proposal(
            title=", ".join(parts),
            rationale="Built-in proposer: " + "; ".join(reasons) + ".",
            constant_changes={m.name: m.after for m in moves},
            literals={m.name: render_literal(m.after) for m in moves},
            priority=round(draw / scale, 3) if scale > 0 else 0.0,
            key=change_key(head_constants, triples),
        )

    def _estimates(self, history: Sequence[MeasuredChange]) -> dict[tuple[str, str], _Estimate]:
        """Recency-weighted effect per (constant, direction), oldest observation weighted least."""
        per_key: dict[tuple[str, str], list[float]] = defaultdict(list)
        for change in history[-HISTORY_WINDOW:]:
            for name, before, after in change.moves:
                spec = spec_for(name, before)
                if spec is None:
                    continue
                direction = _direction(spec, before, after)
                if direction:
                    per_key[(name, direction)].append(change.effect_sigma / len(change.moves))
        out: dict[tuple[str, str], _Estimate] = {}
        for key, effects in per_key.items():
            est = _Estimate(observations=len(effects), effects=effects)
            for age, effect in enumerate(reversed(effects)):
                weight = self.settings.recency**age
                est.weighted_sum += weight * effect
                est.weight += weight
            out[key] = est
        return out

    def _rng_seed(self, head_constants: Mapping[str, object], history: Sequence[MeasuredChange]) -> int:
        text = repr(sorted((k, repr(v)) for k, v in head_constants.items())) + f"|{len(history)}"
        return (self.seed * 1_000_003) ^ zlib.crc32(text.encode())


# -- moves ----------------------------------------------------------------------------------------


def _moves(name: str, value: object, spec: ConstantSpec, s: ProposerSettings, tier: int = 0) -> tuple[_Move, ...]:
    """Tier 0: the usual step and a bold one. Tier 1: finer and coarser steps, for when tier 0 is
    used up at this head."""
    try:
        return _cached_moves(name, _type_tag(value), value, spec, s, tier)
    except TypeError:  # an unhashable value: compute without the cache
        return _compute_moves(name, value, spec, s, tier)


@functools.lru_cache(maxsize=4096)
def _cached_moves(
    name: str, type_tag: str, value: object, spec: ConstantSpec, s: ProposerSettings, tier: int
) -> tuple[_Move, ...]:
    del type_tag  # part of the cache key only: 1, 1.0 and True hash alike
    return _compute_moves(name, value, spec, s, tier)


def _type_tag(value: object) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(_type_tag(v) for v in value) + ")"
    return type(value).__name__


def _compute_moves(name: str, value: object, spec: ConstantSpec, s: ProposerSettings, tier: int) -> tuple[_Move, ...]:
    out: list[_Move] = []

    def add(after: Value, direction: str, bold: bool = False) -> None:
        if same_value(after, value) or any(same_value(m.after, after) for m in out):
            return
        out.append(_Move(name, value, after, direction, bold, move_key([(name, value, after)])))  # type: ignore[arg-type]

    if spec.kind in (SpecKind.RATE, SpecKind.FRACTION) and isinstance(value, int | float) and not isinstance(value, bool):
        x = float(value)
        if x == 0.0:
            if spec.step > 0:
                for k, bold in (((1, False), (2, True)) if tier == 0 else ((0.5, False), (4, True))):
                    add(_clamp(k * spec.step, spec), "up", bold)
            return tuple(out)
        factors = ((s.small_factor, False), (s.large_factor, True))
        if tier:
            factors = ((math.sqrt(s.small_factor), False), (s.large_factor**2, True))
        for factor, bold in factors:
            up = _clamp(round_significant(x * factor), spec)
            down = _clamp(round_significant(x / factor), spec)
            if up > x:
                add(up, "up", bold)
            if down < x:
                add(down, "down", bold)
        if spec.kind == SpecKind.FRACTION and spec.low == 0.0 and 0 < x <= spec.step:
            add(0.0, "down", bold=True)
    elif spec.kind == SpecKind.INT and isinstance(value, int) and not isinstance(value, bool):
        step = max(1, int(spec.step))
        for k, bold in ((1, False), (2, True)) if tier == 0 else ((3, True),):
            if value + k * step <= spec.high:
                add(value + k * step, "up", bold)
            if value - k * step >= spec.low:
                add(value - k * step, "down", bold)
    elif spec.kind == SpecKind.POW2 and isinstance(value, int) and not isinstance(value, bool):
        k = 2 if tier == 0 else 4
        if value * k <= spec.high:
            add(value * k, "up", bold=tier > 0)
        if value // k >= spec.low and value % k == 0:
            add(value // k, "down", bold=tier > 0)
    elif spec.kind == SpecKind.BETAS and isinstance(value, tuple):
        # Each element steps on 1 - beta like a rate: the usual and a bold step, finer and coarser
        # ones in tier 1 (a small step on a beta is often worth only a sigma or two).
        factors = ((s.small_factor, False), (s.large_factor, True))
        if tier:
            factors = ((math.sqrt(s.small_factor), False), (s.large_factor**2, True))
        for factor, bold in factors:
            for i, beta in enumerate(value):
                if not isinstance(beta, float):
                    continue
                for shrink, label in ((1.0 / factor, "up"), (factor, "down")):
                    new_beta = min(max(round(1.0 - (1.0 - beta) * shrink, 4), spec.low), spec.high)
                    if not same_value(new_beta, beta):
                        add(tuple(new_beta if j == i else b for j, b in enumerate(value)), f"{i}:{label}", bold)
    elif tier:
        return tuple(out)
    elif spec.kind == SpecKind.CHOICE and isinstance(value, str):
        for choice in spec.choices:
            add(choice, f"={choice}")
    elif spec.kind == SpecKind.BOOL and isinstance(value, bool):
        add(not value, f"={not value}")
    return tuple(out)


def _clamp(x: float, spec: ConstantSpec) -> float:
    return min(max(x, spec.low), spec.high)


def _direction(spec: ConstantSpec, before: object, after: object) -> str:
    """The learning key of a move: up/down for numbers, =VALUE for choices, I:up for betas."""
    if spec.kind in (SpecKind.CHOICE, SpecKind.BOOL):
        return f"={after}"
    if spec.kind == SpecKind.BETAS and isinstance(before, tuple) and isinstance(after, tuple) and len(before) == len(after):
        changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if not same_value(a, b)]
        if len(changed) != 1:
            return ""
        i = changed[0]
        return f"{i}:{'up' if after[i] > before[i] else 'down'}"
    if isinstance(before, int | float) and isinstance(after, int | float):
        return "up" if after > before else "down" if after < before else ""
    return ""


def _verb(move: _Move) -> str:
    if move.direction.startswith("="):
        return "switch"
    return "raise" if move.direction.endswith("up") else "lower"


def _prior_effect(history: Sequence[MeasuredChange]) -> float:
    """What an untried move is expected to do: the mean effect of recent moves (most moves hurt,
    so untried directions start below the ones known to help)."""
    effects = [m.effect_sigma for m in history[-200:]]
    if len(effects) < 5:
        return 0.0
    return math.fsum(effects) / len(effects)


def _effect_scale(history: Sequence[MeasuredChange]) -> float:
    """Typical size of measured effects (RMS, at least 1 sigma): sets the exploration width."""
    effects = [m.effect_sigma for m in history[-200:]]
    if not effects:
        return 1.0
    return max(1.0, math.sqrt(math.fsum(e * e for e in effects) / len(effects)))


def head_values(literals: Mapping[str, str]) -> dict[str, Value]:
    """The head's constants block (NAME -> literal text) as values for `Proposer.propose`."""
    return parse_constants(literals)


# -- reading the proposer's inputs from a PolicyView ----------------------------------------------


def history_from_view(
    view: PolicyView, settings: AcceptanceSettings | None = None, limit: int = 2000
) -> tuple[list[MeasuredChange], set[str], list[str], list[tuple[str, Value, Value]]]:
    """(measured history, keys to avoid, constants of open hypotheses, their moves) from the
    newest `limit` hypotheses. Keys to avoid: every known change on its base, and every open
    change anywhere."""
    from coordinator.policy.decisions import OPEN_STATES

    settings = settings or AcceptanceSettings()
    history: list[MeasuredChange] = []
    avoid: set[str] = set()
    in_flight: list[str] = []
    open_moves: list[tuple[str, Value, Value]] = []
    open_states = set(OPEN_STATES)
    for h in view.hypotheses()[-limit:]:
        if not h.constant_changes:
            continue
        base = parse_constants(view.constants(h.base_commit))
        moves = _moves_of(base, h)
        if moves is None:
            continue
        avoid.add(change_key(base, moves))
        if h.state in open_states:
            avoid.add(move_key(moves))
            in_flight.extend(h.constant_changes)
            open_moves.extend(moves)
        measured = measured_change(view, h, settings=settings)
        if measured is not None:
            history.append(measured)
    return history, avoid, in_flight, open_moves


def measured_change(
    view: PolicyView, hypothesis: Hypothesis, settings: AcceptanceSettings | None = None
) -> MeasuredChange | None:
    """The history entry of one hypothesis, or None while nothing was measured."""
    from coordinator.policy.decisions import hypothesis_evidence

    settings = settings or AcceptanceSettings()
    base = parse_constants(view.constants(hypothesis.base_commit))
    moves = _moves_of(base, hypothesis)
    if moves is None:
        return None
    key = change_key(base, moves)
    outcome = hypothesis.state.value
    diverged = hypothesis.state == HypothesisState.REJECTED and "diverged" in hypothesis.state_reason
    if hypothesis.state == HypothesisState.FAILED or diverged:
        return MeasuredChange(moves, -settings.clip_sigma, 0, outcome, key)
    evidence = hypothesis_evidence(view, hypothesis, settings)
    if evidence.runs == 0:
        return None
    # Clipping keeps one number from deciding a test; the surface needs how bad a bad move was.
    weights = [1.0 / g.se_bpb**2 for g in evidence.groups]
    sigma = math.fsum(w * g.sigma for w, g in zip(weights, evidence.groups, strict=True)) / math.fsum(weights)
    return MeasuredChange(
        moves, evidence.effect_sigma, evidence.runs, outcome, key, evidence.reported_delta_bpb, sigma
    )


def _moves_of(base: Mapping[str, Value], hypothesis: Hypothesis) -> tuple[tuple[str, Value, Value], ...] | None:
    after = parse_constants(hypothesis.constant_changes)
    if len(after) != len(hypothesis.constant_changes) or not all(name in base for name in after):
        return None
    return tuple(sorted((name, base[name], value) for name, value in after.items()))


def proposals_for(
    view: PolicyView,
    proposer: Proposer,
    settings: AcceptanceSettings | None = None,
    frozen: Collection[str] = (),
) -> list[Proposal]:
    """What the built-in proposer adds now: enough to keep the queue as deep as the volunteers."""
    queue_depth = len(view.hypotheses([HypothesisState.QUEUED]))
    online = len(view.online_volunteers())
    count = proposer.wanted(queue_depth, online)
    if count <= 0:
        return []
    history, avoid, in_flight, open_moves = history_from_view(view, settings)
    classes = view.active_classes()
    pinned_everywhere = set.intersection(*(view.pinned_constants(c) for c in classes)) if classes else set()
    head = parse_constants(view.constants(view.head_commit()))
    return proposer.propose(
        head, history, count, frozen=set(frozen) | pinned_everywhere, avoid=avoid, in_flight=in_flight,
        open_moves=open_moves,
    )
