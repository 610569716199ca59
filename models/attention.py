"""Attention variants for the GPT (``GPTConfig(attention=..., n_kv_head=...)``), composed of
minigrad's proven primitives (matmul, masks, softmax attention, gather), so every gradient comes
from ops that are gradchecked on their own. The attention pattern of each variant is a boolean
mask or a product of masked matrices; nothing here is a new primitive.

Every function takes queries q (B, H, Tq, D) and keys/values k, v (B, Hkv, Tk, D) with H a
multiple of Hkv, and returns (B, H, Tq, D). Queries are aligned to the end of the keys: query i
sits at position Tk - Tq + i, so a training forward (Tq = Tk) and a decoding step over a cache
(Tq new positions after Tk - Tq cached ones) run the same code.

* Grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245): Hkv key/value heads, each
  shared by G = H/Hkv consecutive query heads (head h reads key/value head h // G, as
  torch's ``enable_gqa`` and Llama's ``repeat_kv``). Hkv = H is multi-head attention, Hkv = 1
  multi-query attention (Shazeer 2019, arXiv 1911.02150). The KV cache shrinks by G.
* Linear attention (Katharopoulos et al. 2020, arXiv 2006.16236): softmax(q·k) replaced by
  φ(q)·φ(k) with φ(x) = elu(x) + 1, so causal attention is a running sum. Parallel form
  (training): o = [(φ(Q)φ(K)ᵀ) ⊙ causal]·V, each row divided by its sum + ε. Recurrent form
  (decoding): S_t = S_{t-1} + φ(k_t)v_tᵀ, z_t = z_{t-1} + φ(k_t),
  o_t = φ(q_t)ᵀS_t / (φ(q_t)ᵀz_t + ε) -- a state of D·(Dv + 1) numbers per key/value head,
  whatever the length. ε = 1e-6 as the reference code (idiap/fast-transformers).
* MoBA (Lu et al. 2025, arXiv 2502.13189): keys in blocks of ``block``; a query scores each
  block by its dot product with the block's mean key (no parameters, no gradient: a selection),
  blocks after its own are excluded and its own block is always taken; it attends, causally,
  to the keys of its ``topk`` best blocks (counting its own). As the paper's naive reference,
  the computation is dense attention under that mask: the semantics, not the speed.
* NSA (Yuan et al. 2025, arXiv 2502.11089): three branches, mixed per query and head by gates
  in [0, 1] from the attention input (a Linear and a sigmoid):
  o = g_cmp·Attn(q, K_cmp, V_cmp) + g_slc·Attn(q, K_slc, V_slc) + g_win·Attn(q, K_win, V_win).
  Compression: overlapping blocks of ``cmp_block`` keys with stride ``cmp_stride``, each mapped
  to one key (one value) by an MLP with an intra-block position encoding. Selection: the
  compression branch's attention probabilities, summed over the query heads of a group and
  spread over the selection blocks (``slc_block`` keys) they overlap, rank the blocks; the
  top ``slc_topn`` are attended, token by token (causally). Window: the last ``window`` keys.
  See :func:`nsa_attention` for what the paper leaves open and the choices made here.
"""
from __future__ import annotations

import math

import numpy as np

import minigrad.functional as F
from minigrad import nn

__all__ = ["ATTENTIONS", "grouped_query_attention", "elu_feature_map", "linear_attention",
           "linear_attention_recurrent", "moba_mask", "moba_attention", "nsa_attention",
           "nsa_select", "BlockCompressor", "NSA"]

#: the values of ``GPTConfig.attention``
ATTENTIONS = ("mha", "linear", "moba", "nsa")

#: ε of linear attention's normaliser (the reference code's value)
LINEAR_EPS = 1e-6


