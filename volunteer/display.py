"""What the volunteer tells its owner: a live display for people, quiet or JSON lines for services.

- human (default): a progress bar per run, redrawn in place on a terminal (one line per slot),
  plain lines every tenth of the budget otherwise; after each result its status, val_bpb and
  normalized score, the swarm's best on the class and this volunteer's last score.
- quiet: warnings and errors only.
- json: one JSON object per line on stdout (`{"ts": ..., "event": ..., ...}`), for journald,
  Docker logs or a supervisor that parses them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from enum import StrEnum
from typing import Any, TextIO

from autoswarm.v1 import swarm_pb2 as pb
from volunteer.monitor import Progress, RunOutcome

BAR_WIDTH = 24
PLAIN_PROGRESS_STEP = 0.1  # without a terminal: a line every tenth of the budget

STATUS_NAMES = {
    pb.RUN_STATUS_OK: "ok", pb.RUN_STATUS_CRASH: "crash", pb.RUN_STATUS_TIMEOUT: "timeout",
    pb.RUN_STATUS_OOM: "oom", pb.RUN_STATUS_NAN: "nan", pb.RUN_STATUS_UNSPECIFIED: "unknown",
}
KIND_NAMES = {pb.UNIT_KIND_BASELINE: "baseline", pb.UNIT_KIND_CANDIDATE: "candidate",
              pb.UNIT_KIND_REPLICATE: "replicate", pb.UNIT_KIND_UNSPECIFIED: "unit"}


class LogMode(StrEnum):
    HUMAN = "human"
    QUIET = "quiet"
    JSON = "json"


def describe_unit(unit: pb.WorkUnit) -> str:
    what = KIND_NAMES.get(unit.kind, "unit")
    target = f" of {unit.hypothesis_id}" if unit.hypothesis_id else ""
    return f"{what}{target} on {unit.base_commit[:10] or '?'} ({unit.hardware_class}, {unit.settings.budget_s:g}s)"


def format_score(score: pb.NormalizedScore) -> str:
    if not score.has_baseline:
        return "no class baseline yet"
    sigma = f", {score.delta_sigma:+.2f} sigma" if score.class_sigma > 0 else ""
    return f"{score.delta_bpb:+.4f} bpb ({score.delta_percent:+.2f}%{sigma}) vs baseline {score.baseline_val_bpb:.4f}"


class Display:
    def __init__(self, mode: LogMode = LogMode.HUMAN, stream: TextIO | None = None) -> None:
        self.mode = mode
        self.stream = stream or sys.stdout
        self.live = mode == LogMode.HUMAN and self.stream.isatty()
        self._lock = threading.Lock()
        self._bars: dict[int, str] = {}
        self._last_plain: dict[int, float] = {}
        self._last_progress: dict[int, tuple[object, ...]] = {}
        self.last_score: str = ""
        self.status_line: str = ""  # shown beside the live bars: this volunteer's last score, the swarm's best

    # -- plumbing -------------------------------------------------------------------------------

    def _emit_json(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.stream.write(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str) + "\n")
            self.stream.flush()

    def _line(self, text: str) -> None:
        with self._lock:
            if self.live and self._bars:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            if self.live and self._bars:
                self.stream.write(self._bar_text())
            self.stream.flush()

    def _bar_text(self) -> str:
        text = "  ".join(self._bars[slot] for slot in sorted(self._bars))
        return f"{text}  | {self.status_line}" if self.status_line else text

    # -- messages -------------------------------------------------------------------------------

    def info(self, message: str, **fields: Any) -> None:
        if self.mode == LogMode.JSON:
            self._emit_json("info", message=message, **fields)
        elif self.mode == LogMode.HUMAN:
            self._line(message)

    def warn(self, message: str, **fields: Any) -> None:
        if self.mode == LogMode.JSON:
            self._emit_json("warning", message=message, **fields)
        else:
            self._line(f"warning: {message}")

    def error(self, message: str, **fields: Any) -> None:
        if self.mode == LogMode.JSON:
            self._emit_json("error", message=message, **fields)
        else:
            self._line(f"error: {message}")

    # -- runs -----------------------------------------------------------------------------------

    def run_started(self, slot: int, unit: pb.WorkUnit) -> None:
        self._last_plain[slot] = -1.0
        if self.mode == LogMode.JSON:
            self._emit_json("run_started", slot=slot, lease_id=unit.lease_id, unit_id=unit.unit_id,
                            kind=KIND_NAMES.get(unit.kind, "unit"), hypothesis_id=unit.hypothesis_id,
                            base_commit=unit.base_commit, hardware_class=unit.hardware_class,
                            budget_s=unit.settings.budget_s)
        elif self.mode == LogMode.HUMAN:
            self._line(f"[slot {slot}] running {describe_unit(unit)}")

    def progress(self, slot: int, unit: pb.WorkUnit, progress: Progress) -> None:
        key = (unit.lease_id, progress.step, round(progress.fraction, 4), progress.phase)
        if key == self._last_progress.get(slot):
            return  # pollers (Ray mode) repeat the same progress; report changes only
        self._last_progress[slot] = key
        if self.mode == LogMode.JSON:
            self._emit_json("progress", slot=slot, lease_id=unit.lease_id, step=progress.step,
                            fraction=round(progress.fraction, 4), loss=progress.loss,
                            tokens_per_s=progress.tokens_per_s, phase=progress.phase)
            return
        if self.mode != LogMode.HUMAN:
            return
        filled = int(round(progress.fraction * BAR_WIDTH))
        bar = f"[{slot}] |{'#' * filled}{'.' * (BAR_WIDTH - filled)}| {progress.fraction * 100:3.0f}% " \
              f"step {progress.step} loss {progress.loss:.3f}"
        if progress.phase == "eval":
            bar += " (evaluating)"
        if self.live:
            with self._lock:
                self._bars[slot] = bar
                self.stream.write("\r\033[K" + self._bar_text())
                self.stream.flush()
        elif (progress.fraction - self._last_plain.get(slot, -1.0) >= PLAIN_PROGRESS_STEP
              or (progress.fraction >= 1.0 > self._last_plain.get(slot, -1.0)) or progress.phase == "eval"):
            self._last_plain[slot] = progress.fraction
            self._line(bar)

    def run_finished(self, slot: int, unit: pb.WorkUnit, outcome: RunOutcome) -> None:
        with self._lock:
            self._bars.pop(slot, None)
            if self.live:
                self.stream.write("\r\033[K")
        result = outcome.result
        status = STATUS_NAMES.get(result.status, "unknown")
        if self.mode == LogMode.JSON:
            self._emit_json("run_finished", slot=slot, lease_id=unit.lease_id, ending=outcome.ending.value,
                            status=status, val_bpb=result.val_bpb, num_steps=result.num_steps,
                            training_s=result.training_s, wall_s=round(outcome.wall_s, 2), error=result.error)
            return
        number = f"val_bpb {result.val_bpb:.6f}" if result.status == pb.RUN_STATUS_OK else result.error
        line = f"[slot {slot}] {status}: {number} ({result.num_steps} steps, {outcome.wall_s:.1f}s)"
        if result.status == pb.RUN_STATUS_OK:
            self.info(line)
        else:
            self.warn(line)

    def acknowledged(self, lease_id: str, response: pb.ReportResultResponse, swarm_best: str = "") -> None:
        score = format_score(response.score)
        self.last_score = score
        short = f"{response.score.delta_bpb:+.4f} bpb" if response.score.has_baseline else "no baseline yet"
        self.status_line = f"last {short}" + (f", best {swarm_best}" if swarm_best else "")
        if self.mode == LogMode.JSON:
            self._emit_json("result_acknowledged", lease_id=lease_id, result_id=response.result_id,
                            duplicate=response.duplicate, has_baseline=response.score.has_baseline,
                            delta_bpb=response.score.delta_bpb, delta_sigma=response.score.delta_sigma,
                            swarm_best=swarm_best)
            return
        again = " (already recorded)" if response.duplicate else ""
        best = f" | swarm best: {swarm_best}" if swarm_best else ""
        self.info(f"delivered {response.result_id}{again}: your last score {score}{best}")

    def close(self) -> None:
        with self._lock:
            if self.live and self._bars:
                self.stream.write("\n")
                self.stream.flush()
            self._bars.clear()
