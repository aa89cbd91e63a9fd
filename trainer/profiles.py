"""Hardware-class profiles: data in profiles.json beside train.py, typed and validated here (no torch).

A class is a GPU model family with its memory (`h100-80g`, `rtx3090-24g`, ..., `mps`, `cpu`). Its
profile says how to recognise the device, its peak FLOPS for MFU, which train.py constants it pins
(applied to a copy of train.py through `trainer.constants.rewrite_constants`) and the fixed layer's
run settings (sequence length, eval tokens, dtype, compile, attention backend). The coordinator reads
the same file from the global branch, so class tuning can evolve with the code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

__all__ = [
    "PROFILES_FILE",
    "ProfileError",
    "UnknownClassError",
    "DeviceType",
    "Detection",
    "RunSettings",
    "KernelPin",
    "Profile",
    "ProfileSet",
    "default_profiles_text",
    "load_profiles",
    "get_profile",
    "pinned_constants",
    "nearest_class_by_memory",
    "name_matches",
]

PROFILES_FILE = "profiles.json"
_CLASS_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_DTYPES = ("auto", "bf16", "fp16", "fp32")
_ATTENTION = ("auto", "fa3", "flex", "sdpa")


class ProfileError(ValueError):
    """profiles.json is malformed or inconsistent; the message names the class and field."""


class UnknownClassError(ProfileError, KeyError):
    """No profile with that class name."""

    def __str__(self) -> str:
        return str(self.args[0])


class DeviceType(StrEnum):
    CUDA = "cuda"
    ROCM = "rocm"
    MPS = "mps"
    CPU = "cpu"


@dataclass(frozen=True)
class Detection:
    """How a device is recognised: a name pattern, a memory range (GiB as torch reports), optionally a compute capability."""

    name_patterns: tuple[str, ...]
    compute_capability: tuple[int, int] | None
    min_memory_gib: float
    max_memory_gib: float


@dataclass(frozen=True)
class RunSettings:
    """The fixed layer's part of a profile: things an edited train.py cannot change."""

    seq_len: int
    eval_tokens: int
    eval_batch_size: int
    dtype: str  # auto | bf16 | fp16 | fp32
    compile: bool
    attention: str  # auto | fa3 | flex | sdpa
    warmup_steps: int  # optimizer steps at the start that the budget clock does not count
    default_dataset: str
    threads: int  # CPU threads for torch (0 = torch's default)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "eval_tokens": self.eval_tokens,
            "eval_batch_size": self.eval_batch_size,
            "dtype": self.dtype,
            "compile": self.compile,
            "attention": self.attention,
            "warmup_steps": self.warmup_steps,
            "default_dataset": self.default_dataset,
            "threads": self.threads,
        }


@dataclass(frozen=True)
class KernelPin:
    """One pinned Flash Attention 3 build on the kernels hub (a major version or an exact revision)."""

    repo: str
    version: int | None = None
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"repo": self.repo}
        if self.version is not None:
            out["version"] = self.version
        if self.revision is not None:
            out["revision"] = self.revision
        return out


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device_type: DeviceType
    memory_gb: float
    detect: Detection
    peak_tflops: dict[str, float]
    peak_tflops_by_model: tuple[dict[str, Any], ...]
    peak_tflops_per_thread: bool
    constants: dict[str, object]
    run: RunSettings

    def peak_flops(self, dtype: str, device_name: str = "", threads: int = 1) -> float:
        """Peak FLOP/s for `dtype` (bf16|fp16|fp32) on this class, refined by the device name; 0 if unknown."""
        table = dict(self.peak_tflops)
        for entry in self.peak_tflops_by_model:
            if name_matches(str(entry["name_contains"]), device_name):
                table.update({k: v for k, v in entry.items() if k != "name_contains"})
                break
        value = float(table.get(dtype, 0.0)) * 1e12
        return value * max(threads, 1) if self.peak_tflops_per_thread else value


