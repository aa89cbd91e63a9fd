"""Where prepared data and tokenizers live on disk.

The cache root is `$AUTOSWARM_CACHE_DIR` when set, else `$XDG_CACHE_HOME/autoswarm`, else
`~/.cache/autoswarm`. Each prepared dataset gets its own folder named by the manifest it was built
from (`<name>-<manifest id prefix>`), so two manifests never share files and a changed manifest
never silently reuses old data.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

CACHE_ENV = "AUTOSWARM_CACHE_DIR"
MANIFEST_ID_PREFIX_LEN = 16  # hex chars of the manifest id in folder names; 64 bits avoids collisions


def default_cache_dir() -> Path:
    """The cache root: `$AUTOSWARM_CACHE_DIR`, else the XDG cache dir, else `~/.cache/autoswarm`."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values must be ignored
        return Path(xdg) / "autoswarm"
    return Path.home() / ".cache" / "autoswarm"


def resolve_cache_dir(cache_dir: Path | str | None) -> Path:
    """`cache_dir` when given, else the default root."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def dataset_dir(cache_dir: Path, name: str, manifest_id: str) -> Path:
    """The folder holding everything prepared from one manifest."""
    return cache_dir / f"{name}-{manifest_id[:MANIFEST_ID_PREFIX_LEN]}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so readers see either the old content or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; cache files are plain readable data
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
