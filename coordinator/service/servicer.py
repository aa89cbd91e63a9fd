"""gRPC servicers: translate autoswarm.v1 messages to core calls and back. No decisions here.

Handlers are async (grpc.aio). The volunteer loop (lease, heartbeat, report) runs on the event
loop through the work loop's async store; everything else is the synchronous core on a worker
thread pool, so a slow fsync or a git call in one call never stalls the event loop for the others.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from autoswarm.v1 import swarm_pb2 as pb
from autoswarm.v1 import swarm_pb2_grpc as pb_grpc
from coordinator.service import convert, queries
from coordinator.service.auth import PrincipalCache, current_principal, hash_token, new_token
from coordinator.service.core import CoordinatorCore
from coordinator.service.decider import COMMAND_TOP_UP, DeciderLink
from coordinator.service.errors import status_for
from coordinator.service.metrics import METRICS
from coordinator.service.work_loop import WorkLoop
from coordinator.store.errors import InvalidValueError
from coordinator.store.types import HypothesisSource, Principal, Role, RunStatus

log = logging.getLogger("autoswarm.coordinator.rpc")
T = TypeVar("T")

MAX_PAGE_SIZE = 1000
LEASE_TOP_UP_WAIT_S = 5.0  # how long a lease on an empty queue waits for the decider's top-up
SLOW_CALL_S = 1.0  # a handler that takes longer is logged (the latency histogram shows how many, not which)


class Blocking:
    """Runs synchronous core calls on a thread pool from async handlers."""

    def __init__(self, workers: int = 16, name: str = "core") -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)


async def _call(
    context: grpc.aio.ServicerContext, run: Blocking, method: str, fn: Callable[..., T], *args: Any
) -> T:
    """Run fn in the pool; typed errors become their status code (and change no state)."""
    return await _answer(context, method, run(fn, *args))


async def _answer(context: grpc.aio.ServicerContext, method: str, pending: Awaitable[T]) -> T:
    """Await the call's result; typed errors become their status code (one table, errors.py)."""
    started = time.perf_counter()
    try:
        return await pending
    except Exception as exc:
        code, details = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method)
        METRICS.rpc_errors.labels(method, code.name).inc()
        await context.abort(code, details)
        raise  # unreachable: abort raises
    finally:
        elapsed_s = time.perf_counter() - started
        _latency_of(method).observe(elapsed_s)
        if elapsed_s > SLOW_CALL_S:
            log.warning("slow call: %s took %.2f s in its handler", method, elapsed_s)


@functools.lru_cache(maxsize=64)
def _latency_of(method: str) -> Any:
    return METRICS.rpc_latency.labels(method)  # the labelled child, looked up once per method


def _principal() -> Principal:
    principal = current_principal.get()
    if not isinstance(principal, Principal):  # the interceptor guarantees one for authenticated methods
        raise InvalidValueError("no principal")
    return principal


