"""A GPT language model in one readable file, on minigrad's autodiff core.

Follows the design of nanoGPT's ``model.py`` (Karpathy), i.e. GPT-2 (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners"): token + position embeddings,
pre-LayerNorm transformer blocks, a fused q/k/v projection, causal self-attention, a GELU MLP of
width 4C, a final LayerNorm and an output head tied to the token embedding. Residual output
projections start with std 0.02/sqrt(2·n_layer) (GPT-2 §2.3). Attention is "Attention Is All You
Need" (Vaswani et al. 2017, arXiv:1706.03762) scaled dot-product attention.

``generate`` decodes with a KV cache (as in Pope et al. 2022, "Efficiently Scaling Transformer
Inference", arXiv:2211.05102): each new token runs the network on that one position and attends
to the keys/values of all earlier positions, kept per layer: o_t = softmax(q_t·K_{≤t}ᵀ/√d)·V_{≤t}.
The cache is an object with a policy (``models/kv_cache.py``: dense, StreamingLLM, Quest, paged,
linear attention's state) that ``forward(idx, cache=cache)`` takes; it assigns the new tokens'
positions and does their attention. Dense cached logits equal a full forward (tests/test_gpt.py).

``GPTConfig(attention=..., n_kv_head=...)`` swaps the attention for a variant of
``models/attention.py``: grouped-query (n_kv_head key/value heads), linear attention, MoBA or
NSA. The defaults ("mha", n_kv_head = n_head) are the model above, parameter for parameter.

``param_blocks`` describes the model to name-keyed optimizers: the embeddings, each layer, the
final norm, with a role per parameter and the fused q/k/v weight split into three matrices.

Legend: B = batch, T = time (sequence), C = channels (n_embd), V = vocab, nh = heads, hs = C/nh.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

import minigrad
import minigrad.functional as F
from minigrad import nn

from models.attention import ATTENTIONS, NSA, grouped_query_attention, linear_attention, moba_attention
from models.kv_cache import DenseKVCache, LinearAttentionCache, StreamingLLMCache, cache_for
from models.textgen import check_sampling, sample_next

__all__ = ["GPTConfig", "GPT", "PRESETS", "preset"]


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: int = 65
    dropout: float = 0.0
    bias: bool = True
    checkpoint: bool = False    # activation checkpointing of each block in training (minigrad.checkpoint)
    # attention variant (models/attention.py): "mha" softmax, "linear", "moba" or "nsa"
    attention: str = "mha"
    n_kv_head: int | None = None  # key/value heads, dividing n_head (1: multi-query); None = n_head
    moba_block: int = 16          # MoBA: keys per block
    moba_topk: int = 3            # MoBA: blocks each query attends, its own included
    nsa_cmp_block: int = 8        # NSA: keys per compressed block (l)
    nsa_cmp_stride: int = 4       # NSA: stride between compressed blocks (d <= l)
    nsa_slc_block: int = 8        # NSA: keys per selection block (l')
    nsa_slc_topn: int = 4         # NSA: selected blocks per query (n >= 3: initial + 2 local included)
    nsa_window: int = 32          # NSA: sliding-window length (w)

    def __post_init__(self):
        sizes = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "moba_block", "moba_topk",
                 "nsa_cmp_block", "nsa_cmp_stride", "nsa_slc_block", "nsa_slc_topn", "nsa_window")
        for name in sizes + (("n_kv_head",) if self.n_kv_head is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
                raise ValueError(f"GPTConfig.{name}={v!r} must be a positive integer")  # (True is an int)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_head={self.n_head} must be divisible by n_kv_head="
                             f"{self.n_kv_head} (each key/value head serves n_head/n_kv_head query heads)")
        # bool is an int: dropout=True would pass as 1; a string, None or a truthy "no" for the
        # flags would fail later or build what was not asked for
        number = isinstance(self.dropout, (int, float, np.integer, np.floating))
        if not number or isinstance(self.dropout, (bool, np.bool_)):
            raise ValueError(f"GPTConfig.dropout={self.dropout!r} must be a number in [0, 1), "
                             f"not a {type(self.dropout).__name__}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout={self.dropout} must be in [0, 1)")
        for name in ("bias", "checkpoint"):
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"GPTConfig.{name}={v!r} must be True or False, not a {type(v).__name__}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"GPTConfig.attention={self.attention!r}; choose one of {', '.join(ATTENTIONS)}")
        if self.attention == "moba" and self.moba_block >= self.block_size:
            raise ValueError(f"GPTConfig: moba_block={self.moba_block} must be smaller than block_size="
                             f"{self.block_size}, or one block holds the whole context (full attention)")
        if self.attention == "nsa":
            if self.nsa_cmp_stride > self.nsa_cmp_block:
                raise ValueError(f"GPTConfig: nsa_cmp_stride={self.nsa_cmp_stride} exceeds nsa_cmp_block="
                                 f"{self.nsa_cmp_block}: keys between compressed blocks would be skipped")
            if self.nsa_slc_topn < 3:
                raise ValueError(f"GPTConfig: nsa_slc_topn={self.nsa_slc_topn} must be >= 3: the initial "
                                 "block and the 2 local blocks are always selected")
            if max(self.nsa_cmp_block, self.nsa_slc_block) > self.block_size:
                raise ValueError(f"GPTConfig: nsa_cmp_block={self.nsa_cmp_block} and nsa_slc_block="
                                 f"{self.nsa_slc_block} must not exceed block_size={self.block_size}")

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (n_kv_head, or n_head when it is None)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GPTConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


# Model shape plus the batch size it is trained with.
PRESETS = {
    "tiny":   dict(config=dict(n_layer=2, n_head=4, n_embd=64, block_size=64), batch_size=32),
    "small":  dict(config=dict(n_layer=4, n_head=4, n_embd=128, block_size=128), batch_size=16),
    "medium": dict(config=dict(n_layer=6, n_head=6, n_embd=384, block_size=256), batch_size=8),
}


def preset(name: str, **overrides) -> tuple[GPTConfig, int]:
    """``(GPTConfig, batch_size)`` for a preset name; ``overrides`` replace config fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    return GPTConfig(**{**p["config"], **overrides}), p["batch_size"]


