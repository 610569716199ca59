"""Where the memory and the FLOPs of training go: predicted exactly, measured live, and set
beside the lecture's formulas.

Training memory is model + gradients + optimizer state + activations (Lecture 5). For a
decoder-only transformer with l layers, hidden size h, a heads, sequence length s, batch b and
vocabulary v the lecture derives (Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", arXiv 2205.05198, counted in values rather than fp16 bytes):

    parameters                 ~ 12·l·h² (+ v·h)
    activations / layer / sample ~ 2·s²·a + 14·s·h      (what backward must keep)
    total bytes (AdamW, fp32)  ~ (48·l·h² + b·l·(2·s²·a + 14·s·h)) × 4

This module has three parts.

1. `gpt_costs(config, batch_size)` -- the *exact* numbers for `models.gpt.GPT`: parameters
   (embeddings, biases and norms included), matmul FLOPs per token, and bytes by category.
   The activation count is derived op by op from what each `Function` in `minigrad.tensor` /
   `minigrad.functional` passes to `ctx.save_for_backward`, so it matches the live ledger to
   the byte on the numpy backend. `GPTCosts.report()` shows the lecture's formulas beside the
   exact count and names the difference term by term.
2. `track()` -- a live ledger. It listens on the core's single `save_for_backward` path
   (`minigrad.autograd.add_saved_listener`) and records the bytes of every category, with the
   peak of each over the block::

       with minigrad.memory.track(model, optimizer) as m:
           loss = model(x, y)[1]; loss.backward(); optimizer.step(grads)
       print(m.report()); m.peak["activations"]

3. `count_flops()` -- counts matmul FLOPs (2·m·n·k per product; Linear, MatMul and attention,
   forward and backward) through the core's op listener, and gives model FLOPs utilisation
   (MFU, Chowdhery et al. 2022 "PaLM", appendix B) against a peak you supply.

How activation bytes are counted: a saved array keeps memory alive for backward. Arrays that
are parameters (any `nn.Parameter` input of the op, or the model's parameters) are counted as
parameters, not activations. Views are resolved to the memory they span inside their base
array, and overlapping spans are counted once, so two ops that save the same array (or views of
one array, like q, k and v sliced from one fused projection) cost its bytes once. Scalars and
Python objects count 0. Not counted: transient buffers inside a forward or backward, and the
gradients flowing between ops during backward (they live for one op at a time).
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import autograd
from .checkpointing import is_recomputing
from .nn import Parameter
from .tensor import matmul_flops

__all__ = [
    "gpt_costs", "GPTCosts", "optimizer_state_multiplier",
    "track", "MemoryLedger", "count_flops", "FlopCounter", "matmul_flops", "measure_peak_flops",
    "fmt_bytes",
]

CATEGORIES = ("params", "grads", "optimizer", "activations")
_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
           "activations": "activations"}


def fmt_bytes(n: float) -> str:
    """1536 -> '1.50 KiB' (binary units)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


# ============================================================================ analytic
# Optimizer state, in copies of the parameters (Lecture 2 "Memory" lines in optim/*.py).
_OPT_MULT = {
    "adamw": 2, "adam": 2,                      # first and second moment
    "adam_amsgrad": 3, "adamw_amsgrad": 3,      # + running max of the second moment
    "sgd_momentum": 1, "momentum": 1, "heavyball": 1, "nesterov": 1, "agd": 1,
    "adagrad": 1, "rmsprop": 1,
    "sgd": 0, "gd": 0, "none": 0,               # plain (mini-batch) gradient descent
}


def optimizer_state_multiplier(optimizer) -> int:
    """Copies of the parameters an optimizer keeps: 'adamw' 2, 'sgd_momentum' 1, 'sgd' 0, or an int."""
    if isinstance(optimizer, (int, np.integer)):
        if optimizer < 0:
            raise ValueError(f"optimizer state multiplier must be >= 0, got {optimizer}")
        return int(optimizer)
    key = str(optimizer).lower().replace("-", "_")
    if key not in _OPT_MULT:
        raise ValueError(f"gpt_costs: unknown optimizer {optimizer!r}; use one of "
                         f"{', '.join(sorted(_OPT_MULT))} or an int (copies of the parameters). "
                         "Note: 'sgd' means no momentum; use 'sgd_momentum' for SGD with momentum")
    return _OPT_MULT[key]


