"""Which methods each grpc.aio server pre-registers with gRPC core.

A grpc.aio server keeps one accept outstanding per pre-registered method, plus one for every
other method together (the generic path), and its accept loop waits on all of them with
`asyncio.wait` after every accepted call. The generated `add_*_to_server` functions register
every method of a service: about twenty here, so each accepted call paid for re-arming a wait on
twenty futures (8% of the serving process's samples under load, benchmarks/README.md) to serve
the three methods that carry the traffic.

Only the volunteer loop's calls are registered; every other method is still served, through the
generic handler the same generated functions add. Their behaviour is identical (the same
handlers, interceptor and serializers); only the path by which gRPC core hands the call over
differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

# Nearly every call of a running swarm: per volunteer a lease and a report per run, a heartbeat
# a minute.
HOT_METHODS = frozenset({
    "/autoswarm.v1.Coordinator/LeaseWork",
    "/autoswarm.v1.Coordinator/ExtendLease",
    "/autoswarm.v1.Coordinator/ReportResult",
})


class HotMethodsOnly:
    """Stands in for a grpc.aio server while the generated add_*_to_server functions run:
    generic handlers pass through, and of the methods they pre-register only `hot` ones are."""

    def __init__(self, server: grpc.aio.Server, hot: Iterable[str] = HOT_METHODS) -> None:
        self._server = server
        self._hot = frozenset(hot)
        self.registered: list[str] = []  # fully qualified, in registration order

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        chosen = {name: h for name, h in handlers.items() if f"/{service}/{name}" in self._hot}
        if chosen:
            self._server.add_registered_method_handlers(service, chosen)
            self.registered += [f"/{service}/{name}" for name in chosen]


def add_services(
    server: grpc.aio.Server, adders: Iterable[tuple[Callable[[Any, Any], None], Any]], hot: Iterable[str] = HOT_METHODS
) -> list[str]:
    """Add each (generated add_*_to_server, servicer) to server, pre-registering only `hot`
    methods; returns the methods pre-registered."""
    proxy = HotMethodsOnly(server, hot)
    for add, servicer in adders:
        add(servicer, proxy)
    return proxy.registered
