"""Flash Attention 3 through the `kernels` hub: fetched before a run, loaded offline during it.

The builds to use are pinned in profiles.json (`attention_kernels`): the Hopper build on compute
capability 9.0, the community build elsewhere, each at a fixed major version or revision.
`prefetch_fa3` runs before a run (online, e.g. `autoswarm train` or volunteer setup) and puts the
build in the Hugging Face cache. `load_fa3_offline` runs inside the training subprocess with
HF_HUB_OFFLINE=1, so a run never touches the network: a build that is not cached is simply
unavailable, and the harness falls back (loudly) to FlexAttention or SDPA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from trainer.profiles import KernelPin

__all__ = ["KernelLoad", "prefetch_fa3", "load_fa3_offline"]


@dataclass(frozen=True)
class KernelLoad:
    module: ModuleType | None
    pin: KernelPin | None
    reason: str  # why it loaded, or why nothing did, in plain words


def _pin_kwargs(pin: KernelPin) -> dict[str, object]:
    kwargs: dict[str, object] = {"trust_remote_code": [pin.repo]}  # pinned in profiles.json: trusted by us
    if pin.version is not None:
        kwargs["version"] = pin.version
    else:
        kwargs["revision"] = pin.revision
    return kwargs


def _describe(pin: KernelPin) -> str:
    return f"{pin.repo}@{'v' + str(pin.version) if pin.version is not None else pin.revision}"


def prefetch_fa3(pins: Sequence[KernelPin]) -> list[str]:
    """Download each pinned build for this machine into the cache (needs the network). Returns one
    plain-words line per pin; never raises for a build that does not exist for this machine."""
    lines = []
    try:
        from kernels import install_kernel
    except ImportError as exc:
        return [f"kernels is not installed ({exc}); Flash Attention 3 will be unavailable"]
    for pin in pins:
        try:
            path = install_kernel(pin.repo, **_pin_kwargs(pin))  # type: ignore[arg-type]
            lines.append(f"cached {_describe(pin)} at {path}")
        except Exception as exc:  # a missing build for this torch/CUDA/arch is an expected outcome
            lines.append(f"could not fetch {_describe(pin)}: {type(exc).__name__}: {exc}")
    return lines


def load_fa3_offline(pins: Sequence[KernelPin]) -> KernelLoad:
    """The first pinned build that loads from the local cache, with HF_HUB_OFFLINE forced on."""
    if not pins:
        return KernelLoad(None, None, "no Flash Attention 3 build is pinned for this device")
    os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads its constants
    try:
        from kernels import get_kernel
    except ImportError as exc:
        return KernelLoad(None, None, f"the kernels package is not installed ({exc})")
    failures = []
    for pin in pins:
        try:
            kernel = get_kernel(pin.repo, **_pin_kwargs(pin))  # type: ignore[arg-type]
        except Exception as exc:
            failures.append(f"{_describe(pin)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        module = getattr(kernel, "flash_attn_interface", kernel)
        if not hasattr(module, "flash_attn_func"):
            failures.append(f"{_describe(pin)}: no flash_attn_func in the build")
            continue
        return KernelLoad(module, pin, f"loaded {_describe(pin)} from the local cache")
    return KernelLoad(None, None, "not in the local cache or not built for this device (" + "; ".join(failures) + ")")
