"""Tensor parallelism: every layer's matrices split across t workers (Megatron-LM: Shoeybi et al.
2019, "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model Parallelism",
arXiv 1909.08053, §3).

Each of the t ranks of a communicator holds one shard of every transformer layer and runs the
whole batch through it; the shards meet in one all-reduce per sub-layer:

    MLP        Z = GeLU(X A) B.  A (C -> 4C) is split by output columns, A = [A_1 ... A_t]: rank r
               computes Y_r = GeLU(X A_r) with no communication (GeLU is elementwise, so it
               applies to each column block alone). B (4C -> C) is split by input rows, so rank r
               holds B_r and computes the partial product Y_r B_r; Z = sum_r Y_r B_r is an
               all-reduce. The bias of A is split with its columns; the bias of B is added once,
               after the sum.
    attention  the heads are split: rank r holds the q, k and v columns of heads
               r·nh/t .. (r+1)·nh/t - 1 (one column block of each of q, k, v in the fused c_attn
               weight) and attends with them alone; the output projection is split by input rows
               (the columns of those heads' outputs), so its partial products are all-reduced.
    replicated the token and position embeddings, the output head (tied to the token embedding),
               every LayerNorm, the residual stream, the loss, and the biases added after an
               all-reduce: every rank holds them whole and computes them identically. (Megatron
               also splits the embedding by vocabulary; a character vocabulary is too small for
               that to pay.)

The two communication operators, as autodiff Functions (the paper's f and g):

    f = CopyToTensorParallel     before a column-split layer (c_attn, c_fc):
        forward:  y = x                          (every rank already holds the same x)
        backward: dx = allreduce(dy)             (each rank's shard contributes a part of dx)
    g = ReduceFromTensorParallel after a row-split layer (attn.c_proj, mlp.c_proj):
        forward:  y = allreduce(x)               (the sum of the partial products)
        backward: dx = dy                        (every rank needs the whole dy for its shard)

A transformer layer is therefore  x -> LN -> f -> [c_attn_r, heads_r, c_proj_r] -> g -> +x ->
LN -> f -> [c_fc_r, GeLU, c_proj_r] -> g -> +x : two all-reduces in forward (the g's) and two in
backward (the f's), each of the (B, T, C) activation, so a training step sends per rank

    4 · n_layer · 2(t-1)/t · B·T·C values      (ring all-reduce)

and nothing else but one scalar for the gradient norm (``clip_grad_norm_tp``). With activation
checkpointing (``config.checkpoint``) the backward recomputes each layer's forward, g's and all:
6 · n_layer all-reduces instead of 4.

Gradients of the replicated parameters need no all-reduce: the g's give every rank the same
activations bit for bit (the ring all-reduce of ``optim.dist.comm`` adds in one order and hands
every rank the same result), the replicated layers then compute the same outputs from the same
weights, and in backward the f's give every rank the same gradient entering the replicated
region. So the embedding, head, LayerNorm and post-all-reduce bias gradients are identical on all
ranks, and every rank's optimizer takes the same step with them. Dropout (at the embeddings and
after each g) lies in the replicated region too: every rank draws the same masks from the same
``dropout_rng``, the masks one process draws.

What the optimizer sees. Each rank's optimizer holds its own shard and the replicated
parameters under the single-process names (``h.0.mlp.c_fc.weight`` is the (4C/t, C) row block).
An elementwise optimizer (SGD, Adam, AdamW, Lion...) on a shard does exactly what it does to
those rows of the full matrix, weight decay included (a shard of a matrix is still a matrix, so
``param_groups_no_decay`` puts it in the same group). What needs the whole tensor does not:
gradient clipping needs the global norm, and ``clip_grad_norm_tp`` computes it (the sharded
parameters' squares all-reduced, the replicated ones counted once); optimizers that look at a
whole matrix (Muon, Shampoo, LAMB's trust ratio) would see only a shard and are not equal to one
process here. Adam-mini cuts q and k into the shard's n_head/t heads (``heads_held``, which
``build_optimizer`` reads), so its blocks are one process's except the row-parallel c_proj
weights' per-row blocks, whose input columns the ranks split: not equal either.

    from optim.dist.comm import SimComm
    def worker(comm):
        model = TensorParallelGPT(config, comm, dtype=np.float64, seed=0)   # = GPT(config, seed=0)
        ...train with models.training.Trainer, grad_hooks=[clip_grad_norm_tp(model, 1.0)]...
        return gather_state_dict(model.state_dict(), comm)                 # loads into a GPT
    SimComm(2).run(worker)

Checkpoints: every rank holds another shard under the same names and shapes, so each rank saves
into its own directory, ``rank_dir(save_dir, comm.rank)`` with ``save_meta={"world_size":
comm.size, "rank": comm.rank}``, and resumes with ``restore_ranks(trainer, comm, save_dir)``
(``models.training.distributed``), as a pipeline's stages do. The checkpoint records the shard
(``shard_meta()``: tp_rank, tp_size) and a restore into another rank's model is refused.

Generation (the KV cache) is not parallelised: gather the weights into a ``GPT`` to sample.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import minigrad.functional as F
from minigrad import nn
from minigrad.tensor import Function, no_matmul_flops
from models.gpt import GPT, Block, GPTConfig
from models.training.trainer import clip_grad_norm_over_ranks

__all__ = ["CopyToTensorParallel", "ReduceFromTensorParallel", "copy_to_tensor_parallel",
           "reduce_from_tensor_parallel", "ColumnParallelLinear", "RowParallelLinear",
           "TensorParallelGPT", "check_tp_degree", "sharding", "shard_state_dict", "gather_state_dict",
           "clip_grad_norm_tp", "tp_all_reduces_per_layer", "tp_bytes_per_step"]


# ================================================================ the f and g operators
class CopyToTensorParallel(Function):
    """Megatron's f: identity in forward, all-reduce (sum) of the gradient in backward."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, x, *, comm):
        ctx.comm = comm
        return x

    @staticmethod
    def backward(ctx, g):
        return (ctx.comm.allreduce(g),)


class ReduceFromTensorParallel(Function):
    """Megatron's g: all-reduce (sum) in forward, identity for the gradient in backward."""

    flops = staticmethod(no_matmul_flops)

    @staticmethod
    def forward(ctx, x, *, comm):
        return comm.allreduce(x)

    @staticmethod
    def backward(ctx, g):
        return (g,)


def copy_to_tensor_parallel(x, comm):
    """f(x): ``x`` in forward; its gradient summed over ``comm``'s ranks in backward."""
    return CopyToTensorParallel.apply(x, comm=comm)


def reduce_from_tensor_parallel(x, comm):
    """g(x): ``x`` summed over ``comm``'s ranks in forward; the gradient passed through in backward."""
    return ReduceFromTensorParallel.apply(x, comm=comm)


# ================================================================ layers
class ColumnParallelLinear(nn.Module):
    """``Linear(in_features, out_features)`` with the output features split over ``comm``'s ranks:
    this rank holds ``out_features / size`` rows of the (out, in) weight and of the bias, and
    computes its slice of the output, ``f(x) W_rᵀ + b_r``, from the whole input."""

    own_param_roles = {"weight": "linear", "bias": "bias"}

    def __init__(self, in_features, out_features, comm, bias=True, dtype=np.float32):
        super().__init__()
        self.comm = comm
        local = out_features // comm.size
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(np.zeros((local, in_features), dtype=dtype))
        self.bias = nn.Parameter(np.zeros(local, dtype=dtype)) if bias else None

    def forward(self, x):
        return F.linear(copy_to_tensor_parallel(x, self.comm), self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"({self.weight.shape[0]} on this rank), bias={self.bias is not None}")


