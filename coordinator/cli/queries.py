"""`autoswarm leaderboard | status | results | history | best | propose`: the swarm seen from outside.

Every command talks to one coordinator (`--coordinator HOST:PORT`, default $AUTOSWARM_COORDINATOR
or 127.0.0.1:50051) with a token (`--token`, `--token-file`, $AUTOSWARM_TOKEN or
$AUTOSWARM_TOKEN_FILE) and, for TLS, `--tls-ca` or $AUTOSWARM_TLS_CA. People get tables; `--json`
prints one JSON document on stdout whose shape is stable (see coordinator/cli/formatting.py and
program.md): fields are only ever added, and its "schema" key names the shape and version.

Exit codes: 0 done; 1 the coordinator refused or could not be reached (with `--json`, stdout holds
`{"schema": "autoswarm.error/v1", "error": {"type": ..., "message": ...}}`); 2 bad usage;
3 `propose --wait` gave up waiting before the hypothesis reached an outcome.

No torch here: this module runs on the coordinator's VM.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import enum
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.cli import formatting as fmt

DEFAULT_COORDINATOR = "127.0.0.1:50051"
DEFAULT_POLL_S = 10.0  # how often `propose --wait` asks about its hypothesis
HISTORY_FOR_STATUS_LIMIT = 1000  # merges fetched to tell keep from discard
CONSTANT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # train.py's hyperparameters are UPPER_CASE
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
DURATION_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

COMMANDS = ("leaderboard", "status", "results", "history", "best", "propose")


class ExitCode(enum.IntEnum):
    OK = 0
    COORDINATOR_ERROR = 1
    USAGE = 2
    WAIT_TIMEOUT = 3


class UsageError(ValueError):
    """Bad flags or arguments: reported before anything is sent."""


class WaitTimeout(TimeoutError):
    def __init__(self, last: pb.GetHypothesisResponse | None) -> None:
        super().__init__("gave up waiting for the hypothesis to reach an outcome")
        self.last = last


# ---------------------------------------------------------------------------------------------
# Pure helpers (tested without a server)
# ---------------------------------------------------------------------------------------------


def resolve_token(token: str | None, token_file: Path | None, environ: Mapping[str, str]) -> str:
    """--token, else --token-file, else $AUTOSWARM_TOKEN, else $AUTOSWARM_TOKEN_FILE. Every query
    RPC needs one."""
    if token and token_file:
        raise UsageError("give either --token or --token-file, not both")
    if token is None and token_file is None:
        token = environ.get("AUTOSWARM_TOKEN", "")
        if not token.strip() and environ.get("AUTOSWARM_TOKEN_FILE"):
            token_file = Path(environ["AUTOSWARM_TOKEN_FILE"])
    if token_file is not None:
        try:
            text = token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not text:
            raise UsageError(f"token file {token_file} is empty")
        return text
    text = (token or "").strip()
    if not text:
        raise UsageError("no token: pass --token or --token-file, or set AUTOSWARM_TOKEN or AUTOSWARM_TOKEN_FILE")
    return text


def parse_since(text: str, now_unix_s: float) -> float:
    """`--since`: seconds since the epoch, a duration back from now (90s, 15m, 2h, 7d, 1w), or an
    ISO date/time (naive times are local)."""
    text = text.strip()
    match = DURATION.match(text)
    if match:
        return now_unix_s - float(match.group(1)) * DURATION_UNIT_S[match.group(2)]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0:
            raise UsageError(f"--since {text!r}: a time cannot be negative")
        return value
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected seconds since the epoch, a duration like 2h or 7d, or an ISO date"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


def parse_constant_assignments(items: Sequence[str]) -> dict[str, str]:
    """`--set NAME=VALUE ...` -> {NAME: VALUE}; VALUE must be a Python literal (as the coordinator
    requires: `2**17` is an expression, write 131072)."""
    changes: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise UsageError(f"--set {item!r}: expected NAME=VALUE")
        if not CONSTANT_NAME.match(name):
            raise UsageError(f"--set {item!r}: {name!r} is not an UPPER_CASE train.py constant")
        if name in changes:
            raise UsageError(f"--set: {name} given twice")
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise UsageError(f"--set {item!r}: {value!r} is not a Python literal (strings need quotes)") from None
        changes[name] = value
    return changes


def follow_hypothesis(
    fetch: Callable[[], pb.GetHypothesisResponse],
    on_update: Callable[[pb.GetHypothesisResponse], None],
    *,
    poll_s: float,
    timeout_s: float | None,
    retry_on: tuple[type[Exception], ...] = (),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> pb.GetHypothesisResponse:
    """Poll until the hypothesis reaches a terminal state; `on_update` sees every fetch whose state
    or result count changed. Errors in `retry_on` (a coordinator restarting) are retried at the next
    poll. Raises WaitTimeout (carrying the last answer, if any) after `timeout_s`."""
    deadline = None if timeout_s is None else clock() + timeout_s
    seen: tuple[int, int] | None = None
    last: pb.GetHypothesisResponse | None = None
    while True:
        try:
            last = fetch()
        except retry_on as exc:
            print(f"still waiting: {exc}", file=sys.stderr)
        else:
            marker = (last.hypothesis.state, len(last.results))
            if marker != seen:
                on_update(last)
                seen = marker
            if last.hypothesis.state in fmt.TERMINAL_HYPOTHESIS_STATES:
                return last
        if deadline is not None and clock() + poll_s > deadline:
            raise WaitTimeout(last)
        sleep(poll_s)


def _when(unix_s: float) -> str:
    if unix_s <= 0:
        return "-"
    return dt.datetime.fromtimestamp(unix_s, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def _signed(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, "+" + spec)


def _deltas(by_class: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:+.4f}" for name, value in sorted(by_class.items())) or "-"


# ---------------------------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------------------------


def _common_flags() -> argparse.ArgumentParser:
    env = os.environ.get
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--coordinator", default=env("AUTOSWARM_COORDINATOR") or DEFAULT_COORDINATOR,
                       metavar="HOST:PORT", help="coordinator address (default $AUTOSWARM_COORDINATOR or %(default)s)")
    group.add_argument("--token", default=None, help="your token (default $AUTOSWARM_TOKEN)")
    group.add_argument("--token-file", type=Path, default=None,
                       help="read the token from this file (default $AUTOSWARM_TOKEN_FILE)")
    group.add_argument("--tls-ca", type=Path, default=Path(env("AUTOSWARM_TLS_CA")) if env("AUTOSWARM_TLS_CA") else None,
                       help="CA certificate to verify a TLS coordinator (default $AUTOSWARM_TLS_CA)")
    group.add_argument("--timeout-s", type=float, default=30.0, help="per-call deadline (default %(default)s)")
    common.add_argument("--json", action="store_true", help="print one JSON document (stable shape) instead of tables")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(prog="autoswarm", description="Query and steer an autoswarm coordinator.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("leaderboard", parents=[common], help="per-class, per-volunteer or per-owner leaderboard")
    p.add_argument("--class", dest="hardware_class", default="", metavar="NAME", help="only this hardware class")
    p.add_argument("--by", choices=["class", "volunteer", "owner"], default="class")

    sub.add_parser("status", parents=[common], help="volunteers online, queue depth, in flight, recent merges")

    p = sub.add_parser("results", parents=[common], help="every result, as a table, TSV or Parquet")
    p.add_argument("--class", dest="hardware_class", default="", metavar="NAME")
    p.add_argument("--status", choices=sorted(fmt.RUN_STATUS_BY_NAME), default=None, help="run status")
    p.add_argument("--since", default=None, help="epoch seconds, a duration back (2h, 7d) or an ISO date")
    p.add_argument("--hypothesis", default="", metavar="ID", help="only results of this hypothesis")
    p.add_argument("--volunteer", default="", metavar="ID", help="only results of this volunteer")
    p.add_argument("--tsv", type=Path, default=None, metavar="FILE", help="write upstream-style TSV ('-': stdout)")
    p.add_argument("--parquet", type=Path, default=None, metavar="FILE", help="write Parquet (schema in formatting.py)")

    p = sub.add_parser("history", parents=[common], help="the global branch's story, optionally as a plot")
    p.add_argument("--limit", type=int, default=100, help="newest merges to show (default %(default)s)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write the progress plot")
    p.add_argument("--plot-width-px", type=int, default=1600)
    p.add_argument("--plot-height-px", type=int, default=None, help="default: 450 per class")

    p = sub.add_parser("best", parents=[common], help="write the head's train.py")
    p.add_argument("--class", dest="hardware_class", default="", metavar="NAME",
                   help="apply this class's profile (its pinned constants) to train.py")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write train.py ('-': stdout)")
    p.add_argument("--profiles-out", type=Path, default=None, metavar="FILE", help="also write profiles.json here")

    p = sub.add_parser("propose", parents=[common], help="submit a hypothesis (diff or constant changes)")
    p.add_argument("--title", default=None, help="one line: what the change is")
    p.add_argument("--rationale", default="", help="why it should lower val_bpb")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--patch", type=Path, default=None, metavar="FILE",
                        help="unified diff of train.py and/or profiles.json against --base ('-': stdin)")
    change.add_argument("--set", dest="assignments", action="append", default=[], metavar="NAME=VALUE",
                        help="change a train.py constant to a Python literal (repeatable)")
    change.add_argument("--follow", default=None, metavar="ID", help="do not submit: follow an existing hypothesis")
    p.add_argument("--base", default="", metavar="COMMIT", help="the commit the change is against (default: head)")
    p.add_argument("--source", choices=["human", "agent"], default="human", help="who proposes (default %(default)s)")
    p.add_argument("--priority", type=float, default=0.0)
    p.add_argument("--wait", action="store_true", help="follow the hypothesis to its outcome")
    p.add_argument("--poll-s", type=float, default=DEFAULT_POLL_S, help="seconds between checks while waiting")
    p.add_argument("--wait-timeout-s", type=float, default=None, help="give up waiting after this long (exit 3)")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check everything that can be checked without a coordinator (raises UsageError)."""
    args = build_parser().parse_args(list(argv))
    args.coordinator = args.coordinator.strip()
    if not args.coordinator or any(c.isspace() for c in args.coordinator):
        raise UsageError(f"--coordinator {args.coordinator!r}: expected HOST:PORT")
    if args.command == "propose":
        if args.follow:
            if args.title:
                raise UsageError("--follow follows an existing hypothesis; it takes no --title")
            args.wait = True
        else:
            if not args.title or not args.title.strip():
                raise UsageError("propose needs --title (or --follow ID)")
            if args.patch is None and not args.assignments:
                raise UsageError("propose needs the change: --patch FILE or --set NAME=VALUE")
            args.constant_changes = parse_constant_assignments(args.assignments)
        if args.poll_s <= 0:
            raise UsageError("--poll-s must be positive")
        if args.wait_timeout_s is not None and args.wait_timeout_s < 0:
            raise UsageError("--wait-timeout-s cannot be negative")
    if args.command == "results":
        if args.since is not None:
            args.since_unix_s = parse_since(args.since, time.time())
        if args.json and args.tsv is not None and str(args.tsv) == "-":
            raise UsageError("--tsv - and --json both want stdout")
    if args.command == "history" and args.limit <= 0:
        raise UsageError("--limit must be positive")
    if args.command == "best" and str(args.out) == "-" and args.json:
        raise UsageError("--out - prints train.py itself; it cannot be combined with --json")
    return args


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _merged(client: Any) -> list[pb.MergeRecord]:
    return list(client.history(limit=HISTORY_FOR_STATUS_LIMIT).merges)


