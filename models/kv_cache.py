"""KV caches for generation: one object per decoding run, each with its own policy.

A decoder caches the keys and values of the positions it has seen, so each new token runs the
network on one position and attends over the cache: o_t = softmax(q_t·K_{≤t}ᵀ/√d)·V_{≤t}
(Pope et al. 2022, "Efficiently Scaling Transformer Inference", arXiv:2211.05102). What is
kept, where it lives and what a query reads is the cache's policy:

- :class:`DenseKVCache` keeps every position in a preallocated buffer, written in place;
  attention reads a view of the filled part, so a decoding step copies nothing it has cached.
- :class:`StreamingLLMCache` keeps the first ``n_sink`` tokens (attention sinks) and a rolling
  window of the most recent ones (Xiao et al. 2024, "Efficient Streaming Language Models with
  Attention Sinks", arXiv:2309.17453): constant memory, endless generation.
- :class:`QuestCache` keeps everything but lets each decoding query read only the pages whose
  key bounds promise the largest scores (Tang et al. 2024, "Quest: Query-Aware Sparsity for
  Efficient Long-Context LLM Inference", arXiv:2406.10774).
- :class:`PagedKVCache` stores many sequences in fixed-size blocks of one pool through block
  tables, with a free list, shared prefixes, reference counts and copy-on-write (Kwon et al.
  2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention",
  arXiv:2309.06180); ``cache.batch(seq_ids)`` is what the model's forward takes.
- :class:`LinearAttentionCache` is linear attention's recurrent state (Katharopoulos et al.
  2020, arXiv:2006.16236): two sums per layer and head whose size does not grow.

:func:`cache_for` builds a model's default: the linear state for ``attention="linear"``, else a
dense cache of ``block_size`` positions. Each cache says in ``attentions`` which of the GPT's
attention variants it serves: the softmax policies serve "mha" (with any n_kv_head); MoBA and
NSA run their own selection over every cached key, so they take the dense cache's ``append``.

The model talks to a cache in two calls per forward of T new tokens (``GPT.forward(idx,
cache=cache)``)::

    pos = cache.begin(B, T, block_size)     # positions of the new tokens; room is made for them
    o = cache.layer(i).attend(q, k, v)      # per layer: store k, v, attend q over what is kept
    keys, values = cache.layer(i).append(k, v)   # or (DenseKVCache): store, view every position

q is (B, n_head, T, hs), k and v are (B, n_kv_head, T, hs) NumPy arrays and the output is
(B, n_head, T, hs). With n_kv_head < n_head (grouped-query attention) query head h reads
key/value head h // (n_head / n_kv_head). Caches work on arrays outside the autograd graph:
they are for inference. Every cache counts its storage: ``nbytes`` allocated, ``used_bytes``
holding the positions it keeps now.
"""
from __future__ import annotations

import math

import numpy as np

import minigrad.functional as F
from models.attention import linear_attention_recurrent
from models.paged_attention import dense_decode, paged_decode

__all__ = ["KVCache", "DenseKVCache", "StreamingLLMCache", "QuestCache", "PagedKVCache",
           "PagedBatch", "LinearAttentionCache", "HalfOverflow", "cache_for", "page_upper_bound"]

#: the largest block of attention scores one call computes at once (elements): long prompts are
#: run in chunks of queries, so a prefill of T tokens needs O(T) memory, not O(T²)
SCORES_PER_CHUNK = 1 << 22


def _attention(q, k, v, allowed=None):
    """Softmax attention of q (X, Y, g, T, d) over k and v (X, Y, S, d) -> (X, Y, g, T, d).

    The g query heads of a group read the same keys and values (grouped-query attention).
    ``allowed`` (boolean, broadcasting to the scores (X, Y, g, T, S), its T axis of size T) is
    True where a query may see a key; None lets every query see every key. k and v may be
    strided views (a cache's filled part): matmul reads them in place."""
    X, Y, g, T, d = q.shape
    S = k.shape[-2]
    out = np.empty((X, Y, g, T, v.shape[-1]), q.dtype)
    kt = k.swapaxes(-1, -2)
    rows = max(1, SCORES_PER_CHUNK // max(1, X * Y * g * S))        # queries per chunk
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        n = t1 - t0
        s = (q[:, :, :, t0:t1] * (1.0 / math.sqrt(d))).reshape(X, Y, g * n, d) @ kt
        s = s.reshape(X, Y, g, n, S)                                # scores
        if allowed is not None:
            s = np.where(allowed[..., t0:t1, :], s, -np.inf)
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)                          # probabilities
        out[:, :, :, t0:t1] = (s.reshape(X, Y, g * n, S) @ v).reshape(X, Y, g, n, -1)
    return out


