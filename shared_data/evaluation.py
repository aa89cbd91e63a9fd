"""The fixed metric: validation bits per byte.

    bpb = sum of per-token loss in nats over scored targets / (ln 2 * sum of target UTF-8 bytes)

A target is scored when it stands for text (byte length > 0); special tokens such as BOS have
byte length 0 and are excluded from both sums, so the metric does not depend on the vocabulary
or on how documents were packed. The data is the first `eval_tokens` of the pinned val split,
read by the same packing dataloader in its fixed order with its own batch size, so train.py's
constants cannot change what is measured. If `eval_tokens` exceeds one pass of the split, the
loader wraps to the next pass (still deterministic).

Model contract (upstream's): `model(inputs, targets, reduction="none")` returns the per-token
loss in nats, flattened or [B, T]. Targets < 0 (an ignore index) are not scored.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from shared_data.dataloader import make_dataloader
from shared_data.prepare import PreparedData
from shared_data.tokenizer import Tokenizer, token_bytes


def bpb_from_sums(total_nats: float, total_bytes: int) -> float:
    if total_bytes <= 0:
        raise ValueError("no scored bytes: cannot compute bits per byte")
    return total_nats / (math.log(2) * total_bytes)


def evaluate_bpb(model: torch.nn.Module, prepared: PreparedData, tokenizer: Tokenizer, *, batch_size: int,
                 seq_len: int, eval_tokens: int, device: torch.device | str,
                 autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext) -> float:
    """Bits per byte of `model` on the first `eval_tokens` of the val split (at least one batch)."""
    if batch_size < 1 or seq_len < 1 or eval_tokens < 1:
        raise ValueError("batch_size, seq_len and eval_tokens must be >= 1")
    device = torch.device(device)
    steps = max(1, eval_tokens // (batch_size * seq_len))
    bytes_per_token = token_bytes(tokenizer, device)
    loader = make_dataloader(prepared, tokenizer, "val", batch_size, seq_len, device)
    nats_per_step: list[torch.Tensor] = []
    bytes_per_step: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(steps):
                inputs, targets, _ = next(loader)
                with autocast():
                    loss = model(inputs, targets, reduction="none")
                loss = loss.reshape(-1).float()
                flat_targets = targets.reshape(-1)
                if loss.numel() != flat_targets.numel():
                    raise ValueError(f"model returned {loss.numel()} losses for {flat_targets.numel()} targets; "
                                     "expected one per target (reduction='none')")
                nbytes = torch.where(flat_targets >= 0, bytes_per_token[flat_targets.clamp_min(0)], 0)
                scored = nbytes > 0
                # where(), not multiplication: a non-finite loss on an unscored target must not leak in
                nats_per_step.append(torch.where(scored, loss, 0.0).sum())
                bytes_per_step.append(nbytes.sum())
    finally:
        model.train(was_training)
    if loader.packer.epoch > 1:  # said once per evaluation, so a small val split is never silent
        print(f"evaluate_bpb: eval_tokens {eval_tokens} exceed one pass of the {prepared.manifest.name} val split "
              f"at seq_len {seq_len}; {loader.stats.rows - loader.packer.rows_in_first_epoch} of "
              f"{loader.stats.rows} rows repeat documents", file=sys.stderr, flush=True)
    # one transfer at the end; float64 on the host (MPS has no float64)
    total_nats = torch.stack(nats_per_step).cpu().double().sum().item()
    total_bytes = int(torch.stack(bytes_per_step).cpu().sum().item())
    return bpb_from_sums(total_nats, total_bytes)
