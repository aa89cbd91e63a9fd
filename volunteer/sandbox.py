"""The trainer's sandbox: a scrubbed environment, resource limits and, where the OS allows, no network.

The code a unit carries came from the network. It runs as this user, so the sandbox is about
limiting what it can take or reach, not a security boundary against a determined attacker:
- environment: an allowlist (paths, locale, accelerator and thread settings, caches) minus any
  name that looks like a secret; the volunteer's token, the coordinator address and every other
  AUTOSWARM_* setting are never passed on, and a value that contains the token is dropped too;
- resource limits (inherited by the trainer): no core dumps, a cap on file size and open files,
  lower CPU priority, and on the cpu class an address-space cap so a runaway allocation fails as
  out-of-memory instead of swapping the owner's machine to a halt;
- network: Linux network namespaces via `unshare -n` (as root or with CAP_SYS_ADMIN) or
  `unshare --map-current-user -n` (unprivileged user namespaces); macOS `sandbox-exec` with a
  deny-network profile. Where none works the volunteer says so at start-up and in `check`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger("autoswarm.volunteer.sandbox")

# Variables passed to the trainer when present. Everything else is dropped.
ALLOWED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT", "PYTHONIOENCODING",
    "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "AUTOSWARM_CACHE_DIR",
    "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH",
})
ALLOWED_PREFIXES = (
    "LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCM_", "ROCR_", "HSA_", "OMP_", "MKL_", "KMP_", "OPENBLAS_",
    "PYTORCH_", "TORCH_", "TRITON_", "TORCHINDUCTOR_",
)
# Dropped even when allowlisted: names that usually hold credentials.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|PRIVATE|AUTH|COOKIE|SESSION", re.IGNORECASE)

FILE_SIZE_LIMIT_BYTES = 8 * 2**30  # no file a trainer writes (logs, result) comes near this
OPEN_FILES_LIMIT = 4096
NICE_INCREMENT = 10  # keep the owner's desktop responsive while a run trains
CPU_MEMORY_FRACTION = 0.85  # cpu class: address-space cap as a fraction of physical RAM


def scrub_env(environ: Mapping[str, str], secrets: Iterable[str] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a trainer gets: allowlisted, no secret-looking names, no value containing a secret."""
    secret_values = [s for s in secrets if s]
    env = {}
    for name, value in environ.items():
        allowed = name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)
        if not allowed or SECRET_NAME.search(name):
            continue
        if any(secret in value for secret in secret_values):
            continue
        env[name] = value
    for name, value in (extra or {}).items():
        if SECRET_NAME.search(name) or any(secret in value for secret in secret_values):
            raise ValueError(f"refusing to pass {name} to the trainer: it looks like a secret")
        env[name] = value
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ---------------------------------------------------------------------------------------------
# Network isolation
# ---------------------------------------------------------------------------------------------

class NetworkMode(StrEnum):
    AUTO = "auto"  # isolate when the OS allows, else run without and say so
    REQUIRE = "require"  # refuse to run work without isolation
    OFF = "off"  # never isolate (the owner chose to)


MACOS_DENY_NETWORK_PROFILE = "(version 1)(allow default)(deny network-outbound)(deny network-inbound)"


@dataclass(frozen=True)
class NetworkIsolation:
    prefix: tuple[str, ...]  # command prefix that runs a program without network
    description: str  # plain words for logs and `check`

    @property
    def enabled(self) -> bool:
        return bool(self.prefix)


class IsolationUnavailableError(RuntimeError):
    """--network require, but this OS gives no way to cut a process off the network."""