def _causal_attention(q, k, v):
    """Causal attention of the last T positions' queries q (X, Y, g, T, d) over the keys and
    values k, v (X, Y, S, d) of all S positions: query t sees keys 0 .. S - T + t.

    One query (decoding) reads k and v in place (:func:`_attention`). More (a prompt) run in
    chunks through ``F.scaled_dot_product_attention``, whose flash kernel (numba backend)
    needs contiguous k and v: a copy per chunk, amortised over its queries."""
    X, Y, g, T, d = q.shape
    S = k.shape[-2]
    if T == 1:
        return _attention(q, k, v)
    out = np.empty((X, Y, g, T, v.shape[-1]), q.dtype)
    rows = max(1, SCORES_PER_CHUNK // max(1, X * Y * g * S))
    for t0 in range(0, T, rows):
        t1 = min(T, t0 + rows)
        seen = S - T + t1                                               # keys the chunk's last query sees
        kc = np.broadcast_to(k[:, :, None, :seen], (X, Y, g, seen, d))
        vc = np.broadcast_to(v[:, :, None, :seen], (X, Y, g, seen, v.shape[-1]))
        out[:, :, :, t0:t1] = F.scaled_dot_product_attention(q[:, :, :, t0:t1], kc, vc, causal=True).data
    return out


def _positive_int(name, value, cls, minimum=1):
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{cls}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class HalfOverflow(OverflowError):
    """Keys or values a float16 cache would store as inf (every later step's attention NaN, with
    nothing to say why): ``layer`` and ``magnitude`` (the largest |x| given) for a caller's own
    message."""

    def __init__(self, cls, layer, k, v):
        self.layer = layer
        self.magnitude = max(float(np.abs(k).max(initial=0)), float(np.abs(v).max(initial=0)))
        super().__init__(f"{cls}: layer {layer}'s keys or values reach |x| = {self.magnitude:.4g}, beyond "
                         f"float16's largest finite 65,504, so this forward's positions were not kept; use "
                         f"a cache of the model's dtype (for_model without dtype)")


def model_dims(model) -> dict:
    """The cache dimensions of a GPT: n_layer, n_kv_head, head_dim and dtype."""
    cfg = model.config
    return dict(n_layer=cfg.n_layer, n_kv_head=cfg.kv_heads, head_dim=cfg.n_embd // cfg.n_head,
                dtype=model.dtype)


def cache_for(model, batch_size: int = 1):
    """The default cache of ``model`` (a GPT) for a batch: :class:`LinearAttentionCache` for
    linear attention, else a :class:`DenseKVCache` of ``block_size`` positions."""
    if model.config.attention == "linear":
        return LinearAttentionCache.for_model(model, batch_size)
    return DenseKVCache.for_model(model, batch_size)


class _Layer:
    """One layer's handle on a cache: ``attend(q, k, v)`` for the attention module."""

    __slots__ = ("cache", "index")

    def __init__(self, cache, index):
        self.cache, self.index = cache, index

    def attend(self, q, k, v):
        return self.cache.attend(self.index, q, k, v)

    def append(self, k, v):
        return self.cache.append(self.index, k, v)


class KVCache:
    """What every cache policy shares: the dimensions, the per-layer handles and the checks.

    Subclasses implement ``begin(B, T, max_position=None) -> positions`` (refusing, before any
    change, positions that reach ``max_position``) and ``attend(layer, q, k, v) -> o``."""

    #: the GPTConfig.attention variants this cache serves
    attentions = ("mha",)
    #: whether a model may keep this cache in float16 whatever its own dtype (a kernel reads it)
    float16_storage = False

    def __init__(self, n_layer, n_kv_head, head_dim, dtype):
        cls = type(self).__name__
        self.n_layer = _positive_int("n_layer", n_layer, cls)
        self.n_kv_head = _positive_int("n_kv_head", n_kv_head, cls)
        self.head_dim = _positive_int("head_dim", head_dim, cls)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"{cls}: dtype must be floating point, got {self.dtype}")
        self._layers = [_Layer(self, i) for i in range(self.n_layer)]
        self._T = None                          # the T of the last begin(), checked by attend()

    def layer(self, i: int) -> _Layer:
        """The handle layer ``i``'s attention calls ``attend(q, k, v)`` on."""
        return self._layers[i]

    def _kv_bytes(self, positions: int, batch: int) -> int:
        """Bytes of keys and values for ``positions`` positions of ``batch`` rows, all layers."""
        return 2 * self.n_layer * batch * self.n_kv_head * positions * self.head_dim * self.dtype.itemsize

    def _check_begin(self, B, T, batch_size):
        cls = type(self).__name__
        if not isinstance(T, (int, np.integer)) or T < 1:
            raise ValueError(f"{cls}: a forward must bring at least one new token, got T={T!r}")
        if B != batch_size:
            raise ValueError(f"{cls}: this cache holds a batch of {batch_size}, the input has batch {B}; "
                             f"build a cache for batch_size={B}")
        self._T = int(T)

    def _check_positions(self, last, max_position):
        """Refuse, before begin() changes anything, tokens whose positions would reach past the
        model's ``max_position`` (its block_size): a refused forward leaves the cache as it was."""
        if max_position is not None and last >= max_position:
            raise ValueError(f"{type(self).__name__}: these tokens would take positions up to {last}, beyond "
                             f"the model's block_size={max_position}; give the cache at most block_size "
                             "positions (for_model(model) does)")

    def _check_kv(self, layer, k, v, B):
        """Shapes of one layer's k and v: (B, n_kv_head, T, head_dim), T from begin()."""
        cls = type(self).__name__
        if self._T is None:
            raise RuntimeError(f"{cls}: attend() before begin(); the model calls begin(B, T) once per forward")
        if not 0 <= layer < self.n_layer:
            raise IndexError(f"{cls}: layer {layer} out of range for {self.n_layer} layers")
        want = (B, self.n_kv_head, self._T, self.head_dim)
        if k.shape != want or v.shape != want:
            raise ValueError(f"{cls}: layer {layer} gave k {k.shape} and v {v.shape}; this cache expects "
                             f"(B, n_kv_head, T, head_dim) = {want}")

    def _check_attend(self, layer, q, k, v, B):
        """Shapes of one layer's q (B, nh, T, hs), k and v (B, nkv, T, hs)."""
        self._check_kv(layer, k, v, B)
        if q.ndim != 4 or q.shape[0] != B or q.shape[2:] != k.shape[2:] or q.shape[1] % self.n_kv_head:
            raise ValueError(f"{type(self).__name__}: layer {layer} gave q {q.shape}; expected (B={B}, n_head, "
                             f"T={self._T}, head_dim={self.head_dim}) with n_head a multiple of n_kv_head="
                             f"{self.n_kv_head}")

    def _grouped(self, q):
        """q (B, nh, T, hs) -> (B, nkv, g, T, hs), a view: query head h in group h // g."""
        B, nh, T, hs = q.shape
        return q.reshape(B, self.n_kv_head, nh // self.n_kv_head, T, hs)


class DenseKVCache(KVCache):
    """Every position's keys and values, in a buffer of ``max_len`` positions per layer.

    ``begin`` reserves the next T positions (an error names the numbers when they do not fit);
    ``attend`` writes this call's keys and values there, in place, and attends over a view of
    the filled part: a decoding step reads the cache but copies none of it, so its cost beyond
    the network's GEMMs is the attention's O(n) reads, not an O(n) copy as well.

    ``k`` and ``v`` are (n_layer, batch, n_kv_head, max_len, head_dim) arrays, or views of them,
    whatever the storage ``layout``; it decides what lies together in memory, and so which reads
    are fast:

    - ``"positions"`` (head_dim before max_len): each of a key's head_dim numbers lies along the
      positions, so the decoding kernel's loops run along positions, 16 float32 lanes at a time.
      From the CPU's caches it takes ~0.6x the time of the rows kernel at 1,024 positions. From
      DRAM, reading the first n numbers of each of head_dim long rows is slow: with max_len
      4,096 and n = 1,024, 2.2-2.7x the rows kernel's time (bench/README.md, eighth session).
    - ``"rows"`` (max_len before head_dim): the n positions a step reads are one contiguous
      block per head, and each position's numbers lie together, which readers that gather
      blocks of positions need (QuestCache's pages, MoBA's blocks, NSA's selection; from
      position-minor views NSA's decoding step took 1.8x the time).

    With ``layout=None`` a cache takes ``"positions"`` while one row of it, max_len · itemsize
    bytes, fits in a 4 KiB page (max_len <= 1,024 in float32), and ``"rows"`` beyond;
    ``for_model`` gives MoBA and NSA models ``"rows"``, and QuestCache stores rows by default.

    ``dtype`` is the model's (``for_model``) or float16: half the bytes to keep and to read, so a
    decoding step at long contexts takes less time (docs/inference.md); each key and value is rounded
    to float16 as it is stored (a relative error of at most 2^-11; a key or value float16 would round
    to inf, |x| >= 65,520, raises OverflowError), and the attention computes in the queries' dtype.

    Memory: 2 · n_layer · batch · n_kv_head · max_len · head_dim · itemsize bytes, allocated once.
    """

    attentions = ("mha", "moba", "nsa")
    float16_storage = True      # (see ``dtype`` above)
    #: the storage layout when none is given; None: chosen by the row length (see above)
    default_layout = None
    #: the longest position-minor row the default takes, in bytes: one page
    POSITION_ROW_BYTES = 4096

    def __init__(self, n_layer, n_kv_head, head_dim, *, max_len, batch_size=1, dtype=np.float32, layout=None):
        super().__init__(n_layer, n_kv_head, head_dim, dtype)
        cls = type(self).__name__
        self.max_len = _positive_int("max_len", max_len, cls)
        self.batch_size = _positive_int("batch_size", batch_size, cls)
        layout = self.default_layout if layout is None else layout
        if layout is None:
            layout = "positions" if self.max_len * self.dtype.itemsize <= self.POSITION_ROW_BYTES else "rows"
        self.layout = layout
        if self.layout not in ("positions", "rows"):
            raise ValueError(f"{cls}: layout must be 'positions' or 'rows', got {layout!r}")
        shape = (self.n_layer, self.batch_size, self.n_kv_head, self._storage_len(), self.head_dim)
        if self.layout == "rows":
            self.k, self.v = np.empty(shape, self.dtype), np.empty(shape, self.dtype)
        else:                   # stored (.., head_dim, positions); k and v index it as above
            stored = shape[:3] + (self.head_dim, self._storage_len())
            self.k, self.v = (np.empty(stored, self.dtype).swapaxes(-1, -2) for _ in range(2))
        self.n = 0              # positions filled
        self._start = 0         # where this forward's tokens begin

    @classmethod
    def for_model(cls, model, batch_size: int = 1, max_len: int | None = None, dtype=None, **policy):
        """A cache shaped for ``model`` (a GPT); ``max_len`` defaults to its block_size, ``dtype``
        to the model's (float16 halves the bytes kept and read, and rounds each key and value to
        float16 as it is stored), the layout to rows for MoBA and NSA (which gather blocks of
        positions)."""
        if model.config.attention in ("moba", "nsa"):
            policy.setdefault("layout", "rows")
        dims = model_dims(model)
        if dtype is not None:
            dims["dtype"] = dtype
        return cls(**dims, batch_size=batch_size,
                   max_len=model.config.block_size if max_len is None else max_len, **policy)

    def _storage_len(self) -> int:
        return self.max_len

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes allocated."""
        return self.k.nbytes + self.v.nbytes

    @property
    def used_bytes(self) -> int:
        """Bytes holding the positions kept now."""
        return self._kv_bytes(self.n, self.batch_size)

    def room(self) -> int:
        """How many tokens the next forward may bring."""
        return self.max_len - self.n

    def reset(self) -> None:
        """Forget every position (the buffers stay allocated)."""
        self.n = self._start = 0

    def begin(self, B, T, max_position=None):
        self._check_begin(B, T, self.batch_size)
        if self.n + T > self.max_len:
            raise ValueError(f"{type(self).__name__}: holds {self.n} positions; {T} more exceed max_len="
                             f"{self.max_len}; reset() it and start again from the last tokens (as "
                             "GPT.generate does), or use a StreamingLLMCache")
        self._check_positions(self.n + T - 1, max_position)
        self._start, self.n = self.n, self.n + T
        return np.arange(self._start, self.n)

    def _store(self, layer, k, v):
        self._check_kv(layer, k, v, self.batch_size)
        if self.dtype != np.float16:
            self.k[layer, :, :, self._start:self.n] = k
            self.v[layer, :, :, self._start:self.n] = v
            return
        try:         # NumPy only warns when a cast to float16 overflows (~1 us, a check 5 us)
            with np.errstate(over="raise"):
                self.k[layer, :, :, self._start:self.n] = k
                self.v[layer, :, :, self._start:self.n] = v
        except FloatingPointError:
            self.n = self._start            # this forward's positions are not kept
            raise HalfOverflow(type(self).__name__, layer, k, v) from None

    def append(self, layer, k, v):
        """Store this forward's keys and values; return views (B, n_kv_head, n, head_dim) of every
        filled position's keys and values, for an attention that selects among them itself."""
        self._store(layer, k, v)
        return self.k[layer, :, :, :self.n], self.v[layer, :, :, :self.n]

    def attend(self, layer, q, k, v):
        self._check_attend(layer, q, k, v, self.batch_size)
        self._store(layer, k, v)
        return self._dense(layer, q)

    def _dense(self, layer, q):
        """Causal attention of this forward's queries over the filled part (a view: a decoding
        step copies nothing); query t is position start + t and sees keys 0 .. start + t.
        A decoding step (one query per row) goes to `dense_decode`, whose kernel reads the
        layer's buffer in place with no per-op Python calls."""
        n, qg = self.n, self._grouped(q)
        if q.shape[2] == 1:
            return dense_decode(qg[:, :, :, 0], self.k[layer], self.v[layer], n).reshape(q.shape)
        return _causal_attention(qg, self.k[layer, :, :, :n], self.v[layer, :, :, :n]).reshape(q.shape)


class StreamingLLMCache(KVCache):
    """Attention sinks plus a rolling window (Xiao et al. 2024, arXiv:2309.17453).

    Keeps the first ``n_sink`` tokens and the last ``window`` tokens: ``capacity = n_sink +
    window`` positions per layer, whatever the length of the stream. Before a forward of T tokens
    that would overflow, the oldest window tokens are evicted to make room (the reference's
    ``evict_for_space``), so after it exactly tokens [0, n_sink) and [N - window, N) are kept.
    The window is a ring buffer: a new token overwrites the slot of the one it evicts, and the
    kept tokens are never moved (attention over a set does not depend on its order).

    ``positions="cache"`` (the default) assigns positions within the cache, as the paper does:
    the new tokens get positions ``len(cache) + 0 .. T-1`` counted after eviction, never more
    than capacity - 1, so a model trained on ``block_size >= capacity`` positions can stream
    without end. The paper caches keys before the rotary embedding and rotates them to their
    cache positions 0 .. len-1 at every step. Our GPT adds a learned absolute position embedding
    to the input instead, so a key's position is baked into every layer's cached key and value
    and cannot be moved: a kept key keeps the position it was computed at (``slot_position``).
    Once the cache is full, every new token is at position capacity - 1, so the window's keys all
    share that position and the model no longer sees their order through positions; the sinks
    keep 0 .. n_sink-1. ``positions="stream"`` gives each token its index in the stream instead
    (what the dense cache gives), which keeps the order but ends at ``max_position`` (the model's
    block_size): then ``room()`` is 0 and the stream must start again, as with a dense cache.
    docs/inference.md measures both. With n_sink = 0 this is plain window attention, the
    paper's failing baseline.
    """

    def __init__(self, n_layer, n_kv_head, head_dim, *, window, n_sink=4, positions="cache", max_position=None,
                 batch_size=1, dtype=np.float32):
        super().__init__(n_layer, n_kv_head, head_dim, dtype)
        cls = type(self).__name__
        self.n_sink = _positive_int("n_sink", n_sink, cls, minimum=0)
        self.window = _positive_int("window", window, cls)
        self.capacity = self.n_sink + self.window
        if positions not in ("cache", "stream"):
            raise ValueError(f"{cls}: positions={positions!r}; choose 'cache' (the paper's: within the cache) "
                             "or 'stream' (each token's index in the stream)")
        if positions == "stream" and max_position is None:
            raise ValueError(f"{cls}: positions='stream' needs max_position (the model's block_size): stream "
                             "indices grow without end")
        self.positions = positions
        self.max_position = None if max_position is None else _positive_int("max_position", max_position, cls)
        self.batch_size = _positive_int("batch_size", batch_size, cls)
        shape = (self.n_layer, self.batch_size, self.n_kv_head, self.capacity, self.head_dim)
        self.k = np.empty(shape, self.dtype)
        self.v = np.empty(shape, self.dtype)
        self.reset()

    @classmethod
    def for_model(cls, model, batch_size: int = 1, window: int | None = None, n_sink: int = 4,
                  positions: str = "cache"):
        """A cache for ``model``; the window defaults to fill its block_size with the sinks."""
        bs = model.config.block_size
        window = bs - n_sink if window is None else window
        if n_sink + window > bs:
            raise ValueError(f"StreamingLLMCache: n_sink={n_sink} + window={window} = {n_sink + window} "
                             f"positions exceed the model's block_size={bs}; the positions within the cache "
                             f"must have embeddings, so give n_sink + window <= {bs}")
        return cls(**model_dims(model), batch_size=batch_size, window=window, n_sink=n_sink,
                   positions=positions, max_position=bs)

    def __len__(self) -> int:
        return min(self.n_seen, self.capacity)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def used_bytes(self) -> int:
        return self._kv_bytes(len(self), self.batch_size)

    def reset(self) -> None:
        self.n_seen = 0                                         # tokens of the stream so far
        self.slot_token = np.full(self.capacity, -1)            # stream index held in each slot
        self.slot_position = np.full(self.capacity, -1)         # the position it was computed at
        self._slots = None

    def room(self) -> int:
        """How many tokens the next forward may bring: what is free, or a whole window (with
        stream positions, no more than the positions left)."""
        room = max(self.capacity - len(self), self.window)
        return room if self.positions == "cache" else min(room, self.max_position - self.n_seen)

    def kept_tokens(self) -> np.ndarray:
        """Stream indices of the kept tokens, ascending."""
        return np.sort(self.slot_token[self.slot_token >= 0])

    def begin(self, B, T, max_position=None):
        self._check_begin(B, T, self.batch_size)
        held = len(self)
        if held + T <= self.capacity:
            kept = held
        elif T <= self.window:
            kept = self.capacity - T                            # evict the oldest window tokens
        else:
            raise ValueError(f"StreamingLLMCache: a forward of {T} tokens does not fit a window of "
                             f"{self.window} (the cache holds {held} of {self.capacity}); feed at most "
                             f"{self.room()} tokens per call")
        positions = (kept if self.positions == "cache" else self.n_seen) + np.arange(T)
        limit = max_position
        if self.positions == "stream":      # its own bound, and the model's when that is smaller
            limit = self.max_position if max_position is None else min(self.max_position, max_position)
        self._check_positions(positions[-1], limit)
        t = self.n_seen + np.arange(T)
        self._slots = np.where(t < self.n_sink, t, self.n_sink + (t - self.n_sink) % self.window)
        self.slot_token[self._slots] = t
        self.slot_position[self._slots] = positions
        self._first = self.n_seen
        self.n_seen += T
        return positions

    def attend(self, layer, q, k, v):
        self._check_attend(layer, q, k, v, self.batch_size)
        self.k[layer][:, :, self._slots] = k
        self.v[layer][:, :, self._slots] = v
        S = len(self)                           # slots [0, S) are in use (the ring fills in order)
        T = q.shape[2]
        # query t (stream index first + t) sees every kept token up to itself
        allowed = None if T == 1 else self.slot_token[:S] <= self._first + np.arange(T)[:, None]
        o = _attention(self._grouped(q), self.k[layer, :, :, :S], self.v[layer, :, :, :S], allowed)
        return o.reshape(q.shape)


def page_upper_bound(q, kmin, kmax):
    """Quest's bound on q·k over a page: U = Σ_i max(q_i·M_i, q_i·m_i) with m, M the page's
    elementwise key minimum and maximum. Since m_i <= k_i <= M_i, each term bounds q_i·k_i, so
    U >= q·k for every key of the page. q (..., d), kmin and kmax (..., P, d) -> U (..., P).
    Computed as q⁺·M + q⁻·m (q⁺ = max(q, 0), q⁻ = min(q, 0)): two products instead of a max."""
    return (kmax @ np.maximum(q, 0)[..., None] + kmin @ np.minimum(q, 0)[..., None])[..., 0]


class QuestCache(DenseKVCache):
    """Query-aware page selection over a full cache (Tang et al. 2024, arXiv:2406.10774).

    The cache is split into pages of ``page_size`` positions; per page and key/value head it keeps
    the elementwise minimum and maximum of the keys, updated as keys arrive. A decoding query
    scores each page with :func:`page_upper_bound`, an upper bound of its score with any key in
    the page, and attends only to the K pages with the largest bounds, K = max(3, token_budget //
    page_size) as in the reference (each query head chooses its own pages). The choice is the
    plain top K, as in the paper's evaluation code (``evaluation/quest_attention.py``): the page
    that holds the newest key is not forced in, and since a page with few keys has a tight bound
    it is often left out (the released CUDA kernels always add the last page; not done here).
    The last page may be partly filled; its empty slots are masked. As in the paper, prefill
    (T > 1) and the first ``dense_layers`` layers attend densely, and so does any step where K
    covers every page.

    Memory: the dense cache plus 2 · head_dim numbers per page and head (1/page_size of K + V).
    A decoding step reads the bounds (n / page_size per head) and K · page_size keys.
    """

    attentions = ("mha",)
    #: a decoding step gathers whole pages of positions: contiguous in rows, a scatter of
    #: head_dim pieces each in position-minor storage (a layer's page gather took 3.6x the
    #: time, the step 1.1-1.3x)
    default_layout = "rows"
    #: its page selection and gather run in NumPy, which would convert every page it reads
    float16_storage = False

    def __init__(self, n_layer, n_kv_head, head_dim, *, max_len, token_budget, page_size=16,
                 dense_layers=2, batch_size=1, dtype=np.float32, layout=None):
        cls = type(self).__name__
        self.page_size = _positive_int("page_size", page_size, cls)
        self.token_budget = _positive_int("token_budget", token_budget, cls)
        self.dense_layers = _positive_int("dense_layers", dense_layers, cls, minimum=0)
        self.top_pages = max(3, self.token_budget // self.page_size)
        super().__init__(n_layer, n_kv_head, head_dim, max_len=max_len, batch_size=batch_size, dtype=dtype,
                         layout=layout)
        shape = self.k.shape[:3] + (self._storage_len() // self.page_size, self.head_dim)
        self.kmin = np.empty(shape, self.dtype)
        self.kmax = np.empty(shape, self.dtype)

    def _storage_len(self) -> int:      # whole pages, so the buffer reshapes to pages as a view
        return -(-self.max_len // self.page_size) * self.page_size

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.kmin.nbytes + self.kmax.nbytes

    @property
    def used_bytes(self) -> int:
        return self._kv_bytes(self.n + -(-self.n // self.page_size), self.batch_size)   # + min and max

    def attend(self, layer, q, k, v):
        self._check_attend(layer, q, k, v, self.batch_size)
        self._store(layer, k, v)
        self._update_bounds(layer)
        n_pages = -(-self.n // self.page_size)
        if q.shape[2] > 1 or layer < self.dense_layers or self.top_pages >= n_pages:
            return self._dense(layer, q)
        return self._selected(layer, q, n_pages)

    def _update_bounds(self, layer):
        """Min and max of the pages this forward wrote into, from their stored keys."""
        ps = self.page_size
        p0 = self._start // ps
        keys = self.k[layer, :, :, p0 * ps:self.n]                   # (B, nkv, n', hs)
        full = keys.shape[2] // ps
        if full:
            pages = keys[:, :, :full * ps].reshape(keys.shape[:2] + (full, ps, self.head_dim))
            self.kmin[layer, :, :, p0:p0 + full] = pages.min(axis=3)
            self.kmax[layer, :, :, p0:p0 + full] = pages.max(axis=3)
        if keys.shape[2] > full * ps:                                # the last, partly filled page
            self.kmin[layer, :, :, p0 + full] = keys[:, :, full * ps:].min(axis=2)
            self.kmax[layer, :, :, p0 + full] = keys[:, :, full * ps:].max(axis=2)

    def selected_pages(self, layer, q):
        """The K pages each query head of q (B, nh, 1, hs) reads: (B, nkv, g, K), unordered."""
        n_pages = -(-self.n // self.page_size)
        qg = self._grouped(q)[:, :, :, 0]                            # (B, nkv, g, hs)
        bound = page_upper_bound(qg, self.kmin[layer, :, :, None, :n_pages],
                                 self.kmax[layer, :, :, None, :n_pages])    # (B, nkv, g, P)
        K = min(self.top_pages, n_pages)
        return np.argpartition(bound, n_pages - K, axis=-1)[..., n_pages - K:]

    def _selected(self, layer, q, n_pages):
        B, nh, _, hs = q.shape
        ps, nkv = self.page_size, self.n_kv_head
        top = self.selected_pages(layer, q)                          # (B, nkv, g, K)
        b = np.arange(B)[:, None, None, None]
        h = np.arange(nkv)[None, :, None, None]
        paged = (B, nkv, n_pages, ps, hs)
        keys = self.k[layer, :, :, :n_pages * ps].reshape(paged)[b, h, top]   # (B, nkv, g, K, ps, hs)
        values = self.v[layer, :, :, :n_pages * ps].reshape(paged)[b, h, top]
        S = top.shape[-1] * ps
        visible = (top[..., None] * ps + np.arange(ps)) < self.n      # empty slots of the last page
        # (gathered copies) what lies in the empty slots may be NaN or inf, and a zero probability
        # times NaN is NaN
        keys[~visible] = values[~visible] = 0
        o = _attention(q.reshape(B, nh, 1, 1, hs), keys.reshape(B, nh, S, hs), values.reshape(B, nh, S, hs),
                       visible.reshape(B, nh, 1, 1, S))
        return o.reshape(q.shape)


class PagedKVCache:
    """Many sequences' keys and values in one pool of fixed-size blocks (Kwon et al. 2023,
    arXiv:2309.06180).

    The pool holds ``num_blocks`` blocks of ``block_size`` positions per layer. Each sequence has
    a block table (its logical block i lives in physical block ``tables[seq][i]``) and a length;
    blocks come from a free list when a sequence grows into a new one, so only a sequence's last
    block is partly filled (waste < block_size positions per sequence). :meth:`fork` starts a
    sequence that shares another's first positions: their blocks get a second reference instead
    of a copy. A block with more than one reference is copied before anyone writes into it
    (copy-on-write), and :meth:`free` returns the blocks whose count drops to zero to the free
    list.

    ``batch(seq_ids)`` is the cache object a forward of those sequences takes (rows in that
    order); their lengths may differ, and each row's tokens get that sequence's positions. A
    decoding step reads each row's blocks in place through its table
    (``models.paged_attention``, on the numba backend); a prompt gathers them into one array.
    """

    def __init__(self, n_layer, n_kv_head, head_dim, *, num_blocks, block_size=16, dtype=np.float32):
        cls = type(self).__name__
        self.n_layer = _positive_int("n_layer", n_layer, cls)
        self.n_kv_head = _positive_int("n_kv_head", n_kv_head, cls)
        self.head_dim = _positive_int("head_dim", head_dim, cls)
        self.num_blocks = _positive_int("num_blocks", num_blocks, cls)
        self.block_size = _positive_int("block_size", block_size, cls)
        self.dtype = np.dtype(dtype)
        # (layer, head, block, offset, d): a gather of blocks for all heads is one fancy index
        shape = (self.n_layer, self.n_kv_head, self.num_blocks, self.block_size, self.head_dim)
        self.k = np.zeros(shape, self.dtype)
        self.v = np.zeros(shape, self.dtype)
        self.refcount = np.zeros(self.num_blocks, np.int64)
        self.free_blocks = list(range(self.num_blocks - 1, -1, -1))   # a stack: pop() gives the lowest id
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self.copies = 0                                               # copy-on-write copies made
        self._next_seq = 0

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int = 16):
        return cls(**model_dims(model), num_blocks=num_blocks, block_size=block_size)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def block_bytes(self) -> int:
        """Bytes of one block over all layers, keys and values."""
        return self.nbytes // self.num_blocks

    @property
    def used_bytes(self) -> int:
        """Bytes of the blocks in use (shared blocks once)."""
        return (self.num_blocks - len(self.free_blocks)) * self.block_bytes

    def blocks_for(self, n_positions: int) -> int:
        return -(-n_positions // self.block_size)

    def add_sequence(self) -> int:
        """A new, empty sequence; returns its id."""
        seq = self._next_seq
        self._next_seq += 1
        self.tables[seq], self.lengths[seq] = [], 0
        return seq

    def fork(self, seq: int, n_tokens: int | None = None) -> int:
        """A new sequence whose first ``n_tokens`` positions (default: all of ``seq``) are those of
        ``seq``, sharing its blocks (each gets one more reference); returns its id."""
        self._check_seq(seq)
        n = self.lengths[seq] if n_tokens is None else n_tokens
        if not isinstance(n, (int, np.integer)) or not 0 <= n <= self.lengths[seq]:
            raise ValueError(f"PagedKVCache.fork: n_tokens={n_tokens!r} must be in [0, {self.lengths[seq]}], "
                             f"the length of sequence {seq}")
        shared = self.tables[seq][:self.blocks_for(n)]
        self.refcount[shared] += 1
        new = self.add_sequence()
        self.tables[new], self.lengths[new] = list(shared), int(n)
        return new

    def free(self, seq: int) -> None:
        """Retire ``seq``: drop its references; blocks no one references go back to the free list."""
        self._check_seq(seq)
        for block in self.tables.pop(seq):
            self.refcount[block] -= 1
            if self.refcount[block] == 0:
                self.free_blocks.append(block)
        del self.lengths[seq]

    def batch(self, seq_ids) -> "PagedBatch":
        return PagedBatch(self, seq_ids)

    def _check_seq(self, seq):
        if seq not in self.tables:
            raise KeyError(f"PagedKVCache: no sequence {seq!r}; live sequences: {sorted(self.tables)}")

    def _writable_blocks(self, seqs, T):
        """Make room for T more positions in each of ``seqs``: copy shared blocks about to be
        written (copy-on-write) and allocate new ones. Checks first that the free list suffices,
        so an error leaves the cache as it was."""
        refs = self.refcount.copy()
        need = 0
        for seq in seqs:
            n, table = self.lengths[seq], self.tables[seq]
            if n % self.block_size and refs[table[n // self.block_size]] > 1:
                refs[table[n // self.block_size]] -= 1
                need += 1                                             # a copy of the shared last block
            need += self.blocks_for(n + T) - len(table)
        if need > len(self.free_blocks):
            raise RuntimeError(
                f"PagedKVCache: out of blocks: {len(seqs)} sequence(s) need {need} more blocks of "
                f"{self.block_size} positions for {T} new token(s) each, {len(self.free_blocks)} of "
                f"{self.num_blocks} are free; free finished sequences or build the cache with more num_blocks")
        for seq in seqs:
            n, table = self.lengths[seq], self.tables[seq]
            i = n // self.block_size
            if n % self.block_size and self.refcount[table[i]] > 1:
                old, new = table[i], self.free_blocks.pop()
                self.k[:, :, new] = self.k[:, :, old]
                self.v[:, :, new] = self.v[:, :, old]
                self.refcount[old] -= 1
                self.refcount[new] = 1
                table[i] = new
                self.copies += 1
            while len(table) < self.blocks_for(n + T):
                new = self.free_blocks.pop()
                self.refcount[new] = 1
                table.append(new)
            self.lengths[seq] = n + T


class PagedBatch(KVCache):
    """Sequences of a :class:`PagedKVCache` as the cache of one forward (rows in ``seq_ids`` order)."""

    def __init__(self, cache: PagedKVCache, seq_ids):
        super().__init__(cache.n_layer, cache.n_kv_head, cache.head_dim, cache.dtype)
        self.cache = cache
        self.seq_ids = [int(s) for s in seq_ids]
        if not self.seq_ids or len(set(self.seq_ids)) != len(self.seq_ids):
            raise ValueError(f"PagedKVCache.batch: give distinct sequence ids, got {list(seq_ids)}")
        for s in self.seq_ids:
            cache._check_seq(s)

    def begin(self, B, T, max_position=None):
        self._check_begin(B, T, len(self.seq_ids))
        c = self.cache
        old = np.array([c.lengths[s] for s in self.seq_ids])
        self._check_positions(old.max() + T - 1, max_position)
        c._writable_blocks(self.seq_ids, T)
        tables = [c.tables[s] for s in self.seq_ids]
        width = max(len(t) for t in tables)
        self._table = np.array([t + [0] * (width - len(t)) for t in tables])   # padding is masked
        self._positions = old[:, None] + np.arange(T)               # (B, T)
        rows = np.arange(B)[:, None]
        self._blocks = self._table[rows, self._positions // c.block_size]
        self._offsets = self._positions % c.block_size
        return self._positions

    def attend(self, layer, q, k, v):
        """Write each row's keys and values into its blocks, then attend: one query per row (a
        decoding step) reads the blocks in place (``paged_decode``); a prompt gathers them."""
        c = self.cache
        B, nh, T, hs = q.shape
        self._check_attend(layer, q, k, v, len(self.seq_ids))
        c.k[layer][:, self._blocks, self._offsets] = k.transpose(1, 0, 2, 3)   # (nkv, B, T, hs)
        c.v[layer][:, self._blocks, self._offsets] = v.transpose(1, 0, 2, 3)
        if T == 1:
            o = paged_decode(self._grouped(q)[:, :, :, 0], c.k[layer], c.v[layer], self._table,
                             self._positions[:, 0] + 1)                         # (B, nkv, g, hs)
            return o.reshape(q.shape)
        S = self._table.shape[1] * c.block_size
        keys = c.k[layer][:, self._table].reshape(c.n_kv_head, B, S, hs)      # gathered blocks
        values = c.v[layer][:, self._table].reshape(c.n_kv_head, B, S, hs)
        qg = self._grouped(q).transpose(1, 0, 2, 3, 4)                        # (nkv, B, g, T, hs)
        if B == 1:                          # one sequence (a prompt): causal over its n + T keys
            n = self._positions[0, -1] + 1
            o = _causal_attention(qg, keys[:, :, :n], values[:, :, :n])
        else:                               # row b's query t sees its keys 0 .. positions[b, t]
            allowed = (np.arange(S) <= self._positions[..., None])[None, :, None]   # (1, B, 1, T, S)
            o = _attention(qg, keys, values, allowed)
        return o.transpose(1, 0, 2, 3, 4).reshape(q.shape)


class LinearAttentionCache(KVCache):
    """Linear attention's recurrent state in place of keys and values (Katharopoulos et al. 2020,
    arXiv:2006.16236): per layer S = Σ φ(k_t) v_tᵀ and z = Σ φ(k_t) over the positions so far
    (``models.attention.linear_attention_recurrent``), batch · n_kv_head · head_dim ·
    (head_dim + 1) numbers per layer whatever the length. Positions are counted up to
    ``max_len`` (the model's learned position embeddings end at block_size)."""

    attentions = ("linear",)

    def __init__(self, n_layer, n_kv_head, head_dim, *, max_len, batch_size=1, dtype=np.float32):
        super().__init__(n_layer, n_kv_head, head_dim, dtype)
        cls = type(self).__name__
        self.max_len = _positive_int("max_len", max_len, cls)
        self.batch_size = _positive_int("batch_size", batch_size, cls)
        self.reset()

    @classmethod
    def for_model(cls, model, batch_size: int = 1, max_len: int | None = None):
        return cls(**model_dims(model), batch_size=batch_size,
                   max_len=model.config.block_size if max_len is None else max_len)

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        d = self.head_dim
        return self.n_layer * self.batch_size * self.n_kv_head * d * (d + 1) * self.dtype.itemsize

    @property
    def used_bytes(self) -> int:
        return self.nbytes

    def room(self) -> int:
        return self.max_len - self.n

    def reset(self) -> None:
        self.n = 0
        self.state = [None] * self.n_layer

    def begin(self, B, T, max_position=None):
        self._check_begin(B, T, self.batch_size)
        if self.n + T > self.max_len:
            raise ValueError(f"LinearAttentionCache: holds {self.n} positions; {T} more exceed max_len="
                             f"{self.max_len}; reset() it and start again from the last tokens")
        self._check_positions(self.n + T - 1, max_position)
        self.n += T
        return np.arange(self.n - T, self.n)

    def attend(self, layer, q, k, v):
        self._check_attend(layer, q, k, v, self.batch_size)
        o, self.state[layer] = linear_attention_recurrent(q, k, v, self.state[layer])
        return o.astype(self.dtype, copy=False)
