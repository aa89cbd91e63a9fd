"""Dispatch `autoswarm SUBCOMMAND ...` to the module that owns it.

Each owner exposes `main(argv: list[str]) -> int` and parses its own flags. Imports are lazy:
`autoswarm coordinator serve` must work on a VM without torch, and `autoswarm --help` is instant.
"""

from __future__ import annotations

import importlib

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "coordinator": ("coordinator.cli.coordinator_cmd", "serve the coordinator and run operator commands"),
    "volunteer": ("volunteer.cli", "run the volunteer daemon, or check this machine"),
    "train": ("trainer.cli", "run one experiment locally, like `uv run train.py` upstream"),
    "demo": ("coordinator.cli.demo", "a local swarm: coordinator plus CPU volunteers on the pydoc corpus"),
    "simulate": ("coordinator.cli.simulate", "compare the acceptance policy with the naive loop on synthetic landscapes"),
    "leaderboard": ("coordinator.cli.queries", "per-class, per-volunteer or per-owner leaderboard"),
    "status": ("coordinator.cli.queries", "volunteers online, queue depth, in flight, recent merges"),
    "results": ("coordinator.cli.queries", "every result, as a table, TSV or Parquet"),
    "history": ("coordinator.cli.queries", "the global branch's story, optionally as a plot"),
    "best": ("coordinator.cli.queries", "write the head's train.py"),
    "propose": ("coordinator.cli.queries", "submit a hypothesis (diff or constant changes)"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: autoswarm SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "Run `autoswarm SUBCOMMAND --help` for its flags."]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"autoswarm: unknown subcommand {name!r}\n\n{_usage()}")
        return 2
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"autoswarm {name}: not available in this version yet (module {module_name} is missing)")
        return 2
    # Modules serving several subcommands take the subcommand name as their first argument.
    if module_name == "coordinator.cli.queries":
        return int(module.main([name, *rest]))
    return int(module.main(rest))