BY_VALUES = {
    "class": pb.GetLeaderboardRequest.BY_CLASS,
    "volunteer": pb.GetLeaderboardRequest.BY_VOLUNTEER,
    "owner": pb.GetLeaderboardRequest.BY_OWNER,
}


def cmd_leaderboard(args: argparse.Namespace, client: Any) -> int:
    response = client.leaderboard(by=BY_VALUES[args.by], hardware_class=args.hardware_class)
    document = fmt.leaderboard_to_json(response, args.by, args.hardware_class)
    if args.json:
        _print(fmt.dumps(document))
        return ExitCode.OK
    rows = document["rows"]
    if args.by == "class":
        table = [
            [r["key"], fmt.fmt_float(r["baseline_val_bpb"], ".6f"), fmt.fmt_float(r["best_val_bpb"], ".6f"),
             fmt.fmt_float(r["class_sigma"], ".6f"), str(r["merged_wins"]), f"{r['total_gain_bpb']:+.6f}",
             _signed(r["total_gain_percent"], ".3f"), _signed(r["total_gain_sigma"], ".1f"), str(r["runs"]),
             f"{r['gpu_hours']:.2f}", f"{100 * r['failure_rate']:.1f}"]
            for r in rows
        ]
        headers = ["class", "baseline", "best", "sigma", "wins", "gain_bpb", "gain_%", "gain_sigma", "runs",
                   "gpu_h", "fail_%"]
        _print(fmt.render_table(headers, table, right_align=range(1, len(headers))))
    else:
        table = [
            [r["key"], r["display_name"] or "", r["hardware_class"], str(r["runs"]), f"{r['gpu_hours']:.2f}",
             str(r["confirmed_wins"]), fmt.fmt_float(r["best_val_bpb"], ".6f"), f"{100 * r['failure_rate']:.1f}"]
            for r in rows
        ]
        headers = [args.by, "name", "classes", "runs", "gpu_h", "wins", "best", "fail_%"]
        _print(fmt.render_table(headers, table, right_align=range(3, len(headers))))
    merges = [m for m in document["merges"] if not m["reverted_by"]]
    if merges:
        _print("\nmerged wins (gain in bpb per class, positive is better):")
        _print(fmt.render_table(
            ["merged", "commit", "title", "gain"],
            [[_when(m["merged_unix_s"]), m["commit"][:7], fmt.shorten(m["title"], 50), _deltas(m["delta_bpb_by_class"])]
             for m in merges],
        ))
    return ExitCode.OK


