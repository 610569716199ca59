"""Fused neural-network ops (import as `F`), each one Function with forward beside backward.

Fusing an op (rather than composing it from primitives) saves what backward needs and nothing
else: softmax keeps only its output, layer norm only the input, mean and 1/std, cross-entropy
the logits, one log-sum-exp per row and the targets (with a mask of the non-ignored rows). Shape legend: B batch, T time, C channels,
H heads, D head size, V vocabulary, N rows.
"""
from __future__ import annotations

import math

import numpy as np

from . import amp, backend
from .tensor import (
    Function,
    Tensor,
    as_generator,
    as_rows,
    as_tensor,
    matmul_flops,
    no_matmul_flops,
    torch_names,
    unbroadcast,
)


def _erf(x):
    """erf for exact GELU. SciPy's is imported on first use: it costs 0.2 s of `import minigrad`."""
    from scipy.special import erf

    return erf(x)


_fused = backend.fused_kernels  # minigrad.kernels under the numba backend, else None


def _ints(x, op: str) -> np.ndarray:
    arr = x.data if isinstance(x, Tensor) else np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers, got dtype {arr.dtype}")
    return arr


# ================================================================ linear
def gemm(a, b, bias=None):
    """a (M, K) @ b (K, N) (+ bias (N,), added in place in the output's dtype): the numpy
    backend's GEMM, and the twin of `minigrad.kernels.gemm` (kernels/reference.py)."""
    out = a @ b
    if bias is not None:
        out += bias
    return out


def column_sums(g):
    """g (N, C) -> g.sum(axis=0): a bias gradient, on the numpy backend; the twin of
    `minigrad.kernels.column_sums` (kernels/reference.py)."""
    return g.sum(axis=0)


def _gemm_of(ctx):
    """The GEMM of the backend an op's forward ran on (`ctx.fused`)."""
    return gemm if ctx.fused is None else ctx.fused.gemm


class Linear(Function):
    """y = x @ W^T + b with W of shape (out, in), as torch.nn.functional.linear."""

    @staticmethod
    def flops(ctx) -> int:
        x, w = ctx.inputs[:2]
        return matmul_flops(x.shape, w.shape[::-1])  # x @ W^T; the bias add is not a product

    @staticmethod
    def forward(ctx, x, w, b=None):
        if x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"linear: input has {x.shape[-1]} features (shape {x.shape}) but weight "
                f"{w.shape} expects {w.shape[1]}; weight is (out_features, in_features)"
            )
        ctx.amp = amp.current_policy()  # mixed precision (minigrad.amp.autocast); None = float32
        if ctx.amp is not None:  # round x and W to the compute format; the product accumulates in fp32
            x, w = amp.cast_inputs(ctx.amp, x, w)
        ctx.save_for_backward(x, w)
        # one 2-D GEMM over all rows (both backends): (B, T, in) @ (in, out) as a batch of B
        # GEMMs is ~4x slower. The bias is added in place (no second output-sized temporary);
        # numba backend: `kernels.gemm`, ranges of rows on the kernel pool, the bias per range.
        ctx.fused = _fused(x)
        y = _gemm_of(ctx)(as_rows(x), w.T, b)  # (N, out)
        y = y.reshape(x.shape[:-1] + (w.shape[0],))
        return y if ctx.amp is None else amp.cast_output(ctx.amp, y)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        if ctx.amp is not None:  # the incoming gradient is stored in the gradient format
            g = amp.cast_grad(ctx.amp, g)
        g2 = as_rows(g)  # (N, out)
        needs = ctx.needs_input_grad  # a frozen weight (requires_grad False) costs no GEMM
        mm = _gemm_of(ctx)
        gx = mm(g2, w).reshape(x.shape) if needs[0] else None  # y = x @ W^T  =>  dx = g @ W
        gw = mm(g2.T, as_rows(x)) if needs[1] else None  # dW = g^T @ x, over all rows
        sums = column_sums if ctx.fused is None else ctx.fused.column_sums
        gb = sums(g2) if len(needs) == 3 and needs[2] else None  # db = g summed over all rows
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)


