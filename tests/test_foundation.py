"""The foundation: generated stubs are fresh, the contract follows its conventions, the coordinator
install set never pulls torch, and the coordinator imports and serves with torch unavailable."""

from __future__ import annotations

import importlib.metadata
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_not_stale():
    result = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_contract_conventions():
    from autoswarm.v1 import swarm_pb2

    descriptor = swarm_pb2.DESCRIPTOR
    assert descriptor.package == "autoswarm.v1"
    for service in descriptor.services_by_name.values():
        for method in service.methods:
            assert re.fullmatch(r"(?:[A-Z][a-z]+){2,}", method.name), method.name  # VerbNoun
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"
    for message in descriptor.message_types_by_name.values():
        for field in message.fields:
            if field.name.endswith(("_seconds", "_secs", "_sec")):
                raise AssertionError(f"{message.name}.{field.name}: durations end in _s")


def _closure(requirements: list[Requirement], extras: set[str]) -> set[str]:
    """Installed distributions reached from the requirements (markers evaluated for this machine)."""
    seen: set[str] = set()
    todo = [(r, extras) for r in requirements]
    while todo:
        requirement, active = todo.pop()
        if requirement.marker is not None:
            environments = [{"extra": e} for e in active] or [{"extra": ""}]
            if not any(requirement.marker.evaluate(env) for env in environments):
                continue
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [(Requirement(r), set(requirement.extras)) for r in requires]
    return seen


def test_coordinator_install_set_does_not_pull_torch():
    own = [Requirement(r) for r in importlib.metadata.requires("autoswarm") or []]
    base = [r for r in own if r.marker is None]
    coordinator_set = _closure(base, set())
    assert {"grpcio", "redis", "protobuf", "cryptography"} <= coordinator_set
    assert not {"torch", "triton", "numpy-torch", "kernels", "rustbpe", "ray"} & coordinator_set
    volunteer_set = _closure(own, {"volunteer"})
    assert "torch" in volunteer_set  # the check can fail: the volunteer set does pull it


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is unavailable on this coordinator VM")
sys.meta_path.insert(0, Block())
"""


def test_coordinator_imports_and_starts_without_torch(tmp_path):
    import coordinator

    modules = sorted(m.name for m in pkgutil.walk_packages(coordinator.__path__, "coordinator."))
    assert "coordinator.server" in modules and "coordinator.service.core" in modules
    script = BLOCK_TORCH + f"""
import asyncio, importlib, pathlib
for name in {modules!r}:
    importlib.import_module(name)
from coordinator.server import CoordinatorServer, ServerOptions
from coordinator.service.core import SwarmConfig
async def main():
    server = CoordinatorServer(ServerOptions(listen="127.0.0.1:0", data_dir=pathlib.Path({str(tmp_path)!r}),
                               swarm=SwarmConfig(dataset="pydoc", budget_s=5)))
    port = await server.start()
    await server.stop(0)
    return port
assert asyncio.run(main()) > 0
assert "torch" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_cli_lists_subcommands_and_refuses_unknown_ones():
    exe = Path(sys.executable).parent / "autoswarm"
    listing = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert listing.returncode == 0
    for name in ("coordinator", "volunteer", "train", "demo", "leaderboard", "results", "history", "best",
                 "propose", "status"):
        assert re.search(rf"^\s+{name}\s", listing.stdout, re.M), name
    unknown = subprocess.run([str(exe), "no-such-thing"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown subcommand" in unknown.stdout