class RowParallelLinear(nn.Module):
    """``Linear(in_features, out_features)`` with the input features split over ``comm``'s ranks:
    this rank holds ``in_features / size`` columns of the (out, in) weight and takes its slice of
    the input; the partial products are summed by ``g``, then the whole (replicated) bias added."""

    own_param_roles = {"weight": "linear", "bias": "bias"}

    def __init__(self, in_features, out_features, comm, bias=True, dtype=np.float32):
        super().__init__()
        self.comm = comm
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(np.zeros((out_features, in_features // comm.size), dtype=dtype))
        self.bias = nn.Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        y = reduce_from_tensor_parallel(F.linear(x, self.weight), self.comm)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return (f"in_features={self.in_features} ({self.weight.shape[1]} on this rank), "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class ParallelSelfAttention(nn.Module):
    """``models.gpt.CausalSelfAttention`` over this rank's ``n_head / size`` heads."""

    def __init__(self, cfg: GPTConfig, comm, dtype):
        super().__init__()
        self.n_head = cfg.n_head // comm.size           # heads on this rank
        self.dropout = cfg.dropout
        self.c_attn = ColumnParallelLinear(cfg.n_embd, 3 * cfg.n_embd, comm, cfg.bias, dtype)
        self.c_proj = RowParallelLinear(cfg.n_embd, cfg.n_embd, comm, cfg.bias, dtype)

    def forward(self, x, cache=None, rng=None):
        if cache is not None:
            raise NotImplementedError("TensorParallelGPT does not generate with a KV cache; load "
                                      "gather_state_dict(model.state_dict(), comm) into a GPT to sample")
        qkv = self.c_attn(x)                          # (B, T, 3C/t): q | k | v of this rank's heads
        y = F.qkv_attention(qkv, self.n_head, causal=True)   # (B, T, C/t)
        y = self.c_proj(y)                            # (B, T, C), all-reduced
        if self.dropout and self.training:
            y = F.dropout(y, self.dropout, True, rng)
        return y


class ParallelMLP(nn.Module):
    """``models.gpt.MLP`` with its 4C hidden units split over the ranks."""

    def __init__(self, cfg: GPTConfig, comm, dtype):
        super().__init__()
        self.dropout = cfg.dropout
        self.c_fc = ColumnParallelLinear(cfg.n_embd, 4 * cfg.n_embd, comm, cfg.bias, dtype)
        self.c_proj = RowParallelLinear(4 * cfg.n_embd, cfg.n_embd, comm, cfg.bias, dtype)

    def forward(self, x, rng=None):
        x = F.gelu(self.c_fc(x))                      # (B, T, 4C/t)
        x = self.c_proj(x)                            # (B, T, C), all-reduced
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, True, rng)
        return x


class ParallelBlock(Block):
    """``models.gpt.Block`` (its forward: pre-LN residuals) around the split attention and MLP."""

    def __init__(self, cfg: GPTConfig, comm, dtype):
        nn.Module.__init__(self)                      # Block.__init__ would build the whole layers
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.attn = ParallelSelfAttention(cfg, comm, dtype)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype)
        self.mlp = ParallelMLP(cfg, comm, dtype)


# ================================================================ the model and its shards
def check_tp_degree(config: GPTConfig, size: int) -> None:
    """Raise ValueError unless ``size`` ranks can split ``config``'s layers evenly: the heads
    (attention is split by whole heads) and with them n_embd and the MLP's 4·n_embd. The layers
    split are GPT-2's: softmax attention with a key/value head per query head."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"tensor parallel: the degree (communicator size) must be an integer >= 1, got {size!r}")
    if config.attention != "mha" or config.kv_heads != config.n_head:
        raise ValueError(f"tensor parallel: splits softmax attention with n_kv_head = n_head (GPT-2's layout); "
                         f"this config has attention={config.attention!r}, n_kv_head={config.n_kv_head}, "
                         f"n_head={config.n_head}")
    if config.n_head % size:
        raise ValueError(
            f"tensor parallel: n_head={config.n_head} heads (n_embd={config.n_embd}, MLP hidden size "
            f"4*n_embd={4 * config.n_embd}) do not split evenly over {size} ranks; use a degree that "
            f"divides n_head={config.n_head}")


#: how each sharded parameter of a layer is cut: (axis of the (out, in) weight or bias, number of
#: fused matrices stacked along it, each cut into ``size`` pieces). The rest are replicated.
SHARDED = {"attn.c_attn.weight": (0, 3), "attn.c_attn.bias": (0, 3),     # q | k | v, by heads
           "attn.c_proj.weight": (1, 1),                                  # by input rows
           "mlp.c_fc.weight": (0, 1), "mlp.c_fc.bias": (0, 1),            # by output columns
           "mlp.c_proj.weight": (1, 1)}                                   # by input rows


def sharding(name: str):
    """``(axis, parts)`` of a sharded parameter of a GPT (see ``SHARDED``); None if replicated."""
    layer, _, rest = name.partition(".")
    if layer != "h" or "." not in rest:
        return None
    return SHARDED.get(rest.split(".", 1)[1])


def _shard(full: np.ndarray, axis: int, parts: int, rank: int, size: int) -> np.ndarray:
    pieces = [np.split(m, size, axis=axis)[rank] for m in np.split(full, parts, axis=axis)]
    return np.concatenate(pieces, axis=axis)


def _join(shards, axis: int, parts: int) -> np.ndarray:
    by_rank = [np.split(s, parts, axis=axis) for s in shards]       # [rank][part]
    return np.concatenate([np.concatenate([r[p] for r in by_rank], axis=axis) for p in range(parts)],
                          axis=axis)


def shard_state_dict(state: Mapping, config: GPTConfig, rank: int, size: int) -> dict:
    """Rank ``rank``'s share of a single-process GPT's ``state`` (name -> array): the sharded
    parameters cut as ``SHARDED`` says, the rest copied. Loads into ``TensorParallelGPT``."""
    check_tp_degree(config, size)
    if not 0 <= rank < size:
        raise ValueError(f"shard_state_dict: rank {rank} is not in 0..{size - 1}")
    out = {}
    for name, a in state.items():
        spec = sharding(name)
        a = np.asarray(a)
        out[name] = a.copy() if spec is None else _shard(a, *spec, rank, size)
    return out


def gather_state_dict(state: Mapping, comm) -> dict:
    """The single-process arrays from every rank's shards: ``state`` is this rank's dict name ->
    array (a ``state_dict()``, or the gradients; None entries stay None). Every rank must call it
    (one all-gather per sharded array) and gets the whole dict."""
    out = {}
    for name, a in state.items():
        spec = sharding(name)
        if a is None or spec is None:
            out[name] = None if a is None else np.array(a, copy=True)
        else:
            out[name] = _join(list(comm.allgather(np.asarray(a))), *spec)
    return out


class TensorParallelGPT(GPT):
    """``models.gpt.GPT`` split over the ranks of ``comm`` (see the module docstring).

    ``TensorParallelGPT(config, comm, dtype, seed)`` holds this rank's shard of
    ``GPT(config, dtype, seed)``, so it starts from the single-process model's weights (each rank
    builds that model once, then keeps its shard); ``state_dict``: a single-process GPT's
    state dict to shard instead. Parameter names are GPT's; forward, ``loss_and_grads`` and
    ``param_blocks`` are GPT's, on the shards. Every rank must run the same batches."""

    def __init__(self, config: GPTConfig, comm, dtype=np.float32, seed: int = 0, state_dict=None):
        check_tp_degree(config, comm.size)
        nn.Module.__init__(self)                      # GPT.__init__ would build the whole layers
        self.config = config
        self.dtype = np.dtype(dtype)
        self.comm = comm
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, dtype=dtype, rng=np.random.default_rng(0))
        self.wpe = nn.Embedding(config.block_size, config.n_embd, dtype=dtype, rng=np.random.default_rng(0))
        self.h = nn.ModuleList([ParallelBlock(config, comm, dtype) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias, dtype=dtype)
        self.dropout_rng = np.random.default_rng(seed + 1)   # as GPT's: the masks one process draws
        if state_dict is None:
            state_dict = GPT(config, dtype=dtype, seed=seed).state_dict()
        self.load_state_dict(shard_state_dict(state_dict, config, comm.rank, comm.size))

    def heads_held(self) -> tuple[int, int]:
        """(query heads, key/value heads) in this rank's shard: n_head / t of each. Adam-mini's
        per-head blocks of q and k are cut by these (with the config's n_head a block was a
        fraction of a head)."""
        heads = self.config.n_head // self.comm.size
        return heads, heads

    def shard_meta(self) -> dict:
        """Which shard this is, recorded in its checkpoints: a restore into another rank's model
        is refused (the shards have the same names and shapes on every rank)."""
        return {"tp_rank": int(self.comm.rank), "tp_size": int(self.comm.size)}

    def param_blocks(self) -> list[nn.ParamBlock]:
        """GPT's blocks, with each layer's fused q/k/v shard split into its q, k and v rows."""
        c = self.config.n_embd // self.comm.size
        qkv = tuple((part, f"attn_{part}", (i * c, (i + 1) * c)) for i, part in enumerate("qkv"))
        return [nn.ParamBlock(b.name, b.params, b.roles, {n: qkv for n in b.splits})
                for b in super().param_blocks()]


# ================================================================ training helpers
def clip_grad_norm_tp(model: TensorParallelGPT, max_norm: float, norm_type: float = 2.0, eps: float = 1e-6):
    """A Trainer gradient hook: ``models.training.clip_grad_norm`` for a tensor-parallel model.

    The norm is the single-process model's: ``(allreduce(sum of |g|^p over this rank's shards)
    + sum of |g|^p over the replicated parameters)^(1/p)`` -- the replicated gradients are the
    same on every rank, so they are counted once, not all-reduced. One all-reduce of one number
    per step; every rank gets the same norm and scales by the same factor (torch's
    min(1, max_norm / (norm + eps))). ``hook.last_norm`` keeps the norm before clipping."""
    return clip_grad_norm_over_ranks(model.comm, lambda n: "replicated" if sharding(n) is None else "split",
                                     max_norm, norm_type, eps, name="clip_grad_norm_tp")


def tp_all_reduces_per_layer(config: GPTConfig) -> int:
    """All-reduces of the (B, T, C) activation per layer and training step: 2 in forward (the g's)
    and 2 in backward (the f's), and with ``config.checkpoint`` 2 more, as the backward recomputes
    each layer's forward, g's included."""
    return 6 if config.checkpoint else 4


def tp_bytes_per_step(config: GPTConfig, batch_size: int, seq_len: int, size: int, itemsize: int) -> float:
    """Bytes each rank sends in one training step by the formula: ``tp_all_reduces_per_layer``
    (4, or 6 with activation checkpointing) ring all-reduces per layer of the (B, T, C)
    activation, 2(t-1)/t of it each (the clipping norm's one number left out)."""
    k = tp_all_reduces_per_layer(config)
    return k * config.n_layer * 2 * (size - 1) / size * batch_size * seq_len * config.n_embd * itemsize
