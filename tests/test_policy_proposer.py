"""The built-in proposer, constant literals and acceptance settings."""

from __future__ import annotations

import json
import math
import random

import pytest

from coordinator.policy.literals import (
    LiteralError,
    change_key,
    move_key,
    parse_literal,
    render_literal,
    round_significant,
    same_value,
)
from coordinator.policy.proposer import (
    KNOWN_SPECS,
    MeasuredChange,
    Proposer,
    ProposerSettings,
    SpecKind,
    _moves,
    history_from_view,
    proposals_for,
    spec_for,
)
from coordinator.policy.settings import AcceptanceSettings, SettingsError
from coordinator.policy.simulator import START_CONSTANTS
from coordinator.policy.view import InMemoryView
from coordinator.store.types import HypothesisState, RunMetrics, RunStatus, UnitKind

HEAD = dict(START_CONSTANTS)


# -- literals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.04", 0.04),
        ("2**19", 524288),
        ("(0.8, 0.95)", (0.8, 0.95)),
        ('"SSSL"', "SSSL"),
        ("-3", -3),
        ("True", True),
        ("64 * 2", 128),
        ("1e-3", 0.001),
    ],
)
def test_parse_literal(text, value):
    assert parse_literal(text) == value


@pytest.mark.parametrize(
    "text", ["os.system('x')", "f(1)", "[x for x in y]", "2**1000", "1/0", "", '"a" * 3']
)
def test_parse_literal_refuses_anything_else(text):
    with pytest.raises(LiteralError):
        parse_literal(text)


def test_render_literal_round_trips_in_upstream_style():
    assert render_literal(2**19) == "2**19"
    assert render_literal(128) == "128" and render_literal(1000) == "1000"
    assert render_literal(0.05) == "0.05"
    assert render_literal((0.8, 0.95)) == "(0.8, 0.95)"
    assert render_literal("SSL") == '"SSL"'
    for value in (2**19, 0.004, (0.75, 0.9375), "L", True, 7):
        assert parse_literal(render_literal(value)) == value
    with pytest.raises(LiteralError):
        render_literal(float("nan"))


def test_round_significant_and_same_value():
    assert round_significant(0.04 * 1.25) == 0.05
    assert round_significant(0.6 / 1.25) == 0.48
    assert same_value(2**19, 524288.0) and same_value((0.8, 0.95), [0.8, 0.95])
    assert not same_value("1", 1) and not same_value(0.04, 0.05)


def test_keys_identify_a_change_on_a_base():
    a = move_key([("MATRIX_LR", 0.04, 0.05), ("DEPTH", 8, 10)])
    assert a == move_key([("DEPTH", 8.0, 10), ("MATRIX_LR", 0.04, 0.05)])  # order- and type-free
    assert a != move_key([("MATRIX_LR", 0.04, 0.05)])
    assert change_key(HEAD, [("DEPTH", 8, 10)]) != change_key({**HEAD, "MATRIX_LR": 0.05}, [("DEPTH", 8, 10)])


# -- settings -------------------------------------------------------------------------------------


def test_settings_from_dict_and_json():
    s = AcceptanceSettings.from_dict(
        {"confirm_z": 3.5, "min_owners": 3, "prior_sigma_by_class": {"cpu": 0.05}}
    )
    assert s.confirm_z == 3.5 and s.min_owners == 3 and s.prior_sigma_for("cpu") == 0.05
    assert s.prior_sigma_for("h100-80g") == s.prior_sigma
    assert AcceptanceSettings.from_json(json.dumps(s.to_dict())) == s
    assert AcceptanceSettings.from_dict({"confirm_z": 3}).confirm_z == 3.0  # an int is coerced


def test_proposer_settings_from_dict_and_json():
    s = ProposerSettings.from_json(json.dumps({"small_factor": 1.35, "max_in_flight_per_constant": 3}))
    assert s.small_factor == 1.35 and s.max_in_flight_per_constant == 3 and s.large_factor == 1.6
    assert ProposerSettings.from_dict({"exploration": 0}).exploration == 0.0  # an int is coerced
    assert ProposerSettings.from_dict({}) == ProposerSettings()


@pytest.mark.parametrize(
    "values",
    [
        {"steps": 2},
        {"small_factor": 1.0},
        {"large_factor": 0.5},
        {"recency": 0.0},
        {"recency": 1.5},
        {"shrinkage": 0.0},
        {"max_in_flight_per_constant": 0},
        {"max_in_flight_per_constant": 1.5},
        {"exploration": -1.0},
        {"joint_moves": "yes"},
        {"small_factor": float("nan")},
    ],
)
def test_bad_proposer_settings_are_refused(values):
    with pytest.raises(SettingsError):
        ProposerSettings.from_dict(values)