def _sizes(op: str, q, k, v):
    """(B, H, Hkv, Tq, Tk) after checking q (B, H, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{op}: q, k, v must be (B, heads, T, head_size), got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[3] != D:
        raise ValueError(f"{op}: q {q.shape}, k {k.shape}, v {v.shape} disagree: k needs q's batch and "
                         "head size, v needs k's batch, heads and length")
    if H % Hkv:
        raise ValueError(f"{op}: q has {H} heads and k, v have {Hkv}: the query heads must be a "
                         "multiple of the key/value heads")
    if not 0 < Tq <= Tk:
        raise ValueError(f"{op}: {Tq} queries and {Tk} keys; queries are the last Tq of the Tk "
                         "positions, so 1 <= Tq <= Tk")
    return B, H, Hkv, Tq, Tk


def _grouped(q, k, v):
    """q (B, H, Tq, D) -> (B, Hkv, G, Tq, D); k, v (B, Hkv, Tk, D) -> (B, Hkv, 1, Tk, D): the
    G query heads of a group broadcast against their one key/value head."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    return (q.reshape(B, Hkv, H // Hkv, Tq, D), k.reshape(B, Hkv, 1, Tk, D),
            v.reshape(B, Hkv, 1, Tk, v.shape[3]))


def _ungrouped(y):
    """(B, Hkv, G, T, D) -> (B, H, T, D) with head h = group·G + g."""
    B, Hkv, G, T, D = y.shape
    return y.reshape(B, Hkv * G, T, D)


def _positions(Tq: int, Tk: int) -> np.ndarray:
    """The positions of the Tq queries among Tk keys: the last Tq."""
    return np.arange(Tk - Tq, Tk)


# ---------------------------------------------------------------- grouped-query attention
def grouped_query_attention(q, k, v):
    """Causal softmax attention of q (B, H, Tq, D) over k, v (B, Hkv, Tk, D), query head h
    reading key/value head h // (H/Hkv)."""
    B, H, Hkv, Tq, Tk = _sizes("grouped_query_attention", q, k, v)
    qg, kg, vg = _grouped(q, k, v)
    if H != Hkv:  # equal batch axes let the flash kernel run; Expand's backward sums the group
        kg, vg = kg.expand(qg.shape[:3] + kg.shape[3:]), vg.expand(qg.shape[:3] + vg.shape[3:])
    return _ungrouped(F.scaled_dot_product_attention(qg, kg, vg, causal=True))


# ---------------------------------------------------------------- linear attention
def elu_feature_map(x):
    """φ(x) = elu(x) + 1 = x + 1 for x > 0, exp(x) otherwise; written relu(x) + exp(-relu(-x)) so
    no exp of a large positive number is ever taken (its gradient would be 0·inf)."""
    return F.relu(x) + (-F.relu(-x)).exp()


def linear_attention(q, k, v, eps: float = LINEAR_EPS):
    """Causal linear attention, parallel form: o_i = Σ_{j<=i} (φ(q_i)·φ(k_j)) v_j /
    (Σ_{j<=i} φ(q_i)·φ(k_j) + ε). O(Tq·Tk) like softmax attention, one matmul per side."""
    B, H, Hkv, Tq, Tk = _sizes("linear_attention", q, k, v)
    qg, kg, vg = _grouped(elu_feature_map(q), elu_feature_map(k), v)
    future = ~np.tri(Tq, Tk, Tk - Tq, dtype=bool)          # query i sees keys j <= i + Tk - Tq
    a = (qg @ kg.mT).masked_fill(future, 0.0)               # (B, Hkv, G, Tq, Tk)
    return _ungrouped((a @ vg) / (a.sum(axis=-1, keepdims=True) + eps))