def _page_size(requested: int, default: int = 100) -> int:
    if requested == 0:
        return default
    return min(int(requested), MAX_PAGE_SIZE)


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(
        self,
        core: CoordinatorCore,
        work: WorkLoop,
        run: Blocking,
        cache: PrincipalCache,
        classify: Callable,
        decide: Blocking | None = None,
        decider: DeciderLink | None = None,
    ) -> None:
        self.core = core
        self.work = work  # lease, heartbeat, report: on the event loop
        self.decider = decider  # the decision process, when decisions do not run inline
        self.run = run
        # Calls that queue on the core's decision lock (judging a report, admitting a hypothesis)
        # get their own pool, so a burst of them, or a long policy pass, never takes every worker
        # from the leases and heartbeats that need no lock.
        self.decide = decide or run
        self.cache = cache
        self.classify = classify  # HardwareFingerprint-as-dict, requested class -> class name

    async def RegisterVolunteer(self, request: pb.RegisterVolunteerRequest, context: Any) -> Any:
        from google.protobuf.json_format import MessageToDict

        hardware = MessageToDict(request.hardware, preserving_proto_field_name=True)

        def register() -> tuple[Principal, str]:
            hardware_class = self.classify(hardware, request.requested_class)
            token = new_token()
            invite = hash_token(request.invite_token) if request.invite_token else None
            principal = self.core.register_volunteer(
                json.dumps(hardware, sort_keys=True),
                hardware_class,
                request.owner.strip(),
                request.display_name.strip(),
                hash_token(token),
                invite,
            )
            return principal, token

        principal, token = await _call(context, self.run, "RegisterVolunteer", register)
        METRICS.registrations.inc()
        return pb.RegisterVolunteerResponse(
            volunteer_id=principal.principal_id,
            token=token,
            hardware_class=principal.hardware_class,
            coordinator_public_key=self.core.signer.public_key,
            settings=self.core.settings_pb(),
            role=pb.ROLE_VOLUNTEER,
        )

    async def GetSwarmConfig(self, request: pb.GetSwarmConfigRequest, context: Any) -> Any:
        def config() -> pb.GetSwarmConfigResponse:
            from trainer.profiles import load_profiles

            signer = self.core.signer
            head = self.core.branch.head()
            profiles = load_profiles(self.core.branch.read_file(head, "profiles.json"))
            endorsements = [
                pb.KeyEndorsement(public_key=e.public_key, endorsed_by=e.endorsed_by, signature=e.signature)
                for e in signer.endorsements()
            ]
            return pb.GetSwarmConfigResponse(
                settings=self.core.settings_pb(),
                coordinator_public_key=signer.public_key,
                previous_public_keys=signer.previous_public_keys(),
                head_commit=head,
                hardware_classes=sorted(profiles.names()),
                endorsements=endorsements,
            )

        return await _call(context, self.run, "GetSwarmConfig", config)

    async def LeaseWork(self, request: pb.LeaseWorkRequest, context: Any) -> Any:
        principal = _principal()
        lease = self.work.lease(principal, request.hardware_class, request.slot)
        grant = await _answer(context, "LeaseWork", lease)
        if grant is None and self.decider is not None:
            # Nothing queued for this class: wake the decider, wait for its pass, then try once more.
            sent = self.decider.wake(COMMAND_TOP_UP)
            if await self.decider.wait_for_pass_async(sent, LEASE_TOP_UP_WAIT_S):
                lease = self.work.lease(principal, request.hardware_class, request.slot)
                grant = await _answer(context, "LeaseWork", lease)
        if grant is None:
            METRICS.lease_misses.inc()
            return pb.LeaseWorkResponse(retry_after_s=min(30.0, max(2.0, self.core.config.budget_s / 10)))
        METRICS.leases.labels(grant.unit.kind.value).inc()
        return pb.LeaseWorkResponse(
            unit=pb.SignedWorkUnit(work_unit=grant.payload, signature=grant.signature, key_id=grant.key_id)
        )

    async def ExtendLease(self, request: pb.ExtendLeaseRequest, context: Any) -> Any:
        progress = request.progress
        lease = await _answer(
            context, "ExtendLease",
            self.work.heartbeat(
                _principal(), request.lease_id, int(progress.step), float(progress.fraction_of_budget),
                float(progress.loss),
            ),
        )
        METRICS.heartbeats.inc()
        return pb.ExtendLeaseResponse(lease_deadline_unix_s=lease.deadline_s, cancel=False)

    async def ReportResult(self, request: pb.ReportResultRequest, context: Any) -> Any:
        async def report() -> Any:
            metrics = convert.metrics_from_pb(request.result)  # bad numbers: InvalidValueError, nothing stored
            return await self.work.report(_principal(), request.lease_id, metrics)

        outcome = await _answer(context, "ReportResult", report())
        METRICS.reports.labels(outcome.record.metrics.status.value, str(outcome.duplicate).lower()).inc()
        response = pb.ReportResultResponse(
            result_id=outcome.record.result_id,
            duplicate=outcome.duplicate,
            score=convert.score_to_pb(outcome.record.score),
        )
        if outcome.hypothesis_state is not None:
            response.hypothesis_state = convert.HYPOTHESIS_STATE_TO_PB[outcome.hypothesis_state]
        return response

    async def ReleaseLease(self, request: pb.ReleaseLeaseRequest, context: Any) -> Any:
        principal = _principal()
        await _call(context, self.run, "ReleaseLease", self.core.release, principal, request.lease_id, request.reason)
        self.work.heartbeats.forget(request.lease_id)
        return pb.ReleaseLeaseResponse()

    async def ReportRefusal(self, request: pb.ReportRefusalRequest, context: Any) -> Any:
        principal = _principal()
        log.warning("volunteer %s refused lease %s: %s", principal.principal_id, request.lease_id, request.reason)
        METRICS.refusals.inc()
        await _call(
            context, self.run, "ReportRefusal", self.core.release, principal, request.lease_id,
            f"refused by volunteer: {request.reason}"[:200],
        )
        self.work.heartbeats.forget(request.lease_id)
        return pb.ReportRefusalResponse()

    async def SubmitHypothesis(self, request: pb.SubmitHypothesisRequest, context: Any) -> Any:
        principal = _principal()
        source = convert.SOURCE_FROM_PB.get(request.source, HypothesisSource.HUMAN)
        if source == HypothesisSource.BUILTIN:
            source = HypothesisSource.AGENT  # only the coordinator itself proposes as builtin
        priority = request.priority if principal.role == Role.ADMIN else min(request.priority, 0.0)
        hypothesis = await _call(
            context, self.decide, "SubmitHypothesis", self.core.submit_hypothesis,
            principal.principal_id, request.title, request.rationale, request.patch, request.base_commit,
            dict(request.constant_changes), source, priority,
        )
        return pb.SubmitHypothesisResponse(
            hypothesis_id=hypothesis.hypothesis_id, state=convert.HYPOTHESIS_STATE_TO_PB[hypothesis.state]
        )

    async def GetHypothesis(self, request: pb.GetHypothesisRequest, context: Any) -> Any:
        return await _call(context, self.run, "GetHypothesis", queries.get_hypothesis, self.core, request.hypothesis_id)

    async def ListHypotheses(self, request: pb.ListHypothesesRequest, context: Any) -> Any:
        states = [convert.HYPOTHESIS_STATE_FROM_PB[s] for s in request.states if s in convert.HYPOTHESIS_STATE_FROM_PB]
        return await _call(
            context, self.run, "ListHypotheses", queries.list_hypotheses, self.core, states,
            _page_size(request.page_size), request.page_token,
        )

    async def GetBest(self, request: pb.GetBestRequest, context: Any) -> Any:
        return await _call(context, self.run, "GetBest", queries.get_best, self.core, request.hardware_class)

    async def ListResults(self, request: pb.ListResultsRequest, context: Any) -> Any:
        status = convert.RUN_STATUS_FROM_PB.get(request.status) if request.status else None
        if request.status and status is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "InvalidValueError: unknown status filter")
        return await _call(
            context, self.run, "ListResults", queries.list_results, self.core, request, status,
            _page_size(request.page_size),
        )

    async def GetLeaderboard(self, request: pb.GetLeaderboardRequest, context: Any) -> Any:
        return await _call(context, self.run, "GetLeaderboard", queries.leaderboard, self.core, request)

    async def GetSwarmStatus(self, request: pb.GetSwarmStatusRequest, context: Any) -> Any:
        return await _call(context, self.run, "GetSwarmStatus", queries.swarm_status, self.core)

    async def GetHistory(self, request: pb.GetHistoryRequest, context: Any) -> Any:
        return await _call(context, self.run, "GetHistory", queries.history, self.core, request.limit or 100)


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, core: CoordinatorCore, run: Blocking, cache: PrincipalCache) -> None:
        self.core = core
        self.run = run
        self.cache = cache

    async def CreateInvite(self, request: pb.CreateInviteRequest, context: Any) -> Any:
        token = "inv_" + new_token()[3:]

        def create() -> None:
            if not request.owner.strip():
                raise InvalidValueError("an invite needs an owner")
            expires = self.core.store.now() + request.ttl_s if request.ttl_s > 0 else 0.0
            self.core.store.create_invite(hash_token(token), request.owner.strip(), request.max_uses or 1, expires)

        await _call(context, self.run, "CreateInvite", create)
        return pb.CreateInviteResponse(invite_token=token)

    async def CreateToken(self, request: pb.CreateTokenRequest, context: Any) -> Any:
        roles = {pb.ROLE_PROPOSER: Role.PROPOSER, pb.ROLE_ADMIN: Role.ADMIN}
        if request.role not in roles:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "InvalidValueError: role must be proposer or admin")
        token = new_token()
        principal = await _call(
            context, self.run, "CreateToken", self.core.store.create_principal,
            roles[request.role], request.owner or request.name or "operator", request.name, hash_token(token),
        )
        return pb.CreateTokenResponse(principal_id=principal.principal_id, token=token)

    async def RevokeVolunteer(self, request: pb.RevokeVolunteerRequest, context: Any) -> Any:
        discounted = await _call(
            context, self.run, "RevokeVolunteer", self.core.revoke_volunteer, request.volunteer_id, request.reason
        )
        self.cache.invalidate()
        return pb.RevokeVolunteerResponse(results_discounted=discounted)

    async def RevokeOwner(self, request: pb.RevokeOwnerRequest, context: Any) -> Any:
        revoked, discounted = await _call(
            context, self.run, "RevokeOwner", self.core.revoke_owner, request.owner, request.reason
        )
        self.cache.invalidate()
        return pb.RevokeOwnerResponse(volunteers_revoked=len(revoked), results_discounted=discounted)

    async def RotateSigningKey(self, request: pb.RotateSigningKeyRequest, context: Any) -> Any:
        transition = request.transition_s if request.transition_s > 0 else 7 * 24 * 3600.0
        new, previous = await _call(context, self.run, "RotateSigningKey", self.core.signer.rotate, transition)
        return pb.RotateSigningKeyResponse(new_public_key=new, previous_public_key=previous)

    async def SetHypothesisPriority(self, request: pb.SetHypothesisPriorityRequest, context: Any) -> Any:
        await _call(
            context, self.run, "SetHypothesisPriority", lambda: self.core.store.update_hypothesis(
                request.hypothesis_id, priority=request.priority
            )
        )
        return pb.SetHypothesisPriorityResponse()

    async def CancelHypothesis(self, request: pb.CancelHypothesisRequest, context: Any) -> Any:
        from coordinator.store.types import HypothesisState

        def cancel() -> None:
            self.core.store.update_hypothesis(
                request.hypothesis_id, state=HypothesisState.REJECTED,
                state_reason=f"cancelled by an admin: {request.reason}"[:200],
            )
            self.core.store.cancel_units(request.hypothesis_id)

        await _call(context, self.run, "CancelHypothesis", cancel)
        return pb.CancelHypothesisResponse()


def ok_status(status: RunStatus) -> bool:
    return status == RunStatus.OK
