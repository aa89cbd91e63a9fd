"""The serving processes' event loop (coordinator/service/event_loop.py): uvloop when installed,
the standard loop on request or when it is missing, said in the log either way; a real
coordinator with two serving processes leases, beats and reports on each."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re

import pytest
from coordinator_proc import ScriptedVolunteer, coordinator_process

from coordinator.service import event_loop

pytestmark = pytest.mark.slow


def _hide_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == "uvloop" else real_find_spec(name, *a, **k)
    )


def test_choice_of_loop():
    assert event_loop.choose_event_loop("asyncio") == "asyncio"
    expected = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    assert event_loop.choose_event_loop("auto") == expected
    with pytest.raises(event_loop.EventLoopError, match="unknown event loop"):
        event_loop.choose_event_loop("trio")


def test_without_uvloop_auto_falls_back_and_a_request_for_it_is_refused(monkeypatch):
    _hide_uvloop(monkeypatch)
    assert event_loop.choose_event_loop("auto") == "asyncio"
    with pytest.raises(event_loop.EventLoopError, match="uvloop is not installed"):
        event_loop.choose_event_loop("uvloop")


def test_run_uses_the_chosen_loop(caplog):
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    caplog.set_level("INFO", logger="autoswarm.coordinator")
    assert event_loop.run(loop_module(), "asyncio").startswith("asyncio")
    assert "event loop: asyncio" in caplog.text
    pytest.importorskip("uvloop")
    assert event_loop.run(loop_module(), "uvloop").startswith("uvloop")
    assert "event loop: uvloop" in caplog.text


def test_serve_refuses_a_missing_uvloop_before_starting(monkeypatch, tmp_path, capsys):
    from coordinator.cli import coordinator_cmd

    _hide_uvloop(monkeypatch)
    code = coordinator_cmd.main(
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "c"), "--event-loop", "uvloop"]
    )
    assert code == 2
    assert "uvloop is not installed" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing was started or written


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_two_serving_processes_serve_the_volunteer_loop_on_either_loop(tmp_path, loop_name):
    if loop_name == "uvloop":
        pytest.importorskip("uvloop")
    proc = coordinator_process(
        tmp_path / "c", extra=["--serving-processes", "2", "--event-loop", loop_name]
    ).start()
    try:
        # Each scripted call opens its own connection: over a few, both processes answer.
        volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob", "carol")]
        for volunteer in volunteers:
            for _ in range(2):
                unit = volunteer.lease()
                assert unit is not None
                with volunteer.client() as client:
                    assert client.heartbeat(unit.lease_id, step=10, fraction=0.5).lease_deadline_unix_s > 0
                assert volunteer.report(unit, 1.0).result_id
        assert proc.log().count(f"event loop: {loop_name}") == 2  # the primary and the secondary
        # Each froze its startup objects out of the collector's scans (its pauses; server.py).
        frozen = [int(n) for n in re.findall(r"froze (\d+) startup objects", proc.log())]
        assert len(frozen) == 2 and min(frozen) > 10_000
    finally:
        proc.stop()


def _listening_sockets(pid: int, port: int) -> int:
    import psutil

    return sum(
        1 for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )


def test_several_grpc_servers_share_a_serving_process_port(tmp_path):
    """--grpc-servers 3: three listening sockets on one port in one process (each server accepts
    calls on its own); calls over many connections all succeed; a stop ends it cleanly."""
    import json

    pytest.importorskip("psutil")
    proc = coordinator_process(tmp_path / "c", extra=["--grpc-servers", "3"]).start()
    try:
        ready = json.loads((proc.data_dir / "coordinator.json").read_text())
        port = int(ready["address"].rsplit(":", 1)[1])
        assert _listening_sockets(proc.proc.pid, port) == 3
        volunteers = [ScriptedVolunteer(proc, owner=o).register() for o in ("alice", "bob", "carol", "dave")]
        for volunteer in volunteers:  # each call opens its own connection: the kernel spreads them
            unit = volunteer.lease()
            assert unit is not None
            with volunteer.client() as client:
                assert client.heartbeat(unit.lease_id, step=1).lease_deadline_unix_s > 0
            assert volunteer.report(unit, 1.0).result_id
    finally:
        assert proc.stop() == 0


def test_grpc_servers_out_of_range_are_refused(tmp_path, capsys):
    from coordinator.cli import coordinator_cmd

    for count in ("0", "257"):
        code = coordinator_cmd.main(["serve", "--data-dir", str(tmp_path / "c"), "--grpc-servers", count])
        assert code == 2 and "between 1 and 256" in capsys.readouterr().err
        assert not (tmp_path / "c").exists()


def test_heartbeat_rewrite_share_out_of_range_is_refused(tmp_path, capsys):
    from coordinator.cli import coordinator_cmd

    for share in ("-0.1", "1"):
        code = coordinator_cmd.main(["serve", "--data-dir", str(tmp_path / "c"), "--heartbeat-rewrite-share", share])
        assert code == 2 and "--heartbeat-rewrite-share must be at least 0 and below 1" in capsys.readouterr().err
        assert not (tmp_path / "c").exists()


def test_bad_policy_or_proposer_json_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    from coordinator.cli import coordinator_cmd

    cases = [
        ("--policy-json", "{bad", "--policy-json: not valid JSON"),
        ("--policy-json", "[1]", "--policy-json: must be a JSON object"),
        ("--policy-json", '{"min_sigma_dof": 3}', "confirm_z 3.0 is out of reach"),
        ("--policy-json", '{"confirm": 3}', "unknown acceptance setting(s): confirm"),
        ("--proposer-json", '{"small_factor": 1.0}', "--proposer-json: small_factor must be > 1"),
        ("--proposer-json", '{"steps": 2}', "unknown proposer setting(s): steps"),
    ]
    for flag, text, message in cases:
        code = coordinator_cmd.main(["serve", "--data-dir", str(tmp_path / "c"), flag, text])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (flag, text, err)
        assert not (tmp_path / "c").exists()
    monkeypatch.setenv("AUTOSWARM_PROPOSER_JSON", '{"recency": 2}')
    assert coordinator_cmd.main(["serve", "--data-dir", str(tmp_path / "c")]) == 2
    assert "recency must be in (0, 1]" in capsys.readouterr().err


def test_proposer_overrides_reach_the_core_and_the_decider_config(tmp_path):
    import dataclasses

    from coordinator.branch import GlobalBranch
    from coordinator.server import BRANCH_DIR, initial_branch_files
    from coordinator.service.core import CoordinatorCore, SwarmConfig
    from coordinator.service.signing import SigningKeys
    from coordinator.store.sqlite_store import SqliteStore

    config = SwarmConfig(proposer_overrides={"small_factor": 1.35, "max_in_flight_per_constant": 3})
    store = SqliteStore(tmp_path / "s.db")
    try:
        branch = GlobalBranch.open(tmp_path / BRANCH_DIR, "global", initial_branch_files())
        core = CoordinatorCore(store, branch, SigningKeys.load_or_create(tmp_path), config)
        assert core.proposer.settings.small_factor == 1.35
        assert core.proposer.settings.max_in_flight_per_constant == 3
        # The decider process rebuilds the config from JSON (decider.py): the overrides survive.
        again = SwarmConfig(**json.loads(json.dumps(dataclasses.asdict(config), default=dict)))
        assert dict(again.proposer_overrides) == {"small_factor": 1.35, "max_in_flight_per_constant": 3}
    finally:
        store.close()


def test_a_second_coordinator_on_a_taken_port_is_refused(tmp_path):
    """Port sharing (SO_REUSEPORT) is on for the gRPC servers, so a plain bind no longer fails
    for a second coordinator on the same port: it must refuse by itself, not take half the calls."""
    from conftest import free_port

    port = free_port()
    first = coordinator_process(tmp_path / "a", extra=["--listen", f"127.0.0.1:{port}"]).start()
    try:
        second = coordinator_process(tmp_path / "b", extra=["--listen", f"127.0.0.1:{port}"])
        with pytest.raises(RuntimeError, match="another process serves it"):
            second.start()
        volunteer = ScriptedVolunteer(first, owner="alice").register()
        assert volunteer.lease() is not None  # the first one still serves its port alone
    finally:
        first.stop()
