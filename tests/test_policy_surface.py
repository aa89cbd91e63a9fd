"""The response surface (coordinator/policy/surface.py) and the joint moves the proposer makes from it."""

from __future__ import annotations

import math
import random
import time

from coordinator.policy import surface
from coordinator.policy.literals import change_key, move_key, parse_literal, same_value
from coordinator.policy.proposer import KNOWN_SPECS, MeasuredChange, Proposer
from coordinator.policy.simulator import START_CONSTANTS

HEAD = dict(START_CONSTANTS)
FROZEN = {"DEVICE_BATCH_SIZE"}
PATTERN_LOSS = {"L": 1.0, "SL": -1.5, "SSL": 0.5, "SSSL": 0.0, "SSSSL": 0.8, "SLSL": 0.3}


def true_loss(values):
    """A known additive surface in sigma units: MATRIX_LR best at 0.06 (log axis, 1 sigma per
    x1.25 step squared), WEIGHT_DECAY best at 0.1 (linear, 0.5 sigma per 0.05 squared), a table for
    WINDOW_PATTERN; everything else flat. From the head it has 3.3 + 2.0 + 1.5 sigma to gain."""
    steps = math.log(values["MATRIX_LR"] / 0.06) / math.log(1.25)
    decay = (values["WEIGHT_DECAY"] - 0.1) / 0.05
    return steps**2 + 0.5 * decay**2 + PATTERN_LOSS[values["WINDOW_PATTERN"]]


def noisy_history(seed=0, repeats=4, bases=6, head=HEAD, loss=true_loss):
    """Single and paired moves from the head, each measured `repeats` times with noise 1 sigma,
    spread over several bases whose baselines were off by a shared amount each."""
    rng = random.Random(seed)
    singles = (
        [("MATRIX_LR", round(head["MATRIX_LR"] * 1.25**k, 5)) for k in (-3, -2, -1, 1, 2, 3)]
        + [("WEIGHT_DECAY", round(head["WEIGHT_DECAY"] + 0.05 * k, 3)) for k in (-3, -2, -1, 1, 2)]
        + [("WINDOW_PATTERN", p) for p in PATTERN_LOSS if p != head["WINDOW_PATTERN"]]
        + [("DEPTH", head["DEPTH"] + k) for k in (-2, -1, 1, 2)]
        + [("SCALAR_LR", round(head["SCALAR_LR"] * 1.25**k, 4)) for k in (-2, -1, 1, 2)]
    )
    changes = [[m] for m in singles] + [
        [a, b] for a, b in zip(singles[::3], singles[1::3], strict=False) if a[0] != b[0]
    ]
    offsets = [rng.gauss(0.0, 0.6) for _ in range(bases)]
    history = []
    for r in range(repeats):
        for i, change in enumerate(changes):
            base = (i + r) % bases
            after = {**head, **dict(change)}
            effect = loss(head) - loss(after) + offsets[base] + rng.gauss(0.0, 1.0)
            moves = tuple(sorted((name, head[name], value) for name, value in change))
            history.append(MeasuredChange(moves, effect, 1, "rejected", f"base{base}|{move_key(moves)}"))
    return history


def test_fit_recovers_a_known_quadratic_optimum_from_noisy_runs():
    surface._CACHE.clear()
    plan = surface.joint_move(HEAD, noisy_history(), FROZEN)
    assert plan is not None
    targets = {name: after for name, _, after in plan.moves}
    assert 0.05 <= targets["MATRIX_LR"] <= 0.072  # 0.06, within a step
    assert 0.05 <= targets["WEIGHT_DECAY"] <= 0.15  # 0.1, within a step
    assert targets["WINDOW_PATTERN"] == "SL"
    assert not {"DEPTH", "SCALAR_LR"} & set(targets)  # flat: nothing to gain
    true_gain = true_loss(HEAD) - true_loss({**HEAD, **targets})
    assert true_gain > 5.5  # of 6.8 available
    assert abs(plan.gain_sigma - true_gain) < 3 * plan.se_sigma and plan.se_sigma < 1.5


def test_fit_uses_bpb_and_the_class_sigma_when_known():
    """A change judged against a sigma estimate that was off counts for its bpb, not its sigma units."""
    surface._CACHE.clear()
    reference = surface.joint_move(HEAD, noisy_history(), FROZEN)
    skewed = [
        MeasuredChange(
            c.moves,
            c.effect_sigma * (0.5 if i % 2 else 1.5),
            c.runs,
            c.outcome,
            c.key,
            c.effect_sigma * 1e-3,
            1e-3,
        )
        for i, c in enumerate(noisy_history())
    ]
    plan = surface.joint_move(HEAD, skewed, FROZEN)
    assert plan is not None and reference is not None
    assert plan.moves == reference.moves and math.isclose(plan.gain_sigma, reference.gain_sigma, rel_tol=1e-6)


