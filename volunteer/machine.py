"""This machine as the coordinator sees it: the device, its class and the GPU slots to use.

Detection is the trainer's (`trainer.hardware`); this module adds what only the volunteer needs:
the driver version, the wire fingerprint and which GPUs `--gpus` selects.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass

from autoswarm.v1 import swarm_pb2 as pb


class MachineError(RuntimeError):
    """The requested class or GPUs do not exist on this machine."""


@dataclass(frozen=True)
class Machine:
    device_type: str  # cuda | rocm | mps | cpu
    device_name: str
    memory_bytes: int
    compute_capability: str
    driver_version: str
    torch_version: str
    cuda_version: str
    device_count: int
    cpu_count: int
    local_class: str  # the class the local profiles give; the coordinator has the last word
    class_reason: str  # plain words: how the class was matched
    class_exact: bool  # False: unknown device, nearest profile by memory

    def fingerprint(self, slots: int) -> pb.HardwareFingerprint:
        return pb.HardwareFingerprint(
            device_type=self.device_type,
            device_name=self.device_name,
            memory_bytes=self.memory_bytes,
            compute_capability=self.compute_capability,
            driver_version=self.driver_version,
            torch_version=self.torch_version,
            cuda_version=self.cuda_version,
            device_count=slots,
            cpu_count=self.cpu_count,
            os=platform.platform(),
            python_version=platform.python_version(),
        )

    def describe(self) -> str:
        memory = f"{self.memory_bytes / 2**30:.1f} GiB"
        extra = f", compute {self.compute_capability}" if self.compute_capability else ""
        driver = f", driver {self.driver_version}" if self.driver_version else ""
        cuda = f", CUDA {self.cuda_version}" if self.cuda_version and self.cuda_version != "None" else ""
        count = f" x{self.device_count}" if self.device_count > 1 else ""
        return (f"{self.device_type}: {self.device_name}{count} ({memory}{extra}{driver}), "
                f"torch {self.torch_version}{cuda}, {self.cpu_count} CPUs")


def _nvidia_driver_version() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ""
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def detect_machine(requested_class: str = "auto") -> Machine:
    """Detect the device; with a class name, the device kind that class runs on (e.g. cpu on a GPU host)."""
    from trainer.hardware import classify, detect_device
    from trainer.profiles import UnknownClassError, get_profile, load_profiles

    profiles = load_profiles()
    prefer = None
    if requested_class and requested_class != "auto":
        try:
            prefer = get_profile(requested_class, profiles).device_type.value
        except UnknownClassError as exc:
            raise MachineError(f"unknown class {requested_class!r}; known classes: {', '.join(profiles.names())}") from exc
    info = detect_device(prefer)
    if prefer is not None and info.device_type.value != prefer:
        raise MachineError(f"class {requested_class!r} needs a {prefer} device, but this machine has none "
                           f"(found {info.device_type.value}: {info.name})")
    match = classify(info, profiles)
    if requested_class and requested_class != "auto":
        local_class, reason, exact = requested_class, f"requested with --class (detected {match.name})", True
    else:
        local_class, reason, exact = match.name, match.reason, match.exact
    device_type = info.device_type.value
    return Machine(
        device_type=device_type,
        device_name=info.name,
        memory_bytes=int(info.memory_gib * 2**30),
        compute_capability=(f"{info.compute_capability[0]}.{info.compute_capability[1]}"
                            if info.compute_capability else ""),
        driver_version=_nvidia_driver_version() if device_type == "cuda" else "",
        torch_version=info.torch_version,
        cuda_version=info.cuda_version,
        device_count=info.device_count,
        cpu_count=info.cpu_count or (os.cpu_count() or 1),
        local_class=local_class,
        class_reason=reason,
        class_exact=exact,
    )


def select_gpus(spec: str, machine: Machine) -> list[int | None]:
    """The slots to run: one per selected GPU, or a single unpinned slot (`None`) when no GPUs are named.

    `spec` is "" (one slot, devices as the environment gives them), "all", or "0,1,3".
    """
    if not spec:
        return [None]
    if machine.device_type not in ("cuda", "rocm"):
        raise MachineError(f"--gpus {spec} needs CUDA or ROCm GPUs; this volunteer runs on {machine.device_type}")
    if spec == "all":
        if machine.device_count < 1:
            raise MachineError("--gpus all, but torch sees no GPU")
        return list(range(machine.device_count))
    try:
        indices = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError as exc:
        raise MachineError(f"--gpus takes 'all' or comma-separated indices like 0,1; got {spec!r}") from exc
    if not indices or len(set(indices)) != len(indices):
        raise MachineError(f"--gpus {spec!r}: give each GPU index once")
    missing = [i for i in indices if not 0 <= i < machine.device_count]
    if missing:
        raise MachineError(f"--gpus {spec}: no GPU {missing} (this machine has {machine.device_count})")
    return indices


def slot_environment(gpu: int | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Pin one trainer to one GPU: CUDA_VISIBLE_DEVICES (and HIP's twin for ROCm).

    Indices are the ones torch shows this process, so when the owner already restricted the
    visible devices (CUDA_VISIBLE_DEVICES=2,3), slot 0 is their device 2.
    """
    if gpu is None:
        return {}
    environ = dict(os.environ) if environ is None else environ
    visible = [v.strip() for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    device = visible[gpu] if gpu < len(visible) else str(gpu)
    return {"CUDA_VISIBLE_DEVICES": device, "HIP_VISIBLE_DEVICES": device}