def test_proposer_settings_json_must_be_an_object():
    for text in ("[1]", "{bad"):
        with pytest.raises(SettingsError):
            ProposerSettings.from_json(text)


def test_settings_under_which_nothing_could_confirm_are_refused():
    # With the noise on 3 dof, 6 runs clipped at 4 sigma against 12 baseline runs reach t = 8,
    # z = 2.87: a new swarm would never merge anything, so no later head would add dof.
    with pytest.raises(SettingsError, match="out of reach"):
        AcceptanceSettings(min_sigma_dof=3)
    with pytest.raises(SettingsError, match="out of reach"):
        AcceptanceSettings(confirm_z=4.0)
    assert AcceptanceSettings(confirm_z=4.0, min_sigma_dof=10).confirm_z == 4.0  # reachable again
    assert AcceptanceSettings(min_sigma_dof=3, max_samples=12, clip_sigma=5.0).min_sigma_dof == 3


@pytest.mark.parametrize(
    "values",
    [
        {"confirm_zz": 3},
        {"confirm_z": "3"},
        {"min_owners": 1.5},
        {"confirm_z": -1.0},
        {"min_owners": 0},
        {"discard_z": 2.0, "promising_z": 1.0},
        {"revert_enabled": 1},
        {"max_samples": 1},
        {"prior_sigma_by_class": {"cpu": "x"}},
        {"confirm_z": float("inf")},
        {"fdr_alpha": 1.0},
        {"fdr_alpha": -0.1},
        {"fdr_noise_factor": 0.0},
        {"fdr_window": 0},
        {"extend_z": -1.0},
        {"extended_max_samples": -2},
    ],
)
def test_bad_settings_are_refused(values):
    with pytest.raises(SettingsError):
        AcceptanceSettings.from_dict(values)


def test_bad_settings_json():
    with pytest.raises(SettingsError):
        AcceptanceSettings.from_json("{nope")
    with pytest.raises(SettingsError):
        AcceptanceSettings.from_json("[1, 2]")


# -- moves and bounds -----------------------------------------------------------------------------


def test_specs_of_upstream_constants():
    assert spec_for("MATRIX_LR", 0.04).kind == SpecKind.RATE
    assert spec_for("TOTAL_BATCH_SIZE", 2**19).kind == SpecKind.POW2
    assert spec_for("WINDOW_PATTERN", "SSSL").kind == SpecKind.CHOICE
    assert spec_for("ADAM_BETAS", (0.8, 0.95)).kind == SpecKind.BETAS
    assert spec_for("MY_NEW_LR", 0.1).kind == SpecKind.RATE
    assert spec_for("SOME_RATIO", 0.3).kind == SpecKind.FRACTION
    assert spec_for("USE_FOO", True).kind == SpecKind.BOOL
    assert spec_for("NAME", "text") is None


def _in_bounds(name: str, value: object, head_value: object) -> bool:
    spec = spec_for(name, head_value)
    if spec.kind == SpecKind.CHOICE:
        return value in spec.choices
    if spec.kind == SpecKind.BETAS:
        return all(spec.low <= b <= spec.high for b in value) and len(value) == len(head_value)
    if spec.kind == SpecKind.POW2:
        return isinstance(value, int) and value & (value - 1) == 0 and spec.low <= value <= spec.high
    if spec.kind == SpecKind.INT:
        return isinstance(value, int) and spec.low <= value <= spec.high
    if spec.kind == SpecKind.BOOL:
        return isinstance(value, bool)
    return isinstance(value, float) and spec.low <= value <= spec.high


def test_proposals_stay_in_bounds_and_keep_types():
    rng = random.Random(3)
    proposer = Proposer(seed=1)
    for _ in range(30):
        head = dict(HEAD)
        head["MATRIX_LR"] = rng.choice([1e-5, 0.04, 0.9])
        head["DEPTH"] = rng.choice([1, 8, 64])
        head["WARMUP_RATIO"] = rng.choice([0.0, 0.5])
        head["TOTAL_BATCH_SIZE"] = rng.choice([2**10, 2**19, 2**24])
        head["ADAM_BETAS"] = rng.choice([(0.5, 0.9999), (0.8, 0.95)])
        for p in proposer.propose(head, [], 60):
            for name, value in p.constant_changes.items():
                assert _in_bounds(name, value, head[name]), (name, value)
                assert not same_value(value, head[name])
                assert parse_literal(p.literals[name]) == value


