"""A small synchronous client for the coordinator, used by volunteers, the CLI and tests.

Statuses come back as the same typed errors the store raises (coordinator/service/errors.py), so
callers handle one set of exceptions on both sides of the wire. Transport failures (coordinator
down, deadline exceeded) raise `CoordinatorUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from autoswarm.v1 import swarm_pb2 as pb
from autoswarm.v1 import swarm_pb2_grpc as pb_grpc
from coordinator.service.errors import error_for

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
SYSTEM_CAS = "system"  # tls_ca value: verify the server against the system's certificate authorities
TRANSPORT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class CoordinatorUnavailable(ConnectionError):
    """The coordinator could not be reached (or did not answer in time): retry later."""


class CoordinatorClient:
    def __init__(
        self,
        target: str,
        token: str | None = None,
        *,
        tls_ca: Path | str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        own_connection: bool = False,
    ) -> None:
        """tls_ca: a CA bundle (PEM) for a private certificate; "system" for the system's CAs
        (a publicly signed certificate). Without it, port 443 means TLS with the system's CAs and
        any other port plain text (loopback, tests, a TLS-terminating sidecar). own_connection:
        do not share a connection with other clients of this process to the same target (gRPC
        shares them by default), e.g. to reach every serving process behind one port."""
        self.target = target
        self.token = token
        self.timeout_s = timeout_s
        options: list[tuple[str, object]] = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        if own_connection:
            options.append(("grpc.use_local_subchannel_pool", 1))
        if tls_ca is None and target.rsplit(":", 1)[-1] == "443":
            tls_ca = SYSTEM_CAS
        if tls_ca is not None:
            roots = None if str(tls_ca) == SYSTEM_CAS else Path(tls_ca).read_bytes()
            credentials = grpc.ssl_channel_credentials(roots)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.CoordinatorStub(self._channel)
        self.admin_stub = pb_grpc.AdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None = None) -> T:
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in TRANSPORT_CODES:
                raise CoordinatorUnavailable(f"{self.target}: {code.name}: {details}") from None
            typed = error_for(code, details)
            if typed is not None:
                raise typed from None
            raise

    # -- public ---------------------------------------------------------------------------------

    def register(
        self,
        hardware: pb.HardwareFingerprint,
        *,
        owner: str = "",
        invite_token: str = "",
        requested_class: str = "",
        display_name: str = "",
    ) -> pb.RegisterVolunteerResponse:
        return self._call(
            self.stub.RegisterVolunteer,
            pb.RegisterVolunteerRequest(
                hardware=hardware, requested_class=requested_class, owner=owner,
                invite_token=invite_token, display_name=display_name,
            ),
        )

    def config(self) -> pb.GetSwarmConfigResponse:
        return self._call(self.stub.GetSwarmConfig, pb.GetSwarmConfigRequest())

    # -- volunteer ------------------------------------------------------------------------------

    def lease(self, hardware_class: str = "", slot: int = 0) -> pb.LeaseWorkResponse:
        return self._call(self.stub.LeaseWork, pb.LeaseWorkRequest(hardware_class=hardware_class, slot=slot))

    def heartbeat(
        self, lease_id: str, step: int = 0, fraction: float = 0.0, loss: float = 0.0, tokens_per_s: float = 0.0
    ) -> pb.ExtendLeaseResponse:
        progress = pb.Progress(step=step, fraction_of_budget=fraction, loss=loss, tokens_per_s=tokens_per_s)
        return self._call(self.stub.ExtendLease, pb.ExtendLeaseRequest(lease_id=lease_id, progress=progress))

    def report(self, lease_id: str, result: pb.RunResult) -> pb.ReportResultResponse:
        return self._call(self.stub.ReportResult, pb.ReportResultRequest(lease_id=lease_id, result=result))

    def release(self, lease_id: str, reason: str = "") -> None:
        self._call(self.stub.ReleaseLease, pb.ReleaseLeaseRequest(lease_id=lease_id, reason=reason))

    def refuse(self, lease_id: str, reason: str) -> None:
        self._call(self.stub.ReportRefusal, pb.ReportRefusalRequest(lease_id=lease_id, reason=reason))

    # -- proposer and queries -------------------------------------------------------------------

    def submit(
        self,
        title: str,
        rationale: str = "",
        *,
        patch: str = "",
        base_commit: str = "",
        constant_changes: Mapping[str, str] | None = None,
        source: int = pb.HYPOTHESIS_SOURCE_HUMAN,
        priority: float = 0.0,
    ) -> pb.SubmitHypothesisResponse:
        request = pb.SubmitHypothesisRequest(
            title=title, rationale=rationale, patch=patch, base_commit=base_commit,
            constant_changes=dict(constant_changes or {}), source=source, priority=priority,
        )
        return self._call(self.stub.SubmitHypothesis, request)

    def hypothesis(self, hypothesis_id: str) -> pb.GetHypothesisResponse:
        return self._call(self.stub.GetHypothesis, pb.GetHypothesisRequest(hypothesis_id=hypothesis_id))

    def hypotheses(self, states: list[int] | None = None, page_size: int = 100, page_token: str = "") -> pb.ListHypothesesResponse:
        return self._call(
            self.stub.ListHypotheses,
            pb.ListHypothesesRequest(states=states or [], page_size=page_size, page_token=page_token),
        )

    def best(self, hardware_class: str = "") -> pb.GetBestResponse:
        return self._call(self.stub.GetBest, pb.GetBestRequest(hardware_class=hardware_class))

    def results(self, **filters: Any) -> list[pb.ResultRecord]:
        """Every result matching the filters (ListResultsRequest fields), following pages."""
        records: list[pb.ResultRecord] = []
        token = ""
        while True:
            page = self._call(self.stub.ListResults, pb.ListResultsRequest(page_size=1000, page_token=token, **filters))
            records.extend(page.results)
            token = page.next_page_token
            if not token:
                return records

    def leaderboard(self, by: int = 0, hardware_class: str = "") -> pb.GetLeaderboardResponse:
        return self._call(self.stub.GetLeaderboard, pb.GetLeaderboardRequest(by=by, hardware_class=hardware_class))

    def status(self) -> pb.GetSwarmStatusResponse:
        return self._call(self.stub.GetSwarmStatus, pb.GetSwarmStatusRequest())

    def history(self, limit: int = 100) -> pb.GetHistoryResponse:
        return self._call(self.stub.GetHistory, pb.GetHistoryRequest(limit=limit))

    # -- admin ----------------------------------------------------------------------------------

    def create_invite(self, owner: str, max_uses: int = 1, ttl_s: float = 0.0) -> str:
        request = pb.CreateInviteRequest(owner=owner, max_uses=max_uses, ttl_s=ttl_s)
        return self._call(self.admin_stub.CreateInvite, request).invite_token

    def create_token(self, role: int, name: str, owner: str = "") -> pb.CreateTokenResponse:
        return self._call(self.admin_stub.CreateToken, pb.CreateTokenRequest(role=role, name=name, owner=owner))

    def revoke_volunteer(self, volunteer_id: str, reason: str) -> pb.RevokeVolunteerResponse:
        request = pb.RevokeVolunteerRequest(volunteer_id=volunteer_id, reason=reason)
        return self._call(self.admin_stub.RevokeVolunteer, request)

    def revoke_owner(self, owner: str, reason: str) -> pb.RevokeOwnerResponse:
        return self._call(self.admin_stub.RevokeOwner, pb.RevokeOwnerRequest(owner=owner, reason=reason))

    def rotate_key(self, transition_s: float = 0.0) -> pb.RotateSigningKeyResponse:
        return self._call(self.admin_stub.RotateSigningKey, pb.RotateSigningKeyRequest(transition_s=transition_s))

    def health(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s)
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING
