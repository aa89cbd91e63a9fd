"""Ed25519 work-unit signing. The key is created on first start in the data dir (mode 0600).

Rotation: the new key becomes current; the previous one is kept for a transition period and the
new public key is endorsed (signed) by the previous private key, so a volunteer that pinned the
old key can follow the rotation without trusting the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_DIR_NAME = "signing"
CURRENT_KEY_FILE = "current.pem"
ROTATION_FILE = "rotation.json"  # previous key, its transition deadline and the endorsement


def key_id(public_key: bytes) -> str:
    """Hex sha256 of the raw public key: how work units name the key that signed them."""
    return hashlib.sha256(public_key).hexdigest()


def verify_signature(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def _raw_public(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_private(path: Path, private_key: Ed25519PrivateKey) -> None:
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


@dataclass(frozen=True)
class Endorsement:
    public_key: bytes
    endorsed_by: bytes
    signature: bytes
    until_s: float


class SigningKeys:
    """The coordinator's signing key (and the previous one during a rotation)."""

    def __init__(self, key_dir: Path) -> None:
        self._dir = key_dir
        self._lock = threading.Lock()
        self._identity_of: tuple[Ed25519PrivateKey, bytes, str] | None = None  # see _identity
        self._load()

    def _files_state(self) -> tuple[int, int]:
        def mtime(name: str) -> int:
            try:
                return (self._dir / name).stat().st_mtime_ns
            except FileNotFoundError:
                return 0

        return mtime(CURRENT_KEY_FILE), mtime(ROTATION_FILE)

    def reload_if_changed(self) -> bool:
        """Another serving process rotated the key: take the files' keys (True when it did)."""
        with self._lock:
            if self._files_state() == self._loaded_state:
                return False
            self._load()
            return True

    def _load(self) -> None:
        self._loaded_state = self._files_state()
        self._current = _read_private(self._dir / CURRENT_KEY_FILE)
        self._endorsement: Endorsement | None = None
        rotation = self._dir / ROTATION_FILE
        if rotation.exists():
            data = json.loads(rotation.read_text())
            self._endorsement = Endorsement(
                public_key=bytes.fromhex(data["public_key"]),
                endorsed_by=bytes.fromhex(data["endorsed_by"]),
                signature=bytes.fromhex(data["signature"]),
                until_s=float(data["until_s"]),
            )

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SigningKeys:
        key_dir = Path(data_dir) / KEY_DIR_NAME
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (key_dir / CURRENT_KEY_FILE).exists():
            _write_private(key_dir / CURRENT_KEY_FILE, Ed25519PrivateKey.generate())
        return cls(key_dir)

    @property
    def public_key(self) -> bytes:
        return self._identity()[1]

    @property
    def key_id(self) -> str:
        return self._identity()[2]

    def _identity(self) -> tuple[Ed25519PrivateKey, bytes, str]:
        """(current key, its public bytes, its id), derived once per key: every lease names the
        key that signed it, and deriving both per lease was 1% of the serving process's samples."""
        current, identity = self._current, self._identity_of
        if identity is None or identity[0] is not current:
            public = _raw_public(current)
            identity = self._identity_of = (current, public, key_id(public))
        return identity

    def sign(self, payload: bytes) -> bytes:
        return self._current.sign(payload)

    def endorsements(self, now_s: float | None = None) -> list[Endorsement]:
        """The endorsement of the current key by the previous one, while its transition lasts."""
        now_s = time.time() if now_s is None else now_s
        if self._endorsement is None or self._endorsement.until_s < now_s:
            return []
        return [self._endorsement]

    def previous_public_keys(self, now_s: float | None = None) -> list[bytes]:
        return [e.endorsed_by for e in self.endorsements(now_s)]

    def rotate(self, transition_s: float, now_s: float | None = None) -> tuple[bytes, bytes]:
        """Make a new current key; returns (new public key, previous public key)."""
        now_s = time.time() if now_s is None else now_s
        with self._lock:
            previous = self._current
            fresh = Ed25519PrivateKey.generate()
            new_public = _raw_public(fresh)
            endorsement = Endorsement(
                public_key=new_public,
                endorsed_by=_raw_public(previous),
                signature=previous.sign(new_public),
                until_s=now_s + transition_s,
            )
            # Keep the old key on disk (renamed) so a backup taken mid-rotation can restore it.
            _write_private(self._dir / f"previous-{key_id(_raw_public(previous))[:16]}.pem", previous)
            record = {
                "public_key": endorsement.public_key.hex(),
                "endorsed_by": endorsement.endorsed_by.hex(),
                "signature": endorsement.signature.hex(),
                "until_s": endorsement.until_s,
            }
            tmp = self._dir / (ROTATION_FILE + ".tmp")
            tmp.write_text(json.dumps(record))
            os.chmod(tmp, 0o600)
            _write_private(self._dir / CURRENT_KEY_FILE, fresh)
            os.replace(tmp, self._dir / ROTATION_FILE)
            self._current = fresh
            self._endorsement = endorsement
            self._loaded_state = self._files_state()
            return new_public, endorsement.endorsed_by