def test_pattern_betas_and_batch_moves():
    wide = Proposer(ProposerSettings(max_in_flight_per_constant=99), seed=0)
    proposals = wide.propose(HEAD, [], 200, frozen={"DEVICE_BATCH_SIZE"})
    values = {}
    for p in proposals:
        for name, value in p.constant_changes.items():
            values.setdefault(name, []).append(value)
    assert set(values["WINDOW_PATTERN"]) <= set(KNOWN_SPECS["WINDOW_PATTERN"].choices) - {"SSSL"}
    assert set(values["TOTAL_BATCH_SIZE"]) <= {2**18, 2**20, 2**17, 2**21}
    assert all(b[0] == 0.8 or b[1] == 0.95 for b in values["ADAM_BETAS"])  # element-wise
    assert "DEVICE_BATCH_SIZE" not in values
    assert 0.05 in values["MATRIX_LR"] and 0.032 in values["MATRIX_LR"]


def test_betas_step_like_rates_usual_bold_finer_and_coarser():
    spec, settings = KNOWN_SPECS["ADAM_BETAS"], ProposerSettings()
    usual = {(m.after, m.bold) for m in _moves("ADAM_BETAS", (0.8, 0.95), spec, settings, 0)}
    # 1 - beta x 1/1.25 and x 1.25 (usual), x 1/1.6 and x 1.6 (bold), each element alone.
    assert usual == {
        ((0.84, 0.95), False), ((0.75, 0.95), False), ((0.8, 0.96), False), ((0.8, 0.9375), False),
        ((0.875, 0.95), True), ((0.68, 0.95), True), ((0.8, 0.9688), True), ((0.8, 0.92), True),
    }
    finer_coarser = {m.after for m in _moves("ADAM_BETAS", (0.8, 0.95), spec, settings, 1)}
    assert (0.8211, 0.95) in finer_coarser and (0.9219, 0.95) in finer_coarser  # sqrt(1.25), 1.6 ** 2
    assert (0.5, 0.95) in finer_coarser  # clamped at the spec's low end


def test_a_bold_beta_step_is_proposed_once_the_usual_one_was_measured():
    step = (("ADAM_BETAS", (0.8, 0.95), (0.84, 0.95)),)
    history = [MeasuredChange(step, 2.0, 1, "rejected", change_key(HEAD, list(step)))]
    wide = Proposer(ProposerSettings(max_in_flight_per_constant=99), seed=2)
    betas = [
        p.constant_changes["ADAM_BETAS"]
        for p in wide.propose(HEAD, history, 200, frozen={"DEVICE_BATCH_SIZE"})
        if "ADAM_BETAS" in p.constant_changes
    ]
    assert (0.875, 0.95) in betas and (0.84, 0.95) not in betas


def test_never_repeats_a_measured_change_or_an_open_one():
    proposer = Proposer(ProposerSettings(max_in_flight_per_constant=99), seed=5)
    measured = ("MATRIX_LR", 0.04, 0.05)
    history = [MeasuredChange((measured,), -2.0, 1, "rejected", change_key(HEAD, [measured]))]
    open_move = move_key([("DEPTH", 8, 9)])
    everything = proposer.propose(HEAD, history, 500, avoid={open_move})
    keys = {p.key for p in everything}
    assert change_key(HEAD, [measured]) not in keys
    assert not any(p.constant_changes == {"DEPTH": 9} for p in everything)
    assert len(keys) == len(everything)  # no duplicates within one call
    # Measured on another base (MATRIX_LR moved there and back), the same move may be tried again.
    other = {**HEAD, "DEPTH": 9}
    again = proposer.propose(other, history, 500)
    assert any(p.constant_changes == {"MATRIX_LR": 0.05} for p in again)


def test_runs_out_of_single_moves_then_tries_finer_steps_and_pairs():
    proposer = Proposer(ProposerSettings(max_in_flight_per_constant=99), seed=0)
    first = proposer.propose(HEAD, [], 1000, frozen={"DEVICE_BATCH_SIZE"})
    history = [
        MeasuredChange(
            tuple((n, HEAD[n], v) for n, v in p.constant_changes.items()), 0.5, 1, "rejected", p.key
        )
        for p in first
    ]
    more = proposer.propose(HEAD, history, 50, frozen={"DEVICE_BATCH_SIZE"})
    assert more and not ({p.key for p in more} & {p.key for p in first})
    assert any(len(p.constant_changes) == 2 for p in more)


def test_deterministic_given_seed_and_inputs():
    history = [MeasuredChange((("MATRIX_LR", 0.04, 0.05),), 1.0, 2, "rejected")]
    a = Proposer(seed=7).propose(HEAD, history, 10)
    b = Proposer(seed=7).propose(HEAD, history, 10)
    assert [p.key for p in a] == [p.key for p in b]
    assert [p.key for p in Proposer(seed=8).propose(HEAD, history, 10)] != [p.key for p in a]


