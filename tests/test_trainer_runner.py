"""trainer.runner and trainer.cli: real subprocesses, real data, deliberately broken train.py variants."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from shared_data.evaluation import evaluate_bpb
from shared_data.harness import EXIT_DATA, UPSTREAM_SUMMARY_KEYS
from shared_data.prepare import load_prepared, prepare
from trainer import cli
from trainer.constants import rewrite_constants
from trainer.profiles import get_profile
from trainer.runner import RunResult, RunStatus, _classify, run_experiment

TRAIN_PY = Path(__file__).resolve().parent.parent / "trainer" / "train.py"

HEADER = textwrap.dedent('''
    import os
    import subprocess
    import sys
    import threading

    import torch

    DEPTH = 2
    DEVICE_BATCH_SIZE = 16
    TOTAL_BATCH_SIZE = 2**12
''')
FOOTER = textwrap.dedent('''
    if __name__ == "__main__":
        from shared_data.harness import run

        run(train)
''')
BROKEN = {
    "crash": '''
def train(ctx):
    print("ENV " + ",".join(sorted(os.environ)), flush=True)
    raise ValueError("deliberate bug in train.py")
''',
    "oom": '''
def train(ctx):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
''',
    "hang": '''
def train(ctx):
    threading.Event().wait()  # never returns: only the runner's kill ends this
''',
    "nan": '''
def train(ctx):
    ctx.clock.step_begin()
    ctx.clock.step_end()
    ctx.step_done(float("nan"), tokens=1)
''',
}


# Started first thing, so it exists well before the kill whatever the machine's load.
GRANDCHILD = textwrap.dedent('''
    import subprocess as _subprocess
    import sys as _sys

    _child = _subprocess.Popen([_sys.executable, "-c", "import threading; threading.Event().wait()"])
    with open("grandchild.pid", "w") as _handle:
        _handle.write(str(_child.pid))
''')


def broken_train_py(kind: str) -> str:
    return (GRANDCHILD if kind == "hang" else "") + HEADER + BROKEN[kind] + FOOTER


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner-cache")
    prepare("pydoc", root, progress=False)
    return root


def untrained_bpb(cache_dir: Path, tmp_path: Path) -> float:
    """val_bpb of the cpu-class model straight after initialization, with the run's eval settings."""
    profile = get_profile("cpu")
    patched = tmp_path / "train_cpu_untrained.py"
    patched.write_text(rewrite_constants(TRAIN_PY.read_text(encoding="utf-8"), profile.constants), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("train_cpu_untrained", patched)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prepared = load_prepared("pydoc", cache_dir)
    tokenizer = prepared.load_tokenizer()
    torch.manual_seed(42)
    ctx = SimpleNamespace(seq_len=profile.run.seq_len, vocab_size=tokenizer.vocab_size, attention="sdpa",
                          flash_attn=None, device=torch.device("cpu"), dtype=torch.float32)
    model = module.build_model(ctx)
    return evaluate_bpb(model, prepared, tokenizer, batch_size=profile.run.eval_batch_size,
                        seq_len=profile.run.seq_len, eval_tokens=profile.run.eval_tokens, device="cpu")


@pytest.mark.slow
def test_whole_path_trains_below_the_untrained_model(cache_dir, tmp_path):
    """corpus -> tokenizer -> packed batches -> the cpu-class GPT trained a few seconds -> eval -> summary."""
    before = untrained_bpb(cache_dir, tmp_path)
    assert before > 3.0  # about log2(vocab) / bytes-per-token for a near-uniform initial model
    progress = []
    result = run_experiment(TRAIN_PY, hardware_class="cpu", budget_s=6.0, dataset="pydoc", workdir=tmp_path / "run",
                            cache_dir=cache_dir, on_progress=progress.append)
    assert result.status is RunStatus.OK, result.log_tail
    assert result.val_bpb is not None and result.val_bpb < before - 0.3, (result.val_bpb, before)
    assert set(UPSTREAM_SUMMARY_KEYS) <= set(result.summary)
    prepared = load_prepared("pydoc", cache_dir)
    assert result.tokenizer_hash == prepared.tokenizer_hash
    assert result.data_manifest_id == prepared.manifest_id
    assert result.attention_backend == "sdpa" and result.dtype == "fp32" and result.depth == 2
    assert result.num_steps >= 3 and result.total_tokens == result.num_steps * 2**12
    assert result.training_s >= 6.0 and result.total_s >= result.training_s and result.wall_s >= result.total_s
    assert 0.5 < result.num_params_m < 2 and result.peak_memory_mb > 0 and result.mfu_percent > 0
    assert result.environment["torch_version"] == torch.__version__
    assert "core=0" in result.environment["resource_limits"]
    # progress streamed while it ran: train steps in order, then the eval phase
    train_steps = [p.step for p in progress if p.phase == "train"]
    assert train_steps and train_steps == sorted(train_steps) and progress[-1].phase == "eval"
    assert all(0.0 <= p.fraction <= 1.0 for p in progress)
    # the profile went into the copy that ran, not into the original
    ran = (tmp_path / "run" / "train.py").read_text(encoding="utf-8")
    assert "DEPTH = 2 " in ran and "DEPTH = 8 " in TRAIN_PY.read_text(encoding="utf-8")
    log = Path(result.log_path).read_text(encoding="utf-8")
    assert log.count("\n---\n") == 1 and "val_bpb:" in log
    assert RunResult.from_json(result.to_json()) == result


@pytest.mark.slow
def test_crash_and_a_scrubbed_environment(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSWARM_TEST_SECRET_TOKEN", "hunter2")
    result = run_experiment(broken_train_py("crash"), hardware_class="cpu", budget_s=1.0, dataset="pydoc",
                            workdir=tmp_path / "default-env", cache_dir=cache_dir)
    assert result.status is RunStatus.CRASH and result.exit_code == 1
    assert "ValueError: deliberate bug in train.py" in result.error
    env_names = next(line for line in result.log_tail.splitlines() if line.startswith("ENV ")).split()[1].split(",")
    assert "AUTOSWARM_TEST_SECRET_TOKEN" not in env_names
    assert {"AUTOSWARM_RUN_CONFIG", "PYTHONPATH", "HF_HUB_OFFLINE", "PATH"} <= set(env_names)

    explicit = run_experiment(broken_train_py("crash"), hardware_class="cpu", budget_s=1.0, dataset="pydoc",
                              workdir=tmp_path / "explicit-env", cache_dir=cache_dir,
                              env={"PATH": os.environ["PATH"], "ONLY_THIS": "1"})
    env_names = next(line for line in explicit.log_tail.splitlines() if line.startswith("ENV ")).split()[1].split(",")
    assert "ONLY_THIS" in env_names and "HOME" not in env_names


@pytest.mark.slow
def test_oom(cache_dir, tmp_path):
    result = run_experiment(broken_train_py("oom"), hardware_class="cpu", budget_s=1.0, dataset="pydoc",
                            workdir=tmp_path, cache_dir=cache_dir)
    assert result.status is RunStatus.OOM, result.log_tail
    assert "retrying once with DEVICE_BATCH_SIZE 8" in result.log_tail
    assert "out of memory" in result.error and result.val_bpb is None


@pytest.mark.slow
def test_timeout_kills_at_twice_the_budget_with_the_process_group(cache_dir, tmp_path):
    budget_s = 1.5
    started = time.monotonic()
    result = run_experiment(broken_train_py("hang"), hardware_class="cpu", budget_s=budget_s, dataset="pydoc",
                            workdir=tmp_path, cache_dir=cache_dir, kill_after_s=2 * budget_s)
    assert result.status is RunStatus.TIMEOUT
    assert 2 * budget_s <= result.wall_s < 2 * budget_s + 10 and time.monotonic() - started < 30
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)  # the SIGKILL is sent; give the kernel a moment to reap
    assert not _alive(grandchild), "the grandchild survived the process-group kill"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_nan(cache_dir, tmp_path):
    result = run_experiment(broken_train_py("nan"), hardware_class="cpu", budget_s=1.0, dataset="pydoc",
                            workdir=tmp_path, cache_dir=cache_dir)
    assert result.status is RunStatus.NAN and "not finite" in result.error


def test_bad_train_py_is_a_crash_without_a_run(tmp_path):
    no_depth = broken_train_py("nan").replace("DEPTH = 2\n", "")
    result = run_experiment(no_depth, hardware_class="cpu", budget_s=1.0, dataset="pydoc", workdir=tmp_path / "a")
    assert result.status is RunStatus.CRASH and "DEPTH" in result.error and result.exit_code is None
    assert not (tmp_path / "a" / "train.py").exists()
    with pytest.raises(ValueError, match="budget_s"):
        run_experiment(no_depth, hardware_class="cpu", budget_s=0, dataset="pydoc", workdir=tmp_path / "c")
    with pytest.raises(KeyError, match="unknown hardware class"):
        run_experiment(no_depth, hardware_class="tpu", budget_s=1, dataset="pydoc", workdir=tmp_path / "d")


@pytest.mark.parametrize(("exit_code", "timed_out", "summary", "lines", "status"), [
    (0, False, {"val_bpb": "1.5"}, [], RunStatus.OK),
    (0, False, {}, [], RunStatus.CRASH),  # exit 0 but no summary
    (EXIT_DATA, False, {}, ["FAIL: data not ready: dataset 'pydoc' is not prepared"], RunStatus.CRASH),
    (-signal.SIGKILL, False, {}, [], RunStatus.OOM),  # a SIGKILL the runner did not send: the OOM killer
    (-signal.SIGKILL, True, {}, [], RunStatus.TIMEOUT),
    (-signal.SIGSEGV, False, {}, [], RunStatus.CRASH),
    (-signal.SIGXCPU, False, {}, [], RunStatus.TIMEOUT),  # the CPU-time backstop
    (1, False, {}, ["Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory."], RunStatus.OOM),
    (1, False, {}, ["Traceback (most recent call last):", "KeyError: 'x'"], RunStatus.CRASH),
])
def test_classification(exit_code, timed_out, summary, lines, status):
    got, error = _classify(exit_code, timed_out, timed_out, summary, lines)
    assert got is status
    assert (error is None) == (status is RunStatus.OK)
    if lines:
        assert error == lines[-1].removeprefix("FAIL: ")


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(argv)
    return code, out.getvalue()


@pytest.mark.slow
def test_cli_json_and_argument_errors(cache_dir, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text(broken_train_py("crash"), encoding="utf-8")
    code, out = _cli([str(script), "--class", "cpu", "--budget-s", "1", "--json", "--cache-dir", str(cache_dir),
                      "--workdir", str(tmp_path / "run"), "--quiet"])
    assert code == 1
    result = RunResult.from_json(out)
    assert result.status is RunStatus.CRASH and json.loads(out)["status"] == "crash"
    assert _cli(["--class", "tpu-v5"])[0] == 2
    assert _cli([str(tmp_path / "missing.py"), "--class", "cpu"])[0] == 2
    assert _cli(["--class", "cpu", "--budget-s", "0"])[0] == 2


def test_cli_text_output_is_greppable_like_upstream():
    result = RunResult(status=RunStatus.OK, val_bpb=1.25, summary={"val_bpb": "1.250000", "training_seconds": "5.0"},
                       log_path="/tmp/x/train.log")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli._print_result(result, as_json=False)
    lines = out.getvalue().splitlines()
    assert lines[0] == "---"
    assert [line for line in lines if line.startswith("val_bpb:")] == ["val_bpb:          1.250000"]
    assert "status:           ok" in lines


def test_result_to_proto():
    from autoswarm.v1 import swarm_pb2

    ok = RunResult(status=RunStatus.OK, val_bpb=1.5, num_steps=10, total_tokens=40960, depth=2, dtype="fp32",
                   attention_backend="sdpa", environment={"torch_version": "2.13"}, log_tail="x" * 20000)
    message = ok.to_proto()
    assert message.status == swarm_pb2.RUN_STATUS_OK and message.val_bpb == 1.5 and message.num_steps == 10
    assert message.environment["depth"] == "2" and message.environment["torch_version"] == "2.13"
    assert len(message.log_tail) == 8000
    crashed = RunResult(status=RunStatus.OOM, error="out of memory").to_proto()
    assert crashed.status == swarm_pb2.RUN_STATUS_OOM and crashed.val_bpb == 0.0 and crashed.error == "out of memory"
