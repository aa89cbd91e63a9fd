"""The sandboxed side of one run: `python -m volunteer.child UNIT_DIR`.

The daemon starts this process inside the sandbox (scrubbed environment, no network where the
OS allows) with the unit's working directory. It applies the resource limits to itself (the
trainer inherits them), runs the trainer through `trainer.runner.run_experiment`, streams
progress to its stdout as `@autoswarm-progress {json}` lines, and writes `result.json`
atomically. It never sees a token and never talks to the coordinator.

If the daemon dies (even `kill -9`), a watchdog notices the parent is gone and kills the whole
run, so no orphaned trainer keeps the GPU busy; the daemon recovers the unit on restart.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
PROGRESS_MARKER = "@autoswarm-progress "
PARENT_POLL_S = 0.5


def _kill_descendants() -> None:
    """SIGKILL every process below this one (the runner may start the trainer in its own session)."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:
        children = []
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            _kill_descendants()
            os._exit(137)
        time.sleep(PARENT_POLL_S)


def _on_terminate(signum: int, frame: object) -> None:
    del frame
    _kill_descendants()
    os._exit(128 + signum)


def _emit_progress(progress: Any) -> None:
    def field(*names: str) -> float:
        for name in names:
            value = progress.get(name) if isinstance(progress, dict) else getattr(progress, name, None)
            if value is not None:
                try:
                    return float(value)
                except (TypeError, ValueError):
                    continue
        return 0.0

    record = {
        "step": int(field("step")),
        "fraction": field("fraction", "fraction_of_budget"),
        "loss": field("loss"),
        "tokens_per_s": field("tok_per_s", "tokens_per_s"),
    }
    phase = progress.get("phase") if isinstance(progress, dict) else getattr(progress, "phase", None)
    if phase:
        record["phase"] = str(phase)
    print(PROGRESS_MARKER + json.dumps(record), flush=True)


def _result_dict(result: Any) -> dict[str, Any]:
    if hasattr(result, "to_json"):
        raw = result.to_json()
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    if isinstance(result, dict):
        return result
    from dataclasses import asdict

    return asdict(result)


def _write_result(unit_dir: Path, result: dict[str, Any]) -> None:
    tmp = unit_dir / (RESULT_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, unit_dir / RESULT_FILE)


def run_job(unit_dir: Path) -> dict[str, Any]:
    job = json.loads((unit_dir / JOB_FILE).read_text(encoding="utf-8"))
    from volunteer.sandbox import ResourceLimits

    skipped = ResourceLimits.from_dict(job.get("limits", {})).apply()
    for what in skipped:
        print(f"sandbox: could not apply {what}", flush=True)
    try:
        from trainer.runner import run_experiment
    except ImportError as exc:
        return {"status": "crash", "error": f"this volunteer cannot run units: trainer.runner is missing ({exc})"}
    kwargs: dict[str, Any] = {
        "hardware_class": job["hardware_class"],
        "budget_s": float(job["budget_s"]),
        "dataset": job["dataset"],
        "workdir": unit_dir / "run",
        "profiles_json": job.get("profiles_json"),
        "env": dict(os.environ),  # already scrubbed by the daemon
        "on_progress": _emit_progress,
        "kill_after_s": job.get("kill_after_s"),
        "cache_dir": Path(job["cache_dir"]) if job.get("cache_dir") else None,
    }
    accepted = inspect.signature(run_experiment).parameters
    for optional in ("expected_manifest_id", "expected_tokenizer_hash"):
        if job.get(optional) and optional in accepted:
            kwargs[optional] = job[optional]
    (unit_dir / "run").mkdir(exist_ok=True)
    result = run_experiment(unit_dir / job["train_py"], **kwargs)
    return _result_dict(result)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m volunteer.child UNIT_DIR", file=sys.stderr)
        return 2
    unit_dir = Path(argv[0]).resolve()
    parent_pid = int(json.loads((unit_dir / JOB_FILE).read_text(encoding="utf-8")).get("parent_pid", os.getppid()))
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to interpret (finish or abandon)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    try:
        result = run_job(unit_dir)
    except Exception as exc:
        result = {"status": "crash", "error": f"{type(exc).__name__}: {exc}",
                  "log_tail": traceback.format_exc()[-4000:]}
    _write_result(unit_dir, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
