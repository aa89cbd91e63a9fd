"""Store errors <-> gRPC status codes: one table, used both ways.

The server turns a typed error into a status with the message as details; the client turns the
status back into the same typed error, so callers on either side of the wire handle one set of
exceptions (the contract tests run unchanged against a store and the gRPC client).
"""

from __future__ import annotations

import grpc

from coordinator.store import errors

# One row per error type; the first row for a code is the one the client raises.
ERROR_TABLE: tuple[tuple[type[errors.StoreError], grpc.StatusCode], ...] = (
    (errors.InvalidValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.PayloadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.LeaseExpiredError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.DuplicateError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ConflictError, grpc.StatusCode.ABORTED),
    (errors.InviteError, grpc.StatusCode.PERMISSION_DENIED),
)


class UnauthenticatedError(errors.StoreError):
    """No token, or a token the coordinator does not know."""


class PreconditionError(errors.StoreError):
    """The request is well-formed but the swarm's state refuses it (hash mismatch, stale base)."""


ERROR_TABLE += (
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
)

# Details travel as "<ErrorName>: <message>" so two errors sharing a code come back as themselves;
# DuplicateError appends the original's id after this marker.
_ORIGINAL_MARKER = " original="


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details for an exception (INTERNAL for anything untyped)."""
    for error_type, code in ERROR_TABLE:
        if isinstance(exc, error_type):
            details = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, errors.DuplicateError):
                details += f"{_ORIGINAL_MARKER}{exc.original_id}"
            return code, details
    if store_unreachable(exc):  # retryable: clients back off and try again, nothing was applied
        return grpc.StatusCode.UNAVAILABLE, f"the coordinator's store is unreachable: {type(exc).__name__}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def store_unreachable(exc: BaseException) -> bool:
    """Redis down or restarting (connection refused or reset, a timeout, still loading its log)."""
    import redis.exceptions

    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def error_for(code: grpc.StatusCode, details: str) -> errors.StoreError | None:
    """The typed error for a status from the server, or None for codes outside the table."""
    name, sep, message = details.partition(": ")
    candidates = [error_type for error_type, table_code in ERROR_TABLE if table_code == code]
    if not candidates:
        return None
    chosen = next((t for t in candidates if sep and t.__name__ == name), None)
    if chosen is None:
        chosen, message = candidates[0], details
    if chosen is errors.DuplicateError:
        text, _, original = message.rpartition(_ORIGINAL_MARKER)
        return errors.DuplicateError(text or message, original)
    return chosen(message)
