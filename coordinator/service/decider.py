"""The decision process: judging, merging, planning and proposing, beside the serving processes.

The serving processes answer RPCs: they authenticate, lease, extend leases and record results
(each a store call or two). Everything the policy decides runs here, in one child process at a
lower CPU priority, so a long policy pass (a sweep of thousands of open hypotheses after a merge)
neither holds a serving process's GIL nor takes CPU the RPCs need:

    serving processes (1..N)                          decider (this module, `nice` +10)
    ReportResult: record, score, answer  --"wake"-->  results after the cursor -> after_result()
    LeaseWork on an empty queue          --"topup"->  plan() (top-ups, proposer)
       wait until covered_until >= sent  <----------  decider.passes: covered_until, counts
    revocation                           --"rejudge"> judge every open hypothesis

Wake-ups go through a named pipe in the data dir (`decider.wake`); after each pass the decider
rewrites `decider.passes` with `covered_until`: every wake-up written before that time was read
and acted on (the pass's start, or its end when nothing was written during it).

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
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from coordinator.service.errors import store_unreachable

log = logging.getLogger("autoswarm.coordinator.decider")

LOCK_FILE = "decider.lock"
WAKE_FIFO = "decider.wake"  # named pipe: one command per line, from any serving process
PASSES_FILE = "decider.passes"  # JSON, rewritten after each pass: covered_until, passes, merges, reverts
PASS_POLL_S = 0.01  # how often a waiting call looks at the pass file
META_CURSOR = "decider_cursor"  # the last result id the decider has judged (report order)
IDLE_PASS_INTERVAL_S = 5.0  # a policy pass at least this often, woken or not
MIN_PASS_INTERVAL_S = 0.05  # woken passes no closer together than this
PASS_DUTY_FACTOR = 4.0  # a pass that took d seconds waits (factor - 1) x d before an unrequested one
OUTAGE_RETRY_S = 1.0  # a pass stopped by an unreachable store is retried this much later
NICE_INCREMENT = 10  # the serving process keeps the CPU when both want it
COMMAND_WAKE = "wake"  # new results or hypotheses
COMMAND_TOP_UP = "topup"  # a lease found its class's queue empty
COMMAND_REJUDGE = "rejudge"  # results stopped counting (a revocation)
COMMAND_PLAN = "plan"  # a hypothesis was submitted: schedule its first run
RESULT_BATCH = 200  # results judged before the cursor is saved and wake-ups are read again


# -- the serving side -----------------------------------------------------------------------------


class DeciderLink:
    """Any serving process's end: wake-ups into the FIFO, finished passes from the pass file.

    Several serving processes share one decider, so neither side names the other: a wake-up is a
    line in `decider.wake` (writes of a line are atomic), and the decider records after each pass
    the time up to which it had read the FIFO (`covered_until`). A caller that woke it at time t
    waits until a pass with covered_until >= t has finished."""

    def __init__(self, data_dir: Path) -> None:
        self.fifo_path = Path(data_dir) / WAKE_FIFO
        self.passes_path = Path(data_dir) / PASSES_FILE
        ensure_fifo(self.fifo_path)
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._passes: tuple[int, dict[str, float]] = (-1, {})  # (mtime_ns, contents)

    def wake(self, command: str = COMMAND_WAKE) -> float:
        """Ask for a pass; returns the time to wait for (see wait_for_pass_async). Never blocks: with
        the pipe full a wake-up is pending anyway, and with no decider its first pass covers it."""
        line = f"{command}\n".encode()
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
                os.write(self._fd, line)
            except BlockingIOError:
                pass
            except OSError:  # no reader (ENXIO) or a reader gone (EPIPE): reopen next time
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
        return time.time()

    def wait_for_reader(self, timeout_s: float) -> bool:
        """Until a decider has the FIFO open (before that, a wake-up has nobody to go to)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                if time.monotonic() >= deadline:
                    return False
                time.sleep(PASS_POLL_S)
                continue
            os.close(fd)
            return True

    def last_pass(self) -> dict[str, float]:
        try:
            mtime = self.passes_path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._passes[0]:
            try:
                self._passes = (mtime, json.loads(self.passes_path.read_text()))
            except (OSError, ValueError):
                return self._passes[1]
        return self._passes[1]

    def covered(self, stamp: float) -> bool:
        return float(self.last_pass().get("covered_until", 0.0)) >= stamp

    async def wait_for_pass_async(self, stamp: float, timeout_s: float) -> bool:
        """Until a pass covered a wake-up sent at `stamp` (see wake); polls on the event loop, so
        no worker thread is held while the decider works."""
        deadline = time.monotonic() + timeout_s
        while not self.covered(stamp):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(PASS_POLL_S)
        return True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def ensure_fifo(path: Path) -> None:
    if path.exists() and not stat.S_ISFIFO(path.stat().st_mode):
        path.unlink()
    if not path.exists():
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            pass


