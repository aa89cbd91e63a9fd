"""The fixed layer around train.py: everything a hypothesis must not be able to change.

`train.py` ends with `run(train)`. The harness then
1. reads the run settings (a JSON file named by $AUTOSWARM_RUN_CONFIG, or command-line flags):
   hardware class, budget, dataset, cache dir, and the class profile's fixed-layer part
   (sequence length, eval tokens and batch, dtype, compile, attention backend);
2. picks the device, the dtype (bf16 autocast where supported, fp16 with loss scaling on cards
   without bf16, fp32 on CPU), torch.compile (off where Triton is missing) and the attention
   backend (FA3 from the local kernels cache -> FlexAttention -> SDPA), saying which and why;
3. loads the prepared data offline (never downloads) and seeds everything;
4. calls `train(ctx)` with a `TrainContext`: budget clock, batches, autocast, backward/step helpers,
   progress reporting. NaN or a loss above 100 stops the run at once (exit code EXIT_NAN). Out of
   memory before the first timed step retries once with DEVICE_BATCH_SIZE halved (TOTAL_BATCH_SIZE
   unchanged) and says so; out of memory otherwise exits with EXIT_OOM;
5. evaluates val_bpb with `evaluate_bpb` on the returned model (its own batch size, halved on OOM:
   the metric does not depend on it) and prints the `---` summary of `key: value` lines, upstream's
   keys first.

Progress lines are machine-readable for the runner: `progress: phase=train step=.. fraction=..
loss=.. tok_per_s=.. mfu=.. training_s=.. epoch=..`.

torch is imported lazily, so the runner and the coordinator can import the exit codes and
`parse_summary` without it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from shared_data.prepare import PreparedData
    from shared_data.tokenizer import Tokenizer
    from trainer.profiles import Profile, ProfileSet

__all__ = [
    "CONFIG_ENV",
    "EXIT_OK",
    "EXIT_CRASH",
    "EXIT_USAGE",
    "EXIT_NAN",
    "EXIT_OOM",
    "EXIT_DATA",
    "UPSTREAM_SUMMARY_KEYS",
    "RunConfig",
    "RunSettingsError",
    "TrainingDivergedError",
    "TrainContext",
    "HarnessResult",
    "parse_summary",
    "format_summary",
    "format_progress",
    "parse_progress",
    "run_harness",
    "run",
]

CONFIG_ENV = "AUTOSWARM_RUN_CONFIG"

# Exit codes the runner classifies (anything else non-zero is a crash).
EXIT_OK = 0
EXIT_CRASH = 1  # an uncaught exception in train.py (Python's own exit code for it)
EXIT_USAGE = 2  # bad run settings: unknown class, device missing, ...
EXIT_NAN = 3  # the training loss became NaN/inf or exceeded MAX_LOSS
EXIT_OOM = 4  # out of memory (after the start-up retry)
EXIT_DATA = 5  # the prepared data is missing or fails its checksums

MAX_LOSS = 100.0  # upstream's fail-fast threshold for an exploding loss
UPSTREAM_SUMMARY_KEYS = (
    "val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
    "total_tokens_M", "num_steps", "num_params_M", "depth",
)
_SUMMARY_KEY_WIDTH = 18  # upstream aligns values after "training_seconds: "


class RunSettingsError(ValueError):
    """The run settings are unusable (unknown class, missing device, bad value)."""


class TrainingDivergedError(RuntimeError):
    """The training loss is NaN/inf or above MAX_LOSS."""

    def __init__(self, step: int, loss: float) -> None:
        self.step, self.loss = step, loss
        what = "not finite" if not math.isfinite(loss) else f"above {MAX_LOSS:g}"
        super().__init__(f"training loss is {what} at step {step} (loss {loss}): failing fast")


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass
class RunConfig:
    """What one run needs besides train.py; the runner writes it as JSON for the child."""

    hardware_class: str = "cpu"
    budget_s: float = 300.0
    dataset: str = "pydoc"
    cache_dir: str | None = None
    profiles_json: str | None = None  # the profiles.json text of the run's commit; None = the shipped one
    overrides: dict[str, Any] = field(default_factory=dict)  # run-settings fields to override (tests, checks)
    seed: int = 42
    progress_interval_s: float = 1.0
    expected_manifest_id: str | None = None  # pinned by a coordinator; refused when different
    expected_tokenizer_hash: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunSettingsError(f"run config is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise RunSettingsError("run config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise RunSettingsError(f"run config has unknown fields: {', '.join(unknown)}")
        config = cls(**raw)
        if not isinstance(config.overrides, dict):
            raise RunSettingsError("run config field 'overrides' must be an object")
        if not (isinstance(config.budget_s, (int, float)) and config.budget_s > 0):
            raise RunSettingsError(f"budget_s must be a positive number, got {config.budget_s!r}")
        return config


def _parse_cli(argv: list[str]) -> RunConfig:
    parser = argparse.ArgumentParser(
        description="Run train.py under the fixed harness (autoswarm train applies the class profile first).")
    parser.add_argument("--class", dest="hardware_class", default=None, help="hardware class (default: detect)")
    parser.add_argument("--budget-s", type=float, default=None, help="training budget in seconds")
    parser.add_argument("--dataset", default=None, help="prepared dataset (default: the class's)")
    parser.add_argument("--cache-dir", default=None, help="data cache (default: $AUTOSWARM_CACHE_DIR)")
    parser.add_argument("--attention", choices=["auto", "fa3", "flex", "sdpa"], default=None)
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default=None)
    parser.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--eval-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in (("attention", args.attention), ("dtype", args.dtype),
                 ("compile", args.compile), ("eval_tokens", args.eval_tokens)) if value is not None}
    hardware_class = args.hardware_class
    if hardware_class in (None, "auto"):
        from trainer.hardware import detect_class

        hardware_class = detect_class()[0].name
    from trainer.profiles import get_profile

    profile = get_profile(hardware_class)
    return RunConfig(hardware_class=hardware_class, budget_s=args.budget_s or 300.0,
                     dataset=args.dataset or profile.run.default_dataset, cache_dir=args.cache_dir,
                     overrides=overrides)


def load_config(argv: list[str] | None = None) -> RunConfig:
    """$AUTOSWARM_RUN_CONFIG (a JSON file) when set, else command-line flags."""
    path = os.environ.get(CONFIG_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return RunConfig.from_json(handle.read())
        except OSError as exc:
            raise RunSettingsError(f"cannot read run config {path}: {exc}") from exc
    return _parse_cli(sys.argv[1:] if argv is None else argv)


# ---------------------------------------------------------------------------
# Summary and progress lines (torch-free: the runner parses them)
# ---------------------------------------------------------------------------


def format_summary(values: dict[str, object]) -> str:
    """`---` then `key: value` lines; values already formatted as strings or plain numbers."""
    lines = ["---"]
    for key, value in values.items():
        lines.append(f"{key + ':':<{_SUMMARY_KEY_WIDTH - 1}} {value}")
    return "\n".join(lines)


def parse_summary(text: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line of a log (empty when there is none)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    summary: dict[str, str] = {}
    for line in lines[starts[-1] + 1:]:
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key.strip() or key != key.strip():
            break
        summary[key.strip()] = value.strip()
    return summary


def format_progress(values: dict[str, object]) -> str:
    return "progress: " + " ".join(f"{key}={value}" for key, value in values.items())


def parse_progress(line: str) -> dict[str, str] | None:
    """The fields of a `progress:` line, or None when the line is something else."""
    if not line.startswith("progress: "):
        return None
    out = {}
    for token in line[len("progress: "):].split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


# ---------------------------------------------------------------------------
# Device, dtype, compile, attention
# ---------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    # Fallbacks are never silent: they go to the log with a marker the runner keeps in the environment.
    print(f"WARNING: {message}", flush=True)


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text or "DefaultCPUAllocator" in text
    )


@dataclass
class _Resolved:
    device: Any
    device_type: str
    device_name: str
    dtype: Any
    dtype_name: str
    compile: bool
    attention: str
    flash_attn: Any
    notes: list[str]


def _select_device(profile: Profile) -> tuple[Any, str]:
    import torch

    kind = profile.device_type.value
    if kind in ("cuda", "rocm"):
        if not torch.cuda.is_available():
            raise RunSettingsError(f"class {profile.name} needs a CUDA/ROCm GPU and torch sees none")
        from trainer.hardware import detect_device

        return torch.device("cuda", 0), detect_device("cuda").name
    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RunSettingsError(f"class {profile.name} needs Apple MPS and torch sees none")
        from trainer.hardware import detect_device

        return torch.device("mps"), detect_device("mps").name
    from trainer.hardware import detect_device

    return torch.device("cpu"), detect_device("cpu").name


def _mps_bf16_works() -> bool:
    import torch

    try:
        with torch.autocast("mps", dtype=torch.bfloat16):
            out = torch.ones(2, 2, device="mps") @ torch.ones(2, 2, device="mps")
        return out.dtype == torch.bfloat16
    except Exception:
        return False


def _resolve(profile: Profile, profile_set: ProfileSet, settings: dict[str, Any]) -> _Resolved:
    import importlib.util

    import torch

    notes: list[str] = []
    device, device_name = _select_device(profile)
    kind = device.type
    is_rocm = kind == "cuda" and torch.version.hip is not None

    # dtype
    wanted = settings["dtype"]
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)
        if wanted in ("auto", "bf16") and not bf16_ok:
            if wanted == "bf16":
                _warn(f"{device_name} has no bf16: using fp16 autocast with loss scaling instead")
            dtype_name = "fp16"
        else:
            dtype_name = "bf16" if wanted == "auto" else wanted
    elif kind == "mps":
        if wanted in ("auto", "bf16"):
            dtype_name = "bf16" if _mps_bf16_works() else "fp32"
            if dtype_name == "fp32" and wanted == "bf16":
                _warn("bf16 autocast does not work on this MPS setup: using fp32")
        else:
            dtype_name = wanted
    else:
        if wanted not in ("auto", "fp32"):
            _warn(f"dtype {wanted} requested on CPU: using fp32 (CPU autocast is slower than fp32 here)")
        dtype_name = "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]

    # torch.compile: needs Triton on GPUs (absent on Windows and some ROCm installs)
    use_compile = bool(settings["compile"])
    if use_compile and kind == "cuda" and importlib.util.find_spec("triton") is None:
        _warn("torch.compile is off: Triton is not installed for this torch (Windows, some ROCm setups)")
        notes.append("compile_off_no_triton")
        use_compile = False

    # attention backend: FA3 (CUDA, not ROCm, cached build) -> FlexAttention (CUDA + compile) -> SDPA
    wanted_attention = settings["attention"]
    attention, flash_attn = "sdpa", None
    nvidia = kind == "cuda" and not is_rocm
    if wanted_attention in ("auto", "fa3"):
        if nvidia:
            from trainer.attention_kernels import load_fa3_offline

            loaded = load_fa3_offline(profile_set.kernels_for(torch.cuda.get_device_capability(device)))
            if loaded.module is not None:
                attention, flash_attn = "fa3", loaded.module
                _log(f"attention: Flash Attention 3, {loaded.reason}")
            else:
                _warn(f"Flash Attention 3 unavailable: {loaded.reason}")
                notes.append("fa3_unavailable")
        elif wanted_attention == "fa3":
            _warn(f"Flash Attention 3 needs an NVIDIA GPU; this device is {'ROCm' if is_rocm else kind}")
            notes.append("fa3_unavailable")
    if attention == "sdpa" and wanted_attention != "sdpa":
        if nvidia and use_compile:
            attention = "flex"
            _log("attention: FlexAttention with a sliding-window block mask")
        elif nvidia or wanted_attention != "auto":
            reason = "torch.compile is off" if nvidia else f"it needs an NVIDIA GPU, this device is {kind}"
            _warn(f"FlexAttention unavailable ({reason}): using SDPA with an explicit sliding-window mask")
            notes.append("flex_unavailable")
    return _Resolved(device, kind, device_name, dtype, dtype_name, use_compile, attention, flash_attn, notes)


# ---------------------------------------------------------------------------
# The context train.py sees
# ---------------------------------------------------------------------------


class TrainContext:
    """What `train(ctx)` gets. Attributes: device, device_type, dtype (compute dtype), seq_len,
    vocab_size, compile, attention ("fa3"|"flex"|"sdpa"), flash_attn (the FA3 module or None),
    clock (the BudgetClock), hardware_class, tokenizer."""

    def __init__(self, *, resolved: _Resolved, config: RunConfig, settings: dict[str, Any], prepared: PreparedData,
                 tokenizer: Tokenizer, peak_flops: float, harness_started: float | None = None) -> None:
        import torch

        from shared_data.clock import BudgetClock

        self.device = resolved.device
        self.device_type = resolved.device_type
        self.dtype = resolved.dtype
        self.seq_len = int(settings["seq_len"])
        self.vocab_size = tokenizer.vocab_size
        self.compile = resolved.compile
        self.attention = resolved.attention
        self.flash_attn = resolved.flash_attn
        self.hardware_class = config.hardware_class
        self.tokenizer = tokenizer
        self.clock = BudgetClock(config.budget_s, warmup_steps=int(settings["warmup_steps"]))
        self.grad_scaler = torch.amp.GradScaler(resolved.device_type) if resolved.dtype == torch.float16 else None
        self._prepared = prepared
        self._seed = config.seed
        self._progress_interval_s = config.progress_interval_s
        self._peak_flops = peak_flops
        self._last_progress_at = -math.inf
        self.num_params: int | None = None
        self.flops_per_token: float | None = None
        self.depth: int | None = None
        self.steps = 0
        self.total_tokens = 0
        self.counted_tokens = 0  # tokens of the steps the clock counts (for tokens/s and MFU)
        self.last_loss = float("nan")
        self.startup_s: float | None = None  # harness start until the first step began
        self._harness_started = time.time() if harness_started is None else harness_started
        self._peak_mps_bytes = 0

    # -- called by train.py ------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def train_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Infinite packed (inputs, targets, epoch) batches of the train split on the device."""
        from shared_data.dataloader import make_dataloader

        return make_dataloader(self._prepared, self.tokenizer, "train", batch_size, self.seq_len, self.device,
                               seed=self._seed)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled when training in fp16."""
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), through the loss scaler in fp16 (which skips steps with inf gradients)."""
        if self.grad_scaler is not None:
            self.grad_scaler.step(optimizer)
            self.grad_scaler.update()
        else:
            optimizer.step()

    def synchronize(self) -> None:
        import torch

        if self.device_type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device_type == "mps":
            torch.mps.synchronize()

    def log(self, message: str) -> None:
        _log(message)

    def describe_model(self, *, num_params: int, flops_per_token: float, depth: int) -> None:
        """Tell the harness the model's size (summary) and training FLOPs per token (MFU)."""
        self.num_params, self.flops_per_token, self.depth = int(num_params), float(flops_per_token), int(depth)
        _log(f"model: {num_params / 1e6:.2f}M parameters, depth {depth}, {flops_per_token:.3e} FLOPs/token")

    def step_done(self, loss: Any, *, tokens: int, **extra: object) -> None:
        """Record one optimizer step (after clock.step_end): fail fast on a bad loss, report progress."""
        loss_value = float(loss)
        self.steps += 1
        self.total_tokens += int(tokens)
        if self.clock.steps > self.clock.warmup_steps:
            self.counted_tokens += int(tokens)
        self.last_loss = loss_value
        if not math.isfinite(loss_value) or loss_value > MAX_LOSS:
            raise TrainingDivergedError(self.steps, loss_value)
        if self.steps == 1:
            self.startup_s = time.time() - self._harness_started - self.clock.last_step_s
            # Python's cyclic GC causes long stalls mid-run; collect once now and keep it off (as upstream).
            gc.collect()
            gc.freeze()
            gc.disable()
        elif self.steps % 5000 == 0:
            gc.collect()
        self._sample_memory()
        now = time.perf_counter()
        if self.steps == 1 or now - self._last_progress_at >= self._progress_interval_s or self.clock.expired:
            self._last_progress_at = now
            step_s = self.clock.last_step_s
            tok_per_s = tokens / step_s if step_s > 0 else 0.0
            values: dict[str, object] = {
                "phase": "train", "step": self.steps, "fraction": f"{self.clock.fraction:.4f}",
                "loss": f"{loss_value:.6f}", "tok_per_s": f"{tok_per_s:.0f}",
                "mfu": f"{self._mfu(tok_per_s):.2f}", "training_s": f"{self.clock.training_s:.1f}",
            }
            values.update({key: (f"{value:.4g}" if isinstance(value, float) else value) for key, value in extra.items()})
            _log(format_progress(values))

    # -- used by the harness -------------------------------------------------
    def _mfu(self, tokens_per_s: float) -> float:
        if not self.flops_per_token or self._peak_flops <= 0:
            return 0.0
        return 100.0 * self.flops_per_token * tokens_per_s / self._peak_flops

    def _sample_memory(self) -> None:
        if self.device_type == "mps":
            import torch

            self._peak_mps_bytes = max(self._peak_mps_bytes, int(torch.mps.driver_allocated_memory()))

    def peak_memory_mb(self) -> float:
        """Peak device memory: CUDA allocator peak, MPS driver allocation, or the process's peak RSS on CPU."""
        import torch

        if self.device_type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.device_type == "mps":
            return self._peak_mps_bytes / 2**20
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
        except ImportError:  # Windows
            return 0.0


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class HarnessResult:
    exit_code: int
    summary: dict[str, object]
    error: str | None = None


