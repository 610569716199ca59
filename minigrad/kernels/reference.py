"""Plain NumPy twins of every kernel: the specification the Numba kernels are tested against.

Same signatures and return values as the wrappers in `minigrad.kernels` (which call the fused
Numba kernels). Written for clarity, not speed; the "numpy" backend of `minigrad.functional`
computes the same formulas.
"""
import numpy as np

# head layout only (views and a transpose), shared with the numpy backend of F.qkv_attention;
# gemm and column_sums are the numpy backend's own (F.linear's)
from ..functional import _merge_heads, _split_heads, _split_qkv, column_sums, gemm  # noqa: F401


def bmm(a, b):
    """a (N, M, K) @ b (N, K, P) -> (N, M, P)."""
    return np.matmul(a, b)


def matmul_tiled(a, b, tile=64):
    """a (M, K) @ b (K, P) (the tiled loop kernel's twin; `tile` does not change the result)."""
    return a @ b


def matmul_forward(a, b):
    """a @ b, NumPy's matmul."""
    return a @ b


def matmul_backward(a, b, g):
    """(da, db) of y = a @ b for a (..., M, K) with b (K, P) (db sums over the batch) or with b
    (..., K, P) of the same batch dims."""
    da = g @ np.swapaxes(b, -1, -2)
    db = np.swapaxes(a, -1, -2) @ g
    return da, (db.reshape((-1,) + db.shape[-2:]).sum(axis=0) if b.ndim == 2 else db)


def softmax_forward(x):
    """softmax over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(y, dy):
    """dx = y * (dy - sum(dy * y)) given the forward output y."""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax_forward(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def log_softmax_backward(y, dy):
    return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """Per-row loss (N,) and log-sum-exp (N,) of logits (N, V); ignored rows get loss 0."""
    m = logits.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[:, 0]
    keep = targets != ignore_index
    safe = np.where(keep, targets, 0)
    loss = np.where(keep, lse - logits[np.arange(len(targets)), safe], 0.0).astype(logits.dtype)
    return loss, lse.astype(logits.dtype)


def cross_entropy_backward(logits, targets, lse, row_grad, ignore_index=-100):
    """dlogits = row_grad[:, None] * (softmax(logits) - onehot(targets)); ignored rows are 0."""
    p = np.exp(logits - lse[:, None])
    keep = targets != ignore_index
    p[np.arange(len(targets))[keep], targets[keep]] -= 1.0
    return (p * np.where(keep, row_grad, 0.0)[:, None]).astype(logits.dtype)


def layer_norm_forward(x, weight, bias, eps=1e-5):
    """Normalise the last axis; returns (y, mean, rstd) with mean/rstd of shape x.shape[:-1]."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd * weight + bias
    return y, mean[..., 0], rstd[..., 0]


def layer_norm_backward(dy, x, weight, mean, rstd):
    """Returns (dx, dweight, dbias) from the saved mean and rstd."""
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dy * weight
    dx = rstd[..., None] * (g - g.mean(axis=-1, keepdims=True)
                            - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    red = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(axis=red), dy.sum(axis=red)


_K0 = np.sqrt(2.0 / np.pi)


def gelu_forward(x):
    """GELU, tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(_K0 * (x + 0.044715 * (x * x * x))))


def gelu_backward(x, dy):
    t = np.tanh(_K0 * (x + 0.044715 * (x * x * x)))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _K0 * (1.0 + 3 * 0.044715 * x * x))


def _mask(t, s, causal, causal_offset):
    if not causal:
        return np.ones((t, s), dtype=bool)
    return np.arange(s)[None, :] <= np.arange(t)[:, None] + causal_offset


def attention_forward(q, k, v, causal=True, scale=None, causal_offset=0):
    """Naive O(T^2) attention over (..., T, D) arrays; returns (o, lse) with lse (..., T)."""
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    s = np.where(_mask(q.shape[-2], k.shape[-2], causal, causal_offset), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    return ((p / l) @ v).astype(q.dtype), (m + np.log(l))[..., 0].astype(q.dtype)


def attention_backward(q, k, v, o, lse, do, causal=True, scale=None, causal_offset=0):
    """Gradients (dq, dk, dv) of the naive attention, from the full probability matrix."""
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    mask = _mask(q.shape[-2], k.shape[-2], causal, causal_offset)
    p = np.where(mask, np.exp(s - lse[..., None]), 0.0)
    dv = np.swapaxes(p, -1, -2) @ do
    dp = do @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (do * o).sum(axis=-1, keepdims=True)) * scale
    return (ds @ k).astype(q.dtype), (np.swapaxes(ds, -1, -2) @ q).astype(q.dtype), dv.astype(q.dtype)


def attention_qkv_forward(qkv, n_head, causal=True, scale=None):
    """Split qkv into heads, naive attention, merge heads: (o (B, T, C), lse (B, nh, T))."""
    o, lse = attention_forward(*_split_qkv(qkv, n_head), causal=causal, scale=scale)
    return _merge_heads(o), lse


def attention_qkv_backward(qkv, o, lse, do, n_head, causal=True, scale=None):
    """dqkv (B, T, 3C): the three head gradients merged and concatenated along the channels."""
    grads = attention_backward(*_split_qkv(qkv, n_head), _split_heads(o, n_head), lse,
                               _split_heads(do, n_head), causal=causal, scale=scale)
    return np.concatenate([_merge_heads(g) for g in grads], axis=-1)


def embedding_backward(idx, g, shape):
    """Scatter-add rows of g into a zero (num, dim) table at idx (repeated ids add up)."""
    out = np.zeros(shape, g.dtype)
    idx = np.asarray(idx).reshape(-1)
    np.add.at(out, idx, g.reshape(idx.size, shape[1]))
    return out