class CausalSelfAttention(nn.Module):
    """Causal self-attention with ``n_kv_head`` key/value heads and the variant
    ``config.attention`` (models/attention.py).

    ``c_attn`` projects x to q | k | v by rows: the C query rows, then n_kv_head·hs key rows and
    as many value rows (3C rows when n_kv_head = n_head, the GPT-2 layout). NSA adds the
    submodule ``nsa`` (its gate and block compressors)."""

    def __init__(self, cfg: GPTConfig, dtype, rng):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.kv_heads
        self.head_size = cfg.n_embd // cfg.n_head
        self.n_embd = cfg.n_embd
        self.block_size = cfg.block_size
        self.dropout = cfg.dropout
        self.attention = cfg.attention
        self.moba = dict(block=cfg.moba_block, topk=cfg.moba_topk)
        kv = self.n_kv_head * self.head_size
        # fused q | k | v
        self.c_attn = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * kv, bias=cfg.bias, dtype=dtype, rng=rng)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias, dtype=dtype, rng=rng)
        if cfg.attention == "nsa":
            self.nsa = NSA(cfg.n_embd, cfg.n_head, self.head_size, cmp_block=cfg.nsa_cmp_block,
                           cmp_stride=cfg.nsa_cmp_stride, slc_block=cfg.nsa_slc_block,
                           slc_topn=cfg.nsa_slc_topn, window=cfg.nsa_window, bias=cfg.bias,
                           dtype=dtype, rng=rng)

    def forward(self, x, cache=None, rng=None):
        """x: (B, T, C). ``cache`` is None (training) or this layer's handle on a cache object
        (``models/kv_cache.py``, see `_attend_cached`)."""
        qkv = self.c_attn(x)                                         # (B, T, C + 2·n_kv_head·hs)
        if cache is not None:
            y = self._attend_cached(x, qkv, cache)                   # (B, T, C)
        elif self.attention == "mha" and self.n_kv_head == self.n_head:
            # split into heads, causal attention, merge heads: one op (llm.c's attention_forward)
            y = F.qkv_attention(qkv, self.n_head, causal=True)       # (B, T, C)
        else:
            y = self._mix(x, *self._split_heads(qkv))                # (B, nh, T, hs)
            y = y.permute(0, 2, 1, 3).reshape(x.shape)               # merge heads: (B, T, C)
        y = self.c_proj(y)                                           # (B, T, C)
        if self.dropout and self.training:
            y = F.dropout(y, self.dropout, True, rng)
        return y

    def _split_heads(self, qkv):
        """qkv (B, T, ·), a Tensor or an array -> q (B, nh, T, hs), k and v (B, n_kv_head, T, hs)."""
        B, T, _ = qkv.shape
        C, kv, hs = self.n_embd, self.n_kv_head * self.head_size, self.head_size
        parts = ((0, C, self.n_head), (C, C + kv, self.n_kv_head), (C + kv, C + 2 * kv, self.n_kv_head))
        heads = [qkv[:, :, a:b].reshape(B, T, h, hs) for a, b, h in parts]
        if isinstance(qkv, minigrad.Tensor):
            return [x.permute(0, 2, 1, 3) for x in heads]
        return [x.transpose(0, 2, 1, 3) for x in heads]

    def _mix(self, x, q, k, v):
        """The variant's attention of q (B, nh, Tq, hs) over k, v (B, n_kv_head, Tk, hs), queries
        at the last Tq positions; x (B, Tq, C) is the attention input (NSA's gates read it)."""
        if self.attention == "mha":
            return grouped_query_attention(q, k, v)
        if self.attention == "linear":
            return linear_attention(q, k, v)
        if self.attention == "moba":
            return moba_attention(q, k, v, **self.moba)
        return self.nsa(x, q, k, v)

    def _attend_cached(self, x, qkv, cache):
        """Generation: this call's positions attend through ``cache``, this layer's handle on a
        cache object (``models/kv_cache.py``). For softmax attention (any n_kv_head) and linear
        attention the cache stores the keys and values (or folds them into its recurrent state)
        and attends by its policy; MoBA and NSA select among every cached key themselves, over
        the dense cache's views. Inference only: it works on the arrays, outside the graph."""
        B, T, C = x.shape
        q, k, v = self._split_heads(qkv.data)                        # (B, heads, T, hs)
        if self.attention in ("moba", "nsa"):
            keys, values = cache.append(k, v)                        # (B, n_kv_head, n, hs) views
            y = self._mix(x, *(minigrad.Tensor(a) for a in (q, keys, values))).data
        else:
            y = cache.attend(q, k, v)                                # (B, nh, T, hs)
        return minigrad.Tensor(y.transpose(0, 2, 1, 3).reshape(B, T, C))  # merge heads


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig, dtype, rng):
        super().__init__()
        self.dropout = cfg.dropout
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias, dtype=dtype, rng=rng)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias, dtype=dtype, rng=rng)

    def forward(self, x, rng=None):
        x = F.gelu(self.c_fc(x))                                     # (B, T, 4C); tanh form, as GPT-2
        x = self.c_proj(x)                                           # (B, T, C)
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True, rng)
        return x


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, dtype, rng):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.attn = CausalSelfAttention(cfg, dtype, rng)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.mlp = MLP(cfg, dtype, rng)

    def forward(self, x, cache=None, rng=None):
        x = x + self.attn(self.ln_1(x), cache=cache, rng=rng)        # pre-LN residual
        x = x + self.mlp(self.ln_2(x), rng=rng)
        return x


