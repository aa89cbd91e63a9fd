"""The decision process: judging, merging, planning and proposing, beside the serving process.

The serving process answers RPCs: it authenticates, leases, extends leases and records results
(each a store call or two). Everything the policy decides runs here, in a child process at a
lower CPU priority, so a long policy pass (a sweep of thousands of open hypotheses after a merge)
neither holds the serving process's GIL nor takes CPU the RPCs need:

    serving process                                decider (this module, `nice` +10)
    ReportResult: record, score, ack  --wake N-->  results after the cursor -> after_result()
    LeaseWork on an empty queue       --wake N-->  plan() (top-ups, proposer)
                     waits for "done N" <--------  "done N merges reverts"
    revocation                        --rejudge->  judge every open hypothesis

Invariants:
- Nothing acknowledged waits on this process. A result is durable in the store before the serving
  process answers; the decider reads results in report order after a cursor kept in the store,
  so a decider killed at any point re-reads from its last cursor (judging is idempotent) and
  nothing is judged twice into a different state.
- One decider per data dir: it holds an exclusive lock on `decider.lock` there, so a decider
  orphaned by a killed server finishes its pass (or dies with its parent) before a new one starts.
- It exits when its parent does (EOF on stdin), and the parent restarts it if it dies.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("autoswarm.coordinator.decider")

LOCK_FILE = "decider.lock"
META_CURSOR = "decider_cursor"  # the last result id the decider has judged (report order)
IDLE_PASS_INTERVAL_S = 5.0  # a policy pass at least this often, woken or not
MIN_PASS_INTERVAL_S = 0.05  # woken passes no closer together than this
PASS_DUTY_FACTOR = 4.0  # a pass that took d seconds waits (factor - 1) x d before an unrequested one
NICE_INCREMENT = 10  # the serving process keeps the CPU when both want it
COMMAND_WAKE = "wake"  # new results or hypotheses
COMMAND_TOP_UP = "topup"  # a lease found its class's queue empty
COMMAND_REJUDGE = "rejudge"  # results stopped counting (a revocation)
RESULT_BATCH = 200  # results judged before the cursor is saved and wake-ups are read again


# -- the serving side -----------------------------------------------------------------------------


class DeciderHandle:
    """The serving process's end: starts the child, wakes it, waits for its passes, restarts it."""

    def __init__(self, command: list[str], on_counts: Callable[[int, int], None] | None = None) -> None:
        self._command = command
        self._on_counts = on_counts  # (merges, reverts) since the last report, for the metrics
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._requested = 0  # the last wake-up sequence number sent
        self._completed = 0  # the last one a finished pass covered
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        process = subprocess.Popen(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
        )
        os.set_blocking(process.stdin.fileno(), False)  # type: ignore[union-attr]
        self._process = process
        self._reader = threading.Thread(target=self._read_acks, args=(process,), name="decider-acks", daemon=True)
        self._reader.start()
        log.info("decider process %d started", process.pid)

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        """Restart a decider that died (called by the server's maintenance task)."""
        if self._process is not None and self._process.poll() is not None:
            log.error("decider process %d exited with %s; restarting it", self._process.pid, self._process.returncode)
            self.restarts += 1
            self.start()

    def wake(self, command: str = COMMAND_WAKE) -> int:
        """Ask for a pass; returns its sequence number. Never blocks: a full pipe means a wake-up
        is already pending, and the decider polls on its own anyway."""
        with self._lock:
            self._requested += 1
            sequence = self._requested
        process = self._process
        if process is None or process.stdin is None:
            return sequence
        try:
            os.write(process.stdin.fileno(), f"{command} {sequence}\n".encode())
        except (BlockingIOError, BrokenPipeError, OSError):
            pass
        return sequence

    def wait_for_pass(self, sequence: int, timeout_s: float) -> bool:
        """Block until a pass that started after `sequence` was sent has finished."""
        deadline = time.monotonic() + timeout_s
        with self._done:
            while self._completed < sequence:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive():
                    return False
                self._done.wait(min(left, 0.5))
            return True

    async def wait_for_pass_async(self, sequence: int, timeout_s: float) -> bool:
        """wait_for_pass for the event loop: no thread is held while the decider works."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        with self._lock:
            if self._completed >= sequence:
                return True
            if not self.alive():
                return False
            entry = (sequence, loop, future)
            self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return False
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)

    def _resolve_waiters(self, finished: bool) -> None:
        """Under the lock: wake the async waiters a pass covered (all of them if the process died)."""
        keep = []
        for sequence, loop, future in self._waiters:
            if finished and sequence > self._completed:
                keep.append((sequence, loop, future))
                continue
            loop.call_soon_threadsafe(_set_once, future, finished)
        self._waiters = keep

    def completed(self) -> int:
        with self._lock:
            return self._completed

    def _read_acks(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            parts = raw.decode(errors="replace").split()
            if len(parts) != 4 or parts[0] != "done":
                continue
            try:
                sequence, merges, reverts = int(parts[1]), int(parts[2]), int(parts[3])
            except ValueError:
                continue
            with self._done:
                self._completed = max(self._completed, sequence)
                self._done.notify_all()
                self._resolve_waiters(True)
            if self._on_counts is not None and (merges or reverts):
                self._on_counts(merges, reverts)
        with self._done:
            self._done.notify_all()  # waiters see the process is gone
            self._resolve_waiters(False)

    def stop(self, timeout_s: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # EOF: the decider finishes its pass and exits
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout=2.0)


def _set_once(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def decider_command(store_url: str, data_dir: Path, branch_name: str, swarm: object, log_json: bool) -> list[str]:
    from dataclasses import asdict

    return [
        sys.executable, "-m", "coordinator.service.decider",
        "--store", store_url, "--data-dir", str(data_dir), "--branch", branch_name,
        "--swarm-json", json.dumps(asdict(swarm), default=dict),  # type: ignore[call-overload]
        *(["--log-json"] if log_json else []),
    ]


# -- the decider ------------------------------------------------------------------------------------


class Decider:
    """Judges new results in report order, then plans; one pass per wake-up (coalesced)."""

    def __init__(self, core: object) -> None:
        from coordinator.service.core import CoordinatorCore

        assert isinstance(core, CoordinatorCore)
        self.core = core
        self.cursor = core.store.get_meta(META_CURSOR) or ""
        self.merges_reported = 0
        self.reverts_reported = 0
        self.revocation_epoch = ""  # forces one read of the results at start

    def judge_new_results(self) -> int:
        """after_result() for every result reported since the cursor; returns how many."""
        from coordinator.store.types import ResultFilter

        store = self.core.store
        judged = 0
        while True:
            self._follow_revocations()
            batch = store.list_results(ResultFilter(), limit=RESULT_BATCH, after=self.cursor)
            for record in batch:
                try:
                    self.core.after_result(record)
                except Exception:
                    log.exception("judging result %s failed; it is judged again by the next sweep", record.result_id)
                self.cursor = record.result_id
            if batch:
                store.set_meta(META_CURSOR, self.cursor)
                judged += len(batch)
            if len(batch) < RESULT_BATCH:
                return judged

    def _follow_revocations(self) -> None:
        """A revocation in the serving process makes cached results stale: read them again."""
        from coordinator.service.core import META_REVOCATION_EPOCH

        epoch = self.core.store.get_meta(META_REVOCATION_EPOCH) or ""
        if epoch != self.revocation_epoch:
            self.core.view.forget_results()
            self.revocation_epoch = epoch

    def run_pass(self, commands: set[str]) -> None:
        if COMMAND_TOP_UP in commands:
            self.core.view.invalidate()  # a volunteer found its queue empty: it is online now
        self.judge_new_results()
        if COMMAND_REJUDGE in commands:
            self.core.rejudge_open()
        self.core.plan()

    def counts_since_last(self) -> tuple[int, int]:
        merges, reverts = self.core.merges_done - self.merges_reported, self.core.reverts_done - self.reverts_reported
        self.merges_reported, self.reverts_reported = self.core.merges_done, self.core.reverts_done
        return merges, reverts


def _read_commands(fd: int, timeout_s: float, buffer: bytearray) -> tuple[int, set[str], bool]:
    """(highest sequence number read, the commands read, stdin closed) within timeout_s."""
    highest, commands, closed = 0, set(), False
    readable, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
    while readable:
        chunk = os.read(fd, 65536)
        if not chunk:
            closed = True
            break
        buffer.extend(chunk)
        readable, _, _ = select.select([fd], [], [], 0)
    *lines, rest = bytes(buffer).split(b"\n")
    buffer[:] = rest
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            highest = max(highest, int(parts[1]))
            commands.add(parts[0].decode(errors="replace"))
    return highest, commands, closed


def run_decider(core: object, data_dir: Path, stdin_fd: int = 0, ack: Callable[[str], None] | None = None) -> None:
    """The child's loop until stdin closes."""
    lock = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the life of the process
    fcntl.flock(lock, fcntl.LOCK_EX)  # a decider orphaned by a killed server goes first
    decider = Decider(core)
    ack = ack or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
    buffer = bytearray()
    next_idle_pass = 0.0
    last_pass_started = 0.0
    log.info("decider ready (cursor %s)", decider.cursor or "at the start")
    while True:
        now = time.monotonic()
        wait_s = max(0.0, min(next_idle_pass - now, 1.0))
        sequence, commands, closed = _read_commands(stdin_fd, wait_s, buffer)
        if closed:
            log.info("serving process gone: decider exits")
            return
        now = time.monotonic()
        if not sequence and now < next_idle_pass:
            continue
        if sequence and now - last_pass_started < MIN_PASS_INTERVAL_S:
            time.sleep(MIN_PASS_INTERVAL_S - (now - last_pass_started))
            more, more_commands, closed = _read_commands(stdin_fd, 0.0, buffer)
            sequence, commands = max(sequence, more), commands | more_commands
            if closed:
                return
        last_pass_started = time.monotonic()
        try:
            decider.run_pass(commands)
        except Exception:
            log.exception("decision pass failed")
        took_s = time.monotonic() - last_pass_started
        if took_s > IDLE_PASS_INTERVAL_S:
            log.warning("decision pass took %.1f s", took_s)
        next_idle_pass = time.monotonic() + max(IDLE_PASS_INTERVAL_S, (PASS_DUTY_FACTOR - 1) * took_s)
        merges, reverts = decider.counts_since_last()
        ack(f"done {sequence} {merges} {reverts}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="autoswarm decision process (started by `coordinator serve`)")
    parser.add_argument("--store", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--branch", default="global")
    parser.add_argument("--swarm-json", required=True)
    parser.add_argument("--log-json", action="store_true")
    args = parser.parse_args(argv)
    from coordinator.cli.coordinator_cmd import configure_logging

    configure_logging(args.log_json)
    try:
        os.nice(NICE_INCREMENT)
    except OSError:
        log.warning("could not lower the decider's priority; it competes with the RPCs for CPU")
    from coordinator.branch import GlobalBranch
    from coordinator.server import BRANCH_DIR, initial_branch_files
    from coordinator.service.core import CoordinatorCore, SwarmConfig
    from coordinator.service.signing import SigningKeys
    from coordinator.store.base import open_store

    swarm = SwarmConfig(**json.loads(args.swarm_json))
    store = open_store(args.store)
    branch = GlobalBranch.open(args.data_dir / BRANCH_DIR, args.branch, initial_branch_files())
    core = CoordinatorCore(store, branch, SigningKeys.load_or_create(args.data_dir), swarm)
    try:
        run_decider(core, args.data_dir)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
