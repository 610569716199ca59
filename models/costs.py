"""Exact costs of one training step of `models.gpt.GPT`, set beside the lecture's formulas.

Training memory is model + gradients + optimizer state + activations (Lecture 5). For a
decoder-only transformer with l layers, hidden size h, a heads, sequence length s, batch b and
vocabulary v the lecture derives (Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", arXiv 2205.05198, counted in values rather than fp16 bytes):

    parameters                 ~ 12·l·h² (+ v·h)
    activations / layer / sample ~ 2·s²·a + 14·s·h      (what backward must keep)
    total bytes (AdamW, fp32)  ~ (48·l·h² + b·l·(2·s²·a + 14·s·h)) × 4

`gpt_costs(config, batch_size)` gives the *exact* numbers for the GPT: parameters (embeddings,
biases and norms included), matmul FLOPs per token, and bytes by category. The activation count
is derived op by op from what each `Function` in `minigrad.tensor` / `minigrad.functional` passes
to `ctx.save_for_backward`, so it matches the live ledger (`minigrad.memory.track`) to the byte
on the numpy backend. The optimizer state is what the optimizer itself says it keeps once every
parameter has stepped (`optim.Optimizer.expected_state_bytes`), asked of an optimizer built on
`np.empty` arrays of the GPT's parameter shapes (pages never written cost no memory).
`GPTCosts.report()` shows the lecture's formulas beside the exact count and names the difference
term by term; `track(...).report(expected=costs)` sets the prediction beside a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import optim
from minigrad.memory import CATEGORIES, LABELS, fmt_bytes

__all__ = ["gpt_costs", "GPTCosts", "gpt_param_shapes"]


def gpt_param_shapes(config) -> dict:
    """{parameter name: shape} of `models.gpt.GPT(config)`, in `named_parameters()` order,
    without building the model (the head is tied to wte.weight, so it has no entry). Grouped-query
    attention's fused projection is (h + 2 * n_kv_head * head_dim, h); NSA's own parameters are
    not listed (refused: build the model)."""
    c = config
    h = c.n_embd
    if getattr(c, "attention", "mha") == "nsa":
        raise ValueError("gpt_param_shapes: NSA adds compression and gate parameters these shapes do not "
                         "list; count GPT(config).named_parameters() instead")
    qkv = h + 2 * getattr(c, "kv_heads", c.n_head) * (h // c.n_head)       # q, then k and v
    shapes = {"wte.weight": (c.vocab_size, h), "wpe.weight": (c.block_size, h)}

    def norm(name):
        shapes[f"{name}.weight"] = (h,)
        if c.bias:
            shapes[f"{name}.bias"] = (h,)

    def linear(name, n_in, n_out):
        shapes[f"{name}.weight"] = (n_out, n_in)
        if c.bias:
            shapes[f"{name}.bias"] = (n_out,)

    for i in range(c.n_layer):
        norm(f"h.{i}.ln_1")
        linear(f"h.{i}.attn.c_attn", h, qkv)
        linear(f"h.{i}.attn.c_proj", h, h)
        norm(f"h.{i}.ln_2")
        linear(f"h.{i}.mlp.c_fc", h, 4 * h)
        linear(f"h.{i}.mlp.c_proj", 4 * h, h)
    norm("ln_f")
    return shapes


def _optimizer_state(optimizer, optimizer_kwargs, config, dtype, n_params) -> tuple[int, str]:
    """(bytes of optimizer state once every parameter has stepped, a description)."""
    if isinstance(optimizer, optim.Optimizer):
        if optimizer_kwargs:
            raise TypeError("gpt_costs: optimizer_kwargs go with an optimizer name; this optimizer "
                            f"({type(optimizer).__name__}) is already built with its options")
        held = sum(p.size for group in optimizer.param_groups for p in group["params"].values())
        if held != n_params:
            raise ValueError(f"gpt_costs: the optimizer holds {held:,} parameter values but this GPT "
                             f"config has {n_params:,}; build it on the GPT's parameters or pass its name")
        return int(optimizer.expected_state_bytes()), type(optimizer).__name__
    if not isinstance(optimizer, str):
        raise TypeError(f"gpt_costs: optimizer must be a registered name (optim.available()) or an "
                        f"optim.Optimizer, got {type(optimizer).__name__}")
    kwargs = dict(optimizer_kwargs or {})
    params = {name: np.empty(shape, dtype) for name, shape in gpt_param_shapes(config).items()}
    state = optim.create(optimizer, params, **kwargs).expected_state_bytes()
    options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return int(state), f"{optimizer}({options})" if options else optimizer


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
            out.append(f"{LABELS[cat]:<18}{fmt_bytes(self.bytes[cat]):>14}"
                       f"{fmt_bytes(lec['bytes'][cat]):>14}")
        out.append(f"{'total':<18}{fmt_bytes(self.total_bytes):>14}{fmt_bytes(lec['total_bytes']):>14}"
                   f"   (lecture: its formula (48·l·h² + b·l·(2s²a + 14sh))×{self.dtype_bytes}, without the "
                   f"v·h of the rows above)")
        out += ["", f"parameters: exact {self.params:,} vs lecture 12·l·h² + v·h = {lec['params']:,}"]
        for name, n in self.params_terms.items():
            out.append(f"  {name:<58}{n:>12,}")
        out += ["", "activations per layer per sample (values; lecture 2·s²·a + 14·s·h):"]
        out += self._layer_comparison_lines()
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

    def ledger_columns(self) -> dict:
        """The prediction and the lecture's formula as extra columns of a memory ledger's table
        (`minigrad.memory.MemoryLedger.report(expected=...)`)."""
        lec = self.lecture
        return {"predicted": {**self.bytes, "total": self.total_bytes},      # the sum of its rows
                "lecture": {**lec["bytes"], "total": lec["total_bytes"]}}    # its formula: no v·h

    def ledger_lines(self) -> list:
        """Text a memory ledger's report prints after its table: the per-layer terms."""
        outside = self.bytes["activations"] - self.config.n_layer * sum(self.activation_layer_terms.values())
        return (["", "the lecture's 2·s²·a + 14·s·h per layer per sample, beside what minigrad saves:"]
                + self._layer_comparison_lines()
                + [f"  outside the layers (ids, ln_f, head input, logits b·s·v, ...): "
                   f"{fmt_bytes(outside)} the lecture ignores"])

    def layer_comparison(self) -> dict:
        """Per layer, per sample, in values: the lecture's 14sh + 2as² beside what minigrad saves,
        as {term: (lecture, minigrad, note)} with a "total" row last."""
        c, s = self.config, self.seq_len
        h, a = c.n_embd, c.n_head
        flash = self.backend == "numba"
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


    def _layer_comparison_lines(self) -> list:
        """`layer_comparison` as indented text lines: a header, then one row per term."""
        return [f"  {'term (values)':<50}{'lecture':>12}{'minigrad':>12}  note"] + [
            f"  {name:<50}{lv:>12,}{mv:>12,}  {note}" for name, (lv, mv, note) in self.layer_comparison().items()]