def linear(x, weight, bias=None) -> Tensor:
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(
            f"linear: bias has shape {bias.shape} but weight {weight.shape} has "
            f"{weight.shape[0]} output features; bias must be ({weight.shape[0]},)"
        )
    if bias is None:
        return Linear.apply(as_tensor(x), weight)
    return Linear.apply(as_tensor(x), weight, bias)


def relu(x) -> Tensor:
    return as_tensor(x).relu()


def sigmoid(x) -> Tensor:
    return as_tensor(x).sigmoid()


def tanh(x) -> Tensor:
    return as_tensor(x).tanh()


# ================================================================ GELU
_C = math.sqrt(2.0 / math.pi)


class GELU(Function):
    """GELU(x) = x·Φ(x); `approximate="tanh"` uses 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, x, *, approximate="tanh"):
        ctx.approximate = approximate
        ctx.save_for_backward(x)
        ctx.fused = _fused(x) if approximate == "tanh" else None
        if ctx.fused is not None:
            return ctx.fused.gelu_forward(x)
        if approximate == "tanh":
            # x * x * x, not x**3: NumPy calls libm's powf, whose path for a negative base took
            # ~60 ns an element on one host (~300x two multiplies)
            return 0.5 * x * (1 + np.tanh(_C * (x + 0.044715 * (x * x * x))))
        return (0.5 * x * (1 + _erf(x / math.sqrt(2)))).astype(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        if ctx.fused is not None:
            return (ctx.fused.gelu_backward(x, g),)
        if ctx.approximate == "tanh":
            t = np.tanh(_C * (x + 0.044715 * (x * x * x)))
            dt = (1 - t * t) * _C * (1 + 3 * 0.044715 * x * x)
            return (g * (0.5 * (1 + t) + 0.5 * x * dt),)
        cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return ((g * (cdf + x * pdf)).astype(x.dtype),)


def gelu(x, approximate: str = "tanh") -> Tensor:
    """GELU (see `GELU`). The default is GPT-2's tanh form, where torch's F.gelu and nn.GELU
    default to the exact one ("none")."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    return GELU.apply(as_tensor(x), approximate=approximate)


# ================================================================ softmax family
class Softmax(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, x, *, axis=-1):
        ctx.axis = axis
        ctx.fused = _fused(x) if axis in (-1, x.ndim - 1) else None
        if ctx.fused is not None:
            y = ctx.fused.softmax_forward(x)
        else:
            e = np.exp(x - x.max(axis=axis, keepdims=True))
            y = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y)  # the output is all backward needs
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        if ctx.fused is not None:
            return (ctx.fused.softmax_backward(y, g),)
        # dx = y * (g - <g, y>): the Jacobian diag(y) - y y^T applied to g
        return (y * (g - (g * y).sum(axis=ctx.axis, keepdims=True)),)


class LogSoftmax(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, x, *, axis=-1):
        ctx.axis = axis
        ctx.fused = _fused(x) if axis in (-1, x.ndim - 1) else None
        if ctx.fused is not None:
            y = ctx.fused.log_softmax_forward(x)
        else:
            m = x.max(axis=axis, keepdims=True)
            y = x - (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)))
        ctx.save_for_backward(y)  # softmax = exp(y): the output is all backward needs
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        if ctx.fused is not None:
            return (ctx.fused.log_softmax_backward(y, g),)
        return (g - np.exp(y) * g.sum(axis=ctx.axis, keepdims=True),)


@torch_names
def softmax(x, axis: int = -1) -> Tensor:
    return Softmax.apply(as_tensor(x), axis=axis)


@torch_names
def log_softmax(x, axis: int = -1) -> Tensor:
    return LogSoftmax.apply(as_tensor(x), axis=axis)


