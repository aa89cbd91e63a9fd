"""Run one experiment: train.py in a subprocess, its log to a file, the exit classified, the summary parsed.

`run_experiment` applies the hardware class's pinned constants to a copy of train.py (through the
AST, `trainer.constants`), writes the run settings for the fixed layer (`shared_data.harness`),
and starts `sys.executable train.py` in its own working directory, its own session (so the whole
process group can be killed) and an explicit environment. It never downloads: data, tokenizer
and attention kernels must be prepared before (the child runs with HF_HUB_OFFLINE=1).

Kill rule: the child is hard-killed (SIGKILL to its process group) after
`2 * budget_s + STARTUP_ALLOWANCE_S` seconds of wall time. The allowance covers what the budget
does not count: interpreter start and imports, data verification, torch.compile and the un-timed
warm-up steps, and the final evaluation. Pass `kill_after_s` to choose another limit.

Classification: `ok` (exit 0 with a summary), `nan` (the harness's NaN/explosion exit code),
`oom` (its out-of-memory exit code, an out-of-memory traceback, or a SIGKILL the runner did not
send, which on Linux is almost always the kernel's OOM killer), `timeout` (killed by the runner),
`crash` (anything else, including data that is not ready).

Resource limits (POSIX `setrlimit` in the child before exec): no core dumps, a file-size cap, a
CPU-time backstop, and optionally an address-space cap (off by default: CUDA reserves huge
virtual ranges). Where the `resource` module does not exist (Windows) no limits are applied and
the result's environment says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from shared_data.harness import (
    CONFIG_ENV,
    EXIT_DATA,
    EXIT_NAN,
    EXIT_OK,
    EXIT_OOM,
    EXIT_USAGE,
    RunConfig,
    parse_progress,
    parse_summary,
)
from trainer.constants import ConstantsError, rewrite_constants
from trainer.profiles import Profile, load_profiles

__all__ = [
    "STARTUP_ALLOWANCE_S",
    "RunStatus",
    "Progress",
    "ResourceLimits",
    "RunResult",
    "apply_profile",
    "default_child_env",
    "run_experiment",
]

STARTUP_ALLOWANCE_S = 180.0
LOG_FILE = "train.log"
LOG_TAIL_LINES = 60  # lines of the log kept in RunResult.log_tail
_TAIL_BUFFER_LINES = 400  # lines kept in memory to find the summary and the error
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # holds shared_data/ and trainer/

# Variables a child may inherit when the caller passes no env: enough to find the GPU, the caches
# and a temp dir; nothing that could carry credentials.
_INHERITED_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT",
    "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH",
    "LD_LIBRARY_PATH", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "AUTOSWARM_CACHE_DIR",
    "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "VIRTUAL_ENV",
)


class RunStatus(StrEnum):
    OK = "ok"
    CRASH = "crash"
    OOM = "oom"
    NAN = "nan"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Progress:
    """One `progress:` line of the child, parsed. Fields the line lacks are None."""

    phase: str  # "train" | "eval"
    step: int
    fraction: float
    loss: float | None
    tok_per_s: float | None
    mfu_percent: float | None
    training_s: float | None
    elapsed_s: float  # wall seconds since the child started (runner's clock)


@dataclass(frozen=True)
class ResourceLimits:
    """POSIX resource limits for the child. None = leave that limit as inherited."""

    cpu_s: int | None = None  # None: a backstop derived from the kill time and the core count
    address_space_mb: int | None = None
    file_size_mb: int | None = 8192  # nothing a run writes (log, compile cache) comes near this
    core_dumps: bool = False


@dataclass
class RunResult:
    status: RunStatus
    val_bpb: float | None = None
    peak_memory_mb: float = 0.0
    num_steps: int = 0
    total_tokens: int = 0
    mfu_percent: float = 0.0
    training_s: float = 0.0
    total_s: float = 0.0  # the child's total_seconds (harness start to summary)
    num_params_m: float = 0.0
    depth: int = 0
    attention_backend: str = ""
    tokenizer_hash: str = ""
    data_manifest_id: str = ""
    hardware_class: str = ""
    dtype: str = ""
    tokens_per_s: float = 0.0
    wall_s: float = 0.0  # the runner's wall clock from spawn to exit
    exit_code: int | None = None
    environment: dict[str, str] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    log_tail: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.OK

    def to_proto(self) -> Any:
        """The wire form (`autoswarm.v1.swarm_pb2.RunResult`). As upstream's results.tsv, a failed run
        carries zeros; fields the message lacks (depth, dtype, tokens/s, wall time) go in `environment`."""
        from autoswarm.v1 import swarm_pb2

        ok = self.status is RunStatus.OK
        environment = dict(self.environment)
        environment.update({
            "depth": str(self.depth), "dtype": self.dtype, "tokens_per_s": f"{self.tokens_per_s:.0f}",
            "wall_s": f"{self.wall_s:.1f}", "hardware_class": self.hardware_class,
            "exit_code": "" if self.exit_code is None else str(self.exit_code),
        })
        return swarm_pb2.RunResult(
            status=getattr(swarm_pb2, f"RUN_STATUS_{self.status.name}"),
            val_bpb=self.val_bpb if ok and self.val_bpb is not None else 0.0,
            peak_memory_mb=self.peak_memory_mb, num_steps=self.num_steps, total_tokens=self.total_tokens,
            mfu_percent=self.mfu_percent, training_s=self.training_s, total_s=self.total_s,
            num_params_m=self.num_params_m, attention_backend=self.attention_backend,
            tokenizer_hash=self.tokenizer_hash, data_manifest_id=self.data_manifest_id,
            environment={key: str(value) for key, value in environment.items()},
            log_tail=self.log_tail[-8000:], error=self.error or "",
        )

    def to_json(self) -> str:
        body = asdict(self)
        body["status"] = self.status.value
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("RunResult JSON must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"RunResult JSON has unknown fields: {', '.join(unknown)}")
        raw["status"] = RunStatus(raw["status"])
        return cls(**raw)


def apply_profile(source: str, profile: Profile) -> str:
    """train.py source with the class's pinned constants written in (AST rewrite; raises ConstantsError)."""
    return rewrite_constants(source, profile.constants)


