"""Which asyncio event loop the serving processes run on.

uvloop (libuv underneath) runs the loop's own bookkeeping in C: every RPC is a few dozen loop
callbacks (the gRPC completion, the handler task, the store's replies), and on a 2-core VM the
plain loop's share of that is measurable (benchmarks/README.md, load section). grpc.aio runs on
either. "auto" takes uvloop when it is installed and says so; without it (Windows, or an install
that left it out) the standard loop serves, and the log says why.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("autoswarm.coordinator")

T = TypeVar("T")

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


class EventLoopError(ValueError):
    """An event loop was asked for by name and cannot be had."""


def choose_event_loop(requested: str) -> str:
    """The loop to run ('uvloop' or 'asyncio') for a request of 'auto', 'uvloop' or 'asyncio'."""
    if requested not in EVENT_LOOPS:
        raise EventLoopError(f"unknown event loop {requested!r} (choose from {', '.join(EVENT_LOOPS)})")
    available = importlib.util.find_spec("uvloop") is not None
    if requested == "uvloop" and not available:
        raise EventLoopError("event loop 'uvloop' requested but uvloop is not installed (pip install uvloop)")
    if requested == "auto":
        return "uvloop" if available else "asyncio"
    return requested


def run(main: Coroutine[Any, Any, T], requested: str = "auto") -> T:
    """asyncio.run(main) on the chosen loop."""
    chosen = choose_event_loop(requested)
    if chosen == "uvloop":
        import uvloop

        log.info("event loop: uvloop %s", uvloop.__version__)
        return uvloop.run(main)
    if requested == "auto":
        log.info("event loop: asyncio (uvloop is not installed; `pip install uvloop` serves more RPCs per core)")
    else:
        log.info("event loop: asyncio")
    return asyncio.run(main)
