"""What the volunteer trusts: the coordinator key it pinned, and only units signed by it.

A work unit carries code this machine will execute, so it is checked before anything is written:
the key id must name the pinned key, the Ed25519 signature must cover the exact serialized bytes,
and the decoded unit must be addressed to this volunteer, its class and the swarm's pinned data.

A coordinator rotates its key by endorsing the new key with the old one. `follow_key` accepts a
new key only through such a chain starting at the pinned key; any other key change is refused
loudly (someone may be impersonating the coordinator).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from autoswarm.v1 import swarm_pb2 as pb
from coordinator.service.signing import key_id, verify_signature

__all__ = ["key_id", "verify_signature", "verify_unit", "follow_key", "lease_id_of", "Expectations", "UntrustedUnitError",
           "UnknownSigningKeyError", "KeyChangedError", "fingerprint"]

ED25519_PUBLIC_KEY_BYTES = 32
MAX_ENDORSEMENT_CHAIN = 16  # rotations a volunteer can catch up on in one go


class UntrustedUnitError(Exception):
    """A work unit that must not run: unsigned, signed by another key, tampered, or misaddressed."""

    def __init__(self, reason: str, lease_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.lease_id = lease_id  # from the (untrusted) payload when it could be decoded: for the refusal report


class UnknownSigningKeyError(UntrustedUnitError):
    """Signed by a key that is not the pinned one: maybe a rotation to follow, maybe an impostor."""


class KeyChangedError(Exception):
    """The coordinator presents a key that the pinned key never endorsed."""


def fingerprint(public_key: bytes) -> str:
    """A short, human-comparable name for a key (first 16 hex chars of its key id)."""
    return key_id(public_key)[:16]


@dataclass(frozen=True)
class Expectations:
    """What a unit addressed to this volunteer must say."""

    volunteer_id: str
    hardware_class: str
    data_manifest_id: str = ""  # empty: not checked (not known yet)


def lease_id_of(payload: bytes) -> str:
    """The lease id an (untrusted) payload claims, for refusal reports; empty when it does not decode."""
    try:
        return pb.WorkUnit.FromString(payload).lease_id
    except DecodeError:
        return ""


def verify_unit(signed: pb.SignedWorkUnit, pinned_key: bytes, expect: Expectations) -> pb.WorkUnit:
    """The decoded unit when it is signed by the pinned key and addressed to us; else UntrustedUnitError."""
    payload = bytes(signed.work_unit)
    lease_id = lease_id_of(payload)
    if not payload:
        raise UntrustedUnitError("the work unit is empty", lease_id)
    if not signed.signature:
        raise UntrustedUnitError("the work unit is unsigned", lease_id)
    if signed.key_id != key_id(pinned_key):
        raise UnknownSigningKeyError(
            f"the work unit is signed by key {signed.key_id[:16] or '(none)'}, not the pinned key "
            f"{fingerprint(pinned_key)}",
            lease_id,
        )
    if not verify_signature(pinned_key, payload, bytes(signed.signature)):
        raise UntrustedUnitError("the signature does not match the work unit (tampered or corrupted)", lease_id)
    try:
        unit = pb.WorkUnit.FromString(payload)
    except DecodeError as exc:
        raise UntrustedUnitError(f"the signed work unit does not decode: {exc}", lease_id) from exc
    problems = []
    if not unit.lease_id:
        problems.append("it has no lease id")
    if unit.volunteer_id != expect.volunteer_id:
        problems.append(f"it is addressed to volunteer {unit.volunteer_id!r}, not {expect.volunteer_id!r}")
    if unit.hardware_class != expect.hardware_class:
        problems.append(f"it is for class {unit.hardware_class!r}, not {expect.hardware_class!r}")
    if expect.data_manifest_id and unit.settings.data_manifest_id != expect.data_manifest_id:
        problems.append(
            f"it pins data manifest {unit.settings.data_manifest_id[:16]!r}, not the swarm's "
            f"{expect.data_manifest_id[:16]!r}"
        )
    budget_s = unit.settings.budget_s
    if not (math.isfinite(budget_s) and budget_s > 0):
        problems.append(f"its budget {budget_s!r} is not a positive number")
    if not unit.train_py.strip():
        problems.append("it carries no train.py")
    if problems:
        raise UntrustedUnitError("signed, but " + "; ".join(problems), unit.lease_id)
    return unit


def follow_key(pinned_key: bytes, presented_key: bytes, endorsements: Iterable[pb.KeyEndorsement]) -> bytes:
    """The key to pin from now on: `presented_key` when the pinned key reaches it through valid
    endorsements (old signs new), the pinned key when nothing changed; else KeyChangedError."""
    if len(presented_key) != ED25519_PUBLIC_KEY_BYTES:
        raise KeyChangedError(f"the coordinator presents a malformed public key ({len(presented_key)} bytes)")
    if presented_key == pinned_key:
        return pinned_key
    valid = {
        bytes(e.endorsed_by): bytes(e.public_key)
        for e in endorsements
        if verify_signature(bytes(e.endorsed_by), bytes(e.public_key), bytes(e.signature))
    }
    current = pinned_key
    for _ in range(MAX_ENDORSEMENT_CHAIN):
        nxt = valid.get(current)
        if nxt is None:
            break
        current = nxt
        if current == presented_key:
            return presented_key
    raise KeyChangedError(
        f"the coordinator's signing key changed from the pinned {fingerprint(pinned_key)} to "
        f"{fingerprint(presented_key)} without an endorsement by the pinned key. Refusing all work: this "
        "may be an impostor. If the operator really replaced the key, delete identity.json in the "
        "volunteer data dir to register and pin again."
    )