def test_learns_which_direction_helps():
    head = {**HEAD, "MATRIX_LR": 0.05}
    history = [
        MeasuredChange(((name, before, after),), -3.0, 1, "rejected")
        for name, before, after in (
            ("DEPTH", 8, 9),
            ("DEPTH", 8, 7),
            ("SCALAR_LR", 0.5, 0.4),
            ("SCALAR_LR", 0.5, 0.625),
            ("HEAD_DIM", 128, 96),
            ("WEIGHT_DECAY", 0.2, 0.25),
        )
    ]
    for before, after, effect in (
        (0.032, 0.04, 5.0),
        (0.04, 0.05, 4.0),
        (0.05, 0.04, -4.0),
        (0.04, 0.032, -5.0),
    ):
        history.append(
            MeasuredChange((("MATRIX_LR", before, after),), effect, 2, "merged" if effect > 0 else "rejected")
        )
    up = down = untried = 0
    for seed in range(100):
        top = Proposer(seed=seed).propose(head, history, 3)
        up += any(p.constant_changes.get("MATRIX_LR", 0) > 0.05 for p in top)
        down += any(0 < p.constant_changes.get("MATRIX_LR", 1) < 0.05 for p in top)
        untried += any("EMBEDDING_LR" in p.constant_changes for p in top)
    # Thompson sampling still explores, but the direction that helped twice comes first far more
    # often than an untried constant, and the one that hurt twice (almost) never.
    assert up >= 25 and up > untried and down <= 2


def test_opposite_direction_waits_while_one_is_measured():
    proposer = Proposer(seed=2)
    open_moves = [("MATRIX_LR", 0.04, 0.05)]
    busy = proposer.propose(HEAD, [], 12, in_flight=["MATRIX_LR"], open_moves=open_moves)
    assert not any(0 < p.constant_changes.get("MATRIX_LR", 1) < 0.04 for p in busy)


def test_wanted_keeps_the_queue_as_deep_as_the_volunteers():
    p = Proposer()
    assert p.wanted(3, 10) == 7 and p.wanted(12, 10) == 0 and p.wanted(0, 0) == 0
    assert Proposer(ProposerSettings(queue_share=0.5)).wanted(0, 10) == 5


# -- from a view ----------------------------------------------------------------------------------


def test_proposals_for_a_view():
    literals = {k: render_literal(v) for k, v in HEAD.items()}
    view = InMemoryView("c0", literals)
    for i in range(5):
        view.add_volunteer(f"v{i}", f"o{i}", "gpu-a" if i < 3 else "gpu-b")
    view.set_pins("gpu-a", {"DEVICE_BATCH_SIZE"})
    view.set_pins("gpu-b", {"DEVICE_BATCH_SIZE", "DEPTH"})
    proposer = Proposer(seed=0)
    proposals = proposals_for(view, proposer)
    assert len(proposals) == 5
    assert all("DEVICE_BATCH_SIZE" not in p.constant_changes for p in proposals)  # pinned everywhere
    for p in proposals[:2]:
        view.add_hypothesis(p.literals, title=p.title)
    again = proposals_for(view, proposer)
    assert len(again) == 3 and not {p.key for p in again} & {p.key for p in proposals[:2]}


def test_history_from_view_reads_measured_effects():
    literals = {k: render_literal(v) for k, v in HEAD.items()}
    view = InMemoryView("c0", literals)
    for i, v in enumerate(("a", "b", "c", "d")):
        view.add_volunteer(v, f"o{i}", "gpu")
    for i, x in enumerate([1.0, 1.002, 0.998, 1.0, 1.0, 1.002, 0.998, 1.0]):
        unit = view.add_unit(UnitKind.BASELINE, "gpu", "c0")
        view.add_result(unit.unit_id, "abcd"[i % 4], RunMetrics(RunStatus.OK, val_bpb=x))
    h = view.add_hypothesis({"MATRIX_LR": "0.05"})
    unit = view.add_unit(UnitKind.CANDIDATE, "gpu", "c0", h.hypothesis_id)
    view.add_result(unit.unit_id, "a", RunMetrics(RunStatus.OK, val_bpb=1.003))
    view.set_state(h.hypothesis_id, HypothesisState.REJECTED, "early discard")
    queued = view.add_hypothesis({"DEPTH": "9"})
    history, avoid, in_flight, open_moves = history_from_view(view)
    (entry,) = history
    assert entry.moves == (("MATRIX_LR", 0.04, 0.05),) and entry.effect_sigma < -1.5
    # Unclipped, in bpb, with the sigma it was judged against (the response surface reads these).
    assert entry.delta_bpb is not None and abs(entry.delta_bpb - (1.0 - 1.003)) < 1e-12
    assert entry.sigma_bpb is not None and math.isclose(entry.delta_bpb / entry.sigma_bpb, entry.effect_sigma)
    assert entry.outcome == "rejected" and entry.key in avoid
    assert in_flight == ["DEPTH"] and open_moves == [("DEPTH", 8, 9)]
    assert move_key(open_moves) in avoid and queued.state == HypothesisState.QUEUED