def linear_attention_recurrent(q, k, v, state=None, eps: float = LINEAR_EPS):
    """Causal linear attention, recurrent form, on arrays (decoding, no graph).

    q (B, H, T, D), k, v (B, Hkv, T, D) are T new positions after those summarised in
    ``state`` = (S (B, Hkv, D, Dv), z (B, Hkv, D)) (None: nothing before). Returns
    (o (B, H, T, Dv), new state); the state's size does not grow with the length."""
    B, H, Hkv, Tq, Tk = _sizes("linear_attention_recurrent", q, k, v)
    if Tq != Tk:
        raise ValueError(f"linear_attention_recurrent: {Tq} queries but {Tk} keys; give the new "
                         "positions' q, k, v (the past is in the state)")
    D, Dv = q.shape[3], v.shape[3]
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # noqa: E731
    fq, fk = phi(q).reshape(B, Hkv, H // Hkv, Tq, D), phi(k)
    if state is None:
        S, z = np.zeros((B, Hkv, D, Dv), fk.dtype), np.zeros((B, Hkv, D), fk.dtype)
    else:
        S, z = state
        if S.shape != (B, Hkv, D, Dv) or z.shape != (B, Hkv, D):
            raise ValueError(f"linear_attention_recurrent: the state is S {S.shape}, z {z.shape}; "
                             f"these q, k, v need S {(B, Hkv, D, Dv)} and z {(B, Hkv, D)}")
    out = np.empty((B, Hkv, H // Hkv, Tq, Dv), np.result_type(fq, v))
    for t in range(Tq):
        S = S + fk[:, :, t, :, None] * v[:, :, t, None, :]                 # += φ(k_t) v_tᵀ
        z = z + fk[:, :, t]
        qt = fq[:, :, :, t]                                                # (B, Hkv, G, D)
        out[:, :, :, t] = (qt @ S) / ((qt @ z[..., None]) + eps)          # (B, Hkv, G, Dv)
    return out.reshape(B, H, Tq, Dv), (S, z)


# ---------------------------------------------------------------- MoBA
def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the n largest scores along the last axis (ties: the lower index)."""
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :n]
    chosen = np.zeros(scores.shape, bool)
    np.put_along_axis(chosen, order, True, axis=-1)
    return chosen


def moba_mask(q: np.ndarray, k: np.ndarray, block: int, topk: int) -> np.ndarray:
    """MoBA's key selection, boolean (B, Hkv, G, Tq, Tk): True where a query's gate chose the
    key's block (causality is applied separately). Arrays, no gradient.

    Gate of query q for block b: q · mean(K_b), the mean over the block's keys (a last block
    shorter than ``block`` averages what it has). Blocks after the query's own: excluded; the
    own block: always chosen; then the best of the rest, ``topk`` blocks in all."""
    B, H, Hkv, Tq, Tk = _sizes("moba_mask", q, k, k)
    n_blocks = -(-Tk // block)
    starts = np.arange(n_blocks) * block
    sums = np.add.reduceat(k.astype(np.promote_types(k.dtype, np.float32)), starts, axis=2)
    means = sums / np.minimum(block, Tk - starts)[:, None]                   # (B, Hkv, nb, D)
    gate = q.reshape(B, Hkv, H // Hkv, Tq, -1) @ np.swapaxes(means, -1, -2)[:, :, None]  # (B, Hkv, G, Tq, nb)
    own = _positions(Tq, Tk)[:, None] // block                              # (Tq, 1)
    blocks = np.arange(n_blocks)
    gate = np.where(blocks > own, -np.inf, np.where(blocks == own, np.inf, gate))
    chosen = _top(gate, topk) & (blocks <= own)
    return chosen[..., np.arange(Tk) // block]


def moba_attention(q, k, v, block: int, topk: int):
    """MoBA: causal softmax attention restricted to the keys of each query's ``topk`` blocks
    (:func:`moba_mask`). With ``topk`` >= the number of blocks it is full causal attention."""
    _sizes("moba_attention", q, k, v)
    qg, kg, vg = _grouped(q, k, v)
    mask = moba_mask(q.data, k.data, block, topk)
    return _ungrouped(F.scaled_dot_product_attention(qg, kg, vg, causal=True, attn_mask=mask))


# ---------------------------------------------------------------- NSA
class BlockCompressor(nn.Module):
    """NSA's φ: a block of ``block`` keys (or values) of size D -> one, by an MLP on the block
    flattened after adding a learned intra-block position embedding:
    φ(x) = W₂ gelu(W₁ vec(x + pos) + b₁) + b₂ with W₁ (D, block·D), W₂ (D, D)."""

    own_param_roles = {"pos": "embedding"}

    def __init__(self, block: int, head_size: int, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.block, self.head_size = block, head_size
        self.pos = nn.Parameter(np.zeros((block, head_size), dtype))
        self.fc = nn.Linear(block * head_size, head_size, bias=bias, dtype=dtype, rng=rng)
        self.proj = nn.Linear(head_size, head_size, bias=bias, dtype=dtype, rng=rng)

    def forward(self, blocks):
        """blocks (..., n, block, D) -> (..., n, D)."""
        x = blocks + self.pos
        x = x.reshape(x.shape[:-2] + (self.block * self.head_size,))
        return self.proj(F.gelu(self.fc(x)))


def _masked_softmax(s: np.ndarray, sees: np.ndarray) -> np.ndarray:
    """Softmax over the last axis where ``sees``; a row that sees nothing is all zeros."""
    s = np.where(sees, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    total = p.sum(axis=-1, keepdims=True)
    return p / np.where(total > 0, total, 1.0)


def nsa_select(scores: np.ndarray, positions: np.ndarray, slc_block: int, topn: int) -> np.ndarray:
    """NSA's block selection: boolean (..., Tq, n_blocks), True for the ``topn`` blocks each query
    attends. The initial block and the 2 local ones (the query's and the one before) are always
    chosen; blocks after the query's are never; ``scores`` (..., Tq, n_blocks) rank the rest
    (ties: the earlier block)."""
    blocks = np.arange(scores.shape[-1])
    own = positions[:, None] // slc_block                                    # (Tq, 1)
    forced = (blocks == 0) | (blocks == own) | (blocks == own - 1)
    available = blocks <= own
    ranked = np.where(forced, np.inf, np.where(available, scores, -np.inf))
    return _top(ranked, topn) & available


def nsa_attention(q, k, v, gates, compress_k, compress_v, *, cmp_block: int, cmp_stride: int,
                  slc_block: int, slc_topn: int, window: int):
    """Native sparse attention of q (B, H, Tq, D) over k, v (B, Hkv, Tk, D).

    ``gates`` (B, H, Tq, 3): g_cmp, g_slc, g_win per query and head. ``compress_k``,
    ``compress_v``: callables (..., n, cmp_block, D) -> (..., n, D) (:class:`BlockCompressor`).

    Compressed block i covers keys [i·d, i·d + l) (l = cmp_block, d = cmp_stride) and exists once
    complete; a query at position t sees it iff i·d + l - 1 <= t. Selection block j covers keys
    [j·l', (j+1)·l') (l' = slc_block). Per query: p = softmax over the compressed keys it sees,
    summed over the G query heads of its group (so a group selects together, as the paper does
    for GQA), score_j = Σ_i p_i over the compressed blocks i that overlap block j; then
    :func:`nsa_select`. Selected keys are attended causally; the window is keys t - w < j <= t.

    What the paper leaves open, and the choice here:

    * φ's architecture ("a learnable MLP with intra-block position encoding"): a learned
      (l, D) position embedding added, then Linear(l·D, D), GELU, Linear(D, D); one φ for keys
      and one for values, shared by all heads of a layer.
    * The gate MLP: one Linear(C, 3H) of the attention input and a sigmoid.
    * A query with no complete compressed block yet (t < l - 1): the compression branch gives 0
      (a softmax over nothing), and its selection scores are all 0, so the forced blocks and
      then the earliest ones are taken.
    * Mapping compression scores to selection blocks: the paper's eq. 9 assumes d | l and
      d | l'; here each compressed block's probability counts for every selection block it
      overlaps, which needs no divisibility.
    * The query's own block also holds later tokens: they are masked token by token.

    A deviation: the paper gives each branch its own keys and values (against shortcut
    learning between branches); here the three branches share the layer's k and v projections,
    so NSA adds only the gate and the two compressors to a layer."""
    B, H, Hkv, Tq, Tk = _sizes("nsa_attention", q, k, v)
    if gates.shape != (B, H, Tq, 3):
        raise ValueError(f"nsa_attention: gates must be (B, H, Tq, 3) = {(B, H, Tq, 3)}, got {gates.shape}")
    G = H // Hkv
    pos = _positions(Tq, Tk)
    qg, kg, vg = _grouped(q, k, v)
    gate = [gates[..., c].reshape(B, Hkv, G, Tq, 1) for c in range(3)]

    n_slc = -(-Tk // slc_block)
    n_cmp = (Tk - cmp_block) // cmp_stride + 1 if Tk >= cmp_block else 0
    starts = np.arange(n_cmp) * cmp_stride
    if n_cmp:
        cols = starts[:, None] + np.arange(cmp_block)                       # (n_cmp, l)
        kc = compress_k(k[:, :, cols]).reshape(B, Hkv, 1, n_cmp, -1)        # (B, Hkv, 1, n_cmp, D)
        vc = compress_v(v[:, :, cols]).reshape(B, Hkv, 1, n_cmp, -1)
        sees = starts + cmp_block - 1 <= pos[:, None]                       # (Tq, n_cmp)
        o_cmp = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=sees)
        scale = 1.0 / math.sqrt(q.shape[-1])
        p = _masked_softmax((qg.data @ np.swapaxes(kc.data, -1, -2)) * scale, sees).sum(axis=2)
        slc_starts = np.arange(n_slc) * slc_block
        overlap = ((starts[:, None] < slc_starts + slc_block)
                   & (slc_starts < starts[:, None] + cmp_block))            # (n_cmp, n_slc)
        scores = p @ overlap.astype(p.dtype)                                # (B, Hkv, Tq, n_slc)
    else:
        scores = np.zeros((B, Hkv, Tq, n_slc), q.dtype)
    chosen = nsa_select(scores, pos, slc_block, slc_topn)                   # (B, Hkv, Tq, n_slc)
    slc_mask = chosen[..., np.arange(Tk) // slc_block][:, :, None]          # (B, Hkv, 1, Tq, Tk)
    o_slc = F.scaled_dot_product_attention(qg, kg, vg, causal=True, attn_mask=slc_mask)
    in_window = np.arange(Tk) > pos[:, None] - window                       # (Tq, Tk)
    o_win = F.scaled_dot_product_attention(qg, kg, vg, causal=True, attn_mask=in_window)
    y = gate[1] * o_slc + gate[2] * o_win
    if n_cmp:
        y = y + gate[0] * o_cmp
    return _ungrouped(y)


class NSA(nn.Module):
    """NSA's parameters in a layer: ``gate`` (Linear(C, 3H): g_cmp | g_slc | g_win, each H
    columns, through a sigmoid) and the compressors ``compress_k``, ``compress_v``.

    ``compress_k.proj.bias`` b has no effect: it adds q·b to every compressed score of a query,
    and the softmax over them (and so the selection scores) ignores a shift, so its gradient is
    zero up to rounding. It is kept as GPT-2 keeps the key rows of its c_attn bias (``bias=False``
    drops both): both compressors stay one module, and NSA's parameter count and seeded init stay
    as measured in docs/attention.md."""

    def __init__(self, n_embd: int, n_head: int, head_size: int, *, cmp_block: int, cmp_stride: int,
                 slc_block: int, slc_topn: int, window: int, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.n_head = n_head
        self.sizes = dict(cmp_block=cmp_block, cmp_stride=cmp_stride, slc_block=slc_block,
                          slc_topn=slc_topn, window=window)
        self.gate = nn.Linear(n_embd, 3 * n_head, bias=bias, dtype=dtype, rng=rng)
        self.compress_k = BlockCompressor(cmp_block, head_size, bias, dtype, rng)
        self.compress_v = BlockCompressor(cmp_block, head_size, bias, dtype, rng)

    def gates(self, x):
        """x (B, T, C) -> gates (B, H, T, 3) in (0, 1)."""
        B, T, _ = x.shape
        return F.sigmoid(self.gate(x)).reshape(B, T, 3, self.n_head).permute(0, 3, 1, 2)

    def forward(self, x, q, k, v):
        """x (B, Tq, C), the attention input of the queries' positions; q, k, v as nsa_attention."""
        return nsa_attention(q, k, v, self.gates(x), self.compress_k, self.compress_v, **self.sizes)
