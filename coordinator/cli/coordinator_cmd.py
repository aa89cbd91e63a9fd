"""`autoswarm coordinator ...`: serve, and the operator's commands.

Operator commands talk to a running coordinator with the admin token written to the data dir on
first start (`--admin-token-file DIR/admin.token`, or $AUTOSWARM_TOKEN).

State commands work on the data dir and store directly (coordinator/ops.py): `backup` (safe while
serving), `restore` (into an empty data dir and store), `migrate` (SQLite -> Redis; stop the
coordinator first), and `health` (the container's health check, through the gRPC health service).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the coordinator (gRPC)")
    env = os.environ.get
    p.add_argument("--listen", default=env("AUTOSWARM_LISTEN", "127.0.0.1:50051"), help="HOST:PORT (port 0: any free)")
    p.add_argument("--store", default=env("AUTOSWARM_STORE", ""), help="sqlite:///PATH or redis://HOST:PORT/DB")
    p.add_argument("--data-dir", default=env("AUTOSWARM_DATA_DIR", "coordinator-data"), type=Path)
    p.add_argument("--tls-cert", default=env("AUTOSWARM_TLS_CERT") or None, type=Path)
    p.add_argument("--tls-key", default=env("AUTOSWARM_TLS_KEY") or None, type=Path)
    p.add_argument("--invite-only", action="store_true", default=_env_bool("AUTOSWARM_INVITE_ONLY"))
    p.add_argument("--budget-s", type=float, default=float(env("AUTOSWARM_BUDGET_S", "300")))
    p.add_argument("--dataset", default=env("AUTOSWARM_DATASET", "climbmix"))
    p.add_argument("--tokenizer-hash", default=env("AUTOSWARM_TOKENIZER_HASH", ""),
                   help="pin the tokenizer (default: pinned by the first ok result)")
    p.add_argument("--metrics-port", type=int, default=int(env("AUTOSWARM_METRICS_PORT", "0")))
    p.add_argument("--branch", default=env("AUTOSWARM_BRANCH", "global"))
    p.add_argument("--no-proposer", action="store_true", help="do not generate built-in hypotheses")
    p.add_argument("--no-auto-revert", action="store_true", help="flag, but do not revert, merges a class got worse with")
    p.add_argument("--startup-allowance-s", type=float, default=float(env("AUTOSWARM_STARTUP_ALLOWANCE_S", "120")))
    p.add_argument("--policy-json", default=env("AUTOSWARM_POLICY_JSON", ""),
                   help="acceptance settings overrides as JSON (see coordinator/policy/README.md)")
    p.add_argument("--proposer-json", default=env("AUTOSWARM_PROPOSER_JSON", ""),
                   help="built-in proposer settings overrides as JSON, e.g. {\"small_factor\": 1.35} "
                   "(see coordinator/policy/README.md)")
    p.add_argument("--log-json", action="store_true", help="structured (JSON lines) logs")
    p.add_argument(
        "--decisions", choices=["process", "inline"], default=env("AUTOSWARM_DECISIONS", "process"),
        help="where judging, merging and planning run: a child process at lower priority (default), "
        "or this process's worker threads",
    )
    p.add_argument(
        "--serving-processes", type=int, default=int(env("AUTOSWARM_SERVING_PROCESSES", "1")),
        help="processes answering RPCs on the same port (SO_REUSEPORT): one on a 2-core machine "
        "that also runs Redis; more on larger ones (benchmarks/README.md, load section)",
    )
    p.add_argument(
        "--grpc-servers", type=int, default=int(env("AUTOSWARM_GRPC_SERVERS", "64")),
        help="gRPC servers per serving process on the same port (1-256): each accepts a call of "
        "each volunteer-loop method in parallel with the others (heartbeats are most calls)",
    )
    p.add_argument(
        "--event-loop", choices=["auto", "uvloop", "asyncio"], default=env("AUTOSWARM_EVENT_LOOP", "auto"),
        help="the serving processes' event loop: uvloop when installed (auto, the default), or asyncio",
    )
    rewrite_share = env("AUTOSWARM_HEARTBEAT_REWRITE_SHARE", "")
    p.add_argument(
        "--heartbeat-rewrite-share", type=float, default=float(rewrite_share) if rewrite_share else None,
        help="a heartbeat rewrites its lease's deadline once this share of the lease has passed since "
        "the last write; earlier ones are acknowledged from memory (0: every heartbeat writes; "
        "default one third)",
    )
    p.add_argument("--mirror-url", default=env("AUTOSWARM_MIRROR_URL", ""),
                   help="push the global branch to this git remote after every merge (optional)")


def _state_parsers(sub: argparse._SubParsersAction) -> None:
    env = os.environ.get

    def where(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=env("AUTOSWARM_DATA_DIR", "coordinator-data"), type=Path)
        p.add_argument("--store", default=env("AUTOSWARM_STORE", ""),
                       help="the coordinator's store URL (default: SQLite inside the data dir)")

    p = sub.add_parser("backup", help="archive the store, the global branch and the signing key (safe while serving)")
    where(p)
    p.add_argument("--branch", default=env("AUTOSWARM_BRANCH", "global"))
    p.add_argument("--output", "-o", type=Path, required=True, help="archive to write (.tar.gz, mode 0600)")
    p = sub.add_parser("restore", help="rebuild a coordinator from a backup into an empty data dir and store")
    p.add_argument("archive", type=Path)
    where(p)
    p = sub.add_parser("migrate", help="copy every record from one store to another, empty one (stop the coordinator)")
    p.add_argument("--from", dest="source", required=True, help="source store URL (e.g. sqlite:///DIR/state.sqlite)")
    p.add_argument("--to", dest="target", required=True, help="target store URL (e.g. redis://HOST:6379/0)")
    p = sub.add_parser("health", help="exit 0 when the coordinator's gRPC health service says SERVING")
    p.add_argument("--address", default="", help="HOST:PORT (default: loopback at the port of $AUTOSWARM_LISTEN)")
    p.add_argument("--tls-cert", type=Path, default=env("AUTOSWARM_TLS_CERT") or None,
                   help="the server's certificate: speak TLS and verify it (default $AUTOSWARM_TLS_CERT)")
    p.add_argument("--tls-ca", type=Path, default=env("AUTOSWARM_TLS_CA") or None,
                   help="CA to verify with (default: the certificate itself when self-signed, else public roots)")
    p.add_argument("--server-name", default=env("AUTOSWARM_TLS_SERVER_NAME", ""),
                   help="name to check the certificate against (default: its first DNS name)")
    p.add_argument("--timeout-s", type=float, default=5.0)


def _admin_parsers(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--coordinator", default=os.environ.get("AUTOSWARM_COORDINATOR", "127.0.0.1:50051"))
        p.add_argument("--admin-token-file", type=Path, default=None)
        p.add_argument("--tls-ca", type=Path, default=None)

    p = sub.add_parser("invite", help="create an invite token for an owner")
    common(p)
    p.add_argument("--owner", required=True)
    p.add_argument("--max-uses", type=int, default=1)
    p.add_argument("--ttl-s", type=float, default=0.0)
    p = sub.add_parser("token", help="create a proposer or admin token")
    common(p)
    p.add_argument("--role", choices=["proposer", "admin"], default="proposer")
    p.add_argument("--name", required=True)
    p.add_argument("--owner", default="")
    p = sub.add_parser("revoke-volunteer", help="revoke one volunteer; its results stop counting")
    common(p)
    p.add_argument("volunteer_id")
    p.add_argument("--reason", default="revoked by operator")
    p = sub.add_parser("revoke-owner", help="revoke every volunteer of an owner")
    common(p)
    p.add_argument("owner")
    p.add_argument("--reason", default="revoked by operator")
    p = sub.add_parser("rotate-key", help="rotate the signing key (volunteers follow via endorsement)")
    common(p)
    p.add_argument("--transition-s", type=float, default=7 * 24 * 3600.0)


def configure_logging(json_logs: bool) -> None:
    if json_logs:

        class JsonFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps(
                    {"ts": record.created, "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
                )

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _admin_client(args: argparse.Namespace) -> object:
    from coordinator.client import CoordinatorClient

    token = os.environ.get("AUTOSWARM_TOKEN", "")
    if args.admin_token_file is not None:
        token = Path(args.admin_token_file).read_text().strip()
    if not token:
        raise SystemExit("an admin token is needed: --admin-token-file DATA_DIR/admin.token or $AUTOSWARM_TOKEN")
    return CoordinatorClient(args.coordinator, token, tls_ca=args.tls_ca)


def _state_command(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from coordinator import ops

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "backup":
            manifest = ops.backup(args.data_dir, args.output, args.store, args.branch)
            print(json.dumps({"archive": str(args.output), "head": manifest.head, "store_dump": manifest.store_dump,
                              "public_key": manifest.public_key, "counts": manifest.counts}))
        elif args.command == "restore":
            report = ops.restore(args.archive, args.data_dir, args.store)
            print(json.dumps({"data_dir": str(args.data_dir), "head": report.head,
                              "public_key": report.public_key, "counts": report.counts}))
        elif args.command == "migrate":
            report = ops.migrate(args.source, args.target)
            print(json.dumps({"counts": report.counts}))
        else:
            address = args.address or ops.local_address(os.environ.get("AUTOSWARM_LISTEN", "127.0.0.1:50051"))
            tls = ops.tls_probe_for(args.tls_cert, args.tls_ca, args.server_name) if args.tls_cert else None
            serving = ops.check_health(address, tls, args.timeout_s)
            print(f"{address}: {'SERVING' if serving else 'NOT SERVING'}")
            return 0 if serving else 1
    except (ops.OpsError, OSError, ValueError, RedisError) as exc:  # a missing file, Redis down: say so
        print(f"autoswarm coordinator {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _settings_json(flag: str, text: str, kind: type) -> dict[str, object]:
    """The overrides in `text` (empty: none), checked by building `kind` from them now, so a bad
    value stops the server before it starts with a clear message instead of a traceback."""
    from coordinator.policy.settings import SettingsError, overrides_from_json

    if not text.strip():
        return {}
    values = overrides_from_json(text, flag)
    try:
        kind.from_dict(values)  # type: ignore[attr-defined]
    except SettingsError as exc:
        raise SettingsError(f"{flag}: {exc}") from exc
    return values


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="autoswarm coordinator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _admin_parsers(sub)
    _state_parsers(sub)
    args = parser.parse_args(argv)
    if args.command in ("backup", "restore", "migrate", "health"):
        return _state_command(args)

    if args.command == "serve":
        from coordinator.policy.proposer import ProposerSettings
        from coordinator.policy.settings import AcceptanceSettings, SettingsError
        from coordinator.server import ServerOptions, serve
        from coordinator.service.core import SwarmConfig
        from coordinator.service.event_loop import EventLoopError, choose_event_loop

        configure_logging(args.log_json)
        try:
            choose_event_loop(args.event_loop)
        except EventLoopError as exc:
            print(f"autoswarm coordinator serve: {exc}", file=sys.stderr)
            return 2
        if args.heartbeat_rewrite_share is not None and not 0.0 <= args.heartbeat_rewrite_share < 1.0:
            print("autoswarm coordinator serve: --heartbeat-rewrite-share must be at least 0 and below 1",
                  file=sys.stderr)
            return 2
        if not 1 <= args.grpc_servers <= 256:
            print("autoswarm coordinator serve: --grpc-servers must be between 1 and 256", file=sys.stderr)
            return 2
        try:
            policy_overrides = _settings_json("--policy-json", args.policy_json, AcceptanceSettings)
            proposer_overrides = _settings_json("--proposer-json", args.proposer_json, ProposerSettings)
        except SettingsError as exc:
            print(f"autoswarm coordinator serve: {exc}", file=sys.stderr)
            return 2
        tuning = {} if args.heartbeat_rewrite_share is None else {"heartbeat_rewrite_share": args.heartbeat_rewrite_share}
        swarm = SwarmConfig(
            budget_s=args.budget_s,
            dataset=args.dataset,
            tokenizer_hash=args.tokenizer_hash,
            heartbeat_interval_s=min(60.0, max(1.0, args.budget_s / 5)),
            startup_allowance_s=args.startup_allowance_s,
            invite_only=args.invite_only,
            auto_revert=not args.no_auto_revert,
            proposer_enabled=not args.no_proposer,
            policy_overrides=policy_overrides,
            proposer_overrides=proposer_overrides,
            **tuning,
        )
        options = ServerOptions(
            listen=args.listen,
            store_url=args.store,
            data_dir=args.data_dir,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            metrics_port=args.metrics_port,
            branch_name=args.branch,
            mirror_url=args.mirror_url,
            swarm=swarm,
            decisions=args.decisions,
            log_json=args.log_json,
            serving_processes=args.serving_processes,
            event_loop=args.event_loop,
            grpc_servers=args.grpc_servers,
        )
        serve(options)
        return 0

    from autoswarm.v1 import swarm_pb2 as pb

    client = _admin_client(args)
    if args.command == "invite":
        print(client.create_invite(args.owner, args.max_uses, args.ttl_s))  # type: ignore[attr-defined]
    elif args.command == "token":
        role = pb.ROLE_ADMIN if args.role == "admin" else pb.ROLE_PROPOSER
        response = client.create_token(role, args.name, args.owner)  # type: ignore[attr-defined]
        print(json.dumps({"principal_id": response.principal_id, "token": response.token}))
    elif args.command == "revoke-volunteer":
        response = client.revoke_volunteer(args.volunteer_id, args.reason)  # type: ignore[attr-defined]
        print(f"revoked {args.volunteer_id}; {response.results_discounted} result(s) no longer count")
    elif args.command == "revoke-owner":
        response = client.revoke_owner(args.owner, args.reason)  # type: ignore[attr-defined]
        print(f"revoked {response.volunteers_revoked} volunteer(s) of {args.owner}; "
              f"{response.results_discounted} result(s) no longer count")
    elif args.command == "rotate-key":
        response = client.rotate_key(args.transition_s)  # type: ignore[attr-defined]
        print(f"new key {response.new_public_key.hex()} (previous {response.previous_public_key.hex()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
