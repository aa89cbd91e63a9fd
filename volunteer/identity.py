"""The volunteer's identity on disk: who it is to the coordinator and which key it trusts.

Everything secret lives in one config dir, created 0700, with every file 0600:

    <data dir>/identity.json   coordinator address, volunteer id, token, class, owner,
                               the pinned coordinator public key (hex) and when it was pinned
    <data dir>/spool/          finished results not yet acknowledged (see spool.py)
    <data dir>/work/           one working directory per unit in flight

The data dir is `--data-dir`, else `$AUTOSWARM_VOLUNTEER_DIR`, else the user's config dir
(`$XDG_CONFIG_HOME/autoswarm/volunteer` or `~/.config/autoswarm/volunteer`).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

DATA_DIR_ENV = "AUTOSWARM_VOLUNTEER_DIR"
IDENTITY_FILE = "identity.json"
IDENTITY_FORMAT = 1
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class IdentityError(RuntimeError):
    """The stored identity is unreadable, unsafe, or belongs to another swarm."""


def default_data_dir() -> Path:
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "autoswarm" / "volunteer"


def resolve_data_dir(data_dir: Path | str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: it holds a token."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def atomic_write_private(path: Path, data: bytes) -> None:
    """Write a 0600 file so readers see the old content or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Identity:
    coordinator: str  # the address it registered with
    volunteer_id: str
    token: str
    hardware_class: str
    owner: str
    display_name: str
    pinned_key_hex: str  # raw Ed25519 public key of the coordinator, hex
    pinned_unix_s: float
    registered_unix_s: float

    @property
    def pinned_key(self) -> bytes:
        return bytes.fromhex(self.pinned_key_hex)

    def with_pinned_key(self, public_key: bytes) -> Identity:
        return replace(self, pinned_key_hex=public_key.hex(), pinned_unix_s=time.time())

    def redacted(self) -> dict[str, object]:
        """For logs and `check`: everything but the token."""
        out = asdict(self)
        out["token"] = f"{self.token[:4]}…" if self.token else ""
        return out


def identity_path(data_dir: Path) -> Path:
    return data_dir / IDENTITY_FILE


def load_identity(data_dir: Path) -> Identity | None:
    """The stored identity, or None on first run. Refuses files others can read."""
    path = identity_path(data_dir)
    if not path.exists():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"{path} is readable by other users (mode {mode:o}); it holds your token. "
            f"Run `chmod 600 {path}` and check who could have read it."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.pop("format", None) != IDENTITY_FORMAT:
            raise ValueError("unknown format")
        names = {f.name for f in fields(Identity)}
        identity = Identity(**{k: raw[k] for k in names})
        bytes.fromhex(identity.pinned_key_hex)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{path} is unreadable ({exc}); move it away to register again") from exc
    return identity


def save_identity(data_dir: Path, identity: Identity) -> None:
    ensure_private_dir(data_dir)
    body = {"format": IDENTITY_FORMAT, **asdict(identity)}
    atomic_write_private(identity_path(data_dir), (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
