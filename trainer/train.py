# ruff: noqa: ANN001, ANN201 -- upstream's untyped style, so hypothesis diffs stay small and familiar
"""
autoswarm train.py: the one file hypotheses edit. Single device, single file.

A small GPT (RMSNorm pre-norm, RoPE, grouped-query attention, value embeddings, sliding windows,
logit soft-cap, squared-ReLU MLP) trained with MuonAdamW for a fixed time budget.

Division of labour (see shared_data/harness.py, the fixed layer every node runs identically):
- the harness picks the device, dtype, autocast, torch.compile and attention backend, loads the data
  offline, owns the budget clock, retries an out-of-memory start with half the device batch,
  fails fast on NaN or exploding loss, evaluates val_bpb after `train(ctx)` returns, and prints
  the `---` summary;
- this file defines the hyperparameters, the model, the optimizer and the training loop. It never
  evaluates, never decides the budget and never chooses the hardware.

Run it through `autoswarm train` (which applies the hardware-class profile to a copy of this file),
or directly: `python trainer/train.py --class cpu --dataset pydoc --budget-s 30`.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Hyperparameters: hypotheses may edit anything in this block.
# Hardware-class profiles (trainer/profiles.json) pin some of these per class.
# ---------------------------------------------------------------------------

# Model architecture
DEPTH = 8                # number of transformer layers
ASPECT_RATIO = 64        # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128           # target attention head dimension
GQA_GROUP_SIZE = 1       # query heads sharing one key/value head (1 = plain multi-head attention)
WINDOW_PATTERN = "SSSL"  # per-layer attention window, repeated: S = half context, L = full (last layer always L)

# Optimization
TOTAL_BATCH_SIZE = 2**19     # tokens per optimizer step
DEVICE_BATCH_SIZE = 128      # sequences per forward/backward pass; gradient accumulation fills the rest
EMBEDDING_LR = 0.6           # AdamW learning rate of the token and value embeddings
UNEMBEDDING_LR = 0.004       # AdamW learning rate of lm_head
MATRIX_LR = 0.04             # Muon learning rate of the 2-D weight matrices in the blocks
SCALAR_LR = 0.5              # AdamW learning rate of the per-layer scalars
WEIGHT_DECAY = 0.2           # cautious weight decay of the Muon matrices, decayed linearly to 0
ADAM_BETAS = (0.8, 0.95)     # AdamW beta1, beta2
WARMUP_RATIO = 0.0           # fraction of the time budget spent warming the learning rate up
WARMDOWN_RATIO = 0.5         # fraction of the time budget spent decaying the learning rate
FINAL_LR_FRAC = 0.0          # learning rate at the end, as a fraction of the peak

# ---------------------------------------------------------------------------
# GPT model: hypotheses may edit.
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 512
    window_pattern: str = "SSSL"


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer_idx, n_layer):
    """Value embeddings on alternating layers, always including the last one."""
    return layer_idx % 2 == (n_layer - 1) % 2


def layer_windows(config):
    """Left attention window (past positions besides the current one) of each layer."""
    pattern = config.window_pattern.upper()
    if not pattern or any(c not in "SL" for c in pattern):
        raise ValueError(f"WINDOW_PATTERN must be made of S and L, got {config.window_pattern!r}")
    sizes = {"L": config.sequence_len, "S": config.sequence_len // 2}
    windows = [sizes[pattern[i % len(pattern)]] for i in range(config.n_layer)]
    windows[-1] = config.sequence_len  # the last layer always sees the full context
    return windows


def rotary_tables(seq_len, head_dim, base=10000.0, device=None, dtype=torch.float32):
    """cos/sin tables [1, T, 1, head_dim/2] for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos().to(dtype)[None, :, None, :], angles.sin().to(dtype)[None, :, None, :]


def apply_rotary(x, cos, sin):
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


# --- attention backends -----------------------------------------------------
# All three compute the same thing: causal attention where query i sees keys j with
# 0 <= i - j <= window. q, k, v arrive as [B, T, H, D]; the output is [B, T, H, D].


