"""Benchmark: how often the real `judge` confirms a change of a given true effect.

Each trial is one hypothesis on a fresh in-memory swarm: three classes of 8 volunteers (6 owners),
noise sigma measured on 30 older commits of 2 baseline runs per class, 3 baseline runs per class
on the head. The hypothesis gets one first run on a random class; then every unit `judge` asks
for (replicate, head verification, extra baseline run) is run by an eligible volunteer and the
hypothesis is judged again, until it is decided. An effect of 0 gives the false-confirmation
rate of a null change; larger effects give the power.

    .venv/bin/python benchmarks/bench_judge_power.py [--effects 0 1 2 3] [--trials 10000 2000 2000 2000]
        [--settings '{"extend_z": 0}'] [--seed 7] [--json-out FILE]

Not a test: 10,000 trials take about two minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.policy import decisions  # noqa: E402
from coordinator.policy.settings import AcceptanceSettings  # noqa: E402
from coordinator.policy.view import InMemoryView  # noqa: E402
from coordinator.store.types import (  # noqa: E402
    TERMINAL_HYPOTHESIS_STATES,
    HypothesisState,
    RunMetrics,
    RunStatus,
    UnitKind,
)

SIGMA_BPB = 0.001  # run noise; effects are given in units of it
CLASS_MEANS = {"h100": 1.0, "4090": 1.25, "3060": 1.45}
VOLUNTEERS_PER_CLASS = 8
OWNERS = 6
OLD_COMMITS = 30  # commits whose 2 baseline runs per class measure the noise
HEAD_BASELINES = 3  # baseline runs per class on the head
MAX_ROUNDS = 40  # judgements per hypothesis before giving up on a decision


class _Trial:
    def __init__(self, rng: random.Random, effect_sigma: float) -> None:
        self.rng = rng
        self.effect_bpb = effect_sigma * SIGMA_BPB
        self.view = InMemoryView("c0", {"MATRIX_LR": "0.04"})
        self.members: dict[str, list[tuple[str, str]]] = {c: [] for c in CLASS_MEANS}  # class -> (volunteer, owner)
        index = 0
        for cls in CLASS_MEANS:
            for _ in range(VOLUNTEERS_PER_CLASS):
                volunteer, owner = f"{cls}-{index}", f"o{index % OWNERS}"
                self.view.add_volunteer(volunteer, owner, cls)
                self.members[cls].append((volunteer, owner))
                index += 1
        for i in range(OLD_COMMITS):
            self.view.add_commit(f"old{i}", {"MATRIX_LR": "0.04"})
            for cls in CLASS_MEANS:
                for _ in range(2):
                    self.run(cls, UnitKind.BASELINE, f"old{i}")
        for cls in CLASS_MEANS:
            for _ in range(HEAD_BASELINES):
                self.run(cls, UnitKind.BASELINE, "c0")

    def run(
        self,
        cls: str,
        kind: UnitKind,
        commit: str,
        hypothesis_id: str = "",
        excluded_volunteers: tuple[str, ...] = (),
        excluded_owners: tuple[str, ...] = (),
    ) -> None:
        eligible = [
            v for v, o in self.members[cls] if v not in excluded_volunteers and o not in excluded_owners
        ] or [v for v, _ in self.members[cls]]
        value = CLASS_MEANS[cls] + self.rng.gauss(0.0, SIGMA_BPB) - (self.effect_bpb if hypothesis_id else 0.0)
        unit = self.view.add_unit(kind, cls, commit, hypothesis_id)
        self.view.add_result(unit.unit_id, self.rng.choice(eligible), RunMetrics(RunStatus.OK, val_bpb=value))

    def decide(self, settings: AcceptanceSettings) -> tuple[bool, int]:
        """(confirmed, runs of the hypothesis)."""
        h = self.view.add_hypothesis({"MATRIX_LR": "0.05"})
        self.run(self.rng.choice(list(CLASS_MEANS)), UnitKind.CANDIDATE, "c0", h.hypothesis_id)
        state = h.state
        for _ in range(MAX_ROUNDS):
            j = decisions.judge(self.view, self.view.hypothesis(h.hypothesis_id), settings)
            state = j.state
            if state in TERMINAL_HYPOTHESIS_STATES or state == HypothesisState.CONFIRMED or not j.requests:
                break
            for r in j.requests:
                self.run(r.hardware_class, r.kind, r.base_commit, r.hypothesis_id, r.excluded_volunteers, r.excluded_owners)
        runs = len(self.view.counting_results(hypothesis_id=h.hypothesis_id))
        return state == HypothesisState.CONFIRMED, runs


def measure(effect_sigma: float, trials: int, settings: AcceptanceSettings, seed: int) -> dict[str, float]:
    rng = random.Random(f"{seed}:{effect_sigma}")
    confirmed = runs = 0
    for _ in range(trials):
        ok, n = _Trial(rng, effect_sigma).decide(settings)
        confirmed += ok
        runs += n
    return {"effect_sigma": effect_sigma, "trials": trials, "confirmed": confirmed,
            "confirmed_share": confirmed / trials, "runs_per_hypothesis": runs / trials}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--effects", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    p.add_argument("--trials", type=int, nargs="+", default=[10000, 2000, 2000, 2000],
                   help="per effect (one number: the same for all)")
    p.add_argument("--settings", default="{}", help="AcceptanceSettings overrides as JSON")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    trials = args.trials if len(args.trials) == len(args.effects) else [args.trials[0]] * len(args.effects)
    settings = AcceptanceSettings.from_json(args.settings)
    started = time.perf_counter()
    rows = []
    for effect, n in zip(args.effects, trials, strict=True):
        row = measure(effect, n, settings, args.seed)
        rows.append(row)
        print(f"effect {effect:+.1f} sigma: confirmed {row['confirmed']} of {n} ({row['confirmed_share']:.2%}), "
              f"{row['runs_per_hypothesis']:.2f} runs per hypothesis", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({"settings": json.loads(args.settings), "seed": args.seed, "rows": rows,
                                             "elapsed_s": time.perf_counter() - started}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