@dataclass
class GPTCosts:
    """Exact costs of one training step of `models.gpt.GPT` (see `gpt_costs`).

    params            exact parameter count (tied head counted once)
    params_terms      that count split into named terms
    flops_per_token   matmul FLOPs per token: forward, backward, total, and estimate_6N (6N + 12·l·s·h)
    flops_per_step    flops_per_token['total'] × batch × seq
    bytes             bytes by category: params, grads, optimizer, activations (peak, end of forward)
    activation_terms  the activation bytes split by what is saved (sums to bytes['activations'])
    lecture           the lecture's simplified formulas evaluated on this config
    """

    config: object
    batch_size: int
    seq_len: int
    optimizer: str
    dtype_bytes: int
    backend: str
    params: int
    params_terms: dict
    flops_per_token: dict
    flops_per_step: int
    bytes: dict
    activation_terms: dict
    activation_layer_terms: dict
    activations_checkpointed: int
    lecture: dict
    notes: list = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes[c] for c in CATEGORIES)

    def report(self) -> str:
        """Tables: exact vs lecture by category, activations term by term, FLOPs."""
        c, b, s = self.config, self.batch_size, self.seq_len
        l, h, a, v = c.n_layer, c.n_embd, c.n_head, c.vocab_size
        lec = self.lecture
        out = [f"GPT l={l} h={h} a={a} v={v} block_size={c.block_size} bias={c.bias} "
               f"dropout={c.dropout}; batch b={b}, seq s={s}; {self.optimizer}, "
               f"{self.dtype_bytes}-byte floats; backend {self.backend}",
               "",
               f"{'category':<18}{'exact':>14}{'lecture':>14}",
               ]
        for cat in CATEGORIES:
            out.append(f"{_LABELS[cat]:<18}{fmt_bytes(self.bytes[cat]):>14}"
                       f"{fmt_bytes(lec['bytes'][cat]):>14}")
        out.append(f"{'total':<18}{fmt_bytes(self.total_bytes):>14}{fmt_bytes(lec['total_bytes']):>14}"
                   "   (lecture: (48·l·h² + b·l·(2s²a + 14sh))×4, no v·h)")
        out += ["", f"parameters: exact {self.params:,} vs lecture 12·l·h² + v·h = {lec['params']:,}"]
        for name, n in self.params_terms.items():
            out.append(f"  {name:<58}{n:>12,}")
        out += ["", "activations per layer per sample (values; lecture 2·s²·a + 14·s·h):"]
        out += _layer_comparison_lines(self)
        out += ["", f"activation bytes of the whole step (b={b}), by what is saved:"]
        for name, n in self.activation_terms.items():
            out.append(f"  {name:<66}{fmt_bytes(n):>14}")
        out.append(f"  {'total':<66}{fmt_bytes(self.bytes['activations']):>14}")
        out.append(f"  {'with activation checkpointing (peak)':<66}"
                   f"{fmt_bytes(self.activations_checkpointed):>14}")
        f = self.flops_per_token
        out += ["", "matmul FLOPs per token: forward {:,}  backward {:,}  total {:,}".format(
            f["forward"], f["backward"], f["total"]),
                "  estimate 6N + 12·l·s·h = {:,} (differs by 6 × the {:,} parameters that are no "
                "matmul weight: biases, norms, position table)".format(f["estimate_6N"],
                                                                       f["non_matmul_params"])]
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