def sliding_window_mask(seq_len, window, device=None):
    """Boolean [T, T] mask, True where attention is allowed (the SDPA form)."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (i - j <= window)


def sliding_window_mask_mod(window):
    """The same rule as a FlexAttention mask_mod."""

    def mask_mod(batch, head, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

    return mask_mod


class Attention:
    """Dispatch to the backend the harness chose ("fa3" | "flex" | "sdpa"), caching masks per (T, window)."""

    def __init__(self, backend, flash_attn=None):
        self.backend = backend
        self.flash_attn = flash_attn
        self._masks = {}

    def prepare(self, seq_len, windows, device):
        """Build the masks up front, outside any compiled region."""
        if self.backend != "fa3":
            for window in set(windows):
                self._mask(seq_len, window, device)

    def _mask(self, seq_len, window, device):
        key = (seq_len, window, str(device))
        if key not in self._masks:
            if self.backend == "flex":
                from torch.nn.attention.flex_attention import create_block_mask

                mask_mod = sliding_window_mask_mod(min(window, seq_len))
                self._masks[key] = create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device)
            elif window >= seq_len - 1:
                self._masks[key] = None  # plain causal: SDPA's is_causal fast path
            else:
                self._masks[key] = sliding_window_mask(seq_len, window, device)
        return self._masks[key]

    def __call__(self, q, k, v, window):
        B, T, H, D = q.shape
        q, k = q.to(v.dtype), k.to(v.dtype)  # norms may run in fp32 under autocast; kernels want one dtype
        if self.backend == "fa3":
            y = self.flash_attn.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
            return y[0] if isinstance(y, tuple) else y
        mask = self._mask(T, window, q.device)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.backend == "flex":
            from torch.nn.attention.flex_attention import flex_attention

            y = flex_attention(q, k, v, block_mask=mask, enable_gqa=k.size(1) != H)
        else:
            if k.size(1) != H:
                repeats = H // k.size(1)
                k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0
        assert config.n_head % config.n_kv_head == 0, "GQA_GROUP_SIZE must divide the number of heads"
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # Value-embedding gate: a few input channels decide, per kv head, how much value embedding to mix in.
        self.ve_gate_channels = min(32, config.n_embd)
        has_ve = has_value_embedding(layer_idx, config.n_layer)
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False) if has_ve else None

    def forward(self, x, ve, cos_sin, window, attend):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))  # in (0, 2); 1 at init
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        y = attend(q, k, v, window)
        return self.c_proj(y.contiguous().view(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window, attend):
        x = x + self.attn(norm(x), ve, cos_sin, window, attend)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config, attention=None):
        super().__init__()
        self.config = config
        self.windows = layer_windows(config)
        self.attend = attention if attention is not None else Attention("sdpa")
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Per-layer mix of the running stream and the first layer's input: x = r_i * x + x0_i * x0.
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, kv_dim)
            for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
        })
        # Rotary tables cover 10x the training context so longer evaluation would still work.
        cos, sin = rotary_tables(config.sequence_len * 10, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self, embedding_dtype=torch.float32, rotary_dtype=torch.float32):
        n_embd = self.config.n_embd
        bound = 3**0.5 * n_embd**-0.5  # uniform with the std of a 1/sqrt(n_embd) normal
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        for embedding in self.value_embeds.values():
            nn.init.uniform_(embedding.weight, -bound, bound)
        device = self.transformer.wte.weight.device
        cos, sin = rotary_tables(self.cos.size(1), self.config.n_embd // self.config.n_head,
                                 device=device, dtype=rotary_dtype)
        self.cos, self.sin = cos, sin
        # Embeddings are large and only gathered from: keep them in the compute dtype where it is bf16.
        self.transformer.wte.to(dtype=embedding_dtype)
        for embedding in self.value_embeds.values():
            embedding.to(dtype=embedding_dtype)

    def estimate_flops(self):
        """Training FLOPs per token (forward + backward) for the matmuls and attention, as upstream counts them."""
        embedding_numel = self.transformer.wte.weight.numel()
        embedding_numel += sum(e.weight.numel() for e in self.value_embeds.values())
        scalar_numel = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul_params = sum(p.numel() for p in self.parameters()) - embedding_numel - scalar_numel
        head_dim = self.config.n_embd // self.config.n_head
        t = self.config.sequence_len
        attention = sum(12 * self.config.n_head * head_dim * min(w + 1, t) for w in self.windows)
        return 6 * matmul_params + attention

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def setup_optimizer(self, unembedding_lr, embedding_lr, matrix_lr, weight_decay, adam_betas, scalar_lr,
                        compile=False, ortho_dtype=torch.float32):
        # AdamW learning rates were tuned at width 768; scale them by 1/sqrt(width / 768).
        lr_scale = (self.config.n_embd / 768) ** -0.5
        matrix_params = list(self.transformer.h.parameters())
        adamw = lambda params, lr, betas=adam_betas: dict(  # noqa: E731
            kind="adamw", params=params, lr=lr, betas=betas, eps=1e-10, weight_decay=0.0)
        groups = [
            adamw(list(self.lm_head.parameters()), unembedding_lr * lr_scale),
            adamw(list(self.transformer.wte.parameters()), embedding_lr * lr_scale),
            adamw(list(self.value_embeds.parameters()), embedding_lr * lr_scale),
            adamw([self.resid_lambdas], scalar_lr * 0.01),
            adamw([self.x0_lambdas], scalar_lr, betas=(0.96, 0.95)),
        ]
        # Muon stacks same-shaped matrices and orthogonalizes them in one batched call.
        for shape in sorted({p.shape for p in matrix_params}):
            groups.append(dict(kind="muon", params=[p for p in matrix_params if p.shape == shape], lr=matrix_lr,
                               momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=weight_decay))
        assert sum(len(g["params"]) for g in groups) == len(list(self.parameters()))
        optimizer = MuonAdamW(groups, compile=compile, ortho_dtype=ortho_dtype)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return optimizer

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.windows[i], self.attend)
        x = norm(x)
        softcap = 15.0
        logits = self.lm_head(x).float()
        logits = softcap * torch.tanh(logits / softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1, reduction=reduction)


# ---------------------------------------------------------------------------
# Optimizer: MuonAdamW (single device). Hypotheses may edit.
# Muon for the 2-D matrices of the blocks: Nesterov momentum -> Polar Express orthogonalization
# -> NorMuon variance reduction -> cautious weight decay. AdamW for everything else.
# ---------------------------------------------------------------------------

# Polar Express coefficients (Amsel, Persson, Musco, Gower 2025; 5 iterations, safety factor 2e-2, cushion 2).
polar_express_coeffs = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def polar_express(G, steps=5, dtype=torch.bfloat16):
    """Approximate the orthogonal polar factor U V^T of each matrix in G [..., m, n].

    Each iteration applies the odd polynomial X <- a X + b (X X^T) X + c (X X^T)^2 X, working on
    the smaller Gram matrix side; the spectral norm is first brought below 1 by the Frobenius norm.
    """
    X = G.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = X.size(-2) > X.size(-1)
    for a, b, c in polar_express_coeffs[:steps]:
        if tall:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


def normuon_scale(update, second_moment, beta2, reduce_dim):
    """NorMuon: per-neuron adaptive step sizes from a running mean of squared updates, rescaled so
    the whole update keeps the Frobenius norm it had after orthogonalization. Updates second_moment in place."""
    squares = update.float().square()
    neuron_mean = squares.mean(dim=reduce_dim, keepdim=True)
    second_moment.lerp_(neuron_mean.to(second_moment.dtype), 1 - beta2)
    step = second_moment.float().clamp_min(1e-10).rsqrt()
    norm_before = squares.sum(dim=(-2, -1), keepdim=True).sqrt()
    norm_after = (squares * step.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return update * (step * norm_before / norm_after.clamp_min(1e-10)).to(update.dtype)


def cautious_update(params, update, lr, weight_decay):
    """p <- p - lr * update - lr * wd * p, the decay applied only where update and p have the same sign
    (where the update already pulls p toward zero), in place."""
    agree = (update * params) >= 0
    params.sub_(lr * update + lr * weight_decay * params * agree)


def muon_step(grads, params, momentum_buffer, second_moment, momentum, lr, weight_decay, beta2,
              ns_steps, reduce_dim, ortho_dtype):
    """One Muon step on stacked same-shape matrices [N, m, n]; hyperparameters are 0-D tensors."""
    momentum = momentum.to(grads.dtype)
    momentum_buffer.lerp_(grads, 1 - momentum)
    nesterov = grads.lerp(momentum_buffer, momentum)
    update = polar_express(nesterov, ns_steps, ortho_dtype)
    update = normuon_scale(update, second_moment, beta2.to(second_moment.dtype), reduce_dim)
    cautious_update(params, update.to(params.dtype), lr.to(params.dtype), weight_decay.to(params.dtype))


def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """Decoupled weight decay, bias-corrected Adam moments, update; hyperparameters are 0-D tensors."""
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps
    param.add_(-(lr / (1 - beta1**step)) * exp_avg / denom)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for param groups with kind="muon" (2-D matrices of one shape), AdamW for kind="adamw"."""

    def __init__(self, param_groups, compile=False, ortho_dtype=torch.float32):
        super().__init__(param_groups, defaults={})
        self.ortho_dtype = ortho_dtype
        wrap = (lambda fn: torch.compile(fn, dynamic=False, fullgraph=True)) if compile else (lambda fn: fn)
        self._adamw_step, self._muon_step = wrap(adamw_step), wrap(muon_step)
        # Hyperparameters travel as 0-D CPU tensors, so a changing value never recompiles the step.
        self._scalars = {name: torch.tensor(0.0) for name in
                         ("step", "lr", "beta1", "beta2", "eps", "wd", "momentum")}

    def _set(self, **values):
        for name, value in values.items():
            self._scalars[name].fill_(value)
        return [self._scalars[name] for name in values]

    def _step_adamw(self, group):
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step, lr, beta1, beta2, eps, wd = self._set(
                step=state["step"], lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                eps=group["eps"], wd=group["weight_decay"])
            self._adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], step, lr, beta1, beta2, eps, wd)

    def _step_muon(self, group):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        rows, cols = params[0].shape
        state = self.state[params[0]]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros(len(params), rows, cols, dtype=params[0].dtype,
                                                   device=params[0].device)
            # NorMuon keeps one second moment per neuron along the longer side.
            moment_shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["second_moment"] = torch.zeros(moment_shape, dtype=params[0].dtype, device=params[0].device)
        reduce_dim = -1 if rows >= cols else -2
        grads = torch.stack([p.grad for p in params])
        stacked = torch.stack(params)
        momentum, lr, wd, beta2 = self._set(
            momentum=group["momentum"], lr=group["lr"] * max(1.0, rows / cols) ** 0.5,
            wd=group["weight_decay"], beta2=group["beta2"])
        self._muon_step(grads, stacked, state["momentum_buffer"], state["second_moment"], momentum, lr, wd,
                        beta2, group["ns_steps"], reduce_dim, self.ortho_dtype)
        torch._foreach_copy_(params, list(stacked.unbind(0)))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            elif group["kind"] == "muon":
                self._step_muon(group)
            else:
                raise ValueError(f"unknown param group kind {group['kind']!r}")