def cmd_status(args: argparse.Namespace, client: Any) -> int:
    document = fmt.status_to_json(client.status())
    if args.json:
        _print(fmt.dumps(document))
        return ExitCode.OK
    settings = document["settings"]
    _print(
        f"head {document['head_commit'][:12] or '-'}  volunteers online {document['volunteers_online']}  "
        f"queue {document['queue_depth']}  in flight {document['units_in_flight']}  "
        f"awaiting judgement {document['undecided_results']}\n"
        f"dataset {settings['dataset_name'] or '-'}  budget {settings['budget_s']:g} s\n"
    )
    _print(fmt.render_table(
        ["class", "online", "in_flight", "baseline", "sigma", "samples"],
        [[c["hardware_class"], str(c["volunteers_online"]), str(c["units_in_flight"]),
          fmt.fmt_float(c["baseline_val_bpb"], ".6f"), fmt.fmt_float(c["class_sigma"], ".6f"), str(c["baseline_samples"])]
         for c in document["classes"]],
        right_align=range(1, 6),
    ))
    if document["recent_merges"]:
        _print("\nrecent merges:")
        for m in document["recent_merges"]:
            reverted = f"  (reverted: {m['revert_reason'] or m['reverted_by']})" if m["reverted_by"] else ""
            _print(f"  {_when(m['merged_unix_s'])}  {m['commit'][:7]}  {m['title']}  [{_deltas(m['delta_bpb_by_class'])}]{reverted}")
    return ExitCode.OK


