"""Ray pool mode: a lab or a multi-GPU host joins as one volunteer and runs one unit per free GPU.

The daemon (the Ray driver) keeps everything that involves the coordinator: the token, leasing,
signature checks, heartbeats, the spool and reporting. Each unit runs as a Ray task that needs
one `--ray-resource` (default `GPU`, so Ray sets CUDA_VISIBLE_DEVICES for it). The task checks
the signature again against the pinned key it is given, prepares the pinned data on its node
(idempotent), and runs the unit through the same sandbox and monitor as a local slot. Progress and
cancellation travel through a small actor (`ProgressBoard`): the task posts progress, the driver
reads it to heartbeat and to draw its bars, and marks units the coordinator cancelled.

Trust: Ray gives every member of a cluster full control over every other (any driver can run any
code on any node). Use this mode only inside one trust domain: your own machines, or a lab
cluster run by the people who own the volunteer identity. Never join a volunteer's Ray cluster
to machines you do not control, and never expose the Ray ports to the internet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autoswarm.v1 import swarm_pb2 as pb
from volunteer.display import Display
from volunteer.monitor import (
    BACKSTOP_GRACE_S,
    Ending,
    HeartbeatVerdict,
    Progress,
    RunOutcome,
    UnitJob,
    UnitMonitor,
    result_to_pb,
)

log = logging.getLogger("autoswarm.volunteer.ray")

POLL_S = 0.5
BOARD_TIMEOUT_S = 10.0
NODE_HEARTBEAT_S = 1.0
LOCAL_START_ATTEMPTS = 3  # Ray waits a fixed 30 s for its raylet; a busy host can miss that  # how often a task posts progress and looks for a cancel


class RayPoolError(RuntimeError):
    """Ray is missing, no cluster answers, or it has none of the resource units need."""


class ProgressBoard:
    """Ray actor: latest progress per lease, and which leases the driver cancelled."""

    def __init__(self) -> None:
        self.progress: dict[str, dict[str, Any]] = {}
        self.cancelled: dict[str, str] = {}

    def post(self, lease_id: str, progress: dict[str, Any]) -> str:
        """Store progress; returns the cancel reason ("" while the unit is wanted)."""
        self.progress[lease_id] = progress
        return self.cancelled.get(lease_id, "")

    def get(self, lease_id: str) -> dict[str, Any] | None:
        return self.progress.get(lease_id)

    def cancel(self, lease_id: str, reason: str) -> None:
        self.cancelled[lease_id] = reason or "cancelled"

    def forget(self, lease_id: str) -> None:
        self.progress.pop(lease_id, None)
        self.cancelled.pop(lease_id, None)


def run_unit_on_node(payload: dict[str, Any], board: Any) -> dict[str, Any]:
    """The Ray task body: verify, prepare data, sandbox, run, return the outcome (as plain data)."""
    import ray

    from shared_data.prepare import prepare
    from volunteer import trust
    from volunteer.sandbox import NetworkMode, ResourceLimits, probe_network_isolation, scrub_env

    signed = pb.SignedWorkUnit.FromString(payload["signed"])
    expect = trust.Expectations(**payload["expect"])
    unit = trust.verify_unit(signed, bytes.fromhex(payload["pinned_key_hex"]), expect)
    cache_dir = Path(payload["cache_dir"]) if payload.get("cache_dir") else None
    prepare(unit.settings.dataset_name, cache_dir, progress=False)
    isolation = probe_network_isolation(NetworkMode(payload["network"]))
    job = UnitJob(
        signed=signed, unit=unit, unit_dir=Path(payload["unit_dir"]), env=scrub_env(os.environ),
        isolation=isolation, limits=ResourceLimits.from_dict(payload["limits"]),
        kill_after_s=float(payload["kill_after_s"]), heartbeat_interval_s=NODE_HEARTBEAT_S,
        cache_dir=cache_dir, expected_tokenizer_hash=payload.get("expected_tokenizer_hash", ""),
    )
    lease_id = unit.lease_id

    def post(progress: Progress) -> HeartbeatVerdict:
        reason = ray.get(board.post.remote(lease_id, asdict(progress)), timeout=BOARD_TIMEOUT_S)
        return HeartbeatVerdict(cancel=bool(reason), reason=reason)

    def on_progress(progress: Progress) -> None:
        board.post.remote(lease_id, asdict(progress))

    outcome = UnitMonitor(job, post, on_progress).run()
    return {"ending": outcome.ending.value, "result": outcome.result.SerializeToString(),
            "wall_s": outcome.wall_s, "progress": asdict(outcome.progress), "node": os.uname().nodename,
            "isolation": isolation.description}


class RayExecutor:
    """Runs units as Ray tasks, one per slot of `resource` in the cluster."""

    def __init__(self, address: str, resource: str = "GPU", slots: int = 0, display: Display | None = None,
                 network: str = "auto") -> None:
        try:
            import ray
        except ImportError as exc:
            raise RayPoolError("Ray pool mode needs Ray: pip install 'autoswarm[ray]'") from exc
        self._ray = ray
        self.resource = resource
        self.display = display
        self.network = network
        self._lock = threading.Lock()
        init_kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                                       "include_dashboard": False}
        if address == "local":
            wanted = max(1, slots)
            resources = {} if resource == "GPU" else {resource: float(wanted)}
            init_kwargs.update(address="local", num_cpus=max(wanted, os.cpu_count() or 1), resources=resources)
        else:
            init_kwargs["address"] = address  # "auto" or host:port / ray://...
        attempts = LOCAL_START_ATTEMPTS if address == "local" else 1
        for attempt in range(1, attempts + 1):
            try:
                ray.init(**init_kwargs)
                break
            except Exception as exc:  # Ray raises bare Exceptions for start-up timeouts
                if attempt < attempts:  # a busy host can miss Ray's start-up timeouts; once more
                    log.warning("starting a local Ray cluster failed (%s); trying again", exc)
                    with contextlib.suppress(Exception):
                        ray.shutdown()
                    continue
                hint = " (start one with `ray start --head`, or use --ray local)" if address == "auto" else ""
                raise RayPoolError(f"could not join the Ray cluster {address!r}: {exc}{hint}") from exc
        available = int(ray.cluster_resources().get(resource, 0))
        self.slots = slots or available
        if self.slots < 1:
            ray.shutdown()
            raise RayPoolError(f"the Ray cluster has no {resource!r} resource; units need one each "
                               "(--ray-resource NAME picks another)")
        if slots > available:
            log.warning("asked for %d slots but the cluster has %d %s; extra units will queue", slots, available, resource)
        self.board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
        if resource == "GPU":
            options["num_gpus"] = 1
        else:
            options["resources"] = {resource: 1}
        self._task = ray.remote(run_unit_on_node).options(**options)

    def slot_names(self) -> list[str]:
        return [f"ray {self.resource} #{i}" for i in range(self.slots)]

    def execute(self, slot: int, job: UnitJob, heartbeat: Any, on_progress: Any,
                abandon: threading.Event) -> RunOutcome:
        ray = self._ray
        from volunteer import trust

        unit = job.unit
        payload = {
            "signed": job.signed.SerializeToString(),
            "pinned_key_hex": job.pinned_key_hex,
            "expect": {"volunteer_id": unit.volunteer_id, "hardware_class": unit.hardware_class,
                       "data_manifest_id": unit.settings.data_manifest_id},
            "cache_dir": str(job.cache_dir) if job.cache_dir else None,
            "network": self.network,
            "unit_dir": str(job.unit_dir),
            "limits": job.limits.to_dict(),
            "kill_after_s": job.kill_after_s,
            "expected_tokenizer_hash": job.expected_tokenizer_hash,
        }
        started = time.monotonic()
        deadline = started + job.kill_after_s + 3 * BACKSTOP_GRACE_S
        ref = self._task.remote(payload, self.board)
        next_beat = started + job.heartbeat_interval_s
        progress = Progress()
        ending: Ending | None = None
        cancel_reason = ""
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                if ready:
                    break
                now = time.monotonic()
                if abandon.is_set():
                    ending = Ending.ABANDONED
                elif now >= deadline:
                    ending = Ending.TIMEOUT
                if ending is not None:
                    ray.cancel(ref, force=True)
                    break
                try:
                    posted = ray.get(self.board.get.remote(unit.lease_id), timeout=BOARD_TIMEOUT_S)
                except Exception:
                    posted = None
                if posted:
                    progress = Progress.from_dict(posted)
                    on_progress(progress)
                if now >= next_beat:
                    next_beat = now + job.heartbeat_interval_s
                    verdict = heartbeat(progress)
                    if verdict.cancel and not cancel_reason:
                        cancel_reason = verdict.reason
                        self.board.cancel.remote(unit.lease_id, verdict.reason)
            wall_s = time.monotonic() - started
            if ending is not None:
                status = "timeout" if ending == Ending.TIMEOUT else "crash"
                error = ("the Ray task passed the hard deadline" if ending == Ending.TIMEOUT
                         else "abandoned by the volunteer's owner")
                return RunOutcome(ending, result_to_pb({"status": status, "error": error, "total_s": wall_s}),
                                  wall_s, progress)
            try:
                out = ray.get(ref)
            except trust.UntrustedUnitError as exc:  # the node disagrees with the driver: never run it
                return RunOutcome(Ending.CANCELLED, result_to_pb({"status": "crash", "error": str(exc)}), wall_s,
                                  progress)
            except Exception as exc:  # the worker or node died, or the task raised
                return RunOutcome(Ending.DIED, result_to_pb({"status": "crash",
                                                             "error": f"the Ray task failed: {exc}"[:1800],
                                                             "total_s": wall_s}), wall_s, progress)
            result = pb.RunResult.FromString(out["result"])
            result.environment["ray_node"] = str(out.get("node", ""))[:190]
            outcome_ending = Ending(out["ending"])
            if cancel_reason and outcome_ending == Ending.CANCELLED:
                result.error = cancel_reason
            return RunOutcome(outcome_ending, result, float(out["wall_s"]), Progress.from_dict(out["progress"]))
        finally:
            self.board.forget.remote(unit.lease_id)

    def close(self) -> None:
        try:
            self._ray.shutdown()
        except Exception:
            pass
