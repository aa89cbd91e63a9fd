"""The `autoswarm` command. Subcommands import their modules lazily so the coordinator never pulls torch."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from coordinator.cli.main import run

    return run(sys.argv[1:] if argv is None else argv)
