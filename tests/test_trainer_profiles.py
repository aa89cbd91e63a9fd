"""trainer.profiles and trainer.hardware: profiles as data, detection and the memory fallback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainer.hardware import DeviceInfo, classify, detect_class, detect_device
from trainer.profiles import (
    DeviceType,
    ProfileError,
    UnknownClassError,
    default_profiles_text,
    get_profile,
    load_profiles,
    name_matches,
    nearest_class_by_memory,
    pinned_constants,
)

REQUIRED = {"h100-80g", "a100-80g", "a100-40g", "rtx4090-24g", "rtx3090-24g", "rtx3060-12g", "mps", "cpu"}


def gpu(name: str, gib: float, cc: tuple[int, int] | None, kind: DeviceType = DeviceType.CUDA) -> DeviceInfo:
    return DeviceInfo(device_type=kind, name=name, memory_gib=gib, compute_capability=cc, bf16_supported=True)


def test_shipped_profiles_cover_the_classes_and_seed_tuning():
    profiles = load_profiles()
    assert REQUIRED <= set(profiles.names())
    assert profiles["h100-80g"].constants == {}  # upstream defaults: train.py as written
    assert profiles["rtx3090-24g"].constants == {"DEPTH": 6, "DEVICE_BATCH_SIZE": 64, "TOTAL_BATCH_SIZE": 2**17}
    assert profiles["rtx4090-24g"].constants == profiles["rtx3090-24g"].constants
    assert profiles["rtx3060-12g"].constants == {"DEPTH": 4, "DEVICE_BATCH_SIZE": 32, "TOTAL_BATCH_SIZE": 2**16,
                                                  "WINDOW_PATTERN": "L"}
    cpu = profiles["cpu"]
    assert cpu.run.seq_len == 256 and cpu.run.dtype == "fp32" and not cpu.run.compile
    assert cpu.run.attention == "sdpa" and cpu.run.default_dataset == "pydoc"
    assert pinned_constants("cpu") == {"DEPTH", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE"}
    assert get_profile("h100-80g").run.eval_tokens == 40 * 524288


def test_peak_flops_per_model_not_a_hard_coded_h100():
    h100 = get_profile("h100-80g")
    assert h100.peak_flops("bf16", "NVIDIA H100 80GB HBM3") == pytest.approx(989.5e12)
    assert h100.peak_flops("bf16", "NVIDIA H100 PCIe") == pytest.approx(756.5e12)
    assert get_profile("rtx3090-24g").peak_flops("bf16", "NVIDIA GeForce RTX 3090") == pytest.approx(71e12)
    assert get_profile("t4-16g").peak_flops("bf16") == 0.0  # no bf16 on Turing
    assert get_profile("cpu").peak_flops("fp32", "any", threads=4) == pytest.approx(4 * get_profile("cpu").peak_flops("fp32"))


@pytest.mark.parametrize(("info", "expected", "exact"), [
    (gpu("NVIDIA H100 80GB HBM3", 79.2, (9, 0)), "h100-80g", True),
    (gpu("NVIDIA H100 PCIe", 79.2, (9, 0)), "h100-80g", True),
    (gpu("NVIDIA A100-SXM4-80GB", 79.1, (8, 0)), "a100-80g", True),
    (gpu("NVIDIA A100-SXM4-40GB", 39.4, (8, 0)), "a100-40g", True),
    (gpu("NVIDIA GeForce RTX 4090", 23.6, (8, 9)), "rtx4090-24g", True),
    (gpu("NVIDIA GeForce RTX 3090", 23.7, (8, 6)), "rtx3090-24g", True),
    (gpu("NVIDIA GeForce RTX 3060", 11.8, (8, 6)), "rtx3060-12g", True),
    (gpu("NVIDIA GeForce RTX 3060 Ti", 7.8, (8, 6)), "rtx3070-8g", True),  # a 3060 by name, not by memory
    (gpu("Tesla T4", 14.6, (7, 5)), "t4-16g", True),
    # unknown cards fall back to the largest class that fits their memory
    (gpu("NVIDIA RTX A4000", 15.7, (8, 6)), "rtx4080-16g", False),  # tie at 16 GB: closest compute capability
    (gpu("NVIDIA RTX 6000 Ada Generation", 47.5, (8, 9)), "a100-40g", False),
    (gpu("NVIDIA GeForce GTX 1050 Ti", 3.9, (6, 1)), "rtx3070-8g", False),  # nothing fits: the smallest
    (gpu("AMD Instinct MI300X", 191.5, None, DeviceType.ROCM), "mi300x-192g", True),
    (gpu("AMD Radeon RX 7900 XTX", 24.0, None, DeviceType.ROCM), "rtx4090-24g", False),
    (DeviceInfo(DeviceType.MPS, "Apple M2 Max", 32.0), "mps", True),
    (DeviceInfo(DeviceType.CPU, "AMD EPYC", 16.0), "cpu", True),
])
def test_classify(info, expected, exact):
    match = classify(info)
    assert (match.name, match.exact) == (expected, exact), match.reason
    if not exact:
        assert "nearest" in match.reason


def test_name_matching_is_token_aware():
    assert name_matches("T4", "Tesla T4")
    assert not name_matches("T4", "NVIDIA GeForce RTX4090")
    assert name_matches("A100", "NVIDIA A100-SXM4-40GB")
    assert name_matches("rtx 3090", "NVIDIA GeForce RTX 3090 Ti")


def test_nearest_by_memory_directly():
    assert nearest_class_by_memory(79.0) in {"h100-80g", "a100-80g"}
    assert nearest_class_by_memory(12.0) == "rtx3060-12g"
    assert nearest_class_by_memory(10.5) == "rtx3080-10g"
    assert nearest_class_by_memory(2.0, "cpu") == "cpu"


def _mutated(mutate) -> str:
    raw = json.loads(default_profiles_text())
    mutate(raw)
    return json.dumps(raw)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda raw: raw["classes"]["cpu"]["run"].update(dtype="fp8"), "dtype"),
    (lambda raw: raw["classes"]["cpu"]["run"].update(attention="xformers"), "attention"),
    (lambda raw: raw["classes"]["cpu"]["constants"].update(TOTAL_BATCH_SIZE=5000), "multiple"),
    (lambda raw: raw["classes"]["cpu"]["constants"].update(depth=3), "UPPER_CASE"),
    (lambda raw: raw["classes"]["cpu"].pop("run"), "missing field 'run'"),
    (lambda raw: raw["classes"]["cpu"].update(device_type="tpu"), "device_type"),
    (lambda raw: raw["attention_kernels"]["other"][0].pop("version"), "exactly one"),
    (lambda raw: raw.update(version=2), "version"),
])
def test_malformed_profiles_are_typed_errors(mutate, message):
    with pytest.raises(ProfileError, match=message):
        load_profiles(_mutated(mutate))


def test_unknown_class_and_bad_json():
    with pytest.raises(UnknownClassError, match="known classes"):
        get_profile("tpu-v5")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profiles("{nope")


def test_kernel_pins_by_compute_capability():
    profiles = load_profiles()
    hopper = profiles.kernels_for((9, 0))
    other = profiles.kernels_for((8, 9))
    assert hopper and other and hopper != other
    assert all(pin.version is not None or pin.revision for pin in hopper + other)
    assert profiles.kernels_for(None) == ()


def test_detect_on_this_machine_and_no_torch_needed_for_profiles():
    match, info = detect_class(prefer="cpu")
    assert info.device_type is DeviceType.CPU and match.name == "cpu"
    assert detect_device("cpu").memory_gib > 0
    # The coordinator imports profiles and constants without torch.
    code = ("import sys; import trainer.profiles, trainer.constants, shared_data.harness; "
            "trainer.profiles.load_profiles(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
