"""`autoswarm simulate`: the acceptance policy and the built-in proposer against the naive upstream
loop, on synthetic landscapes with a known true val_bpb (see coordinator/policy/simulator.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coordinator.policy.proposer import ProposerSettings
from coordinator.policy.settings import AcceptanceSettings, SettingsError
from coordinator.policy.simulator import DEFAULT_SIGMAS, format_report, report_dict, simulate


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autoswarm simulate",
        description=(
            "Run the real acceptance policy and built-in proposer on synthetic landscapes with a known "
            "true val_bpb, and the naive loop (keep a change when its single run beats the best so far) "
            "on the same landscapes and run budget. Prints, per noise level, the share of merges that "
            "are not real improvements and the true gain per run."
        ),
    )
    p.add_argument("--seed", type=int, default=0, help="landscapes, noise and proposals derive from it (default 0)")
    p.add_argument("--runs", type=int, default=400, help="run budget per landscape, for each side (default 400)")
    p.add_argument("--landscapes", type=int, default=8, help="landscapes per noise level (default 8)")
    p.add_argument(
        "--sigmas", type=_positive_float, nargs="+", default=list(DEFAULT_SIGMAS),
        help="run-to-run noise levels in bpb (default: 3e-4 1e-3 3e-3 1e-2)",
    )
    p.add_argument("--settings", type=Path, help="JSON file of acceptance settings to use instead of the defaults")
    p.add_argument(
        "--proposer-settings", type=Path,
        help="JSON file of built-in proposer settings (both the policy's and the naive loops' proposer)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.runs < 10:
        print("autoswarm simulate: --runs must be at least 10", file=sys.stderr)
        return 2
    if args.landscapes < 1:
        print("autoswarm simulate: --landscapes must be at least 1", file=sys.stderr)
        return 2
    settings, proposer_settings = AcceptanceSettings(), ProposerSettings()
    try:
        if args.settings is not None:
            settings = AcceptanceSettings.from_json(args.settings.read_text())
        if args.proposer_settings is not None:
            proposer_settings = ProposerSettings.from_json(args.proposer_settings.read_text())
    except OSError as exc:
        print(f"autoswarm simulate: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"autoswarm simulate: {exc}", file=sys.stderr)
        return 2
    report = simulate(
        seed=args.seed, runs=args.runs, sigmas=args.sigmas, landscapes=args.landscapes, settings=settings,
        proposer_settings=proposer_settings,
    )
    if args.json:
        print(json.dumps(report_dict(report), indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0