def _works(prefix: list[str]) -> bool:
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def probe_network_isolation(mode: NetworkMode = NetworkMode.AUTO) -> NetworkIsolation:
    """How trainers will be cut off the network on this machine (tries the real command once)."""
    if mode == NetworkMode.OFF:
        return NetworkIsolation((), "network isolation is off (--network off): the trainer can reach the network")
    tried = []
    if sys.platform.startswith("linux"):
        unshare = shutil.which("unshare")
        if unshare:
            for prefix, how in (
                ([unshare, "-n"], "a private network namespace (unshare -n)"),
                ([unshare, "--map-current-user", "-n"], "a private network namespace in a user namespace (unshare --map-current-user -n)"),
                ([unshare, "-r", "-n"], "a private network namespace in a user namespace (unshare -r -n)"),
            ):
                if _works(prefix):
                    return NetworkIsolation(tuple(prefix), f"the trainer runs without network: {how}")
                tried.append(" ".join(prefix[1:]))
            reason = (f"`unshare {' / '.join(tried)}` is not permitted here (no CAP_SYS_ADMIN and unprivileged "
                      "user namespaces are disabled)")
        else:
            reason = "`unshare` (util-linux) is not installed"
    elif sys.platform == "darwin" and shutil.which("sandbox-exec"):
        prefix = ["sandbox-exec", "-p", MACOS_DENY_NETWORK_PROFILE]
        if _works(prefix):
            return NetworkIsolation(tuple(prefix), "the trainer runs without network: sandbox-exec deny-network profile")
        reason = "sandbox-exec refused the deny-network profile"
    else:
        reason = f"no network isolation is implemented for {sys.platform}"
    if mode == NetworkMode.REQUIRE:
        raise IsolationUnavailableError(f"--network require, but {reason}")
    return NetworkIsolation((), f"NOT isolated from the network: {reason}; the trainer could reach the network")


# ---------------------------------------------------------------------------------------------
# Resource limits (applied by the sandboxed child to itself; the trainer inherits them)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourceLimits:
    memory_bytes: int = 0  # address-space cap; 0 = none (GPU drivers reserve huge address ranges)
    file_size_bytes: int = FILE_SIZE_LIMIT_BYTES
    open_files: int = OPEN_FILES_LIMIT
    nice: int = NICE_INCREMENT

    def to_dict(self) -> dict[str, int]:
        return {"memory_bytes": self.memory_bytes, "file_size_bytes": self.file_size_bytes,
                "open_files": self.open_files, "nice": self.nice}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> ResourceLimits:
        return cls(**{k: int(v) for k, v in raw.items() if k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def describe(self) -> str:
        memory = f"{self.memory_bytes / 2**30:.1f} GiB address space" if self.memory_bytes else "no memory cap"
        return (f"{memory}, files up to {self.file_size_bytes / 2**30:.0f} GiB, {self.open_files} open files, "
                f"no core dumps, nice +{self.nice}")

    def apply(self) -> list[str]:
        """Set the limits on this process; returns what could not be applied (in words)."""
        skipped = []
        try:
            import resource
        except ImportError:  # Windows
            return ["resource limits (not supported on this OS)"]

        def lower(which: int, name: str, soft: int) -> None:
            try:
                _, hard = resource.getrlimit(which)
                value = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
                resource.setrlimit(which, (value, hard))
            except (ValueError, OSError) as exc:
                skipped.append(f"{name} ({exc})")

        lower(resource.RLIMIT_CORE, "core dumps", 0)
        lower(resource.RLIMIT_FSIZE, "file size", self.file_size_bytes)
        lower(resource.RLIMIT_NOFILE, "open files", self.open_files)
        if self.memory_bytes:
            lower(resource.RLIMIT_AS, "address space", self.memory_bytes)
        if self.nice:
            try:
                os.nice(self.nice)
            except OSError as exc:
                skipped.append(f"nice ({exc})")
        return skipped


def physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def default_limits(device_type: str, memory_limit_gb: float | None = None, nice: int = NICE_INCREMENT) -> ResourceLimits:
    """Limits for a class: an address-space cap only on the cpu class (or when the owner asks)."""
    if memory_limit_gb is not None:
        return ResourceLimits(memory_bytes=int(memory_limit_gb * 2**30), nice=nice)
    if device_type == "cpu":
        return ResourceLimits(memory_bytes=int(physical_memory_bytes() * CPU_MEMORY_FRACTION), nice=nice)
    return ResourceLimits(nice=nice)
