"""Ray pool mode: one volunteer identity runs two units at once on a local Ray cluster, with a custom
resource standing in for GPUs (`gpu_slot`), against a real coordinator."""

from __future__ import annotations

import json

import pytest
from test_volunteer_support import start_coordinator, start_volunteer

from autoswarm.v1 import swarm_pb2 as pb

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 240.0


def test_ray_pool_runs_two_units_at_once(tmp_path):
    from shared_data.prepare import prepare

    cache = tmp_path / "cache"
    prepare("pydoc", cache, progress=False)
    coordinator = start_coordinator(tmp_path / "c", budget_s=2.0, startup_allowance_s=30.0)
    volunteer = None
    try:
        volunteer = start_volunteer(tmp_path / "lab", coordinator.address, cache, "--owner", "lab", "--max-runs", "2",
                                    "--ray", "local", "--ray-resource", "gpu_slot", "--ray-slots", "2",
                                    RAY_ADDRESS="")
        assert volunteer.wait(RUN_TIMEOUT_S) == 0, volunteer.output()
        events = volunteer.events()
        kinds = [e.get("event") for e in events]
        first_finish = kinds.index("run_finished")
        before = events[:first_finish]
        assert {e["slot"] for e in before if e.get("event") == "run_started"} == {0, 1}, volunteer.output()
        # Both trainers made progress before either finished: they ran at the same time.
        assert {e["slot"] for e in before if e.get("event") == "progress" and e["step"] >= 1} == {0, 1}, volunteer.output()
        finished = [e for e in events if e.get("event") == "run_finished"]
        assert [e["status"] for e in finished] == ["ok", "ok"], volunteer.output()
        assert len([e for e in events if e.get("event") == "result_acknowledged"]) == 2

        volunteer_id = json.loads((tmp_path / "lab" / "identity.json").read_text())["volunteer_id"]
        with coordinator.admin() as admin:
            records = admin.results(volunteer_id=volunteer_id)
        assert len(records) == 2 and len({r.unit_id for r in records}) == 2
        assert all(r.result.status == pb.RUN_STATUS_OK and r.result.environment.get("ray_node") for r in records)
    finally:
        if volunteer is not None:
            volunteer.stop()
        coordinator.stop()
