"""Detect this machine's accelerator and map it to a hardware class.

`detect_device()` asks torch (imported lazily) for the device name, memory and compute capability;
`classify()` is pure and works on a `DeviceInfo`, so the coordinator and tests can classify
fingerprints without torch. Matching: a class's name pattern plus its memory range (and compute
capability when the profile gives one); several matches pick the closest nominal memory; no match
falls back to the nearest class by memory, and says so.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

from trainer.profiles import DeviceType, ProfileSet, load_profiles, name_matches, nearest_class_by_memory

__all__ = ["DeviceInfo", "ClassMatch", "detect_device", "classify", "detect_class"]


@dataclass(frozen=True)
class DeviceInfo:
    """What the trainer needs to know about one device (index 0 of its kind)."""

    device_type: DeviceType
    name: str
    memory_gib: float
    compute_capability: tuple[int, int] | None = None
    bf16_supported: bool = False
    triton_available: bool = False
    torch_version: str = ""
    cuda_version: str = ""  # CUDA or HIP runtime torch was built with
    device_count: int = 0
    cpu_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["device_type"] = self.device_type.value
        out["compute_capability"] = (
            f"{self.compute_capability[0]}.{self.compute_capability[1]}" if self.compute_capability else ""
        )
        return out


@dataclass(frozen=True)
class ClassMatch:
    name: str
    reason: str  # plain words: "matched by name ..." or "no profile names ...; nearest by memory"
    exact: bool  # False when the class came from the memory fallback


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False
            )
            name = out.stdout.strip() or name
        except OSError:
            pass
    elif os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return name


def _total_ram_gib() -> float:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * page_size / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def _triton_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def detect_device(prefer: str | None = None) -> DeviceInfo:
    """Describe the best local device: CUDA/ROCm GPU 0, else Apple MPS, else the CPU.

    `prefer` ("cuda"|"mps"|"cpu") forces a kind, e.g. "cpu" on a GPU host to run the cpu class.
    """
    import torch

    cpu_count = os.cpu_count() or 1
    common: dict[str, Any] = {"torch_version": torch.__version__, "cpu_count": cpu_count}
    want = (prefer or "").lower()
    if want in ("", "cuda", "rocm") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        is_rocm = torch.version.hip is not None
        return DeviceInfo(
            device_type=DeviceType.ROCM if is_rocm else DeviceType.CUDA,
            name=torch.cuda.get_device_name(0),
            memory_gib=props.total_memory / 2**30,
            compute_capability=None if is_rocm else (props.major, props.minor),
            bf16_supported=bool(torch.cuda.is_bf16_supported(including_emulation=False)),
            triton_available=_triton_available(),
            cuda_version=str(torch.version.hip if is_rocm else torch.version.cuda),
            device_count=torch.cuda.device_count(),
            **common,
        )
    mps = getattr(torch.backends, "mps", None)
    if want in ("", "mps") and mps is not None and mps.is_available():
        return DeviceInfo(
            device_type=DeviceType.MPS,
            name=_cpu_name(),  # e.g. "Apple M2 Max": the chip names the GPU
            memory_gib=_total_ram_gib(),
            bf16_supported=True,
            device_count=1,
            **common,
        )
    return DeviceInfo(
        device_type=DeviceType.CPU,
        name=_cpu_name(),
        memory_gib=_total_ram_gib(),
        bf16_supported=False,
        device_count=0,
        **common,
    )


def classify(info: DeviceInfo, profiles: ProfileSet | str | None = None) -> ClassMatch:
    """Map a device to a class by name + memory (+ compute capability), else nearest by memory."""
    profile_set = profiles if isinstance(profiles, ProfileSet) else load_profiles(profiles)
    same_kind = [p for p in profile_set.classes.values() if p.device_type == info.device_type]
    if info.device_type in (DeviceType.CPU, DeviceType.MPS):
        if not same_kind:
            raise ValueError(f"profiles define no {info.device_type.value!r} class")
        return ClassMatch(same_kind[0].name, f"{info.device_type.value} device", exact=True)
    candidates = [p for p in profile_set.classes.values() if p.device_type in (info.device_type, DeviceType.CUDA)]
    matches = []
    for profile in candidates:
        detect = profile.detect
        if not any(name_matches(pattern, info.name) for pattern in detect.name_patterns):
            continue
        if not detect.min_memory_gib <= info.memory_gib <= detect.max_memory_gib:
            continue
        if detect.compute_capability is not None and info.compute_capability is not None:
            if tuple(detect.compute_capability) != tuple(info.compute_capability):
                continue
        matches.append(profile)
    if matches:
        best = min(matches, key=lambda p: (p.device_type != info.device_type, abs(p.memory_gb - info.memory_gib)))
        return ClassMatch(best.name, f"matched by name {info.name!r} and {info.memory_gib:.1f} GiB", exact=True)
    fallback = nearest_class_by_memory(info.memory_gib, info.device_type, profile_set, info.compute_capability)
    return ClassMatch(
        fallback,
        f"no profile names {info.name!r} ({info.memory_gib:.1f} GiB); nearest class by memory is {fallback}",
        exact=False,
    )


def detect_class(profiles: ProfileSet | str | None = None, prefer: str | None = None) -> tuple[ClassMatch, DeviceInfo]:
    """Detect the local device and classify it."""
    info = detect_device(prefer)
    return classify(info, profiles), info