def cmd_results(args: argparse.Namespace, client: Any) -> int:
    filters: dict[str, Any] = {}
    if args.hardware_class:
        filters["hardware_class"] = args.hardware_class
    if args.status:
        filters["status"] = fmt.RUN_STATUS_BY_NAME[args.status]
    if args.since is not None:
        filters["since_unix_s"] = args.since_unix_s
    if args.hypothesis:
        filters["hypothesis_id"] = args.hypothesis
    if args.volunteer:
        filters["volunteer_id"] = args.volunteer
    records = fmt.chronological(client.results(**filters))
    rows = fmt.result_rows(records, _merged(client))
    tsv_to_stdout = args.tsv is not None and str(args.tsv) == "-"
    if args.tsv is not None:
        text = fmt.rows_to_tsv(rows)
        if tsv_to_stdout:
            sys.stdout.write(text)
        else:
            _write_text(args.tsv, text)
            _note(f"wrote {len(rows)} results to {args.tsv}")
    if args.parquet is not None:
        fmt.write_parquet(fmt.rows_to_arrow(rows), args.parquet)
        _note(f"wrote {len(rows)} results to {args.parquet}")
    if args.json:
        _print(fmt.dumps(fmt.results_to_json(rows)))
    elif not tsv_to_stdout and args.tsv is None and args.parquet is None:
        table = [
            [str(r["commit"]), str(r["class"]), str(r["kind"]), str(r["status"]), f"{r['val_bpb']:.6f}",
             _signed(r["delta_bpb"], ".6f"), _signed(r["delta_sigma"], ".2f"), str(r["volunteer"]),
             fmt.shorten(str(r["description"]), 48)]
            for r in rows
        ]
        _print(fmt.render_table(
            ["commit", "class", "kind", "status", "val_bpb", "delta_bpb", "delta_sigma", "volunteer", "description"],
            table, right_align=(4, 5, 6),
        ))
    return ExitCode.OK