def _layer_comparison(costs: GPTCosts) -> dict:
    """Per layer, per sample, in values: the lecture's 14sh + 2as² beside what minigrad saves."""
    c, s = costs.config, costs.seq_len
    h, a = c.n_embd, c.n_head
    flash = costs.backend == "numba"
    drop = c.dropout > 0
    rows = {
        "layer-norm inputs (ln_1, ln_2)": (0, 2 * s * h, "lecture ignores the norms"),
        "layer-norm mean and 1/std (2 per norm)": (0, 4 * s, "lecture ignores the norms"),
        "attention: input of the q,k,v projection": (s * h, s * h, ""),
        "attention: q, k, v": (3 * s * h, 3 * s * h, "one fused projection output"),
        "attention: softmax probabilities p": (a * s * s, 0 if flash else a * s * s,
                                               "fused kernel recomputes p" if flash else ""),
        "attention: 2nd s² tensor (scores or dropout(p))": (a * s * s, 0,
                                                            "no attention dropout; backward needs p only"),
        "attention: log-sum-exp per query row (fused)": (0, a * s if flash else 0,
                                                         "what flash attention keeps instead of p; its "
                                                         "output o is the projection's input" if flash
                                                         else "numpy path saves p instead"),
        "attention: input of the output projection": (s * h, s * h, ""),
        "MLP: input of c_fc": (s * h, s * h, ""),
        "MLP: GELU input (4h)": (4 * s * h, 4 * s * h, ""),
        "MLP: input of c_proj = GELU output (4h)": (4 * s * h, 4 * s * h, ""),
        "dropout masks (bool, 2 per layer; bytes)": (0, 2 * s * h if drop else 0,
                                                     "1 byte each" if drop else "dropout=0: none"),
    }
    lec_total = 14 * s * h + 2 * a * s * s
    mine = sum(m for _, m, _ in rows.values())
    rows["total"] = (lec_total, mine, "")
    return rows


def _layer_comparison_lines(costs: GPTCosts) -> list:
    """`_layer_comparison` as indented text lines: a header, then one row per term."""
    return [f"  {'term (values)':<50}{'lecture':>12}{'minigrad':>12}  note"] + [
        f"  {name:<50}{lv:>12,}{mv:>12,}  {note}" for name, (lv, mv, note) in _layer_comparison(costs).items()]


def _attention_layer_bytes(b, s, h, a, d, flash):
    """Bytes the attention op (`F.qkv_attention`) keeps: qkv (+ p on numpy; + lse in the fused
    kernel). Its output o (B, T, C) is the output projection's saved input, counted there."""
    qkv = 3 * b * s * h * d
    if not flash:
        return qkv + b * a * s * s * d
    return qkv + b * a * s * d


