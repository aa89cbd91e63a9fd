"""`autoswarm train`: run one experiment locally, the way `uv run train.py` does upstream.

    autoswarm train [--class auto|NAME] [--budget-s S] [--dataset NAME] [--json] [FILE]

Before the run (online, if needed): detect the hardware class, prepare the dataset and tokenizer,
and fetch the pinned Flash Attention 3 build on NVIDIA GPUs. Then the run itself (offline): the
class profile is applied to a copy of FILE (default: the packaged train.py), it trains in a
subprocess for the budget (killed at 2x the budget plus a start-up allowance), progress goes to
stderr, and the `---` summary goes to stdout (`--json`: the typed RunResult instead), so
`autoswarm train > run.log; grep "^val_bpb:" run.log` works as upstream. Exit code 0 when the
run is `ok`, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trainer.profiles import DeviceType, ProfileError, load_profiles
from trainer.runner import Progress, RunResult, RunStatus, run_experiment

__all__ = ["main", "build_parser"]

DEFAULT_TRAIN_PY = Path(__file__).resolve().parent / "train.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoswarm train", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_TRAIN_PY, metavar="FILE",
                        help="the train.py to run (default: the packaged one)")
    parser.add_argument("--class", dest="hardware_class", default="auto",
                        help="hardware class, or 'auto' to detect it (default)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training time budget in seconds (default 300)")
    parser.add_argument("--dataset", default=None, help="dataset (default: the class's, e.g. pydoc for cpu)")
    parser.add_argument("--json", action="store_true", help="print the RunResult as JSON instead of the summary")
    parser.add_argument("--cache-dir", type=Path, default=None, help="data cache (default: $AUTOSWARM_CACHE_DIR)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the patched train.py, run config and train.log go (default: <cache>/runs/...)")
    parser.add_argument("--no-prepare", action="store_true", help="do not prepare data first; fail if it is missing")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _progress_printer(quiet: bool) -> tuple[object, object]:
    interactive = sys.stderr.isatty()

    def show(progress: Progress) -> None:
        if quiet:
            return
        if progress.phase == "eval":
            text = f"step {progress.step:05d} done | evaluating val_bpb ..."
        else:
            loss = f"{progress.loss:.4f}" if progress.loss is not None else "?"
            rate = f"{progress.tok_per_s:,.0f}" if progress.tok_per_s is not None else "?"
            mfu = f"{progress.mfu_percent:.1f}%" if progress.mfu_percent is not None else "?"
            text = f"step {progress.step:05d} ({100 * progress.fraction:.1f}%) | loss {loss} | {rate} tok/s | mfu {mfu}"
        print(("\r" + text + "   ") if interactive else text, end="" if interactive else "\n", file=sys.stderr, flush=True)

    def finish() -> None:
        if interactive and not quiet:
            print(file=sys.stderr)

    return show, finish


def _print_result(result: RunResult, as_json: bool) -> None:
    if as_json:
        print(result.to_json())
        return
    print("---")
    for key, value in result.summary.items():
        print(f"{key + ':':<17} {value}")
    print(f"{'status:':<17} {result.status.value}")
    if result.error:
        print(f"{'error:':<17} {result.error}")
    print(f"{'log:':<17} {result.log_path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    if not args.file.is_file():
        print(f"autoswarm train: no such file: {args.file}", file=sys.stderr)
        return 2
    if not args.budget_s > 0:
        print("autoswarm train: --budget-s must be positive", file=sys.stderr)
        return 2
    try:
        profiles = load_profiles()
    except ProfileError as exc:
        print(f"autoswarm train: {exc}", file=sys.stderr)
        return 2

    compute_capability = None
    if args.hardware_class == "auto":
        from trainer.hardware import classify, detect_device

        info = detect_device()
        match = classify(info, profiles)
        hardware_class, compute_capability = match.name, info.compute_capability
        log(f"hardware: {info.name} -> class {hardware_class} ({match.reason})")
    elif args.hardware_class not in profiles:
        print(f"autoswarm train: unknown class {args.hardware_class!r}; known: {', '.join(profiles.names())}",
              file=sys.stderr)
        return 2
    else:
        hardware_class = args.hardware_class
    profile = profiles[hardware_class]
    dataset = args.dataset or profile.run.default_dataset

    if not args.no_prepare:
        from shared_data.prepare import prepare

        try:
            prepare(dataset, args.cache_dir, progress=not args.quiet)
        except Exception as exc:  # download, checksum, unknown dataset: one plain line
            print(f"autoswarm train: cannot prepare {dataset!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if profile.device_type is DeviceType.CUDA and profile.run.attention in ("auto", "fa3"):
        if compute_capability is None:
            from trainer.hardware import detect_device

            compute_capability = detect_device("cuda").compute_capability
        from trainer.attention_kernels import prefetch_fa3

        for line in prefetch_fa3(profiles.kernels_for(compute_capability)):
            log(f"attention kernels: {line}")

    from shared_data.cache import resolve_cache_dir

    workdir = args.workdir or resolve_cache_dir(args.cache_dir) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{hardware_class}"
    log(f"run: class {hardware_class}, dataset {dataset}, budget {args.budget_s:g}s, log {workdir / 'train.log'}")
    show, finish = _progress_printer(args.quiet)
    result = run_experiment(args.file, hardware_class=hardware_class, budget_s=args.budget_s, dataset=dataset,
                            workdir=workdir, cache_dir=args.cache_dir, on_progress=show)
    finish()
    _print_result(result, args.json)
    return 0 if result.status is RunStatus.OK else 1
