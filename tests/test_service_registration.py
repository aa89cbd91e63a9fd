"""Pre-registering only the volunteer loop's methods (coordinator/service/registration.py), on a
real grpc.aio server over a socket: every method is still served, by the same handler."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from autoswarm.v1 import swarm_pb2 as pb
from autoswarm.v1 import swarm_pb2_grpc as pb_grpc
from coordinator.service.registration import HOT_METHODS, HotMethodsOnly, add_services


class _Servicer(pb_grpc.CoordinatorServicer):
    """Answers one hot method and one other; the rest stay unimplemented."""

    async def ExtendLease(self, request, context):
        return pb.ExtendLeaseResponse(lease_deadline_unix_s=len(request.lease_id))

    async def GetSwarmConfig(self, request, context):
        return pb.GetSwarmConfigResponse()


async def _serve_and_call(hot):
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    registered = add_services(
        server,
        [(pb_grpc.add_CoordinatorServicer_to_server, _Servicer()),
         (health_pb2_grpc.add_HealthServicer_to_server, health_servicer)],
        hot,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            extended = await stub.ExtendLease(pb.ExtendLeaseRequest(lease_id="lease-42"), timeout=10)
            await stub.GetSwarmConfig(pb.GetSwarmConfigRequest(), timeout=10)
            checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListHypotheses(pb.ListHypothesesRequest(), timeout=10)
        return registered, extended, checked, (refused.value.code(), refused.value.details())
    finally:
        await server.stop(None)


def test_only_the_volunteer_loop_is_preregistered_and_every_method_is_still_served():
    registered, extended, checked, refused = asyncio.run(_serve_and_call(HOT_METHODS))
    assert sorted(registered) == sorted(HOT_METHODS)
    assert extended.lease_deadline_unix_s == len("lease-42")  # the registered path reaches the handler
    assert checked.status == health_pb2.HealthCheckResponse.SERVING  # the generic path does too
    # The servicer's own answer for a method it leaves unimplemented, not gRPC's "unknown method".
    assert refused[0] == grpc.StatusCode.UNIMPLEMENTED
    assert "Method not implemented!" in refused[1]


def test_a_method_outside_the_hot_set_is_served_through_the_generic_path_alone():
    registered, extended, _, _ = asyncio.run(_serve_and_call({"/grpc.health.v1.Health/Check"}))
    assert registered == ["/grpc.health.v1.Health/Check"]
    assert extended.lease_deadline_unix_s == len("lease-42")


def test_generic_handlers_pass_through_untouched():
    added = []

    class _Recorder:
        def add_generic_rpc_handlers(self, handlers):
            added.extend(handlers)

        def add_registered_method_handlers(self, service, handlers):
            added.append((service, sorted(handlers)))

    proxy = HotMethodsOnly(_Recorder(), HOT_METHODS)  # type: ignore[arg-type]
    pb_grpc.add_CoordinatorServicer_to_server(_Servicer(), proxy)
    generic = [h for h in added if isinstance(h, grpc.GenericRpcHandler)]
    assert len(generic) == 1
    assert ("autoswarm.v1.Coordinator", ["ExtendLease", "LeaseWork", "ReportResult"]) in added