class CrossEntropy(Function):
    """Fused log-softmax + negative log-likelihood over rows of logits (N, V).

    Saves the logits, one log-sum-exp per row and the targets with their ignore mask; backward
    rebuilds softmax from them, so the probabilities are never stored.

    Label smoothing ε (Szegedy et al. 2016, "Rethinking the Inception Architecture", arXiv
    1512.00567) replaces the one-hot target by q = (1-ε)·onehot + ε/V, as torch does: the loss
    of a row is lse - <q, logits> = (1-ε)·(lse - logits[t]) + ε·(lse - mean(logits)), and its
    gradient softmax - q. With ε = 0 nothing extra is computed.
    """

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, logits, *, targets, ignore_index, reduction, label_smoothing=0.0):
        keep = targets != ignore_index
        safe = np.where(keep, targets, 0)
        ctx.fused = _fused(logits)
        if ctx.fused is not None:  # one pass over each row, online max/sum
            loss, lse = ctx.fused.cross_entropy_forward(logits, targets, ignore_index)
            lse = lse[:, None]
        else:
            m = logits.max(axis=-1, keepdims=True)
            lse = m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))  # (N, 1)
            loss = (lse[:, 0] - logits[np.arange(len(logits)), safe]) * keep  # (N,)
        eps = ctx.label_smoothing = label_smoothing
        if eps:
            loss = (1 - eps) * loss + eps * (lse[:, 0] - logits.mean(axis=-1)) * keep
        ctx.reduction, ctx.count = reduction, int(keep.sum())
        ctx.save_for_backward(logits, lse, safe, keep)
        if reduction == "none":
            return loss
        total = loss.sum()
        with np.errstate(invalid="ignore"):  # no target kept: the mean is 0/0 = NaN, as torch's
            return np.asarray(total if reduction == "sum" else total / ctx.count, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        logits, lse, safe, keep = ctx.saved
        if ctx.reduction == "none":
            scale = (g * keep)[:, None]
        else:
            # (a batch whose every target is ignored has a NaN mean loss and, as in torch, a zero
            # gradient: its keep mask is all zero, so any finite divisor gives it)
            scale = (g / max(ctx.count, 1) if ctx.reduction == "mean" else g) * keep[:, None]
        eps = ctx.label_smoothing
        if ctx.fused is not None:  # writes scale * (softmax - onehot) in one pass
            grad = ctx.fused.cross_entropy_backward(logits, safe, lse[:, 0], scale[:, 0])
            if eps:  # softmax - q = (softmax - onehot) + ε·onehot - ε/V
                grad[np.arange(len(logits)), safe] += eps * scale[:, 0]
                grad -= (eps / logits.shape[1]) * scale
            return (grad,)
        # d loss_i / d logits_i = softmax(logits_i) - q_i, q_i = (1-ε)·onehot(target_i) + ε/V
        grad = np.exp(logits - lse)
        grad[np.arange(len(logits)), safe] -= 1 - eps
        if eps:
            grad -= eps / logits.shape[1]
        return (grad * scale,)


def cross_entropy(logits, targets, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of `logits` against integer class `targets`, in torch's layouts: logits
    (N, V) with targets (N,); (V,) with a scalar target; or (N, V, d1, ..., dk) with targets
    (N, d1, ..., dk), the class axis second (e.g. a score per class and pixel).

    Positions whose target is `ignore_index` count neither in the loss nor in the mean.
    `label_smoothing` ε in [0, 1] mixes the one-hot target with the uniform distribution, as
    torch does (see `CrossEntropy`). `reduction="none"` returns a loss of the targets' shape."""
    logits = as_tensor(logits)
    targets = _ints(targets, "cross_entropy")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    expected = logits.shape[:1] + logits.shape[2:] if logits.ndim >= 2 else ()
    if logits.ndim == 0 or targets.shape != expected:
        raise ValueError(
            f"cross_entropy: expected logits (N, V) with targets (N,), (V,) with a scalar target, "
            f"or (N, V, d1, ...) with targets (N, d1, ...); got {logits.shape} and {targets.shape}"
        )
    V = logits.shape[0 if logits.ndim == 1 else 1]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bad.any():
        raise IndexError(
            f"cross_entropy: target {targets[bad][0]} is out of range for {V} classes "
            f"(ignore_index={ignore_index})"
        )
    if logits.ndim == 1:
        logits = logits.reshape(1, V)
    elif logits.ndim > 2:  # rows of V scores: the class axis moved last
        logits = logits.permute((0,) + tuple(range(2, logits.ndim)) + (1,)).reshape(-1, V)
    rows = targets.reshape(-1)
    out = CrossEntropy.apply(logits, targets=rows, ignore_index=ignore_index, reduction=reduction,
                             label_smoothing=float(label_smoothing))
    return out.reshape(targets.shape) if reduction == "none" and targets.shape != rows.shape else out


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """Mean squared error; `input` and `target` must have the same shape.

    PyTorch only warns when they differ; here it is an error, since broadcasting e.g. (N, 1)
    against (N,) silently compares every prediction with every target."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    input = as_tensor(input)
    if np.shape(target) != input.shape:
        raise ValueError(
            f"mse_loss: input has shape {input.shape} but target has {np.shape(target)}; "
            "reshape one of them (broadcasting would compare every pair)"
        )
    d = input - target
    sq = d * d
    if reduction == "none":
        return sq
    return sq.sum() if reduction == "sum" else sq.mean()


# ================================================================ layer norm
class LayerNorm(Function):
    """Normalise over the last axis, then scale and shift. Saves x, mean and 1/std only."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, x, w=None, b=None, *, eps=1e-5):
        ctx.fused = _fused(x)
        if ctx.fused is not None:
            y, mean, rstd = ctx.fused.layer_norm_forward(x, w, b, eps)
            ctx.save_for_backward(x, w, mean[..., None], rstd[..., None])
            return y
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(var + eps)
        xhat = (x - mean) * rstd
        ctx.save_for_backward(x, w, mean, rstd)
        y = xhat * w if w is not None else xhat
        return y + b if b is not None else y

    @staticmethod
    def backward(ctx, g):
        x, w, mean, rstd = ctx.saved
        n_params = len(ctx.inputs) - 1  # 0, 1 (weight) or 2 (and bias; never a lone bias)
        if ctx.fused is not None:
            gx, gw, gb = ctx.fused.layer_norm_backward(g, x, w, mean, rstd)
            return (gx, gw, gb)[:1 + n_params]
        xhat = (x - mean) * rstd  # recomputed rather than stored
        rows = g.reshape(-1, g.shape[-1])
        gw = (rows * xhat.reshape(rows.shape)).sum(axis=0) if n_params >= 1 else None
        gb = rows.sum(axis=0) if n_params == 2 else None
        gxhat = g * w if w is not None else g
        # y = xhat*w + b, xhat = (x - mean)*rstd  =>  dx = rstd*(dxhat - mean(dxhat) - xhat*mean(dxhat*xhat))
        gx = rstd * (
            gxhat - gxhat.mean(axis=-1, keepdims=True) - xhat * (gxhat * xhat).mean(axis=-1, keepdims=True)
        )
        return (gx, gw, gb)[:1 + n_params]


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    x = as_tensor(x)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != x.shape[-1:]:
            raise ValueError(
                f"layer_norm: {name} has shape {p.shape} but the input's last axis is {x.shape[-1]}"
            )
    args = [x] + [p for p in (weight, bias) if p is not None]
    if weight is None and bias is not None:
        raise ValueError("layer_norm: a bias without a weight is not supported")
    return LayerNorm.apply(*args, eps=eps)


# ================================================================ embedding, dropout
class Embedding(Function):
    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, weight, *, idx):
        ctx.save_for_backward(idx)
        ctx.shape = weight.shape
        ctx.fused = _fused(weight)
        return weight[idx]

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved
        if ctx.fused is not None:  # a compiled scatter-add loop instead of np.add.at
            return (ctx.fused.embedding_backward(idx, g, ctx.shape),)
        gw = np.zeros(ctx.shape, dtype=g.dtype)
        np.add.at(gw, idx.ravel(), g.reshape(idx.size, ctx.shape[1]))  # repeated tokens add up
        return (gw,)


def embedding(idx, weight) -> Tensor:
    idx = _ints(idx, "embedding")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be a 2-D table (rows, dim), got shape {weight.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        bad = idx.max() if idx.max() >= weight.shape[0] else idx.min()
        raise IndexError(f"embedding: index {bad} is out of range for a table of {weight.shape[0]} rows")
    return Embedding.apply(weight, idx=idx)


class Dropout(Function):
    """Zero each element with probability p and scale the survivors by 1/(1-p) (inverted dropout)."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, x, *, keep, p):
        ctx.scale = x.dtype.type(1.0 / (1.0 - p))
        ctx.save_for_backward(keep)  # a bool mask: 1 byte per element
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, g):
        (keep,) = ctx.saved
        return (g * keep * ctx.scale,)


def dropout(x, p: float = 0.5, training: bool = True, rng=None) -> Tensor:
    """Inverted dropout; the identity when not `training` or p == 0. `rng`: a Generator or a
    seed; None draws from `minigrad.default_generator` (seeded by `minigrad.manual_seed`)."""
    x = as_tensor(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = as_generator(rng).random(x.shape) >= p
    return Dropout.apply(x, keep=keep, p=p)


# ================================================================ attention
class Attention(Function):
    """softmax(q k^T · scale + mask) v over the last two axes, e.g. q (B, H, Tq, D).

    The causal mask is aligned to the bottom right: query i (of Tq) sees keys j <= i + Tk - Tq,
    so a chunk of new queries attends to a KV cache of earlier keys plus itself. With Tq == Tk
    this is the usual lower-triangular mask. The plain version saves the (Tq, Tk) probabilities;
    the flash kernel recomputes them from one log-sum-exp per query row instead.

    `mask` (a boolean array broadcasting to the scores (..., Tq, Tk), True where a query may see
    a key; see `_attention_mask`) takes the plain path on every backend: the flash kernel knows
    only the causal mask.
    """

    @staticmethod
    def flops(ctx) -> int:
        q, k, v = (t.shape for t in ctx.inputs)
        p = np.broadcast_shapes(q[:-2], k[:-2]) + (q[-2], k[-2])  # the probabilities (..., Tq, Tk)
        return matmul_flops(q, k[:-2] + (k[-1], k[-2])) + matmul_flops(p, v)  # q·kᵀ, then p·v

    @staticmethod
    def forward(ctx, q, k, v, *, causal, scale, mask=None):
        ctx.fused = _fused(q) if mask is None and _flash_ok(q, k, v) else None
        if ctx.fused is not None:  # flash-style: saves o and one log-sum-exp per query row
            ctx.flash = dict(causal=causal, scale=scale, causal_offset=k.shape[-2] - q.shape[-2])
            o, lse = ctx.fused.attention_forward(q, k, v, **ctx.flash)
            ctx.save_for_backward(q, k, v, o, lse)
            return o
        o, p = _plain_attention(q, k, v, causal, scale, mask)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, p)
        return o

    @staticmethod
    def backward(ctx, g):
        if ctx.fused is not None:
            return ctx.fused.attention_backward(*ctx.saved, g, **ctx.flash)
        q, k, v, p = ctx.saved
        gq, gk, gv = _plain_attention_grads(q, k, v, p, g, ctx.scale)
        return unbroadcast(gq, q.shape), unbroadcast(gk, k.shape), unbroadcast(gv, v.shape)


def _plain_attention(q, k, v, causal, scale, mask=None):
    """The readable O(T²) attention: returns o = p @ v and the probabilities p (B, H, Tq, Tk).

    `mask` (boolean, broadcasting to p): True where a query may see a key. A query that may see
    no key gets all-zero probabilities, so its output and its gradients are 0 (a softmax over
    nothing is 0/0), as torch.nn.functional.scaled_dot_product_attention gives since torch 2.5."""
    s = (q @ np.swapaxes(k, -1, -2)) * scale  # (B, H, Tq, Tk)
    Tq, Tk = s.shape[-2:]
    allowed = np.tri(Tq, Tk, Tk - Tq, dtype=bool) if causal else None
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    if mask is not None:  # a row that sees no key has max -inf: shift it by 0, so exp gives zeros
        m = np.where(np.isneginf(m), 0.0, m)
    p = np.exp(s - m)
    total = p.sum(axis=-1, keepdims=True)
    if mask is not None:
        total[total == 0] = 1.0
    p /= total
    return p @ v, p  # (B, H, Tq, Dv)


def _plain_attention_grads(q, k, v, p, g, scale):
    """(dq, dk, dv) of `_plain_attention` from its saved probabilities p and upstream g."""
    gv = np.swapaxes(p, -1, -2) @ g  # o = p @ v  =>  dv = p^T @ do
    gp = g @ np.swapaxes(v, -1, -2)  #                dp = do @ v^T
    gs = p * (gp - (gp * p).sum(axis=-1, keepdims=True)) * scale  # softmax backward
    gq = gs @ k  # s = q @ k^T * scale  =>  dq = ds @ k, dk = ds^T @ q
    gk = np.swapaxes(gs, -1, -2) @ q
    return gq, gk, gv


class QKVAttention(Function):
    """Multi-head self-attention read straight from a fused projection qkv (B, T, 3C).

    Equal to splitting qkv into q, k, v, each reshaped to heads (B, nh, T, hs) with hs = C/nh,
    `scaled_dot_product_attention`, and merging the heads back to (B, T, C) -- as llm.c's
    attention_forward does it, in one op: no split, transpose or merge copies, and backward
    returns one dqkv (B, T, 3C) instead of three slice gradients to add up. The flash kernel
    saves qkv, o and one log-sum-exp per query row; the numpy path saves qkv and p.
    """

    @staticmethod
    def flops(ctx) -> int:
        b, t, c3 = ctx.inputs[0].shape
        return 2 * 2 * b * t * t * (c3 // 3)  # q·kᵀ and p·v, T queries × T keys, summed over heads

    @staticmethod
    def forward(ctx, qkv, *, n_head, causal, scale, mask=None):
        ctx.n_head, ctx.causal, ctx.scale = n_head, causal, scale
        ctx.fused = _fused(qkv) if mask is None else None  # the kernel knows only the causal mask
        if ctx.fused is not None:
            o, lse = ctx.fused.attention_qkv_forward(qkv, n_head, causal=causal, scale=scale)
            ctx.save_for_backward(qkv, o, lse)
            return o
        o, p = _plain_attention(*_split_qkv(qkv, n_head), causal, scale, mask)
        ctx.save_for_backward(qkv, p)
        return _merge_heads(o)  # (B, T, C)

    @staticmethod
    def backward(ctx, g):
        if ctx.fused is not None:
            return (ctx.fused.attention_qkv_backward(*ctx.saved, g, ctx.n_head, causal=ctx.causal,
                                                      scale=ctx.scale),)
        qkv, p = ctx.saved
        grads = _plain_attention_grads(*_split_qkv(qkv, ctx.n_head), p, _split_heads(g, ctx.n_head), ctx.scale)
        return (np.concatenate([_merge_heads(x) for x in grads], axis=-1),)  # dq | dk | dv


def _split_heads(x, n_head):
    """(B, T, C) array -> view (B, nh, T, C/nh): head h is columns h*hs:(h+1)*hs."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(B, nh, T, hs) array -> (B, T, nh*hs): the heads side by side again."""
    B, nh, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def _split_qkv(qkv, n_head):
    """qkv (B, T, 3C) -> views q, k, v of shape (B, nh, T, hs)."""
    C = qkv.shape[-1] // 3
    return [_split_heads(qkv[:, :, i * C:(i + 1) * C], n_head) for i in range(3)]


def qkv_attention(qkv, n_head: int, causal: bool = True, scale: float | None = None, *,
                  attn_mask=None, key_padding_mask=None) -> Tensor:
    """Self-attention of the fused projection qkv (B, T, 3C) over n_head heads -> (B, T, C).

    qkv holds q | k | v along its last axis, head h of each in columns h*hs:(h+1)*hs with
    hs = C / n_head; scale defaults to 1/√hs. The output has the heads side by side.
    `attn_mask` and `key_padding_mask` are those of `scaled_dot_product_attention`, for the
    scores (B, nh, T, T); with either, the numpy path runs on every backend."""
    qkv = as_tensor(qkv)
    if not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"qkv_attention: n_head must be a positive integer, got {n_head!r}")
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head):
        raise ValueError(
            f"qkv_attention: qkv must be (B, T, 3C) with C divisible by n_head={n_head}, got "
            f"shape {qkv.shape}; it is the output of one Linear(C, 3C) projection")
    if qkv.dtype.kind != "f":
        raise TypeError(f"qkv_attention: qkv must be floating point, got {qkv.dtype}")
    if qkv.shape[1] == 0:
        raise ValueError(f"qkv_attention: the sequence is empty (qkv shape {qkv.shape}); T must be >= 1")
    hs = qkv.shape[-1] // 3 // n_head
    scale = 1.0 / math.sqrt(hs) if scale is None else float(scale)
    B, T = qkv.shape[:2]
    mask = _attention_mask("qkv_attention", (B, int(n_head), T, T), attn_mask, key_padding_mask)
    return QKVAttention.apply(qkv, n_head=int(n_head), causal=bool(causal), scale=scale, mask=mask)