def cmd_history(args: argparse.Namespace, client: Any) -> int:
    response = client.history(limit=args.limit)
    document = fmt.history_to_json(response)
    if args.plot is not None:
        from coordinator.cli.plot import plot_progress

        merges = response.merges if args.limit >= HISTORY_FOR_STATUS_LIMIT else _merged(client)
        rows = fmt.result_rows(client.results(), merges)
        summary = plot_progress(rows, args.plot, width_px=args.plot_width_px, height_px=args.plot_height_px)
        document["plot"] = {
            "path": str(summary.path), "classes": summary.classes, "points": summary.points,
            "labels": summary.labels, "width_px": summary.width_px, "height_px": summary.height_px,
        }
        if not args.json:
            _note(f"wrote {summary.path}: {summary.points} results in {summary.classes} classes, {summary.labels} merged wins labelled")
    if args.json:
        _print(fmt.dumps(document))
        return ExitCode.OK
    _print(fmt.render_table(
        ["merged", "commit", "hypothesis", "title", "gain (bpb by class)", "reverted"],
        [[_when(m["merged_unix_s"]), m["commit"][:7], m["hypothesis_id"], fmt.shorten(m["title"], 50),
          _deltas(m["delta_bpb_by_class"]), (m["reverted_by"] or "")[:7]]
         for m in document["merges"]],
    ))
    return ExitCode.OK


def cmd_best(args: argparse.Namespace, client: Any) -> int:
    response = client.best(hardware_class=args.hardware_class)
    if str(args.out) == "-":
        sys.stdout.write(response.train_py)
    else:
        _write_text(args.out, response.train_py)
    if args.profiles_out is not None:
        _write_text(args.profiles_out, response.profiles_json)
    document = {
        "schema": "autoswarm.best/v1",
        "commit": response.commit,
        "hardware_class": args.hardware_class or None,
        "val_bpb": response.val_bpb if response.val_bpb > 0 else None,
        "out": str(args.out),
        "bytes": len(response.train_py.encode()),
        "profiles_out": str(args.profiles_out) if args.profiles_out else None,
    }
    if args.json:
        _print(fmt.dumps(document))
    elif str(args.out) != "-":
        baseline = f", class baseline {response.val_bpb:.6f}" if response.val_bpb > 0 else ""
        profile = f" with the {args.hardware_class} profile" if args.hardware_class else ""
        _print(f"wrote {args.out}{profile} (commit {response.commit[:12]}{baseline})")
    return ExitCode.OK


def _describe_update(response: pb.GetHypothesisResponse, shown: set[str]) -> str:
    """The state line, then the results not shown before (their ids are added to `shown`)."""
    h = response.hypothesis
    lines = [f"{_when(time.time())}  {h.hypothesis_id}: {fmt.hypothesis_state_name(h.state)}"
             + (f" ({h.state_reason})" if h.state_reason else "")]
    for row in fmt.hypothesis_outcome_to_json(response)["results"]:
        if row["result_id"] in shown:
            continue
        shown.add(str(row["result_id"]))
        if row["run_status"] != "ok":
            lines.append(f"    {row['class']} {row['kind']} by {row['volunteer']}: {row['run_status']} {row['error']}")
        else:
            lines.append(
                f"    {row['class']} {row['kind']} by {row['volunteer']}: val_bpb {row['val_bpb']:.6f}"
                f"  delta {_signed(row['delta_bpb'], '.6f')} bpb, {_signed(row['delta_percent'], '.3f')} %,"
                f" {_signed(row['delta_sigma'], '.2f')} sigma"
            )
    return "\n".join(lines)


