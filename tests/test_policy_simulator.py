"""The policy simulator and `autoswarm simulate` (small run counts, fixed seeds)."""

from __future__ import annotations

import json
import random

import pytest

from coordinator.cli.main import run as autoswarm
from coordinator.cli.simulate import main as simulate_main
from coordinator.policy.literals import parse_constants
from coordinator.policy.proposer import Proposer
from coordinator.policy.settings import AcceptanceSettings
from coordinator.policy.simulator import (
    DEFAULT_CLASSES,
    START_CONSTANTS,
    _Swarm,
    make_landscape,
    run_naive,
    simulate,
    swarm_value,
)
from coordinator.store.types import HypothesisState


def test_landscapes_are_deterministic_and_leave_room_to_improve():
    a = make_landscape(random.Random("landscape:0:0"))
    b = make_landscape(random.Random("landscape:0:0"))
    assert a == b
    start = swarm_value(a, START_CONSTANTS)
    assert a.true_bpb(START_CONSTANTS) > a.base_bpb
    optimum = {**START_CONSTANTS, **{n: t.optimum for n, t in a.terms.items() if t.kind in ("log", "linear", "betas")}}
    assert swarm_value(a, optimum) < start


def test_naive_loop_keeps_noise_at_high_sigma():
    land = make_landscape(random.Random("landscape:0:1"))
    out = run_naive(land, 1e-2, 150, Proposer(seed=1), random.Random("n"))
    assert out.runs == 150 and out.merges > 0 and out.false_merges > 0


@pytest.fixture(scope="module")
def report():
    return simulate(seed=1, runs=200, landscapes=2, sigmas=(3e-4, 1e-3, 1e-2), workers=1)


def test_policy_merges_no_more_than_5_percent_false(report):
    for level in report.levels:
        assert level.policy.false_share <= 0.05, level
        assert level.policy.false_share < level.naive.false_share
        assert level.policy.false_share < level.naive_swarm.false_share


def test_policy_gain_per_run_at_low_noise(report):
    # On this seed, summed over sigma <= 1e-3: at least the naive rule run by the same swarm, and
    # within 15% of the one-machine loop (which pays no replication, baselines or parallel
    # staleness). Summed, not per level: 2 landscapes of 200 runs are mostly the policy's start
    # (joint moves begin after ~130 runs), and one level alone swings by 0.1 either way.
    low = [level for level in report.levels if level.sigma <= 1e-3]
    policy = sum(level.policy.gain_per_run for level in low)
    assert all(level.policy.gain_per_run > 0 for level in low)
    assert policy >= sum(level.naive_swarm.gain_per_run for level in low), low
    assert policy >= 0.85 * sum(level.naive.gain_per_run for level in low), low


def test_policy_merges_joint_moves():
    """The response surface's joint moves reach the policy's head, and what lands is real."""
    merged_joint = 0
    for index in range(3):  # about one joint move lands per landscape at 1e-3; not every one has one
        land = make_landscape(random.Random(f"landscape:0:{index}"))
        swarm = _Swarm(
            land, 1e-3, 400, AcceptanceSettings(), Proposer(seed=index), random.Random(f"swarm:0:{index}:0.001")
        )
        out = swarm.run()
        assert out.false_merges == 0
        merged = [h for h in swarm.view.hypotheses() if h.state == HypothesisState.MERGED]
        for h in merged:
            if len(h.constant_changes) < 2:
                continue
            merged_joint += 1
            base = swarm.values_by_commit[h.base_commit]
            after = {**base, **parse_constants(h.constant_changes)}
            assert swarm_value(land, after) < swarm_value(land, base) - 1e-3  # more than one sigma better
    assert merged_joint >= 1


def test_runs_are_accounted(report):
    for level in report.levels:
        assert level.policy.runs == 2 * 200 == level.naive.runs == level.naive_swarm.runs
        assert sum(level.policy.runs_by_kind.values()) == 2 * 200
        assert set(level.policy.runs_by_kind) <= {"baseline", "candidate", "replicate"}
    assert report.volunteers == sum(c.volunteers for c in DEFAULT_CLASSES)


def test_cli_json(capsys):
    assert simulate_main(["--runs", "60", "--landscapes", "1", "--sigmas", "1e-3", "--json", "--seed", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    (level,) = data["levels"]
    assert level["sigma"] == 1e-3 and data["seed"] == 3
    assert {"policy", "naive", "naive_swarm", "gain_ratio"} <= set(level)
    assert level["policy"]["runs"] == 60


def test_cli_table_through_the_dispatcher(capsys):
    assert autoswarm(["simulate", "--runs", "40", "--landscapes", "1", "--sigmas", "3e-4"]) == 0
    out = capsys.readouterr().out
    assert "policy (this swarm)" in out and "3e-04" in out


def test_cli_settings_file(tmp_path, capsys):
    good = tmp_path / "s.json"
    good.write_text(json.dumps({"confirm_z": 3.5}))
    assert simulate_main(["--runs", "40", "--landscapes", "1", "--sigmas", "1e-3", "--settings", str(good)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"confirm": 4.0}))
    assert simulate_main(["--settings", str(bad)]) == 2
    assert "unknown acceptance setting" in capsys.readouterr().err
    assert simulate_main(["--settings", str(tmp_path / "missing.json")]) == 2


def test_cli_proposer_settings_file(tmp_path, capsys):
    def gains(extra: list[str]) -> tuple[float, float]:
        args = ["--runs", "120", "--landscapes", "1", "--sigmas", "1e-3", "--json", "--seed", "2"]
        assert simulate_main(args + extra) == 0
        (level,) = json.loads(capsys.readouterr().out)["levels"]
        return level["policy"]["gain_bpb"], level["naive"]["gain_bpb"]

    bold = tmp_path / "p.json"
    bold.write_text(json.dumps({"small_factor": 1.5, "large_factor": 2.0}))
    # Larger steps change what both loops propose, so their results differ from the defaults.
    assert gains(["--proposer-settings", str(bold)]) != gains([])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"small_factor": 0.5}))
    assert simulate_main(["--proposer-settings", str(bad)]) == 2
    assert "small_factor must be > 1" in capsys.readouterr().err


def test_cli_refuses_bad_numbers(capsys):
    assert simulate_main(["--runs", "5"]) == 2
    assert simulate_main(["--landscapes", "0"]) == 2
    with pytest.raises(SystemExit):
        simulate_main(["--sigmas", "-1"])