class DeciderProcess:
    """The primary serving process's end: starts the child, restarts it if it dies, stops it.
    The child's stdin is a pipe that only closes when this process goes, so it dies with us."""

    def __init__(self, command: list[str]) -> None:
        self._command = command
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._command, stdin=subprocess.PIPE, stderr=None, close_fds=True)
        log.info("decider process %d started", self._process.pid)

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def ensure_running(self) -> None:
        """Restart a decider that died (called by the server's maintenance task)."""
        if self._process is not None and self._process.poll() is not None:
            log.error("decider process %d exited with %s; restarting it", self._process.pid, self._process.returncode)
            self.start()

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


def decider_command(
    store_url: str, data_dir: Path, branch_name: str, swarm: object, log_json: bool
) -> list[str]:
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
                except Exception as exc:
                    if store_unreachable(exc):
                        # Not this result's fault: stop here, the cursor still before it, and
                        # the next pass judges it (skipping on would leave it to a sweep that
                        # runs only when the head moves).
                        raise
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
        """Judge what was reported; plan (top-ups, proposer) only when asked or on the idle
        timer: a judgement enqueues its own follow-ups, and a full plan per report would cost
        more than the reports."""
        if COMMAND_TOP_UP in commands:
            self.core.view.invalidate()  # a volunteer found its queue empty: it is online now
        self.judge_new_results()
        if COMMAND_REJUDGE in commands:
            self.core.rejudge_open()
        if not commands or commands & {COMMAND_TOP_UP, COMMAND_REJUDGE, COMMAND_PLAN}:
            self.core.plan()



def _drain(fd: int, buffer: bytearray) -> set[str]:
    """The complete command lines waiting in the FIFO (a partial line stays in the buffer)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        buffer.extend(chunk)
    *lines, rest = bytes(buffer).split(b"\n")
    buffer[:] = rest
    return {line.split()[0].decode(errors="replace") for line in lines if line.split()}


def _write_passes(path: Path, record: dict[str, float]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def run_decider(core: object, data_dir: Path, stdin_fd: int = 0) -> None:
    """The child's loop until stdin closes."""
    lock = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the life of the process
    fcntl.flock(lock, fcntl.LOCK_EX)  # a decider orphaned by a killed server goes first
    fifo_path = data_dir / WAKE_FIFO
    ensure_fifo(fifo_path)
    fifo_fd = os.open(fifo_path, os.O_RDWR | os.O_NONBLOCK)  # read-write: never an EOF from it
    passes_path = data_dir / PASSES_FILE
    decider = Decider(core)
    buffer = bytearray()
    next_idle_pass = 0.0
    last_pass_started = 0.0
    passes = 0
    pending: set[str] = set()  # read after the last pass, not yet acted on
    carried: set[str] = set()  # commands of a pass that a store outage stopped
    log.info("decider ready (cursor %s)", decider.cursor or "at the start")
    while True:
        if pending:
            commands, pending = pending, set()
        else:
            wait_s = max(0.0, min(next_idle_pass - time.monotonic(), 1.0))
            readable, _, _ = select.select([fifo_fd, stdin_fd], [], [], wait_s)
            if stdin_fd in readable and not os.read(stdin_fd, 4096):
                log.info("serving process gone: decider exits")
                return
            commands = _drain(fifo_fd, buffer) if fifo_fd in readable else set()
            if not commands and time.monotonic() < next_idle_pass:
                continue
        now = time.monotonic()
        if commands and now - last_pass_started < MIN_PASS_INTERVAL_S:
            time.sleep(MIN_PASS_INTERVAL_S - (now - last_pass_started))
        # Every line written before `started` is in the pipe now, so this pass reads it: a pass
        # covers the wake-ups written before its start.
        started = time.time()
        commands |= _drain(fifo_fd, buffer) | carried
        carried = set()
        last_pass_started = time.monotonic()
        outage = False
        try:
            decider.run_pass(commands)
        except Exception as exc:
            outage = store_unreachable(exc)
            if outage:
                log.warning("decision pass stopped: the store is unreachable (%s); retrying in %.0f s",
                            type(exc).__name__, OUTAGE_RETRY_S)
            else:
                log.exception("decision pass failed")
        took_s = time.monotonic() - last_pass_started
        if took_s > IDLE_PASS_INTERVAL_S:
            log.warning("decision pass took %.1f s", took_s)
        if outage:
            # Nothing was acted on past the outage: no waiter is released, and the same commands
            # run again once the store answers (stdin is still watched meanwhile).
            carried = commands
            next_idle_pass = time.monotonic() + OUTAGE_RETRY_S
            continue
        next_idle_pass = time.monotonic() + max(IDLE_PASS_INTERVAL_S, (PASS_DUTY_FACTOR - 1) * took_s)
        passes += 1
        # A line written after `started` may have been read by the drain above and acted on, yet
        # its writer waits for a later time. With nothing written since the pass, everything
        # before now was acted on: say so, rather than leave the writer for the next wake-up.
        finished = time.time()
        pending = _drain(fifo_fd, buffer)
        covered_until = started if pending else finished
        _write_passes(passes_path, {
            "covered_until": covered_until, "passes": passes, "took_s": round(took_s, 3),
            "merges": core.merges_done, "reverts": core.reverts_done,  # type: ignore[attr-defined]
        })


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
