"""Authentication and roles: one server interceptor checks every RPC before its handler runs.

Tokens are random secrets shown once; the store keeps only their sha256. The interceptor resolves
the bearer token to a principal, checks the method's allowed roles, and hands the principal to the
handler through a context variable (handlers never parse metadata themselves).
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coordinator.service.errors import UnauthenticatedError, status_for
from coordinator.store.aio import HotStore
from coordinator.store.errors import PermissionDeniedError
from coordinator.store.types import Principal, Role

TOKEN_BYTES = 32
# Revocations through this server clear the cache at once; the TTL bounds what a revocation made
# elsewhere (another process on the same store) takes to be seen here. The store refuses a revoked
# volunteer's leases and reports by itself, so only read-only calls, and heartbeats another process
# answers from memory (service/batching.py), could see a stale entry.
PRINCIPAL_CACHE_TTL_S = 600.0

ALL_ROLES = frozenset(Role)
PUBLIC = frozenset[Role]()  # no token needed

# Fully qualified method name -> roles allowed. A method missing here is refused.
METHOD_ROLES: dict[str, frozenset[Role]] = {
    "/autoswarm.v1.Coordinator/RegisterVolunteer": PUBLIC,
    "/autoswarm.v1.Coordinator/GetSwarmConfig": PUBLIC,
    "/autoswarm.v1.Coordinator/LeaseWork": frozenset({Role.VOLUNTEER}),
    "/autoswarm.v1.Coordinator/ExtendLease": frozenset({Role.VOLUNTEER}),
    "/autoswarm.v1.Coordinator/ReportResult": frozenset({Role.VOLUNTEER}),
    "/autoswarm.v1.Coordinator/ReleaseLease": frozenset({Role.VOLUNTEER}),
    "/autoswarm.v1.Coordinator/ReportRefusal": frozenset({Role.VOLUNTEER}),
    "/autoswarm.v1.Coordinator/SubmitHypothesis": frozenset({Role.PROPOSER, Role.ADMIN}),
    "/autoswarm.v1.Coordinator/GetHypothesis": ALL_ROLES,
    "/autoswarm.v1.Coordinator/ListHypotheses": ALL_ROLES,
    "/autoswarm.v1.Coordinator/GetBest": ALL_ROLES,
    "/autoswarm.v1.Coordinator/ListResults": ALL_ROLES,
    "/autoswarm.v1.Coordinator/GetLeaderboard": ALL_ROLES,
    "/autoswarm.v1.Coordinator/GetSwarmStatus": ALL_ROLES,
    "/autoswarm.v1.Coordinator/GetHistory": ALL_ROLES,
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
}
ADMIN_SERVICE_PREFIX = "/autoswarm.v1.Admin/"

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)


def new_token() -> str:
    return "as_" + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def roles_for(method: str) -> frozenset[Role] | None:
    if method.startswith(ADMIN_SERVICE_PREFIX):
        return frozenset({Role.ADMIN})
    return METHOD_ROLES.get(method)


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            if text.lower().startswith("bearer "):
                return text[7:].strip()
    return None


class PrincipalCache:
    """token hash -> principal (or None: unknown), for a while: one store read per token per TTL."""

    def __init__(self, ttl_s: float = PRINCIPAL_CACHE_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def cached(self, token_hash: str) -> tuple[bool, Principal | None]:
        """(True, principal-or-None) when a fresh entry answers without the store, else (False, None)."""
        hit = self._entries.get(token_hash)
        if hit is not None and time.monotonic() - hit[0] < self._ttl_s:
            return True, hit[1]
        return False, None

    async def lookup(self, hot: HotStore, token_hash: str) -> Principal | None:
        """The cached principal for a token hash; a miss is read through the async store."""
        found, principal = self.cached(token_hash)
        if found:
            return principal
        return self._remember(token_hash, await hot.find_principal_by_token_hash(token_hash))

    def _remember(self, token_hash: str, principal: Principal | None) -> Principal | None:
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[token_hash] = (time.monotonic(), principal)
        return principal

    def invalidate(self) -> None:
        self._entries.clear()


async def authorize_async(cache: PrincipalCache, hot: HotStore, method: str, token: str | None) -> Principal | None:
    """The principal allowed to call method, None for public methods; raises typed errors. A
    token the cache does not hold is read through the async store (no thread hop on Redis)."""
    allowed = _allowed_roles(method, token)
    if not allowed:
        return None
    return _check_principal(await cache.lookup(hot, hash_token(token or "")), method, allowed)


def _allowed_roles(method: str, token: str | None) -> frozenset[Role]:
    allowed = roles_for(method)
    if allowed is None:
        raise PermissionDeniedError(f"method {method} is not exposed")
    if allowed and not token:
        raise UnauthenticatedError("missing bearer token (metadata 'authorization: Bearer <token>')")
    return allowed


def _check_principal(principal: Principal | None, method: str, allowed: frozenset[Role]) -> Principal:
    if principal is None:
        raise UnauthenticatedError("unknown token")
    if principal.revoked:
        raise PermissionDeniedError(f"principal {principal.principal_id} is revoked: {principal.revoked_reason}")
    if principal.role not in allowed and principal.role != Role.ADMIN:
        raise PermissionDeniedError(f"role {principal.role} may not call {method.rsplit('/', 1)[-1]}")
    return principal


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves the caller before any handler runs; refuses with UNAUTHENTICATED/PERMISSION_DENIED."""

    def __init__(self, cache: PrincipalCache, hot: HotStore) -> None:
        self._cache = cache
        self._hot = hot
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # one wrapper per method, not per call

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        cache, hot = self._cache, self._hot

        async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = bearer_token(context.invocation_metadata())
            try:
                principal = await authorize_async(cache, hot, method, token)
            except Exception as exc:  # typed errors become their status; nothing else ran
                code, details = status_for(exc)
                await context.abort(code, details)
            current_principal.set(principal)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
