"""shared_data.harness in-process: the fixed layer around a (tiny, stand-in) train function, on real data.

The stand-in train.py below obeys the same contract as trainer/train.py, so these tests pin the
harness's behaviour (OOM retry, NaN fail-fast, summary) without the cost of the real model.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import textwrap

import pytest

from shared_data.harness import (
    EXIT_DATA,
    EXIT_NAN,
    EXIT_OK,
    EXIT_OOM,
    EXIT_USAGE,
    UPSTREAM_SUMMARY_KEYS,
    RunConfig,
    RunSettingsError,
    format_progress,
    format_summary,
    parse_progress,
    parse_summary,
    run_harness,
)
from shared_data.prepare import prepare

STAND_IN = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    DEPTH = 2
    DEVICE_BATCH_SIZE = 16
    TOTAL_BATCH_SIZE = 2**12
    MODE = "ok"
    SEEN_BATCH_SIZES = []


    class Tiny(nn.Module):
        def __init__(self, vocab_size):
            super().__init__()
            self.emb = nn.Embedding(vocab_size, 16)
            self.out = nn.Linear(16, vocab_size)

        def forward(self, idx, targets=None, reduction="mean"):
            logits = self.out(self.emb(idx)).float()
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction=reduction)


    def train(ctx):
        SEEN_BATCH_SIZES.append(DEVICE_BATCH_SIZE)
        if MODE in ("oom_once", "oom_always") and (MODE == "oom_always" or DEVICE_BATCH_SIZE > 8):
            raise torch.OutOfMemoryError("simulated: tried to allocate 20.00 GiB")
        model = Tiny(ctx.vocab_size)
        ctx.describe_model(num_params=sum(p.numel() for p in model.parameters()), flops_per_token=6 * 32 * 1024,
                           depth=DEPTH)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        batches = ctx.train_batches(DEVICE_BATCH_SIZE)
        while not ctx.clock.expired:
            ctx.clock.step_begin()
            x, y, epoch = next(batches)
            with ctx.autocast():
                loss = model(x, y)
            if MODE == "nan" and ctx.clock.steps >= 3:  # the 4th step
                loss = loss * float("nan")
            if MODE == "explode" and ctx.clock.steps >= 3:
                loss = loss * 1000
            if MODE == "oom_late" and ctx.clock.steps > ctx.clock.warmup_steps + 2:
                raise torch.OutOfMemoryError("simulated: out of memory mid-run")
            ctx.backward(loss)
            ctx.optimizer_step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            ctx.clock.step_end(ctx.synchronize)
            ctx.step_done(loss.detach(), tokens=DEVICE_BATCH_SIZE * ctx.seq_len)
        return model
''')

_counter = itertools.count()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness-cache")
    prepare("pydoc", root, progress=False)
    return root


def stand_in(tmp_path, mode="ok"):
    path = tmp_path / f"stand_in_{next(_counter)}.py"
    path.write_text(STAND_IN, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.MODE = mode
    return module


def config(cache_dir, **changes):
    values = dict(hardware_class="cpu", budget_s=0.5, dataset="pydoc", cache_dir=str(cache_dir),
                  overrides={"eval_tokens": 4096, "eval_batch_size": 8}, progress_interval_s=0.1)
    values.update(changes)
    return RunConfig(**values)


def test_ok_run_prints_upstream_keys_first_then_ours(tmp_path, cache_dir, capsys):
    module = stand_in(tmp_path)
    result = run_harness(module.train, config(cache_dir))
    assert result.exit_code == EXIT_OK, result.error
    summary = result.summary
    assert tuple(summary)[: len(UPSTREAM_SUMMARY_KEYS)] == UPSTREAM_SUMMARY_KEYS
    assert 0 < float(summary["val_bpb"]) < 10
    assert float(summary["training_seconds"]) >= 0.5
    assert float(summary["total_seconds"]) >= float(summary["training_seconds"])
    assert summary["attention_backend"] == "sdpa" and summary["dtype"] == "fp32"
    assert summary["hardware_class"] == "cpu" and summary["oom_retry"] == "no"
    assert summary["num_steps"] >= 3 and summary["total_tokens"] == summary["num_steps"] * 16 * 256
    assert len(summary["tokenizer_hash"]) == 64 and len(summary["data_manifest_id"]) == 64
    assert float(summary["mfu_percent"]) > 0
    out = capsys.readouterr().out
    progress = [parse_progress(line) for line in out.splitlines() if line.startswith("progress: ")]
    assert progress[0]["phase"] == "train" and progress[0]["step"] == "1"
    assert progress[-1]["phase"] == "eval"
    assert "harness: class cpu" in out and "attention sdpa" in out
    # the printed form parses back to the same values
    assert parse_summary("noise\n" + format_summary(summary)) == {k: str(v) for k, v in summary.items()}


def test_oom_at_startup_retries_once_with_half_the_device_batch(tmp_path, cache_dir, capsys):
    module = stand_in(tmp_path, "oom_once")
    result = run_harness(module.train, config(cache_dir))
    assert result.exit_code == EXIT_OK, result.error
    assert module.SEEN_BATCH_SIZES == [16, 8]
    assert result.summary["oom_retry"] == "yes" and result.summary["device_batch_size"] == 8
    assert module.TOTAL_BATCH_SIZE == 2**12  # unchanged: more gradient accumulation instead
    assert "retrying once with DEVICE_BATCH_SIZE 8 (was 16)" in capsys.readouterr().out


def test_oom_twice_or_mid_run_is_oom(tmp_path, cache_dir):
    module = stand_in(tmp_path, "oom_always")
    result = run_harness(module.train, config(cache_dir))
    assert result.exit_code == EXIT_OOM and module.SEEN_BATCH_SIZES == [16, 8]
    assert "after the retry" in result.error
    late = stand_in(tmp_path, "oom_late")
    result = run_harness(late.train, config(cache_dir, budget_s=30.0))  # fails long before the budget
    assert result.exit_code == EXIT_OOM and late.SEEN_BATCH_SIZES == [16]  # no retry once timing started
    assert "during training" in result.error


@pytest.mark.parametrize("mode", ["nan", "explode"])
def test_nan_or_exploding_loss_fails_fast(tmp_path, cache_dir, mode):
    module = stand_in(tmp_path, mode)
    result = run_harness(module.train, config(cache_dir, budget_s=30.0))
    assert result.exit_code == EXIT_NAN
    assert "step 4" in result.error and ("not finite" if mode == "nan" else "above 100") in result.error


def test_missing_data_and_bad_settings(tmp_path, cache_dir):
    module = stand_in(tmp_path)
    result = run_harness(module.train, config(tmp_path / "empty-cache"))
    assert result.exit_code == EXIT_DATA and "not prepared" in result.error
    assert run_harness(module.train, config(cache_dir, hardware_class="tpu-v5")).exit_code == EXIT_USAGE
    bad = run_harness(module.train, config(cache_dir, overrides={"sequence_length": 3}))
    assert bad.exit_code == EXIT_USAGE and "sequence_length" in bad.error
    assert module.SEEN_BATCH_SIZES == []  # nothing ran


def test_run_config_json():
    original = RunConfig(hardware_class="rtx3090-24g", budget_s=300, dataset="climbmix", overrides={"eval_tokens": 8})
    assert RunConfig.from_json(original.to_json()) == original
    with pytest.raises(RunSettingsError, match="unknown fields"):
        RunConfig.from_json(json.dumps({"hardware_class": "cpu", "budget": 3}))
    with pytest.raises(RunSettingsError, match="budget_s"):
        RunConfig.from_json(json.dumps({"budget_s": -1}))


def test_parse_summary_reads_upstream_format():
    log = textwrap.dedent("""\
        step 00953 (100.0%) | loss: 3.1 | lrm: 0.00
        ---
        val_bpb:          0.997900
        training_seconds: 300.1
        total_seconds:    325.9
        peak_vram_mb:     45060.2
        mfu_percent:      39.80
        total_tokens_M:   499.6
        num_steps:        953
        num_params_M:     50.3
        depth:            8
        """)
    summary = parse_summary(log)
    assert summary["val_bpb"] == "0.997900" and summary["depth"] == "8" and len(summary) == 9
    assert parse_summary("no summary here") == {}
    line = format_progress({"phase": "train", "step": 5, "loss": "3.2"})
    assert parse_progress(line) == {"phase": "train", "step": "5", "loss": "3.2"}
    assert parse_progress("step 5 loss 3") is None


def test_fallbacks_are_loud_and_recorded(tmp_path, cache_dir, capsys):
    module = stand_in(tmp_path)
    overrides = {"eval_tokens": 2048, "eval_batch_size": 8, "attention": "fa3", "dtype": "bf16"}
    result = run_harness(module.train, config(cache_dir, budget_s=0.2, overrides=overrides))
    assert result.exit_code == EXIT_OK, result.error
    assert result.summary["attention_backend"] == "sdpa" and result.summary["dtype"] == "fp32"
    assert set(result.summary["fallbacks"].split(",")) == {"fa3_unavailable", "flex_unavailable"}
    out = capsys.readouterr().out
    assert "WARNING: Flash Attention 3 needs an NVIDIA GPU" in out
    assert "WARNING: FlexAttention unavailable" in out and "WARNING: dtype bf16 requested on CPU" in out