def test_targets_stay_within_the_measured_range_and_short_of_failures():
    surface._CACHE.clear()

    def far(values):  # MATRIX_LR best far above anything measured
        return (
            (math.log(values["MATRIX_LR"] / 0.5) / math.log(1.25)) ** 2
            + true_loss(values)
            - true_loss({**values, "MATRIX_LR": 0.06})
        )

    history = noisy_history(loss=far)
    plan = surface.joint_move(HEAD, history, FROZEN)
    assert plan is not None
    highest_measured = 0.04 * 1.25**3
    target = dict((n, a) for n, _, a in plan.moves)["MATRIX_LR"]
    assert highest_measured < target <= highest_measured * 1.25 * 1.01  # one step beyond, no more
    # A change to 0.09 that failed (diverged): the target stays below it.
    failed = (("MATRIX_LR", 0.04, 0.09),)
    walled = surface.joint_move(HEAD, [*history, MeasuredChange(failed, -4.0, 0, "failed", "x|y")], FROZEN)
    assert walled is not None
    assert dict((n, a) for n, _, a in walled.moves)["MATRIX_LR"] < 0.09


def test_no_fit_from_too_little_history():
    """Fewer measured changes than twice the parameters they touch: no plan."""
    surface._CACHE.clear()
    few = noisy_history(repeats=1)[::5]
    assert 4 <= len(few) < 2 * 2 * len({n for c in few for n, _, _ in c.moves})
    assert surface.joint_move(HEAD, few, FROZEN) is None
    assert surface.joint_move(HEAD, [], FROZEN) is None


def test_fit_is_cheap_and_memoized():
    history = noisy_history(repeats=120, bases=60)  # 3,000 measured changes on 60 heads
    assert len(history) == 3000
    surface._CACHE.clear()
    started = time.perf_counter()
    first = surface.joint_move(HEAD, history, FROZEN)
    elapsed_s = time.perf_counter() - started
    assert first is not None and elapsed_s < 1.0, elapsed_s
    started = time.perf_counter()
    assert surface.joint_move(HEAD, history, FROZEN) == first
    assert time.perf_counter() - started < elapsed_s / 5


def test_the_proposer_leads_with_the_joint_move():
    surface._CACHE.clear()
    history = noisy_history()
    proposals = Proposer(seed=0).propose(HEAD, history, 5, frozen=FROZEN)
    joint = proposals[0]
    assert {"MATRIX_LR", "WEIGHT_DECAY", "WINDOW_PATTERN"} <= set(joint.constant_changes)
    assert "joint move" in joint.rationale and joint.priority >= 3.0
    assert all(len(p.constant_changes) == 1 for p in proposals[1:])
    for name, value in joint.constant_changes.items():
        assert parse_literal(joint.literals[name]) == value and type(value) is type(HEAD[name])
    # Deterministic, and the same plan is never proposed twice: not once measured on this base,
    # not while it is open (its bare key is in `avoid`), nor while an open change moves most of the same constants.
    assert Proposer(seed=0).propose(HEAD, history, 5, frozen=FROZEN)[0].key == joint.key
    moves = tuple(sorted((n, HEAD[n], v) for n, v in joint.constant_changes.items()))
    measured = [*history, MeasuredChange(moves, 1.0, 1, "rejected", change_key(HEAD, moves))]
    surface._CACHE.clear()
    replan = surface.joint_move(HEAD, measured, FROZEN)
    again = Proposer(seed=0).propose(HEAD, measured, 5, frozen=FROZEN)
    assert joint.key not in {p.key for p in again}
    assert replan is None or replan.moves == moves or again[0].key == change_key(HEAD, replan.moves)
    for avoid in ({move_key(moves)}, {move_key([*moves[:2], ("DEPTH", 8, 9)])}):
        while_open = Proposer(seed=0).propose(HEAD, history, 5, frozen=FROZEN, avoid=avoid)
        assert not any(len(p.constant_changes) > 1 for p in while_open)
    # While it is open, no new single move touches its constants (their merge would supersede it).
    shielded = Proposer(seed=0).propose(HEAD, history, 40, frozen=FROZEN, avoid={move_key(moves)})
    assert not any(set(p.constant_changes) & set(joint.constant_changes) for p in shielded)


def test_joint_move_respects_pins_and_ranges():
    surface._CACHE.clear()
    history = noisy_history()
    plan = surface.joint_move(HEAD, history, FROZEN | {"MATRIX_LR"})
    assert plan is not None and "MATRIX_LR" not in {n for n, _, _ in plan.moves}
    proposals = Proposer(seed=0).propose(HEAD, history, 30, frozen=FROZEN | {"WINDOW_PATTERN"})
    assert all("WINDOW_PATTERN" not in p.constant_changes for p in proposals)
    for p in proposals:
        for name, value in p.constant_changes.items():
            spec = KNOWN_SPECS[name]
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert spec.low <= value <= spec.high
            assert not same_value(value, HEAD[name])


def test_value_rounding_keeps_legal_values():
    from coordinator.policy.proposer import spec_for

    for name, value in HEAD.items():
        spec = spec_for(name, value)
        for axis in surface._axes(name, value, spec) if spec else ():
            centre = surface._coordinate(axis, value)
            for shift in (-2.7, -1.0, 0.4, 1.6):
                x = surface._value_at(axis, centre + shift)
                assert spec.low <= x <= spec.high
                if axis.kind == "pow2":
                    assert isinstance(x, int) and x & (x - 1) == 0
                if axis.kind in ("int_log", "int_linear"):
                    assert isinstance(x, int) and x % int(axis.step) == 0