def _flash_ok(q, k, v) -> bool:
    """The flash kernel needs equal batch dims, Dv == D, float inputs and Tk >= Tq."""
    return (q.ndim >= 2 and q.shape[:-2] == k.shape[:-2] and k.shape == v.shape
            and q.shape[-1] == k.shape[-1] and k.shape[-2] >= q.shape[-2] > 0
            and q.dtype.kind == "f" and q.dtype == k.dtype == v.dtype)


def _bool_mask(op: str, name: str, mask, meaning: str) -> np.ndarray:
    arr = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"{op}: {name} must be boolean ({meaning}), got dtype {arr.dtype}")
    return arr


def _attention_mask(op: str, scores: tuple, attn_mask, key_padding_mask):
    """One boolean mask, True where a query may see a key, broadcasting to the attention scores
    of shape `scores` (..., Tq, Tk); None when neither mask is given.

    attn_mask: True = may attend (torch's scaled_dot_product_attention), broadcasting to the
    scores without enlarging them: (Tq, Tk), (B, 1, Tq, Tk), (B, nh, Tq, Tk), (B, 1, 1, Tk)...
    key_padding_mask: (B, Tk), True = a padded key that no query sees (torch's
    nn.MultiheadAttention), B being the first axis of the scores."""
    allowed = None
    if attn_mask is not None:
        allowed = _bool_mask(op, "attn_mask", attn_mask, "True = may attend")
        fits = allowed.ndim <= len(scores) and all(
            m in (1, s) for m, s in zip(allowed.shape[::-1], scores[::-1]))
        if not fits:
            raise ValueError(
                f"{op}: attn_mask of shape {allowed.shape} does not broadcast to the attention scores "
                f"{scores} (..., Tq, Tk); give (Tq, Tk) = {scores[-2:]}, with leading batch axes of "
                "size 1 or the scores' size if the mask differs across the batch"
            )
    if key_padding_mask is not None:
        pad = _bool_mask(op, "key_padding_mask", key_padding_mask, "True = padded key")
        if len(scores) < 3 or pad.shape != (scores[0], scores[-1]):
            raise ValueError(
                f"{op}: key_padding_mask has shape {pad.shape} but the attention scores are {scores} "
                "(B, ..., Tq, Tk): it must be (B, Tk), True at padded keys"
            )
        sees = ~pad.reshape((pad.shape[0],) + (1,) * (len(scores) - 2) + (pad.shape[1],))
        allowed = sees if allowed is None else allowed & sees
    return allowed


