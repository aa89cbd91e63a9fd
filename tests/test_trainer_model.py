"""train.py's pieces that are easy to get subtly wrong: Polar Express, NorMuon, cautious weight decay,
sliding-window attention, value embeddings, schedules, and the optimizer as a whole."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import types
import warnings
from pathlib import Path

import pytest
import torch

TRAIN_PY = Path(__file__).resolve().parent.parent / "trainer" / "train.py"


def load_train_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("train_under_test", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine's thread contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tp():
    return load_train_module()


def tiny_config(tp, **changes):
    values = dict(sequence_len=16, vocab_size=64, n_layer=4, n_head=4, n_kv_head=2, n_embd=32, window_pattern="SSSL")
    values.update(changes)
    return tp.GPTConfig(**values)


def test_import_has_no_side_effects():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        module = load_train_module()
    assert out.getvalue() == ""
    assert callable(module.train) and module.DEPTH == 8
    source = TRAIN_PY.read_text(encoding="utf-8")
    assert 'torch.device("cuda")' not in source and ".cuda()" not in source


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48 * 3)])
def test_polar_express_is_close_to_orthogonal(tp, shape):
    torch.manual_seed(0)
    G = torch.randn(*shape) * torch.linspace(0.2, 5.0, shape[1])  # columns on very different scales
    X = tp.polar_express(G, steps=5, dtype=torch.float32)
    singular = torch.linalg.svdvals(X)
    assert singular.min() > 0.8 and singular.max() < 1.2, singular
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    assert (X - polar).norm() / polar.norm() < 0.15
    raw = torch.linalg.svdvals(G)
    assert raw.max() / raw.min() > 3  # the input was far from orthogonal
    # batched: a stack of matrices is orthogonalized independently
    stacked = tp.polar_express(torch.stack([G, 3 * G]), dtype=torch.float32)
    assert torch.allclose(stacked[0], stacked[1], atol=1e-4)
    assert len(tp.polar_express_coeffs) == 5


def test_cautious_weight_decay_only_where_signs_agree(tp):
    params = torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0])
    update = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.0])
    lr, wd = 0.1, 0.5
    tp.cautious_update(params, update, torch.tensor(lr), torch.tensor(wd))
    # signs agree at indices 0, 3 (and 4, where the update is zero): those decay; 1 and 2 do not
    expected = torch.tensor([
        1.0 - lr * 0.5 - lr * wd * 1.0,
        -1.0 - lr * 0.5,
        2.0 + lr * 0.5,
        -2.0 + lr * 0.5 - lr * wd * -2.0,
        3.0 - lr * wd * 3.0,
    ])
    assert torch.allclose(params, expected)


def test_normuon_keeps_the_update_norm_and_equalizes_neurons(tp):
    torch.manual_seed(1)
    update = torch.randn(2, 8, 4) * torch.tensor([1.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])[None, :, None]
    second = torch.zeros(2, 8, 1)
    scaled = tp.normuon_scale(update, second, beta2=torch.tensor(0.0), reduce_dim=-1)
    assert torch.allclose(scaled.norm(dim=(-2, -1)), update.norm(dim=(-2, -1)), rtol=1e-5)
    row_rms = scaled.square().mean(-1).sqrt()
    assert torch.allclose(row_rms, row_rms[:, :1].expand_as(row_rms), rtol=1e-4)  # per-neuron scale equalized
    assert torch.allclose(second, update.square().mean(-1, keepdim=True))


def dense_reference(q, k, v, window):
    """Loop-level causal sliding-window attention: query i attends to keys j with 0 <= i - j <= window."""
    B, T, H, D = q.shape
    groups = H // k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            kv = h // groups
            for i in range(T):
                lo = max(0, i - window)
                scores = torch.stack([(q[b, i, h] * k[b, j, kv]).sum() for j in range(lo, i + 1)]) / math.sqrt(D)
                weights = torch.softmax(scores, dim=0)
                out[b, i, h] = sum(w * v[b, j, kv] for w, j in zip(weights, range(lo, i + 1), strict=True))
    return out


@pytest.mark.parametrize(("T", "window", "kv_heads"), [(12, 3, 2), (12, 5, 4), (12, 11, 1), (9, 4, 2)])
def test_sliding_window_attention_matches_dense_reference(tp, T, window, kv_heads):
    torch.manual_seed(2)
    q = torch.randn(2, T, 4, 8)
    k = torch.randn(2, T, kv_heads, 8)
    v = torch.randn(2, T, kv_heads, 8)
    got = tp.Attention("sdpa")(q, k, v, window)
    assert torch.allclose(got, dense_reference(q, k, v, window), atol=1e-5)


def test_mask_forms_agree(tp):
    T, window = 10, 3
    mask = tp.sliding_window_mask(T, window)
    i = torch.arange(T)[:, None].expand(T, T)
    j = torch.arange(T)[None, :].expand(T, T)
    flex_form = tp.sliding_window_mask_mod(window)(0, 0, i, j)
    assert torch.equal(mask, flex_form)
    assert mask.sum(1).tolist() == [min(n + 1, window + 1) for n in range(T)]
    assert not mask.triu(1).any()


def test_layer_windows(tp):
    windows = tp.layer_windows(tiny_config(tp, n_layer=6, window_pattern="SSSL"))
    assert windows == [8, 8, 8, 16, 8, 16]  # S = half context, L = full, last layer always full
    assert tp.layer_windows(tiny_config(tp, n_layer=3, window_pattern="L")) == [16, 16, 16]
    with pytest.raises(ValueError, match="WINDOW_PATTERN"):
        tp.layer_windows(tiny_config(tp, window_pattern="SXL"))


def test_model_structure_and_forward(tp):
    torch.manual_seed(3)
    config = tiny_config(tp)
    model = tp.GPT(config)
    model.init_weights()
    assert sorted(model.value_embeds.keys()) == ["1", "3"]  # alternating, the last layer included
    gates = [block.attn.ve_gate is not None for block in model.transformer.h]
    assert gates == [False, True, False, True]
    assert model.transformer.h[0].attn.c_k.weight.shape == (2 * 8, 32)  # GQA: 2 kv heads of 8
    idx = torch.randint(0, 64, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 64) and logits.abs().max() <= 15.0  # soft-capped
    losses = model(idx, idx, reduction="none")
    assert losses.shape == (48,)
    assert torch.allclose(model(idx, idx), losses.mean())
    assert math.isclose(losses.mean().item(), math.log(64), rel_tol=0.05)  # lm_head starts near zero
    assert model.estimate_flops() > 6 * 32 * 32


def test_optimizer_groups_and_a_training_step_lowers_loss(tp):
    torch.manual_seed(4)
    model = tp.GPT(tiny_config(tp))
    model.init_weights()
    optimizer = model.setup_optimizer(unembedding_lr=0.004, embedding_lr=0.6, matrix_lr=0.04, weight_decay=0.2,
                                      adam_betas=(0.8, 0.95), scalar_lr=0.5)
    kinds = [group["kind"] for group in optimizer.param_groups]
    muon_params = [p for g in optimizer.param_groups if g["kind"] == "muon" for p in g["params"]]
    assert kinds.count("adamw") == 5 and all(p.ndim == 2 for p in muon_params)
    assert len({tuple(p.shape) for p in muon_params}) == kinds.count("muon")
    idx = torch.randint(0, 64, (8, 16))
    first = None
    for _ in range(15):
        loss = model(idx, idx.roll(-1, dims=1))
        first = first if first is not None else loss.item()
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    assert loss.item() < first - 0.5


def test_schedules(tp):
    assert tp.lr_multiplier(0.0) == 1.0 and tp.lr_multiplier(0.49) == 1.0
    assert tp.lr_multiplier(0.75) == pytest.approx(0.5) and tp.lr_multiplier(1.0) == pytest.approx(0.0)
    assert tp.muon_momentum(0) == pytest.approx(0.85) and tp.muon_momentum(150) == pytest.approx(0.90)
    assert tp.muon_momentum(300) == pytest.approx(0.95) and tp.muon_momentum(10_000) == pytest.approx(0.95)
    assert tp.weight_decay_at(0.0) == pytest.approx(0.2) and tp.weight_decay_at(1.0) == 0.0


@pytest.mark.parametrize("window", [40, 127])
def test_flex_block_mask_matches_sdpa(tp, window):
    """FlexAttention's block mask (the CUDA path) computes the same attention as the SDPA mask.
    Eager flex runs unfused on CPU: slow, but exact enough to pin the mask semantics."""
    torch.manual_seed(5)
    q, k, v = torch.randn(1, 128, 2, 8), torch.randn(1, 128, 1, 8), torch.randn(1, 128, 1, 8)
    flex = tp.Attention("flex")
    flex.prepare(128, [window], torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without torch.compile.*")
        got = flex(q, k, v, window)
    assert torch.allclose(got, tp.Attention("sdpa")(q, k, v, window), atol=1e-5)