def gpt_costs(config, batch_size: int, optimizer="adamw", dtype_bytes: int = 4, seq_len=None,
              backend: str = "numpy", training: bool = True, idx_bytes: int = 8) -> GPTCosts:
    """Exact parameters, matmul FLOPs and bytes of one training step of `models.gpt.GPT`.

    config       a GPTConfig (n_layer, n_head, n_embd, block_size, vocab_size, dropout, bias)
    batch_size   b;  seq_len s (default config.block_size)
    optimizer    'adamw'/'adam' (2 copies of the parameters), 'sgd_momentum' (1), 'sgd' (0), or an int
    dtype_bytes  bytes per float (4 = float32)
    backend      'numpy' (exact, tested) or 'numba' (the fused attention keeps o and one
                 log-sum-exp per row instead of the s×s probabilities; exact only as far as the
                 fused ops save what their docstrings say)
    training     dropout masks are kept only in training mode with dropout > 0
    idx_bytes    bytes of one token id as passed to the model (int64: 8)

    Activation bytes are those alive at the end of the forward pass (the peak: backward saves
    nothing and frees as it goes); `activations_checkpointed` is the peak with
    `GPTConfig(checkpoint=True)`.
    """
    c = config
    b = int(batch_size)
    s = int(c.block_size if seq_len is None else seq_len)
    if b < 1 or s < 1:
        raise ValueError(f"gpt_costs: batch_size and seq_len must be >= 1, got {b}, {s}")
    if s > c.block_size:
        raise ValueError(f"gpt_costs: seq_len {s} exceeds block_size {c.block_size}")
    if backend not in ("numpy", "numba"):
        raise ValueError(f"gpt_costs: backend must be 'numpy' or 'numba', got {backend!r}")
    l, h, a, V, d = c.n_layer, c.n_embd, c.n_head, c.vocab_size, int(dtype_bytes)
    mult = optimizer_state_multiplier(optimizer)
    bias = bool(c.bias)
    flash = backend == "numba"

    # ---------------------------------------------------------------- parameters
    norm = h * (2 if bias else 1)  # LayerNorm weight (+ bias)
    terms = {
        "token embedding wte (v·h; also the tied head)": V * h,
        "position embedding wpe (block_size·h)": c.block_size * h,
        "layer weight matrices (12·h² per layer)": l * 12 * h * h,
        "layer linear biases (9·h per layer)": l * 9 * h if bias else 0,
        "layer norms ln_1, ln_2 (4·h per layer, 2·h without bias)": l * 2 * norm,
        "final norm ln_f": norm,
    }
    n_params = sum(terms.values())
    matmul_params = l * 12 * h * h + V * h  # weights that multiply activations

    # ---------------------------------------------------------------- FLOPs (matmuls only)
    # per token per layer: c_attn 2·h·3h, attn c_proj 2·h², c_fc 2·h·4h, c_proj 2·4h·h = 24h²;
    # attention q·kᵀ and p·v over all s keys (the numpy path computes the masked half too): 4·s·h.
    fwd = l * (24 * h * h + 4 * s * h) + 2 * h * V
    bwd = 2 * fwd  # every matmul's backward computes both operand gradients: 2 products each
    flops = {"forward": fwd, "backward": bwd, "total": fwd + bwd,
             "estimate_6N": 6 * n_params + 12 * l * s * h,
             "non_matmul_params": n_params - matmul_params}

    # ---------------------------------------------------------------- activations (bytes)
    drop = training and c.dropout > 0
    bsh = b * s * h
    layer = {
        "ln_1: input x, mean, 1/std (LayerNorm)": bsh * d + 2 * b * s * d,
        "c_attn: input (Linear)": bsh * d,
        ("attention: qkv, log-sum-exp (fused)" if flash else
         "attention: qkv and probabilities p"): _attention_layer_bytes(b, s, h, a, d, flash),
        "attn c_proj: input (Linear)": bsh * d,
        "ln_2: input x, mean, 1/std (LayerNorm)": bsh * d + 2 * b * s * d,
        "c_fc: input (Linear)": bsh * d,
        "GELU: input (4h)": 4 * bsh * d,
        "mlp c_proj: input (Linear, 4h)": 4 * bsh * d,
        "residual dropout masks (bool)": 2 * bsh if drop else 0,
    }
    layer_total = sum(layer.values())
    emb = b * s * idx_bytes + s * 8 + (bsh if drop else 0)  # token ids, positions (int64), mask
    tail = {
        "ln_f: input x, mean, 1/std": bsh * d + 2 * b * s * d,
        "head: input (tied Linear)": bsh * d,
        "cross-entropy: logits (b·s·v)": b * s * V * d,
        "cross-entropy: log-sum-exp, targets, mask": b * s * d + b * s * 8 + b * s,
    }
    tail_total = sum(tail.values())
    act_terms = {"embedding: token ids, positions" + (", dropout mask" if drop else ""): emb}
    act_terms.update({f"{l} layers × {k}": l * v for k, v in layer.items() if v})
    act_terms.update(tail)
    activations = emb + l * layer_total + tail_total
    # checkpointing: every block keeps only its input (b·s·h); in backward one block is
    # recomputed at a time (its ln_1 input *is* the kept block input, so it is not counted twice).
    ckpt = emb + l * bsh * d + max(tail_total, layer_total - bsh * d)

    nbytes = {"params": n_params * d, "grads": n_params * d, "optimizer": mult * n_params * d,
              "activations": activations}

    # ---------------------------------------------------------------- the lecture
    lec_params = 12 * l * h * h + V * h
    lec_act = b * l * (2 * s * s * a + 14 * s * h) * d
    lecture = {
        "params": lec_params,
        "activations_per_layer_per_sample_values": 2 * s * s * a + 14 * s * h,
        "bytes": {"params": lec_params * d, "grads": lec_params * d, "optimizer": 2 * lec_params * d,
                  "activations": lec_act},
        "total_bytes": (48 * l * h * h + b * l * (2 * s * s * a + 14 * s * h)) * d,
    }
    notes = [
        "FLOPs count matrix products only (2·m·n·k each); softmax, norms, GELU and the optimizer "
        "are left out, as in the 6N rule.",
        "the lecture's total uses 4 copies of 12·l·h² (params, grads, 2 Adam moments) whatever "
        f"the optimizer; here the optimizer keeps {mult} copies.",
    ]
    if flash:
        notes.append("numba backend: assumes the fused attention saves q, k, v, o and one "
                     "log-sum-exp per row (its docstring) and the other fused ops save what "
                     "their numpy twins save; measure with track() to confirm.")
    return GPTCosts(config=c, batch_size=b, seq_len=s, optimizer=str(optimizer), dtype_bytes=d,
                    backend=backend, params=n_params, params_terms=terms, flops_per_token=flops,
                    flops_per_step=flops["total"] * b * s, bytes=nbytes, activation_terms=act_terms,
                    activation_layer_terms=layer, activations_checkpointed=ckpt, lecture=lecture,
                    notes=notes)


