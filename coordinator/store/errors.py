"""Typed store errors. The service maps each to one gRPC status code (coordinator/service/errors.py)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class: the operation was refused and changed no state."""


class NotFoundError(StoreError):
    """An id (volunteer, hypothesis, unit, lease, result) that the store does not know."""


class InvalidValueError(StoreError):
    """Malformed input: a non-finite number, an empty required field, an unknown enum value."""


class PayloadTooLargeError(StoreError):
    """A text field over its limit (see types.MAX_*_BYTES)."""


class LeaseExpiredError(StoreError):
    """The lease's deadline passed (store clock), or it was released or reissued."""


class PermissionDeniedError(StoreError):
    """The caller is known but may not do this (another volunteer's lease, a revoked identity)."""


class DuplicateError(StoreError):
    """The same change was submitted before; `original_id` names the first one."""

    def __init__(self, message: str, original_id: str) -> None:
        super().__init__(message)
        self.original_id = original_id


class ConflictError(StoreError):
    """A compare-and-set failed: the record changed since the caller read it."""


class InviteError(StoreError):
    """An invite token that is unknown, used up or expired."""


class StoreIntegrityError(StoreError):
    """The store's own records contradict each other (a unit names a code blob the store lacks):
    damage to repair from a backup, not a caller's mistake."""