def default_child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A scrubbed environment: only the variables in _INHERITED_ENV, taken from `base` (default os.environ)."""
    source = os.environ if base is None else base
    return {key: source[key] for key in _INHERITED_ENV if key in source}


def _child_env(env: Mapping[str, str] | None, config_path: Path, profile: Profile) -> dict[str, str]:
    child = dict(env) if env is not None else default_child_env()
    child[CONFIG_ENV] = str(config_path)
    child["PYTHONPATH"] = str(_PROJECT_ROOT)  # the fixed layer the copy imports; nothing else
    child["PYTHONUNBUFFERED"] = "1"
    child["PYTHONDONTWRITEBYTECODE"] = "1"
    child["HF_HUB_OFFLINE"] = "1"  # a run never touches the network
    child["HF_HUB_DISABLE_TELEMETRY"] = "1"
    child.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    if profile.run.threads > 0:
        child["OMP_NUM_THREADS"] = str(profile.run.threads)
    return child


def _limits_preexec(limits: ResourceLimits, cpu_backstop_s: int) -> tuple[Callable[[], None] | None, str]:
    try:
        import resource
    except ImportError:
        return None, "unavailable on this OS (no resource module): no limits applied"
    plan: list[tuple[int, int]] = []
    described = []
    if not limits.core_dumps:
        plan.append((resource.RLIMIT_CORE, 0))
        described.append("core=0")
    if limits.file_size_mb is not None:
        plan.append((resource.RLIMIT_FSIZE, limits.file_size_mb * 2**20))
        described.append(f"fsize={limits.file_size_mb}MB")
    cpu_s = limits.cpu_s if limits.cpu_s is not None else cpu_backstop_s
    plan.append((resource.RLIMIT_CPU, cpu_s))
    described.append(f"cpu={cpu_s}s")
    if limits.address_space_mb is not None:
        plan.append((resource.RLIMIT_AS, limits.address_space_mb * 2**20))
        described.append(f"as={limits.address_space_mb}MB")

    def preexec() -> None:  # runs in the child between fork and exec: syscalls only
        for which, value in plan:
            _, hard = resource.getrlimit(which)
            soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
            # The hard limit comes down too, so train.py cannot raise it back; the CPU backstop keeps
            # its hard limit so SIGXCPU (classified as a timeout) arrives before any SIGKILL.
            resource.setrlimit(which, (soft, hard if which == resource.RLIMIT_CPU else soft))

    return preexec, ",".join(described)


def _number(summary: Mapping[str, str], key: str, kind: type = float) -> Any:
    try:
        return kind(float(summary[key])) if kind is int else kind(summary[key])
    except (KeyError, ValueError):
        return kind(0)


def _progress_from(fields_: Mapping[str, str], elapsed_s: float) -> Progress | None:
    def opt(key: str) -> float | None:
        try:
            return float(fields_[key])
        except (KeyError, ValueError):
            return None

    try:
        step = int(fields_.get("step", "0"))
        fraction = float(fields_.get("fraction", "0"))
    except ValueError:
        return None
    return Progress(phase=fields_.get("phase", "train"), step=step, fraction=fraction, loss=opt("loss"),
                    tok_per_s=opt("tok_per_s"), mfu_percent=opt("mfu"), training_s=opt("training_s"),
                    elapsed_s=elapsed_s)


_ENVIRONMENT_KEYS = (
    "device", "device_name", "dtype", "compile", "attention_backend", "fallbacks", "threads", "torch_version",
    "cuda_version", "python_version", "platform", "seq_len", "eval_tokens", "device_batch_size", "oom_retry",
    "peak_flops",
)

_OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "MPS backend out of memory", "MemoryError",
                "DefaultCPUAllocator: can't allocate memory")


def _error_line(lines: list[str]) -> str | None:
    for line in reversed(lines):
        if line.startswith("FAIL: "):
            return line[len("FAIL: "):].strip()
    for line in reversed(lines):  # the last line of a traceback names the exception
        stripped = line.strip()
        if stripped and not stripped.startswith(("File ", "^", "~")) and (":" in stripped or "Error" in stripped):
            return stripped[:500]
    return None


def _classify(exit_code: int | None, timed_out: bool, killed_by_us: bool, summary: dict[str, str],
              lines: list[str]) -> tuple[RunStatus, str | None]:
    error = _error_line(lines)
    if timed_out:
        return RunStatus.TIMEOUT, "killed at the time limit (2x the budget plus the start-up allowance)"
    if exit_code == EXIT_OK:
        if "val_bpb" in summary:
            return RunStatus.OK, None
        return RunStatus.CRASH, "exited 0 without printing a summary"
    if exit_code == EXIT_NAN:
        return RunStatus.NAN, error or "the loss became NaN or exploded"
    if exit_code == EXIT_OOM:
        return RunStatus.OOM, error or "out of memory"
    if exit_code is not None and exit_code < 0:
        signal_number = -exit_code
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = str(signal_number)
        if signal_number == getattr(signal, "SIGKILL", 9) and not killed_by_us:
            return RunStatus.OOM, "killed by SIGKILL from outside the runner (on Linux: the out-of-memory killer)"
        if signal_number == getattr(signal, "SIGXCPU", -1):
            return RunStatus.TIMEOUT, "CPU-time limit reached (RLIMIT_CPU)"
        return RunStatus.CRASH, f"killed by signal {name}"
    if any(marker in line for line in lines[-40:] for marker in _OOM_MARKERS):
        return RunStatus.OOM, error or "out of memory"
    if exit_code == EXIT_DATA:
        return RunStatus.CRASH, error or "prepared data missing or failing its checksums"
    if exit_code == EXIT_USAGE:
        return RunStatus.CRASH, error or "bad run settings"
    return RunStatus.CRASH, error or f"exit code {exit_code}"


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass


def run_experiment(
    train_py: str | Path,
    *,
    hardware_class: str,
    budget_s: float,
    dataset: str,
    workdir: Path,
    profiles_json: str | None = None,
    env: Mapping[str, str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    kill_after_s: float | None = None,
    cache_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    limits: ResourceLimits | None = None,
    expected_manifest_id: str | None = None,
    expected_tokenizer_hash: str | None = None,
) -> RunResult:
    """Run one experiment and classify it; see the module docstring.

    `train_py` is the source text (str) or a file (Path). `env` is the child's whole environment
    (the volunteer passes a scrubbed one; default: `default_child_env()`); the runner adds only
    what the child needs (PYTHONPATH, the run-config path, HF_HUB_OFFLINE=1). `on_progress` is
    called from the runner's reader thread for every `progress:` line. `overrides` replaces
    fields of the profile's run settings (seq_len, eval_tokens, ...). Raises UnknownClassError /
    ProfileError for a bad class or profiles file and ValueError for a non-positive budget;
    a train.py the profile cannot be applied to is a `crash` result, not an exception.
    """
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s}")
    profile_set = load_profiles(profiles_json)
    profile = profile_set[hardware_class]
    source = train_py.read_text(encoding="utf-8") if isinstance(train_py, Path) else train_py
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / LOG_FILE
    base = RunResult(status=RunStatus.CRASH, hardware_class=hardware_class, log_path=str(log_path))
    try:
        patched = apply_profile(source, profile)
    except ConstantsError as exc:
        base.error = f"cannot apply the {hardware_class} profile to train.py: {exc}"
        log_path.write_text(base.error + "\n", encoding="utf-8")
        base.log_tail = base.error
        return base

    config = RunConfig(
        hardware_class=hardware_class, budget_s=float(budget_s), dataset=dataset,
        cache_dir=str(Path(cache_dir).resolve()) if cache_dir is not None else None,
        profiles_json=profiles_json, overrides=dict(overrides or {}),
        expected_manifest_id=expected_manifest_id, expected_tokenizer_hash=expected_tokenizer_hash,
    )
    script = workdir / "train.py"
    script.write_text(patched, encoding="utf-8")
    config_path = workdir / "run_config.json"
    config_path.write_text(config.to_json(), encoding="utf-8")
    kill_s = float(kill_after_s) if kill_after_s is not None else 2.0 * budget_s + STARTUP_ALLOWANCE_S
    cpu_backstop_s = int(kill_s * max(os.cpu_count() or 1, 1)) + 60
    preexec, limits_text = _limits_preexec(limits or ResourceLimits(), cpu_backstop_s)

    child_env = _child_env(env, config_path, profile)
    tail: deque[str] = deque(maxlen=_TAIL_BUFFER_LINES)
    callback_errors: list[str] = []
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        if preexec is None:
            log.write(f"runner: resource limits {limits_text}\n")
        popen_kwargs: dict[str, Any] = {}
        if os.name == "posix":
            popen_kwargs["start_new_session"] = True
            popen_kwargs["preexec_fn"] = preexec
        else:
            popen_kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        process = subprocess.Popen(
            [sys.executable, "-u", str(script)], cwd=workdir, env=child_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
            bufsize=1, **popen_kwargs,
        )

        def pump() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                if on_progress is None:
                    continue
                parsed = parse_progress(line)
                if parsed is None:
                    continue
                progress = _progress_from(parsed, time.monotonic() - started)
                if progress is None:
                    continue
                try:
                    on_progress(progress)
                except Exception as exc:  # a broken callback must not stop the log
                    callback_errors.append(f"{type(exc).__name__}: {exc}")

        reader = threading.Thread(target=pump, name="trainer-log-pump", daemon=True)
        reader.start()
        timed_out = False
        try:
            exit_code = process.wait(timeout=kill_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            exit_code = process.wait()
        _kill_group(process)  # stragglers (compile workers) would keep the pipe open
        reader.join(timeout=10)
        wall_s = time.monotonic() - started
        if callback_errors:
            log.write(f"runner: on_progress raised {len(callback_errors)} time(s), first: {callback_errors[0]}\n")

    lines = list(tail)
    summary = parse_summary("\n".join(lines))
    status, error = _classify(exit_code, timed_out, timed_out, summary, lines)
    environment = {key: summary[key] for key in _ENVIRONMENT_KEYS if key in summary}
    environment["resource_limits"] = limits_text
    environment["runner_python"] = sys.executable
    ok = status is RunStatus.OK
    return RunResult(
        status=status,
        val_bpb=_number(summary, "val_bpb") if ok else None,
        peak_memory_mb=_number(summary, "peak_vram_mb"),
        num_steps=_number(summary, "num_steps", int),
        total_tokens=_number(summary, "total_tokens", int),
        mfu_percent=_number(summary, "mfu_percent"),
        training_s=_number(summary, "training_seconds"),
        total_s=_number(summary, "total_seconds"),
        num_params_m=_number(summary, "num_params_M"),
        depth=_number(summary, "depth", int),
        attention_backend=summary.get("attention_backend", ""),
        tokenizer_hash=summary.get("tokenizer_hash", ""),
        data_manifest_id=summary.get("data_manifest_id", ""),
        hardware_class=hardware_class,
        dtype=summary.get("dtype", ""),
        tokens_per_s=_number(summary, "tokens_per_s"),
        wall_s=wall_s,
        exit_code=exit_code,
        environment=environment,
        summary=summary,
        log_path=str(log_path),
        log_tail="\n".join(lines[-LOG_TAIL_LINES:]),
        error=error,
    )