def scaled_dot_product_attention(q, k, v, causal: bool = False, scale: float | None = None, *,
                                 attn_mask=None, key_padding_mask=None) -> Tensor:
    """Attention of q (..., Tq, D) over k (..., Tk, D) and v (..., Tk, Dv); scale defaults to 1/√D.

    Tq and Tk may differ (cross-attention of a decoder over an encoder's outputs). With `causal`
    the mask is aligned to the bottom right, query i seeing keys j <= i + Tk - Tq (the last Tq
    positions of a KV cache), where torch's is_causal aligns it top left (j <= i); Tq > Tk is
    refused. Masks, both
    boolean, combine with `causal` (a key is seen only if every mask allows it):
    `attn_mask` is True where a query may attend, broadcasting to the scores (..., Tq, Tk), as in
    torch's scaled_dot_product_attention; `key_padding_mask` (B, Tk) is True at padded keys, as
    in torch's nn.MultiheadAttention (the opposite sense), B being the first batch axis. A query
    that sees no key at all gets output 0 and gradient 0, as torch's scaled_dot_product_attention
    gives (torch's nn.MultiheadAttention gives NaN)."""
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape} need "
            "q and k to share the last axis and k and v the second-to-last"
        )
    try:
        np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"scaled_dot_product_attention: batch axes of q {q.shape}, k {k.shape}, v {v.shape} "
            "(all but the last two) do not broadcast"
        ) from None
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(
            f"scaled_dot_product_attention: causal with {q.shape[-2]} queries but {k.shape[-2]} keys: "
            "the mask is aligned to the bottom right (query i sees keys j <= i + Tk - Tq), so the "
            f"first {q.shape[-2] - k.shape[-2]} queries would see no key (NaN); pass at least as many keys"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (q.shape[-2], k.shape[-2])
    mask = _attention_mask("scaled_dot_product_attention", scores, attn_mask, key_padding_mask)
    return Attention.apply(q, k, v, causal=causal, scale=scale, mask=mask)


# ================================================================ recurrent cells
# One time step each, composed of linear, sigmoid and tanh (their VJPs are proven above), with
# PyTorch's gate order, so weights move between the two libraries unchanged. nn.RNNCell,
# LSTMCell, GRUCell and the multi-layer nn.RNN, LSTM, GRU call these. Shapes: x (B, I) or (I,),
# h and c (B, H) or (H,); W_ih (G·H, I), W_hh (G·H, H) and biases (G·H,) with G gates stacked by rows.
def rnn_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity: str = "tanh") -> Tensor:
    """Elman RNN step: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act tanh or relu."""
    pre = linear(x, weight_ih, bias_ih) + linear(h, weight_hh, bias_hh)
    if nonlinearity == "tanh":
        return pre.tanh()
    if nonlinearity == "relu":
        return pre.relu()
    raise ValueError(f"rnn_cell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def lstm_cell(x, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None) -> tuple[Tensor, Tensor]:
    """LSTM step (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000) on
    hx = (h, c), returning (h', c'). The rows of W_ih and W_hh are the gates i | f | g | o:

        i, f, g, o = chunks of  x W_ih^T + b_ih + h W_hh^T + b_hh
        c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)        forget some of the cell, write some of g
        h' = σ(o) ⊙ tanh(c')                  show some of the cell
    """
    h, c = hx
    gates = linear(x, weight_ih, bias_ih) + linear(h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, axis=-1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def gru_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None) -> Tensor:
    """GRU step (Cho et al. 2014, arXiv 1406.1078) as PyTorch and cuDNN compute it; the rows of
    W_ih and W_hh are r | z | n:

        r = σ(W_ir x + b_ir + W_hr h + b_hr)           reset gate
        z = σ(W_iz x + b_iz + W_hz h + b_hz)           update gate
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))  candidate (Cho et al. write W_hn (r ⊙ h))
        h' = (1 - z) ⊙ n + z ⊙ h
    """
    i_r, i_z, i_n = linear(x, weight_ih, bias_ih).chunk(3, axis=-1)
    h_r, h_z, h_n = linear(h, weight_hh, bias_hh).chunk(3, axis=-1)
    r = (i_r + h_r).sigmoid()
    z = (i_z + h_z).sigmoid()
    n = (i_n + r * h_n).tanh()
    return n + z * (h - n)