#: roles (minigrad.nn.ROLES) of a layer's weight matrices, by their name inside the layer
LAYER_MATRIX_ROLES = {"attn.c_attn.weight": "attn_qkv", "attn.c_proj.weight": "attn_out",
                      "mlp.c_fc.weight": "mlp_in", "mlp.c_proj.weight": "mlp_out"}


def _room(cache, block_size: int) -> int:
    """Tokens the next forward may bring to ``cache`` for a model of ``block_size`` positions: a
    dense or linear cache counts positions from 0, so one built longer than the model is full at
    block_size too."""
    if isinstance(cache, (DenseKVCache, LinearAttentionCache)):
        return min(cache.room(), block_size - len(cache))
    if isinstance(cache, StreamingLLMCache) and cache.positions == "stream":   # built longer: block_size
        return min(cache.room(), block_size - cache.n_seen)
    return cache.room()


class GPT(nn.Module):
    """``GPT(config, dtype=np.float32, seed=0)``; ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, config: GPTConfig, dtype=np.float32, seed: int = 0):
        super().__init__()
        self.config = config
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        # The GPT-2 init below replaces the embeddings' own N(0, 1) draws. Those come from a
        # generator of their own: without one they would advance minigrad.default_generator (a
        # seeded model must not change what unseeded code draws next), and drawn from `rng` they
        # would shift every weight a seed gives.
        discarded = np.random.default_rng(0)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, dtype=dtype,
                                rng=discarded)                              # tied with the head
        self.wpe = nn.Embedding(config.block_size, config.n_embd, dtype=dtype, rng=discarded)
        self.h = nn.ModuleList([Block(config, dtype, rng) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias, dtype=dtype)
        # dropout masks come from this generator; its state is part of a checkpoint
        self.dropout_rng = np.random.default_rng(seed + 1)

        # GPT-2 init: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02/sqrt(2L)).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                std = 0.02 / math.sqrt(2 * config.n_layer)
            else:
                std = 0.02
            if name.endswith(".bias"):
                p.data[...] = 0
            elif ".ln_" in name or name.startswith("ln_"):
                p.data[...] = 1
            else:
                p.data[...] = rng.normal(0.0, std, size=p.shape).astype(self.dtype)

    def forward(self, idx, targets=None, cache=None):
        """idx: int array (B, T) -> logits (B, T, V); loss = mean cross-entropy if targets given.

        ``cache`` (an object of ``models/kv_cache.py``, e.g. ``cache_for(model, batch_size=B)``)
        makes this a generation step, under ``minigrad.no_grad()``: the T tokens come after the
        positions the cache holds, at the positions it assigns, and attend through it."""
        idx = np.asarray(idx.data if isinstance(idx, minigrad.Tensor) else idx)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"GPT.forward: idx must be an integer array (B, T), got {idx.dtype} {idx.shape}")
        B, T = idx.shape
        if B == 0 or T == 0:     # (MoBA would fail in a reshape, the loss would be a mean of nothing: NaN)
            raise ValueError(f"GPT.forward: idx of shape {idx.shape} is empty; give at least one sequence "
                             "of at least one token")
        bs = self.config.block_size
        if cache is None and T > bs:
            raise ValueError(f"GPT.forward: positions 0..{T - 1} exceed block_size={bs}; crop the input "
                             f"to the last {bs} tokens")
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"GPT.forward: token ids must be in [0, {self.config.vocab_size}), "
                             f"got [{idx.min()}, {idx.max()}]")
        pos = np.arange(T) if cache is None else self._cache_positions(cache, B, T)
        tok_emb = F.embedding(idx, self.wte.weight)                  # (B, T, C)
        pos_emb = F.embedding(pos, self.wpe.weight)                  # (T, C), or (B, T, C) per row
        x = tok_emb + pos_emb                                        # (B, T, C)
        if self.config.dropout and self.training:
            x = F.dropout(x, self.config.dropout, True, self.dropout_rng)
        for i, block in enumerate(self.h):
            if self.config.checkpoint and cache is None and minigrad.is_grad_enabled():
                x = minigrad.checkpoint(block, x, rng=self.dropout_rng)  # recompute in backward
            else:
                x = block(x, cache=None if cache is None else cache.layer(i), rng=self.dropout_rng)
        x = self.ln_f(x)                                             # (B, T, C)
        logits = F.linear(x, self.wte.weight)                        # (B, T, V), tied head
        loss = None
        if targets is not None:
            targets = np.asarray(targets.data if isinstance(targets, minigrad.Tensor) else targets)
            if targets.shape != (B, T):
                raise ValueError(f"GPT.forward: targets shape {targets.shape} != idx shape {(B, T)}")
            V = self.config.vocab_size
            loss = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))
        return logits, loss

    def _cache_positions(self, cache, B, T):
        """The positions ``cache`` gives the T new tokens of each of the B rows, after checking
        that it fits this model; (T,) or (B, T)."""
        if minigrad.is_grad_enabled():
            raise RuntimeError("GPT: the KV cache is for generation; call it under minigrad.no_grad()")
        cfg = self.config
        if cfg.attention not in cache.attentions:
            raise ValueError(f"GPT: a {type(cache).__name__} serves attention {', '.join(cache.attentions)}; "
                             f"this model's is {cfg.attention!r}: build its cache with "
                             "models.kv_cache.cache_for(model, batch_size)")
        dims = (cache.n_layer, cache.n_kv_head, cache.head_dim)
        if dims != (cfg.n_layer, cfg.kv_heads, cfg.n_embd // cfg.n_head) or cache.dtype not in (
                self.dtype, *((np.float16,) if cache.float16_storage else ())):
            raise ValueError(f"GPT: the cache is for (n_layer, n_kv_head, head_dim, dtype) = {(*dims, cache.dtype)}, "
                             f"this model has {(cfg.n_layer, cfg.kv_heads, cfg.n_embd // cfg.n_head, self.dtype)}; "
                             "build it with the cache class's for_model(model) (float16 instead of the "
                             "model's dtype: DenseKVCache only, not its subclass QuestCache nor other kinds)")
        return cache.begin(B, T, max_position=cfg.block_size)   # (refuses, unchanged, past block_size)

    def heads_held(self) -> tuple[int, int]:
        """(query heads, key/value heads) in this model's attention weights, which per-head
        optimizers (Adam-mini) cut q and k into: the config's (a tensor-parallel shard holds fewer)."""
        return self.config.n_head, self.config.kv_heads

    def param_blocks(self) -> list[nn.ParamBlock]:
        """Blocks, in order: "embeddings" (wte, wpe), one per layer "h.0" ... "h.{L-1}", and
        "head" (ln_f). The output head has no weight of its own: it is tied to wte, so it trains,
        freezes and is scheduled with the "embeddings" block.

        Roles (see minigrad.nn.ROLES): "embedding" (wte, wpe), "norm" (LayerNorm weights and
        biases), "bias" (Linear biases), "attn_qkv" (the fused c_attn.weight), "attn_out",
        "mlp_in", "mlp_out" (`LAYER_MATRIX_ROLES`). Each layer's c_attn.weight (C + 2·kv, C), with
        kv = n_kv_head·hs (= C by default), is split by rows into "q" [0, C), "k" [C, C + kv),
        "v" [C + kv, C + 2·kv) with roles "attn_q", "attn_k", "attn_v" (views by
        optim.split_matrices). NSA's gate and compressors are "linear", "bias" and "embedding"
        (the compressors' intra-block position embedding)."""
        roles = nn.layer_roles(self)
        for name in roles:
            if name.startswith("h."):  # "h.0.attn.c_attn.weight" -> "attn.c_attn.weight"
                roles[name] = LAYER_MATRIX_ROLES.get(name.split(".", 2)[2], roles[name])
        C = self.config.n_embd
        kv = self.config.kv_heads * (C // self.config.n_head)
        qkv = (("q", "attn_q", (0, C)), ("k", "attn_k", (C, C + kv)), ("v", "attn_v", (C + kv, C + 2 * kv)))

        def block(name, prefixes, splits=None):
            names = tuple(n for n in roles if n.startswith(prefixes))
            return nn.ParamBlock(name, names, {n: roles[n] for n in names}, splits or {})

        return [block("embeddings", ("wte.", "wpe.")),
                *(block(f"h.{i}", f"h.{i}.", {f"h.{i}.attn.c_attn.weight": qkv})
                  for i in range(self.config.n_layer)),
                block("head", "ln_f.")]

    def loss_and_grads(self, idx, targets):
        """One forward + backward: ``(loss as float, {name: grad ndarray or None})`` for the
        optimizer. A frozen parameter (``requires_grad_(False)``) has None: no gradient, so the
        optimizer skips it."""
        self.zero_grad()
        _, loss = self(idx, targets)
        loss.backward()
        return float(loss.item()), {n: p.grad for n, p in self.named_parameters()}

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None, rng=None,
                 use_cache: bool = True, cache=None):
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T0); returns (B, T0 + max_new_tokens).

        With ``use_cache`` the prompt is run once and then each new token costs one position,
        through ``cache``: a cache object of ``models/kv_cache.py`` for batch B (reset first;
        default ``cache_for(self, B)``: a dense cache of block_size positions, or linear
        attention's state), e.g. ``StreamingLLMCache.for_model(model, B, window=...)``. When the
        cache has no room left for this model (a dense or linear cache at block_size, even one
        built longer; a StreamingLLMCache with stream positions at block_size), it is reset and
        refilled from the last half of the context (positions restart at 0), so each token costs
        O(block_size) amortised; a StreamingLLMCache with cache positions always has room.
        ``temperature`` 0 means greedy decoding.
        """
        if rng is None:
            rng = np.random.default_rng()
        idx = np.asarray(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):   # as forward: a cast would truncate
            raise ValueError(f"GPT.generate: the prompt must hold integer token ids, got {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.ndim == 1:
            idx = idx[None]
        if idx.shape[1] == 0:
            raise ValueError("GPT.generate: give at least one prompt token")
        check_sampling(temperature, top_k, "GPT.generate")
        if use_cache and cache is not None and not isinstance(
                cache, (DenseKVCache, StreamingLLMCache, LinearAttentionCache)):
            raise TypeError(f"GPT.generate: cache must be one batch's cache (dense, Quest, StreamingLLM or "
                            f"linear), got {type(cache).__name__}; serve paged sequences with models.serving")
        bs = self.config.block_size
        was_training = self.training
        self.eval()
        out = idx
        try:
            with minigrad.no_grad():
                if use_cache:
                    cache = cache_for(self, idx.shape[0]) if cache is None else cache
                    cache.reset()
                    pending = out[:, -min(bs, _room(cache, bs)):]              # prefill
                for _ in range(max_new_tokens):
                    if not use_cache:
                        logits, _ = self(out[:, -bs:])
                    else:
                        if _room(cache, bs) == 0:            # full: refill from the last half
                            cache.reset()
                            pending = out[:, -min(max(1, bs // 2), _room(cache, bs)):]
                        logits, _ = self(pending, cache=cache)
                    nxt = sample_next(logits.data[:, -1, :], temperature, top_k, rng)
                    out = np.concatenate([out, nxt[:, None]], axis=1)
                    pending = nxt[:, None]
        finally:
            self.train(was_training)
        return out
