"""`autoswarm volunteer check`: what a new user reads when something is wrong (and when nothing is)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from coordinator_proc import fingerprint
from test_volunteer_support import REPO_ROOT, TestKey, start_coordinator

from volunteer.check import run_check
from volunteer.identity import Identity, save_identity


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("check-coordinator"))
    yield proc
    proc.stop()


def _check(**kwargs) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(out=out, **kwargs)
    return code, out.getvalue()


def _line(text: str, topic: str) -> str:
    return next(line for line in text.splitlines() if line.split()[1:2] == [topic])


def test_no_data_is_explained_and_changes_nothing(tmp_path, coordinator):
    data_dir, cache = tmp_path / "vol", tmp_path / "empty-cache"
    code, text = _check(coordinator=coordinator.address, data_dir=data_dir, cache_dir=cache)
    assert code == 1
    assert _line(text, "data").startswith("  FAIL") and "pydoc is not ready" in text
    assert "`autoswarm volunteer run` prepares it" in text
    assert "not registered yet" in _line(text, "identity")
    assert "will be pinned at registration" in _line(text, "key")
    assert _line(text, "coordinator").startswith("  ok")
    assert not data_dir.exists() and not cache.exists()  # a dry run


def test_no_coordinator(tmp_path):
    code, text = _check(coordinator="127.0.0.1:1", data_dir=tmp_path / "vol", cache_dir=tmp_path / "c")
    assert code == 1
    line = _line(text, "coordinator")
    assert line.startswith("  FAIL") and "cannot reach the coordinator at 127.0.0.1:1" in line
    assert "check the address and port" in text
    assert _line(text, "data").startswith("  skip")
    assert "1 problem(s): coordinator" in text


def test_wrong_key_is_refused_loudly(tmp_path, coordinator):
    impostor = TestKey()
    save_identity(tmp_path, Identity(coordinator.address, "vol_x", "tok", "cpu", "alice", "", impostor.public.hex(),
                                     1.0, 1.0))
    code, text = _check(coordinator=None, data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert code == 1
    line = _line(text, "key")
    assert line.startswith("  FAIL") and "without an endorsement by the pinned key" in line and "impostor" in line
    assert "never ignore this" in text


def test_unknown_gpu_is_named_with_its_fallback(tmp_path, monkeypatch):
    # No GPU here: the only mock in these tests stands in for torch's view of an unknown card.
    import trainer.hardware as hardware
    from trainer.hardware import DeviceInfo
    from trainer.profiles import DeviceType

    unknown = DeviceInfo(DeviceType.CUDA, "NVIDIA Quantum X9000", 37.0, (12, 1), True, True, "2.13", "13.0", 1, 16)
    monkeypatch.setattr(hardware, "detect_device", lambda prefer=None: unknown)
    code, text = _check(coordinator=None, data_dir=tmp_path, cache_dir=tmp_path / "c", dataset="pydoc")
    line = _line(text, "class")
    assert line.startswith("  warn") and "unknown GPU" in line and "NVIDIA Quantum X9000" in line
    assert "nearest class by memory" in line
    assert "add a profile for NVIDIA Quantum X9000" in text


def test_all_good_through_the_real_command(tmp_path, coordinator):
    from shared_data.prepare import prepare

    cache = tmp_path / "cache"
    prepare("pydoc", cache, progress=False)
    with coordinator.client() as client:
        registered = client.register(fingerprint(), owner="carol", requested_class="cpu")
    save_identity(tmp_path / "vol", Identity(coordinator.address, registered.volunteer_id, registered.token, "cpu",
                                             "carol", "", registered.coordinator_public_key.hex(), 1.0, 1.0))
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'proto'}"}
    done = subprocess.run(
        [sys.executable, "-c", "from coordinator.cli import main; raise SystemExit(main())", "volunteer", "check",
         "--data-dir", str(tmp_path / "vol"), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    for topic in ("hardware", "class", "identity", "coordinator", "key", "token", "data"):
        assert _line(done.stdout, topic).startswith("  ok"), (topic, done.stdout)
    assert "ready to volunteer" in done.stdout
