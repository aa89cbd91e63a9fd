"""`autoswarm demo`: a whole swarm on this machine.

An embedded coordinator (SQLite in a temp dir unless --store says otherwise) and N CPU volunteers,
each a separate process with its own identity and owner, train the `cpu` class on the offline
`pydoc` corpus with the built-in proposer suggesting changes, until R results are reported. Then it
prints the leaderboard, writes progress.png and (with --json) one JSON document.

Everything here is the real thing: real gRPC over loopback, real trainer subprocesses, the real
acceptance policy and git branch. Only the sizes are small.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 2.0
DEMO_CLASS = "cpu"
DEMO_DATASET = "pydoc"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoswarm demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volunteers", type=int, default=2, help="CPU volunteer processes (default 2)")
    p.add_argument("--budget-s", type=float, default=20.0, help="training budget of each run (default 20 s)")
    p.add_argument("--runs", type=int, default=14, help="stop after this many reported results (default 14)")
    p.add_argument("--store", default="", help="state store URL (default: SQLite in the demo dir)")
    p.add_argument("--dir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    p.add_argument("--plot", type=Path, default=Path("progress.png"), help="where to write the plot")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="give up after this long")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "proto")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _say(args: argparse.Namespace, text: str) -> None:
    # Progress goes to stderr so that --json keeps stdout to the one document.
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _start_coordinator(args: argparse.Namespace, root: Path) -> tuple[subprocess.Popen, str, str]:
    data_dir = root / "coordinator"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "coordinator.cli.coordinator_cmd", "serve",
        "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--dataset", DEMO_DATASET,
        "--budget-s", str(args.budget_s), "--startup-allowance-s", "60",
    ]
    if args.store:
        command += ["--store", args.store]
    log = open(root / "coordinator.log", "w")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    ready = data_dir / "coordinator.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the coordinator exited ({proc.returncode}); see {root / 'coordinator.log'}")
        if ready.exists():
            try:
                address = json.loads(ready.read_text())["address"]
            except (ValueError, KeyError):
                time.sleep(0.1)
                continue
            return proc, address, (data_dir / "admin.token").read_text().strip()
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the coordinator did not start in {START_TIMEOUT_S:.0f} s; see {root / 'coordinator.log'}")


def _core_for(index: int) -> set[int] | None:
    """One core per volunteer where the OS allows: trainers that fight over cores finish different
    numbers of steps in the same budget, which shows up as run-to-run noise in val_bpb."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return {cores[index % len(cores)]}