def _settings(profile: Profile, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = profile.run.to_dict()
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise RunSettingsError(f"unknown run-setting overrides: {', '.join(unknown)}")
    settings.update(overrides)
    return settings


def _free_device_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _evaluate(model: Any, ctx: TrainContext, prepared: PreparedData, settings: dict[str, Any]) -> float:
    from shared_data.evaluation import evaluate_bpb

    batch_size = int(settings["eval_batch_size"])
    while True:
        try:
            return evaluate_bpb(model, prepared, ctx.tokenizer, batch_size=batch_size, seq_len=ctx.seq_len,
                                eval_tokens=int(settings["eval_tokens"]), device=ctx.device, autocast=ctx.autocast)
        except Exception as exc:
            if not _is_oom(exc) or batch_size == 1:
                raise
            _free_device_memory()
            batch_size //= 2
            _warn(f"out of memory in evaluation: retrying with eval batch size {batch_size} (same tokens, same metric)")


def run_harness(train_fn: Callable[[TrainContext], Any], config: RunConfig) -> HarnessResult:
    """Run `train_fn` under the fixed layer; never exits the process (run() does)."""
    started = time.time()
    import torch

    from shared_data.prepare import DataNotReadyError, load_prepared
    from trainer.profiles import ProfileError, load_profiles

    try:
        profile_set = load_profiles(config.profiles_json)
        profile = profile_set[config.hardware_class]
        settings = _settings(profile, config.overrides)
        if settings["threads"] > 0:
            torch.set_num_threads(int(settings["threads"]))
        resolved = _resolve(profile, profile_set, settings)
    except (ProfileError, RunSettingsError) as exc:
        return HarnessResult(EXIT_USAGE, {}, str(exc))
    threads = torch.get_num_threads()
    peak_flops = profile.peak_flops(resolved.dtype_name, resolved.device_name, threads)
    _log(f"harness: class {profile.name} | device {resolved.device_name} ({resolved.device_type}) | "
         f"dtype {resolved.dtype_name} | compile {'on' if resolved.compile else 'off'} | "
         f"attention {resolved.attention} | budget {config.budget_s:g}s | threads {threads}")
    if resolved.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    try:
        prepared = load_prepared(config.dataset, config.cache_dir, expected_manifest_id=config.expected_manifest_id,
                                 expected_tokenizer_hash=config.expected_tokenizer_hash)
        tokenizer = prepared.load_tokenizer()
    except DataNotReadyError as exc:
        return HarnessResult(EXIT_DATA, {}, f"data not ready: {exc}")
    _log(f"data: {config.dataset} manifest {prepared.manifest_id[:16]} tokenizer {prepared.tokenizer_hash[:12]} "
         f"vocab {tokenizer.vocab_size} seq_len {settings['seq_len']}")

    train_globals = getattr(train_fn, "__globals__", {})
    differing = {name: (train_globals[name], value) for name, value in profile.constants.items()
                 if name in train_globals
                 and train_globals[name] != (tuple(value) if isinstance(value, list) else value)}
    if differing:
        details = ", ".join(f"{name}={mine!r} (class pins {pinned!r})" for name, (mine, pinned) in differing.items())
        _warn(f"train.py runs as written: {details}; `autoswarm train` applies the class profile first")
    oom_retry = False
    while True:
        torch.manual_seed(config.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(config.seed)
        ctx = TrainContext(resolved=resolved, config=config, settings=settings, prepared=prepared,
                           tokenizer=tokenizer, peak_flops=peak_flops, harness_started=started)
        oom_message = None
        try:
            model = train_fn(ctx)
        except TrainingDivergedError as exc:
            return HarnessResult(EXIT_NAN, {}, str(exc))
        except BaseException as exc:
            if not _is_oom(exc):
                raise
            oom_message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if oom_message is None:
            break
        # Out of the except block, so the failed attempt's frames (and tensors) can be freed.
        at_startup = ctx.clock.steps <= ctx.clock.warmup_steps
        batch, total = train_globals.get("DEVICE_BATCH_SIZE"), train_globals.get("TOTAL_BATCH_SIZE")
        can_halve = (isinstance(batch, int) and batch >= 2 and batch % 2 == 0 and isinstance(total, int)
                     and total % ((batch // 2) * int(settings["seq_len"])) == 0)
        if oom_retry or not at_startup or not can_halve:
            where = ("at start-up, after the retry with a halved batch" if oom_retry
                     else "during training" if not at_startup
                     else "at start-up (DEVICE_BATCH_SIZE cannot be halved)")
            return HarnessResult(EXIT_OOM, {}, f"out of memory {where}: {oom_message}")
        del ctx
        _free_device_memory()
        train_globals["DEVICE_BATCH_SIZE"] = batch // 2
        oom_retry = True
        _warn(f"out of memory at start-up ({oom_message}): retrying once with DEVICE_BATCH_SIZE {batch // 2} "
              f"(was {batch}), TOTAL_BATCH_SIZE {total} unchanged (more gradient accumulation)")

    training_s = ctx.clock.training_s
    _log(format_progress({"phase": "eval", "step": ctx.steps, "fraction": f"{ctx.clock.fraction:.4f}",
                          "loss": f"{ctx.last_loss:.6f}", "training_s": f"{training_s:.1f}"}))
    eval_started = time.time()
    try:
        val_bpb = _evaluate(model, ctx, prepared, settings)
    except Exception as exc:
        if _is_oom(exc):
            return HarnessResult(EXIT_OOM, {}, f"out of memory in evaluation at batch size 1: {exc}")
        raise
    eval_s = time.time() - eval_started
    if not math.isfinite(val_bpb):
        return HarnessResult(EXIT_NAN, {}, f"val_bpb is {val_bpb}: the trained model produces non-finite losses")

    total_s = time.time() - started
    tokens_per_s = ctx.counted_tokens / training_s if training_s > 0 else 0.0
    mfu = ctx._mfu(tokens_per_s)
    num_params = ctx.num_params if ctx.num_params is not None else sum(p.numel() for p in model.parameters())
    depth = ctx.depth if ctx.depth is not None else train_globals.get("DEPTH", 0)
    summary: dict[str, object] = {
        "val_bpb": f"{val_bpb:.6f}",
        "training_seconds": f"{training_s:.1f}",
        "total_seconds": f"{total_s:.1f}",
        "peak_vram_mb": f"{ctx.peak_memory_mb():.1f}",
        "mfu_percent": f"{mfu:.2f}",
        "total_tokens_M": f"{ctx.total_tokens / 1e6:.1f}",
        "num_steps": ctx.steps,
        "num_params_M": f"{num_params / 1e6:.1f}",
        "depth": depth,
        # ours, after upstream's keys
        "total_tokens": ctx.total_tokens,
        "num_params": num_params,
        "tokens_per_s": f"{tokens_per_s:.0f}",
        "startup_seconds": f"{ctx.startup_s or 0.0:.2f}",
        "warmup_seconds": f"{ctx.clock.warmup_s:.2f}",
        "eval_seconds": f"{eval_s:.2f}",
        "hardware_class": profile.name,
        "device": resolved.device_type,
        "device_name": resolved.device_name.replace("\n", " "),
        "dtype": resolved.dtype_name,
        "compile": "on" if resolved.compile else "off",
        "attention_backend": resolved.attention,
        "fallbacks": ",".join(resolved.notes) or "none",
        "seq_len": settings["seq_len"],
        "eval_tokens": settings["eval_tokens"],
        "device_batch_size": train_globals.get("DEVICE_BATCH_SIZE", ""),
        "oom_retry": "yes" if oom_retry else "no",
        "budget_seconds": f"{config.budget_s:g}",
        "dataset": config.dataset,
        "data_manifest_id": prepared.manifest_id,
        "tokenizer_hash": prepared.tokenizer_hash,
        "peak_flops": f"{peak_flops:.4g}",
        "threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": (torch.version.hip or torch.version.cuda or "none"),
        "python_version": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    return HarnessResult(EXIT_OK, summary)


def run(train_fn: Callable[[TrainContext], Any], argv: list[str] | None = None) -> None:
    """Entry point for `python train.py`: run, print the summary, exit with a classified code."""
    try:
        config = load_config(argv)
        result = run_harness(train_fn, config)
    except RunSettingsError as exc:
        result = HarnessResult(EXIT_USAGE, {}, str(exc))
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        try:
            oom = _is_oom(exc)
        except Exception:
            oom = False
        if not oom:
            raise  # a crash: Python prints the traceback and exits with EXIT_CRASH
        result = HarnessResult(EXIT_OOM, {}, f"out of memory: {exc}")
    sys.stdout.flush()
    if result.exit_code != EXIT_OK:
        print(f"FAIL: {result.error}", file=sys.stderr, flush=True)
        sys.exit(result.exit_code)
    print(format_summary(result.summary), flush=True)
    sys.exit(EXIT_OK)