# ============================================================================ live ledger
def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _span(a: np.ndarray) -> tuple[int, int]:
    """[low, high) byte addresses that the array's elements occupy."""
    if a.size == 0:
        return (0, 0)
    lo = hi = a.__array_interface__["data"][0]
    for n, st in zip(a.shape, a.strides):
        if st < 0:
            lo += st * (n - 1)
        else:
            hi += st * (n - 1)
    return (lo, hi + a.itemsize)


def _union_length(spans) -> int:
    total, end = 0, None
    for lo, hi in sorted(spans):
        if end is None or lo >= end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total



class MemoryLedger:
    """Live bytes of parameters, gradients, optimizer state and saved activations, with peaks.

    Use through `track(...)`. Attributes: `current` and `peak` (dicts by category, plus
    "total" = the peak of the sum at one moment), `peak_by_op` (activation bytes by op name at
    the activation peak), `events` (number of save/free events seen).
    """

    def __init__(self, model=None, optimizer=None, params=None):
        self._params: dict[int, object] = {}  # id(tensor) -> Parameter (strong ref while tracking)
        self._param_roots: set[int] = set()
        if model is not None:
            for _, p in model.named_parameters():
                self._add_param(p)
        for p in (params or ()):
            self._add_param(p)
        if optimizer is None:
            self._optimizers = []
        elif isinstance(optimizer, (list, tuple)):
            self._optimizers = list(optimizer)
        else:
            self._optimizers = [optimizer]
        for o in self._optimizers:
            if not hasattr(o, "state_bytes"):
                raise TypeError(f"track: optimizer {type(o).__name__} has no state_bytes(); pass an "
                                "optim.Optimizer")
        self._roots: dict[int, dict] = {}   # id(root) -> {"spans": {span: refs}, "bytes": int, "op": name}
        self._ctx: dict[int, list] = {}     # id(ctx) -> [(root id, span), ...]
        self._by_op: dict[str, int] = {}
        self.current = {c: 0 for c in CATEGORIES}
        self.current["total"] = 0
        self.peak = dict(self.current)
        self.peak_by_op: dict[str, int] = {}
        self.events = 0
        self._active = False

    # ------------------------------------------------------------------ parameters
    def _add_param(self, p):
        if id(p) not in self._params:
            self._params[id(p)] = p
            self._param_roots.add(id(_root(p.data)))

    # ------------------------------------------------------------------ listener
    def _listener(self, event, ctx, objs):
        self.events += 1
        if event == "save":
            for t in ctx.inputs:
                if isinstance(t, Parameter):
                    self._add_param(t)
            self._save(ctx, objs)
        else:
            self._release(id(ctx), sample=False)
        self._sample()

    def _save(self, ctx, objs):
        key = id(ctx)
        if key in self._ctx:  # an op saved twice: the second call replaces the first
            self._release(key, sample=False)
        entries = []
        for arr in autograd.saved_arrays(objs):
            root = _root(arr)
            rid = id(root)
            if rid in self._param_roots:
                continue
            span = _span(arr)
            if span[0] == span[1]:
                continue
            rec = self._roots.setdefault(rid, {"spans": {}, "bytes": 0, "op": ctx.name})
            rec["spans"][span] = rec["spans"].get(span, 0) + 1
            entries.append((rid, span))
            self._recount(rid)
        self._ctx[key] = entries
        # a graph dropped without backward never sends "free": catch its garbage collection
        weakref.finalize(ctx, self._release, key)

    def _release(self, key, sample=True):
        if not self._active:  # a finalizer firing after the block ended
            return
        entries = self._ctx.pop(key, None)
        if not entries:
            return
        for rid, span in entries:
            rec = self._roots[rid]
            rec["spans"][span] -= 1
            if rec["spans"][span] == 0:
                del rec["spans"][span]
            self._recount(rid)
            if not rec["spans"]:
                del self._roots[rid]
        if sample:
            self._sample()

    def _recount(self, rid):
        rec = self._roots[rid]
        new = _union_length(rec["spans"].keys())
        delta = new - rec["bytes"]
        rec["bytes"] = new
        self.current["activations"] += delta
        self._by_op[rec["op"]] = self._by_op.get(rec["op"], 0) + delta

    # ------------------------------------------------------------------ sampling
    def _sample(self):
        cur = self.current
        cur["params"] = sum(p.data.nbytes for p in self._params.values())
        cur["grads"] = sum(p.grad.nbytes for p in self._params.values() if p.grad is not None)
        cur["optimizer"] = sum(o.state_bytes() for o in self._optimizers)
        cur["total"] = sum(cur[c] for c in CATEGORIES)
        for k, v in cur.items():
            if v > self.peak[k]:
                self.peak[k] = v
                if k == "activations":
                    self.peak_by_op = {op: n for op, n in self._by_op.items() if n}

    def snapshot(self) -> dict:
        """Record the current bytes now (e.g. after `optimizer.step`); returns `current`."""
        self._sample()
        return dict(self.current)

    # ------------------------------------------------------------------ context
    def __enter__(self):
        self._active = True
        autograd.add_saved_listener(self._listener)
        self._sample()
        return self

    def __exit__(self, *exc):
        autograd.remove_saved_listener(self._listener)
        self._sample()
        self._active = False
        self._params = {}  # do not keep the model alive through the ledger
        self._optimizers = []
        return False

    # ------------------------------------------------------------------ report
    def report(self, expected: GPTCosts | None = None) -> str:
        """A table of live (at the end) and peak bytes per category; with `expected` (a
        `gpt_costs(...)` result) the exact prediction and the lecture's formula beside them."""
        head = f"{'category':<18}{'end':>13}{'peak':>13}"
        if expected is not None:
            head += f"{'predicted':>13}{'lecture':>13}"
        lines = [head]
        for c in CATEGORIES + ("total",):
            row = f"{_LABELS.get(c, 'total (peak sum)'):<18}{fmt_bytes(self.current[c]):>13}{fmt_bytes(self.peak[c]):>13}"
            if expected is not None:
                pred = expected.total_bytes if c == "total" else expected.bytes[c]
                lec = expected.lecture["total_bytes"] if c == "total" else expected.lecture["bytes"][c]
                row += f"{fmt_bytes(pred):>13}{fmt_bytes(lec):>13}"
            lines.append(row)
        if self.peak_by_op:
            lines += ["", "activations at their peak, by the op that saved them:"]
            for op, n in sorted(self.peak_by_op.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {op:<24}{fmt_bytes(n):>13}")
        if expected is not None:
            lines += ["", "the lecture's 2·s²·a + 14·s·h per layer per sample, beside what minigrad saves:"]
            lines += _layer_comparison_lines(expected)
            outside = expected.bytes["activations"] - expected.config.n_layer * sum(
                expected.activation_layer_terms.values())
            lines.append(f"  outside the layers (ids, ln_f, head input, logits b·s·v, ...): "
                         f"{fmt_bytes(outside)} the lecture ignores")
        return "\n".join(lines)


def track(model=None, optimizer=None, params=None) -> MemoryLedger:
    """Context manager recording live bytes by category and their peaks.

    model      an nn.Module whose parameters (and their .grad) are counted; without it the
               ledger counts the Parameters it sees as inputs of recorded ops
    optimizer  an optim.Optimizer (or a list): its `state_bytes()` is the optimizer category
    params     extra Parameters/Tensors to count as parameters
    """
    return MemoryLedger(model=model, optimizer=optimizer, params=params)


# ============================================================================ FLOPs
class FlopCounter:
    """Counts matmul FLOPs of every op run inside it (see `count_flops`).

    `unknown_ops`: names of the ops seen that do not say their FLOPs (counted 0)."""

    def __init__(self, peak_flops: float | None = None, strict: bool = False):
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"count_flops: peak_flops must be > 0 (FLOP/s), got {peak_flops}")
        self.peak_flops = peak_flops
        self.strict = strict
        self.unknown_ops: set[str] = set()
        self.forward = 0
        self.backward = 0
        self.recompute = 0  # forwards re-run by activation checkpointing (not model FLOPs)
        self.by_op: dict[str, int] = {}
        self.elapsed = 0.0

    @property
    def total(self) -> int:
        """Model FLOPs: forward + backward (recomputation excluded, as in MFU)."""
        return self.forward + self.backward

    @property
    def hardware_total(self) -> int:
        """FLOPs actually run by the counted matmuls, recomputation included (for HFU)."""
        return self.total + self.recompute

    @property
    def flops_per_second(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else float("nan")

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation: counted FLOPs / elapsed seconds / peak FLOP/s (None without peak)."""
        if self.peak_flops is None:
            return None
        return self.flops_per_second / self.peak_flops

    def _listener(self, event, ctx, payload):
        flops = ctx.fn.flops
        if flops is None:
            if self.strict:
                op = ctx.fn
                raise NotImplementedError(
                    f"count_flops(strict=True): op {op.__module__}.{op.__qualname__} does not say "
                    "its FLOPs; give it a staticmethod flops(ctx) -> int (the matmul FLOPs of one "
                    "forward; flops = staticmethod(minigrad.tensor.no_matmul_flops) for none), or "
                    "count with strict=False, which counts it 0 and lists it in unknown_ops")
            self.unknown_ops.add(ctx.name)
            return
        n = flops(ctx)
        if not n:
            return
        if event == "forward" and is_recomputing():
            self.recompute += n
            key = f"{ctx.name} recompute"
            self.by_op[key] = self.by_op.get(key, 0) + n
            return
        if event == "backward":
            # each operand gradient is one product as large as the forward's (attention: the
            # 4 products dv, dp, dq, dk = twice its 2 forward products). Model FLOPs count both,
            # also when an op skips the gradient of a frozen operand.
            n *= 2
            self.backward += n
        else:
            self.forward += n
        key = f"{ctx.name} {event}"
        self.by_op[key] = self.by_op.get(key, 0) + n

    def __enter__(self):
        self._t0 = time.perf_counter()
        autograd.add_op_listener(self._listener)
        return self

    def __exit__(self, *exc):
        autograd.remove_op_listener(self._listener)
        self.elapsed = time.perf_counter() - self._t0
        return False

    def report(self) -> str:
        lines = [f"matmul FLOPs: forward {self.forward:,}  backward {self.backward:,}  total {self.total:,}"
                 + (f"  (+ {self.recompute:,} recomputed by checkpointing)" if self.recompute else ""),
                 f"time {self.elapsed:.3f} s  ->  {self.flops_per_second / 1e9:.2f} GFLOP/s"]
        if self.peak_flops is not None:
            lines.append(f"MFU {100 * self.mfu:.1f}% of a {self.peak_flops / 1e9:.1f} GFLOP/s peak")
        if self.unknown_ops:
            lines.append(f"not counted (these ops do not say their FLOPs): {', '.join(sorted(self.unknown_ops))}")
        for k, v in sorted(self.by_op.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:<24}{v:>18,}")
        return "\n".join(lines)


def count_flops(peak_flops: float | None = None, strict: bool = False) -> FlopCounter:
    """Context manager counting matmul FLOPs (2·m·n·k per product), forward and backward, also
    under no_grad. Each op says the FLOPs of its forward (`Function.flops`: MatMul, Linear and
    the attention ops do matrix products, the others 0); backward counts twice the forward, one
    product per operand gradient. An op that does not say (a user-defined Function without
    `flops`) is counted 0 and named in `.unknown_ops`; with `strict=True` it raises instead.

    `peak_flops` (FLOP/s) is the machine's peak, which you supply (e.g. cores × GHz × FLOPs per
    cycle, or `measure_peak_flops()`); then `.mfu` = counted FLOPs / time / peak. Counted are
    *model* FLOPs: work a fused kernel redoes (flash attention recomputes q·kᵀ in backward) or
    skips (masked tiles) does not change the count, as in PaLM's MFU.
    """
    return FlopCounter(peak_flops, strict)


def measure_peak_flops(n: int = 1024, repeat: int = 5, dtype=np.float32) -> float:
    """A practical peak: the best FLOP/s of an n×n float32 matmul over `repeat` runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm up BLAS threads
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