# ---------------------------------------------------------------------------
# Schedules (by fraction of the time budget) and the training loop: hypotheses may edit.
# ---------------------------------------------------------------------------


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


def muon_momentum(step):
    ramp = min(step / 300, 1.0)
    return (1 - ramp) * 0.85 + ramp * 0.95


def weight_decay_at(progress):
    return WEIGHT_DECAY * (1.0 - progress)


def build_model(ctx):
    """The model for this run on ctx.device, weights initialized."""
    model_dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    n_head = model_dim // HEAD_DIM
    config = GPTConfig(sequence_len=ctx.seq_len, vocab_size=ctx.vocab_size, n_layer=DEPTH, n_head=n_head,
                       n_kv_head=max(n_head // GQA_GROUP_SIZE, 1), n_embd=model_dim, window_pattern=WINDOW_PATTERN)
    attention = Attention(ctx.attention, ctx.flash_attn)
    with torch.device("meta"):
        model = GPT(config, attention)
    model.to_empty(device=ctx.device)
    low_precision = ctx.dtype if ctx.dtype == torch.bfloat16 else torch.float32
    model.init_weights(embedding_dtype=low_precision, rotary_dtype=low_precision)
    attention.prepare(config.sequence_len, model.windows, ctx.device)
    return model


def train(ctx):
    """Train for the budget the harness's clock allows; return the model for evaluation."""
    model = build_model(ctx)
    ctx.describe_model(num_params=model.num_params(), flops_per_token=model.estimate_flops(), depth=DEPTH)
    optimizer = model.setup_optimizer(
        unembedding_lr=UNEMBEDDING_LR, embedding_lr=EMBEDDING_LR, matrix_lr=MATRIX_LR,
        weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS, scalar_lr=SCALAR_LR,
        compile=ctx.compile, ortho_dtype=torch.bfloat16 if ctx.dtype == torch.bfloat16 else torch.float32)
    if ctx.compile:
        model = torch.compile(model, dynamic=False)

    tokens_per_pass = DEVICE_BATCH_SIZE * ctx.seq_len
    assert TOTAL_BATCH_SIZE % tokens_per_pass == 0, "TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * seq_len"
    grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_pass
    ctx.log(f"gradient accumulation steps: {grad_accum_steps}")
    batches = ctx.train_batches(DEVICE_BATCH_SIZE)
    x, y, epoch = next(batches)

    step = 0
    while not ctx.clock.expired:
        ctx.clock.step_begin()
        for _ in range(grad_accum_steps):
            with ctx.autocast():
                loss = model(x, y)
            train_loss = loss.detach()
            ctx.backward(loss / grad_accum_steps)
            x, y, epoch = next(batches)
        progress = ctx.clock.fraction
        lrm = lr_multiplier(progress)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = weight_decay_at(progress)
        ctx.optimizer_step(optimizer)
        model.zero_grad(set_to_none=True)
        ctx.clock.step_end(ctx.synchronize)
        ctx.step_done(train_loss, tokens=TOTAL_BATCH_SIZE, lrm=lrm, epoch=epoch)
        step += 1
    return model


if __name__ == "__main__":
    from shared_data.harness import run

    run(train)