def _attention_layer_bytes(b, s, h, a, d, flash):
    """Bytes the attention op (`F.qkv_attention`) keeps: qkv (+ p on numpy; + lse in the fused
    kernel). Its output o (B, T, C) is the output projection's saved input, counted there."""
    qkv = 3 * b * s * h * d
    if not flash:
        return qkv + b * a * s * s * d
    return qkv + b * a * s * d


def gpt_costs(config, batch_size: int, *, optimizer="adamw", optimizer_kwargs=None,
              dtype_bytes: int = 4, seq_len=None, backend: str = "numpy", training: bool = True,
              idx_bytes: int = 8) -> GPTCosts:
    """Exact parameters, matmul FLOPs and bytes of one training step of `models.gpt.GPT`.

    config       a GPTConfig (n_layer, n_head, n_embd, block_size, vocab_size, dropout, bias)
    batch_size   b;  seq_len s (default config.block_size)
    optimizer    a registered name (`optim.available()`: 'adamw', 'sgd', 'momentum', ...) built
                 with `optimizer_kwargs` (e.g. optimizer="sgd", optimizer_kwargs={"momentum": 0.9}),
                 or an `optim.Optimizer` already built on the GPT's parameters; its
                 `expected_state_bytes()` is the optimizer category
    dtype_bytes  bytes per float (4 = float32; the parameters' dtype also for the optimizer)
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
    if getattr(c, "attention", "mha") != "mha" or getattr(c, "kv_heads", c.n_head) != c.n_head:
        raise ValueError(f"gpt_costs: the formulas are those of multi-head attention (the lecture's "
                         f"model); this config has attention={c.attention!r}, n_kv_head={c.n_kv_head}. "
                         f"Measure such a model with minigrad.memory instead")
    l, h, a, V, d = c.n_layer, c.n_embd, c.n_head, c.vocab_size, int(dtype_bytes)
    if d not in (2, 4, 8):
        raise ValueError(f"gpt_costs: dtype_bytes must be 2, 4 or 8 (float16/32/64), got {dtype_bytes!r}")
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
    opt_bytes, opt_name = _optimizer_state(optimizer, optimizer_kwargs, c, np.dtype(f"float{8 * d}"), n_params)
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

    nbytes = {"params": n_params * d, "grads": n_params * d, "optimizer": opt_bytes,
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
        f"the optimizer; here {opt_name} keeps {fmt_bytes(opt_bytes)} "
        f"({opt_bytes / (n_params * d):.3g} × the parameters' bytes).",
    ]
    if flash:
        notes.append("numba backend: assumes the fused attention saves q, k, v, o and one "
                     "log-sum-exp per row (its docstring) and the other fused ops save what "
                     "their numpy twins save; measure with track() to confirm.")
    return GPTCosts(config=c, batch_size=b, seq_len=s, optimizer=opt_name, dtype_bytes=d,
                    backend=backend, params=n_params, params_terms=terms, flops_per_token=flops,
                    flops_per_step=flops["total"] * b * s, bytes=nbytes, activation_terms=act_terms,
                    activation_layer_terms=layer, activations_checkpointed=ckpt, lecture=lecture,
                    notes=notes)