def _start_volunteers(args: argparse.Namespace, root: Path, address: str, cache_dir: Path) -> list[subprocess.Popen]:
    procs = []
    for index in range(args.volunteers):
        data_dir = root / f"volunteer-{index}"
        command = [
            sys.executable, "-m", "volunteer.cli", "run", "--coordinator", address,
            "--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--class", DEMO_CLASS,
            "--owner", f"demo-owner-{index}", "--name", f"demo-{index}", "--quiet",
        ]
        log = open(root / f"volunteer-{index}.log", "w")  # noqa: SIM115 - handed to the child
        core = _core_for(index)
        pin = (lambda core=core: os.sched_setaffinity(0, core)) if core else None
        procs.append(subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                      preexec_fn=pin))
    return procs


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM (finish the current run), then SIGTERM again (abandon it), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for proc in alive:
            proc.send_signal(sig)
        deadline = time.monotonic() + wait_s
        for proc in alive:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def summarize(client: Any) -> dict[str, Any]:
    """The demo's JSON document, from the coordinator's own answers."""
    from autoswarm.v1 import swarm_pb2 as pb
    from coordinator.cli import formatting as fmt

    results = client.results()
    board = client.leaderboard(by=pb.GetLeaderboardRequest.BY_CLASS)
    by_volunteer = client.leaderboard(by=pb.GetLeaderboardRequest.BY_VOLUNTEER)
    status = client.status()
    merged = [
        {"hypothesis": m.hypothesis_id, "title": m.title, "commit": m.commit, "class": cls, "delta_bpb": delta}
        for m in board.merges if not m.reverted_by
        for cls, delta in sorted(m.delta_bpb_by_class.items())
    ]
    classes = {
        row.hardware_class: {
            "baseline_val_bpb": row.baseline_val_bpb or None,
            "best_val_bpb": row.best_val_bpb or None,
            "sigma": row.class_sigma or None,
            "runs": row.runs,
        }
        for row in board.rows
    }
    return {
        "schema": "autoswarm.demo/v1",
        "runs_reported": len(results),
        "ok_runs": sum(1 for r in results if r.result.status == pb.RUN_STATUS_OK),
        "volunteers": sorted({r.volunteer_id for r in results}),
        "merged": merged,
        "classes": classes,
        "leaderboard": [fmt.leaderboard_row_to_json(row) for row in by_volunteer.rows],
        "head_commit": status.head_commit,
        "reverts": [fmt.merge_to_json(m) for m in board.merges if m.reverted_by],
    }


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.volunteers < 1 or args.runs < 1 or args.budget_s <= 0:
        raise SystemExit("autoswarm demo: --volunteers, --runs and --budget-s must be positive")
    owned_tmp = None
    if args.dir is None:
        owned_tmp = tempfile.TemporaryDirectory(prefix="autoswarm-demo-")
        root = Path(owned_tmp.name)
    else:
        root = args.dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
    cache_dir = root / "cache"

    from shared_data.prepare import prepare

    _say(args, f"demo dir {root}: preparing the {DEMO_DATASET} corpus and tokenizer ...")
    prepare(DEMO_DATASET, cache_dir, progress=False)
    coordinator, address, admin_token = _start_coordinator(args, root)
    _say(args, f"coordinator on {address}; starting {args.volunteers} CPU volunteer(s), "
               f"{args.budget_s:g} s per run, until {args.runs} results")
    volunteers = _start_volunteers(args, root, address, cache_dir)

    from coordinator.client import CoordinatorClient, CoordinatorUnavailable

    client = CoordinatorClient(address, admin_token)
    started = time.monotonic()
    reported = -1
    try:
        while True:
            try:
                count = len(client.results())
            except CoordinatorUnavailable:
                count = reported
            if count != reported:
                reported = count
                _say(args, f"  [{time.monotonic() - started:5.0f} s] {reported}/{args.runs} results reported")
            if reported >= args.runs:
                break
            dead = [i for i, p in enumerate(volunteers) if p.poll() is not None]
            if len(dead) == len(volunteers):
                raise SystemExit(f"every volunteer exited; see {root}/volunteer-*.log")
            if time.monotonic() - started > args.timeout_s:
                raise SystemExit(f"gave up after {args.timeout_s:.0f} s with {reported} results")
            time.sleep(POLL_INTERVAL_S)
        _stop(volunteers, grace_s=5.0)  # a run still going is abandoned: the demo has what it needs
        document = summarize(client)
        from coordinator.cli import formatting as fmt
        from coordinator.cli.plot import plot_progress

        rows = fmt.result_rows(client.results(), client.history(limit=1000).merges)
        summary = plot_progress(rows, args.plot)
        document["plot"] = {"path": str(args.plot), "points": summary.points}
        document["dir"] = str(root) if owned_tmp is None else None
        if args.json:
            print(json.dumps(document, indent=2, sort_keys=True))
        else:
            from coordinator.cli import queries

            for command in (["leaderboard"], ["leaderboard", "--by", "volunteer"], ["history"]):
                print()
                queries.main([*command, "--coordinator", address, "--token", admin_token])
            print(f"\nprogress plot: {args.plot} ({summary.points} points)")
            if owned_tmp is None:
                print(f"everything else (logs, global branch, state) is in {root}")
        return 0
    finally:
        client.close()
        _stop(volunteers, grace_s=5.0)
        _stop([coordinator], grace_s=20.0)
        if owned_tmp is not None:
            owned_tmp.cleanup()