def cmd_propose(args: argparse.Namespace, client: Any) -> int:
    if args.follow:
        hypothesis_id = args.follow
    else:
        patch = ""
        if args.patch is not None:
            try:
                patch = sys.stdin.read() if str(args.patch) == "-" else args.patch.read_text()
            except OSError as exc:
                raise UsageError(f"cannot read --patch {args.patch}: {exc.strerror}") from None
            if not patch.strip():
                raise UsageError(f"--patch {args.patch} is empty")
        source = pb.HYPOTHESIS_SOURCE_AGENT if args.source == "agent" else pb.HYPOTHESIS_SOURCE_HUMAN
        submitted = client.submit(
            args.title.strip(), args.rationale, patch=patch, base_commit=args.base,
            constant_changes=args.constant_changes, source=source, priority=args.priority,
        )
        hypothesis_id = submitted.hypothesis_id
        if not args.wait:
            document = {"schema": "autoswarm.proposal/v1", "hypothesis_id": hypothesis_id,
                        "state": fmt.hypothesis_state_name(submitted.state)}
            _print(fmt.dumps(document) if args.json else f"{hypothesis_id} {document['state']}")
            return ExitCode.OK
        if not args.json:
            _print(f"{hypothesis_id} submitted; following it (Ctrl-C stops following, not the hypothesis)")

    shown: set[str] = set()

    def on_update(response: pb.GetHypothesisResponse) -> None:
        if not args.json:
            _print(_describe_update(response, shown))

    from coordinator.client import CoordinatorUnavailable

    try:
        final = follow_hypothesis(
            lambda: client.hypothesis(hypothesis_id), on_update, poll_s=args.poll_s,
            timeout_s=args.wait_timeout_s, retry_on=(CoordinatorUnavailable,),
        )
    except WaitTimeout as timeout:
        state = "unknown"
        if timeout.last is not None:
            state = fmt.hypothesis_state_name(timeout.last.hypothesis.state)
            if args.json:
                _print(fmt.dumps(fmt.hypothesis_outcome_to_json(timeout.last)))
        _note(f"{hypothesis_id}: still {state} after {args.wait_timeout_s:g} s; "
              f"follow it later with `autoswarm propose --follow {hypothesis_id}`")
        return ExitCode.WAIT_TIMEOUT
    if args.json:
        _print(fmt.dumps(fmt.hypothesis_outcome_to_json(final)))
    else:
        merged = f" as {final.hypothesis.merged_commit[:12]}" if final.hypothesis.merged_commit else ""
        _print(f"outcome: {fmt.hypothesis_state_name(final.hypothesis.state)}{merged}")
    return ExitCode.OK


HANDLERS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "leaderboard": cmd_leaderboard,
    "status": cmd_status,
    "results": cmd_results,
    "history": cmd_history,
    "best": cmd_best,
    "propose": cmd_propose,
}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _fail(args_json: bool, command: str, error_type: str, message: str, code: ExitCode) -> int:
    if args_json:
        _print(fmt.dumps({"schema": "autoswarm.error/v1", "error": {"type": error_type, "message": message}}))
    print(f"autoswarm {command}: {error_type}: {message}", file=sys.stderr)
    return code


def connect(args: argparse.Namespace) -> Any:
    from coordinator.client import CoordinatorClient

    token = resolve_token(args.token, args.token_file, os.environ)
    if args.tls_ca is not None and str(args.tls_ca) != "system" and not args.tls_ca.is_file():
        raise UsageError(f"--tls-ca {args.tls_ca}: no such file")
    return CoordinatorClient(args.coordinator, token, tls_ca=args.tls_ca, timeout_s=args.timeout_s)


def main(argv: Sequence[str]) -> int:
    """`argv` starts with the subcommand name (coordinator/cli/main.py passes it through)."""
    import grpc

    from coordinator.client import CoordinatorUnavailable
    from coordinator.store.errors import StoreError

    command = argv[0] if argv else "?"
    wants_json = "--json" in argv
    try:
        args = parse_args(argv)
    except UsageError as exc:
        return _fail(wants_json, command, "UsageError", str(exc), ExitCode.USAGE)
    try:
        client = connect(args)
    except UsageError as exc:
        return _fail(args.json, command, "UsageError", str(exc), ExitCode.USAGE)
    try:
        with client:
            return int(HANDLERS[args.command](args, client))
    except UsageError as exc:
        return _fail(args.json, command, "UsageError", str(exc), ExitCode.USAGE)
    except CoordinatorUnavailable as exc:
        return _fail(args.json, command, "CoordinatorUnavailable", str(exc), ExitCode.COORDINATOR_ERROR)
    except StoreError as exc:
        return _fail(args.json, command, type(exc).__name__, str(exc), ExitCode.COORDINATOR_ERROR)
    except grpc.RpcError as exc:
        # A status outside the typed table (INTERNAL, UNIMPLEMENTED from an older coordinator).
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        name = code.name if code is not None else "UNKNOWN"
        return _fail(args.json, command, f"Rpc{name.title().replace('_', '')}", details or name,
                     ExitCode.COORDINATOR_ERROR)
    except OSError as exc:
        return _fail(args.json, command, type(exc).__name__, str(exc), ExitCode.COORDINATOR_ERROR)
    except KeyboardInterrupt:
        return _fail(args.json, command, "Interrupted", "stopped by the user", ExitCode.COORDINATOR_ERROR)