@dataclass(frozen=True)
class ProfileSet:
    """All classes of one profiles.json plus its pinned attention kernels."""

    classes: dict[str, Profile]
    hopper_kernels: tuple[KernelPin, ...] = field(default=())
    other_kernels: tuple[KernelPin, ...] = field(default=())

    def __getitem__(self, name: str) -> Profile:
        try:
            return self.classes[name]
        except KeyError:
            known = ", ".join(sorted(self.classes))
            raise UnknownClassError(f"unknown hardware class {name!r}; known classes: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.classes

    def names(self) -> list[str]:
        return list(self.classes)

    def kernels_for(self, compute_capability: tuple[int, int] | None) -> tuple[KernelPin, ...]:
        """FA3 builds to try in order: the Hopper build on compute capability 9.0, the community build elsewhere."""
        if compute_capability is None:
            return ()
        return self.hopper_kernels if tuple(compute_capability) == (9, 0) else self.other_kernels


def name_matches(pattern: str, device_name: str) -> bool:
    """Case-insensitive whole-token match: "T4" matches "Tesla T4" but not "RTX4090"."""
    if not pattern:
        return False
    regex = r"(?<![A-Za-z0-9])" + re.escape(pattern) + r"(?![A-Za-z0-9])"
    return re.search(regex, device_name, flags=re.IGNORECASE) is not None


def default_profiles_text() -> str:
    """The profiles.json shipped beside train.py."""
    return resources.files("trainer").joinpath(PROFILES_FILE).read_text(encoding="utf-8")


def _require(mapping: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in mapping:
        raise ProfileError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProfileError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise ProfileError(f"{where}.{key}: expected {kind}, got {type(value).__name__}")
    return value


def _parse_pins(raw: Any, where: str) -> tuple[KernelPin, ...]:
    if not isinstance(raw, list):
        raise ProfileError(f"{where}: expected a list of kernel pins")
    pins = []
    for index, item in enumerate(raw):
        spot = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise ProfileError(f"{spot}: expected an object")
        repo = _require(item, "repo", str, spot)
        version, revision = item.get("version"), item.get("revision")
        if (version is None) == (revision is None):
            raise ProfileError(f"{spot}: give exactly one of 'version' or 'revision' (a pin, never 'latest')")
        pins.append(KernelPin(repo=repo, version=version, revision=revision))
    return tuple(pins)


def _parse_profile(name: str, raw: Any) -> Profile:
    where = f"profiles.json class {name!r}"
    if not _CLASS_NAME.match(name):
        raise ProfileError(f"{where}: class names are lowercase letters, digits and '-'")
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected an object")
    try:
        device_type = DeviceType(_require(raw, "device_type", str, where))
    except ValueError:
        raise ProfileError(f"{where}.device_type: one of {[d.value for d in DeviceType]}") from None
    detect_raw = _require(raw, "detect", dict, where)
    capability = detect_raw.get("compute_capability")
    if capability is not None and (
        not isinstance(capability, list) or len(capability) != 2 or not all(isinstance(v, int) for v in capability)
    ):
        raise ProfileError(f"{where}.detect.compute_capability: expected [major, minor] or null")
    detect = Detection(
        name_patterns=tuple(str(p) for p in _require(detect_raw, "name_patterns", list, f"{where}.detect")),
        compute_capability=(capability[0], capability[1]) if capability is not None else None,
        min_memory_gib=float(_require(detect_raw, "min_memory_gib", (int, float), f"{where}.detect")),
        max_memory_gib=float(_require(detect_raw, "max_memory_gib", (int, float), f"{where}.detect")),
    )
    peaks = _require(raw, "peak_tflops", dict, where)
    for dtype in ("bf16", "fp16", "fp32"):
        value = peaks.get(dtype)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ProfileError(f"{where}.peak_tflops.{dtype}: expected a number >= 0")
    by_model = raw.get("peak_tflops_by_model", [])
    if not isinstance(by_model, list) or not all(isinstance(m, dict) and "name_contains" in m for m in by_model):
        raise ProfileError(f"{where}.peak_tflops_by_model: expected a list of objects with 'name_contains'")
    constants = _require(raw, "constants", dict, where)
    for constant_name, value in constants.items():
        if not re.match(r"^[A-Z][A-Z0-9_]*$", constant_name):
            raise ProfileError(f"{where}.constants: {constant_name!r} is not an UPPER_CASE train.py constant")
        if isinstance(value, dict) or value is None:
            raise ProfileError(f"{where}.constants.{constant_name}: expected a number, string, bool or list")
    run_raw = _require(raw, "run", dict, where)
    run_where = f"{where}.run"
    run = RunSettings(
        seq_len=_require(run_raw, "seq_len", int, run_where),
        eval_tokens=_require(run_raw, "eval_tokens", int, run_where),
        eval_batch_size=_require(run_raw, "eval_batch_size", int, run_where),
        dtype=_require(run_raw, "dtype", str, run_where),
        compile=_require(run_raw, "compile", bool, run_where),
        attention=_require(run_raw, "attention", str, run_where),
        warmup_steps=_require(run_raw, "warmup_steps", int, run_where),
        default_dataset=_require(run_raw, "default_dataset", str, run_where),
        threads=_require(run_raw, "threads", int, run_where),
    )
    if run.dtype not in _DTYPES:
        raise ProfileError(f"{run_where}.dtype: one of {_DTYPES}, got {run.dtype!r}")
    if run.attention not in _ATTENTION:
        raise ProfileError(f"{run_where}.attention: one of {_ATTENTION}, got {run.attention!r}")
    if min(run.seq_len, run.eval_tokens, run.eval_batch_size) <= 0 or run.warmup_steps < 0 or run.threads < 0:
        raise ProfileError(f"{run_where}: sizes must be positive and counts non-negative")
    batch, total = constants.get("DEVICE_BATCH_SIZE"), constants.get("TOTAL_BATCH_SIZE")
    if isinstance(batch, int) and isinstance(total, int) and total % (batch * run.seq_len) != 0:
        raise ProfileError(
            f"{where}: TOTAL_BATCH_SIZE {total} is not a multiple of DEVICE_BATCH_SIZE x seq_len = {batch * run.seq_len}"
        )
    return Profile(
        name=name,
        description=str(raw.get("description", "")),
        device_type=device_type,
        memory_gb=float(_require(raw, "memory_gb", (int, float), where)),
        detect=detect,
        peak_tflops={k: float(v) for k, v in peaks.items()},
        peak_tflops_by_model=tuple(by_model),
        peak_tflops_per_thread=bool(raw.get("peak_tflops_per_thread", False)),
        constants=dict(constants),
        run=run,
    )


def load_profiles(text: str | None = None) -> ProfileSet:
    """Parse and validate a profiles.json (the shipped one when `text` is None). Raises ProfileError."""
    source = default_profiles_text() if text is None else text
    try:
        raw = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"profiles.json is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict) or not raw["classes"]:
        raise ProfileError("profiles.json: expected an object with a non-empty 'classes' object")
    if raw.get("version") != 1:
        raise ProfileError(f"profiles.json: unsupported version {raw.get('version')!r} (expected 1)")
    classes = {name: _parse_profile(name, body) for name, body in raw["classes"].items()}
    kernels = raw.get("attention_kernels", {})
    if not isinstance(kernels, dict):
        raise ProfileError("profiles.json: 'attention_kernels' must be an object")
    return ProfileSet(
        classes=classes,
        hopper_kernels=_parse_pins(kernels.get("hopper", []), "attention_kernels.hopper"),
        other_kernels=_parse_pins(kernels.get("other", []), "attention_kernels.other"),
    )


def get_profile(name: str, profiles: ProfileSet | str | None = None) -> Profile:
    """The profile of class `name` (from a ProfileSet, a profiles.json text, or the shipped file)."""
    profile_set = profiles if isinstance(profiles, ProfileSet) else load_profiles(profiles)
    return profile_set[name]


def pinned_constants(name: str, profiles: ProfileSet | str | None = None) -> set[str]:
    """Names of the train.py constants class `name` pins; a hypothesis changing one is not scheduled there."""
    return set(get_profile(name, profiles).constants)


def nearest_class_by_memory(
    memory_gib: float,
    device_type: DeviceType | str = DeviceType.CUDA,
    profiles: ProfileSet | str | None = None,
    compute_capability: tuple[int, int] | None = None,
) -> str:
    """The class for an unknown device: the largest class of that device type whose nominal memory fits
    in `memory_gib` (so its batch sizes fit), or the smallest one when none fits. Ties go to the class
    whose compute capability is closest (an Ampere card to an Ampere class rather than a Turing one).

    ROCm devices also consider CUDA classes: most ROCm cards have no class of their own.
    """
    profile_set = profiles if isinstance(profiles, ProfileSet) else load_profiles(profiles)
    kind = DeviceType(device_type)
    kinds = {kind, DeviceType.CUDA} if kind is DeviceType.ROCM else {kind}
    candidates = [p for p in profile_set.classes.values() if p.device_type in kinds]
    if not candidates:
        raise UnknownClassError(f"no hardware class for device type {kind.value!r}")

    def capability_distance(profile: Profile) -> int:
        theirs = profile.detect.compute_capability
        if compute_capability is None or theirs is None:
            return 0
        return abs((theirs[0] * 10 + theirs[1]) - (compute_capability[0] * 10 + compute_capability[1]))

    # Nominal sizes are decimal GB; torch reports GiB (an "80 GB" card shows ~79.2 GiB).
    fitting = [p for p in candidates if p.memory_gb * 0.93 <= memory_gib]
    if fitting:
        return max(fitting, key=lambda p: (p.memory_gb, p.device_type == kind, -capability_distance(p))).name
    return min(candidates, key=lambda p: (p.memory_gb, capability_distance(p))).name
