"""`autoswarm volunteer ...`: run the daemon, or check this machine before joining.

    autoswarm volunteer run --coordinator HOST:PORT [--invite TOKEN] [--owner NAME]
                            [--class auto|NAME] [--gpus 0,1|all] [--max-runs N] [--once]
                            [--data-dir DIR] [--quiet|--log-json] [--ray auto|local|ADDRESS]
    autoswarm volunteer check [--coordinator HOST:PORT] [--data-dir DIR] [--class auto|NAME]

Every flag has an environment twin (AUTOSWARM_COORDINATOR, AUTOSWARM_INVITE, AUTOSWARM_OWNER,
AUTOSWARM_VOLUNTEER_DIR, ...) for service files. The volunteer reads AUTOSWARM_* settings here,
once; none of them reaches the trainer.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from volunteer.display import Display, LogMode
from volunteer.identity import resolve_data_dir
from volunteer.sandbox import NetworkMode


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _common(parser: argparse.ArgumentParser, coordinator_required: bool) -> None:
    parser.add_argument("--coordinator", default=_env("AUTOSWARM_COORDINATOR") or None,
                        required=coordinator_required and not _env("AUTOSWARM_COORDINATOR"),
                        help="HOST:PORT of the coordinator (env AUTOSWARM_COORDINATOR)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="identity, token, key pin, spool and work dirs (default: $AUTOSWARM_VOLUNTEER_DIR or "
                             "~/.config/autoswarm/volunteer)")
    parser.add_argument("--class", dest="hardware_class", default=_env("AUTOSWARM_CLASS", "auto"),
                        help="hardware class, or auto to detect (default)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="prepared data cache (default: $AUTOSWARM_CACHE_DIR or ~/.cache/autoswarm)")
    parser.add_argument("--tls-ca", type=Path, default=_env("AUTOSWARM_TLS_CA") or None,
                        help="CA certificate to verify the coordinator's TLS certificate")


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="join the swarm: lease, run, report until stopped")
    _common(p, coordinator_required=True)
    p.add_argument("--invite", default=_env("AUTOSWARM_INVITE"), help="invite token, when the swarm requires one")
    p.add_argument("--owner", default=_env("AUTOSWARM_OWNER"), help="person or team this volunteer counts for")
    p.add_argument("--name", dest="display_name", default=_env("AUTOSWARM_NAME"), help="display name on leaderboards")
    p.add_argument("--gpus", default=_env("AUTOSWARM_GPUS"),
                   help="GPUs to use, one trainer each: 'all' or '0,1' (default: one trainer, devices as visible)")
    p.add_argument("--max-runs", type=int, default=int(_env("AUTOSWARM_MAX_RUNS", "0")),
                   help="stop after this many runs (0: no limit)")
    p.add_argument("--once", action="store_true", help="run one unit, deliver its result, exit")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="warnings and errors only")
    output.add_argument("--log-json", action="store_true", help="JSON lines on stdout, for services")
    p.add_argument("--network", choices=[m.value for m in NetworkMode], default=_env("AUTOSWARM_NETWORK", "auto"),
                   help="trainer network isolation: auto (when the OS allows; default), require, off")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="address-space cap for the trainer (default: 85%% of RAM on the cpu class, none on GPUs)")
    p.add_argument("--nice", type=int, default=int(_env("AUTOSWARM_NICE", "10")),
                   help="CPU priority decrease for the trainer, to keep this machine responsive (default 10)")
    p.add_argument("--startup-allowance-s", type=float,
                   default=float(_env("AUTOSWARM_STARTUP_ALLOWANCE_S", "180")),
                   help="hard kill at 2x the budget plus this (imports, data, compile, evaluation)")
    p.add_argument("--drain-timeout-s", type=float, default=120.0,
                   help="on exit, wait this long for the coordinator to acknowledge spooled results")
    p.add_argument("--ray", default=_env("AUTOSWARM_RAY"),
                   help="Ray pool mode: 'auto' (the cluster this host belongs to), 'local' (start one here) or "
                        "a Ray address; one trust domain only")
    p.add_argument("--ray-resource", default="GPU", help="the Ray resource one unit needs one of (default GPU)")
    p.add_argument("--ray-slots", type=int, default=0,
                   help="units at once (default: the cluster's total of --ray-resource)")


def _check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="dry run: hardware, class, data, coordinator, key pin, sandbox")
    _common(p, coordinator_required=False)
    p.add_argument("--dataset", default=None, help="dataset to check when the coordinator cannot be asked")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="autoswarm volunteer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _check_parser(sub)
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)

    if args.command == "check":
        from volunteer.check import run_check

        return run_check(coordinator=args.coordinator, data_dir=data_dir, hardware_class=args.hardware_class,
                         cache_dir=args.cache_dir, tls_ca=args.tls_ca, dataset=args.dataset)

    from volunteer.daemon import Volunteer, VolunteerOptions

    mode = LogMode.JSON if args.log_json else LogMode.QUIET if args.quiet else LogMode.HUMAN
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.once and args.max_runs not in (0, 1):
        parser.error("--once and --max-runs N disagree; give one of them")
    options = VolunteerOptions(
        coordinator=args.coordinator,
        data_dir=data_dir,
        invite=args.invite,
        owner=args.owner,
        display_name=args.display_name,
        hardware_class=args.hardware_class,
        gpus=args.gpus,
        max_runs=1 if args.once else max(0, args.max_runs),
        cache_dir=args.cache_dir,
        tls_ca=args.tls_ca,
        network=NetworkMode(args.network),
        memory_limit_gb=args.memory_limit_gb,
        nice=max(0, args.nice),
        startup_allowance_s=args.startup_allowance_s,
        drain_timeout_s=args.drain_timeout_s,
        log_mode=mode,
        ray=args.ray,
        ray_resource=args.ray_resource,
        ray_slots=args.ray_slots,
    )
    volunteer = Volunteer(options, Display(mode))
    volunteer.install_signal_handlers()
    return volunteer.run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
