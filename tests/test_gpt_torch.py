"""The GPT equals a PyTorch model of the same architecture (nanoGPT's), weights copied, float64:
with multi-head attention, and with each attention variant of GPTConfig (grouped- and
multi-query, linear, MoBA, NSA) written here from its description in models/attention.py's
docstrings, with torch ops only."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is optional (bench extra)")
import torch.nn.functional as TF  # noqa: E402

from models.gpt import GPT, GPTConfig  # noqa: E402


def masked_attention(q, k, v, sees):
    """Softmax attention of q (B, H, Tq, D) over k, v (B, H, Tk, D) where ``sees`` (broadcast to
    (B, H, Tq, Tk)) is True; a query that sees no key gets 0."""
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~sees, -math.inf)
    any_key = sees.any(-1, keepdim=True)         # (a softmax over -inf alone would be NaN)
    p = torch.softmax(torch.where(any_key, s, torch.zeros_like(s)), dim=-1) * any_key
    return p @ v


def top_blocks(gate, n):
    """Boolean (..., n_blocks): the n largest gates of each row (ties: the earlier block)."""
    order = torch.sort(-gate, dim=-1, stable=True).indices[..., :n]
    return torch.zeros_like(gate, dtype=torch.bool).scatter_(-1, order, True)


def moba(q, k, v, cfg, causal):
    """MoBA: each query attends, causally, to the keys of its own block and of its best earlier
    blocks by q·(mean key of the block), moba_topk blocks in all. The choice has no gradient."""
    T, bl = q.shape[2], cfg.moba_block
    n_blocks = -(-T // bl)
    blocks = torch.arange(n_blocks)
    own = (torch.arange(T) // bl)[:, None]                                   # (T, 1)
    with torch.no_grad():
        means = torch.stack([k[:, :, b * bl:(b + 1) * bl].mean(2) for b in range(n_blocks)], dim=2)
        gate = q @ means.transpose(-1, -2)                                   # (B, H, T, n_blocks)
        gate = gate.masked_fill(blocks == own, math.inf).masked_fill(blocks > own, -math.inf)
        chosen = top_blocks(gate, cfg.moba_topk) & (blocks <= own)
    return masked_attention(q, k, v, chosen[..., torch.arange(T) // bl] & causal)


def nsa(q, k, v, x, P, layer, cfg, causal):
    """NSA: g_cmp·(attention over compressed blocks) + g_slc·(over the selected blocks' keys) +
    g_win·(over the last nsa_window keys), gates from a sigmoid of a Linear of the attention
    input x. k, v have the key/value heads (B, Hkv, T, hs); q (B, H, T, hs)."""
    B, H, T, hs = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    l, d, ls, w = cfg.nsa_cmp_block, cfg.nsa_cmp_stride, cfg.nsa_slc_block, cfg.nsa_window
    n_cmp = (T - l) // d + 1 if T >= l else 0      # compressed block i: keys [i·d, i·d + l)
    n_slc = -(-T // ls)                            # selection block j: keys [j·l', (j+1)·l')
    position = torch.arange(T)[:, None]
    name = f"h.{layer}.attn.nsa."
    g = torch.sigmoid(TF.linear(x, P[name + "gate.weight"], P.get(name + "gate.bias")))
    g_cmp, g_slc, g_win = g.view(B, T, 3, H).permute(2, 0, 3, 1)[..., None]  # each (B, H, T, 1)

    def compress(t, which):
        """Each compressed block of t (B, Hkv, T, hs) -> one vector by the MLP φ; (B, H, n_cmp, hs)."""
        n = name + which + "."
        blocks = torch.stack([t[:, :, i * d:i * d + l] for i in range(n_cmp)], dim=2)  # (B, Hkv, n_cmp, l, hs)
        z = (blocks + P[n + "pos"]).flatten(-2)
        z = TF.gelu(TF.linear(z, P[n + "fc.weight"], P.get(n + "fc.bias")), approximate="tanh")
        return TF.linear(z, P[n + "proj.weight"], P.get(n + "proj.bias")).repeat_interleave(G, dim=1)

    y = 0
    scores = torch.zeros(B, Hkv, T, n_slc)         # each key/value head's score of each block
    if n_cmp:                                      # (else no query has a compressed block)
        kc, vc = compress(k, "compress_k"), compress(v, "compress_v")
        sees = torch.arange(n_cmp) * d + l - 1 <= position                      # complete by then
        y = g_cmp * masked_attention(q, kc, vc, sees)
        # Selection scores: the compressed attention's probabilities, summed over the G query
        # heads of a group, each counting for every selection block its compressed block overlaps.
        with torch.no_grad():
            s = (q @ kc.transpose(-1, -2)) / math.sqrt(hs)
            p = torch.softmax(s.masked_fill(~sees, -math.inf), dim=-1).nan_to_num(0.0)
            p = p.view(B, Hkv, G, T, n_cmp).sum(2)
            for i in range(n_cmp):
                for j in range(n_slc):
                    if i * d < (j + 1) * ls and j * ls < i * d + l:
                        scores[..., j] += p[..., i]
    # Block 0 and the query's own and previous blocks always, then the best-scored earlier ones.
    with torch.no_grad():
        blocks, own = torch.arange(n_slc), position // ls
        forced = (blocks == 0) | (blocks == own) | (blocks == own - 1)
        ranked = scores.masked_fill(forced, math.inf).masked_fill(blocks > own, -math.inf)
        chosen = top_blocks(ranked, cfg.nsa_slc_topn) & (blocks <= own)       # (B, Hkv, T, n_slc)
        selected = chosen[..., torch.arange(T) // ls].repeat_interleave(G, dim=1) & causal
        window = causal & (torch.arange(T) > position - w)
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    return y + g_slc * masked_attention(q, k, v, selected) + g_win * masked_attention(q, k, v, window)


def torch_gpt(params, cfg, idx, targets):
    """nanoGPT's forward written with torch ops on our parameters (same names), the attention
    chosen by cfg.attention and cfg.n_kv_head (query head h reads key/value head h // G)."""
    P = {n: torch.tensor(a, requires_grad=True) for n, a in params.items()}
    B, T = idx.shape
    C, nh, n_kv = cfg.n_embd, cfg.n_head, cfg.kv_heads
    hs, G = C // nh, nh // n_kv
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = P["wte.weight"][torch.tensor(idx)] + P["wpe.weight"][torch.arange(T)]

    def ln(x, name):
        return TF.layer_norm(x, (C,), P[name + ".weight"], P.get(name + ".bias"), 1e-5)

    def lin(x, name):
        return TF.linear(x, P[name + ".weight"], P.get(name + ".bias"))

    for i in range(cfg.n_layer):
        h = f"h.{i}."
        a_in = ln(x, h + "ln_1")
        q, k, v = lin(a_in, h + "attn.c_attn").split([C, n_kv * hs, n_kv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)                               # (B, nh, T, hs)
        k, v = (t.view(B, T, n_kv, hs).transpose(1, 2) for t in (k, v))       # (B, n_kv, T, hs)
        if cfg.attention == "nsa":
            y = nsa(q, k, v, a_in, P, i, cfg, causal)
        else:
            k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
            if cfg.attention == "mha":
                y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif cfg.attention == "linear":     # φ(x) = elu(x) + 1, causal, rows normalised (+ 1e-6)
                a = (TF.elu(q) + 1) @ (TF.elu(k) + 1).transpose(-1, -2) * causal
                y = (a @ v) / (a.sum(-1, keepdim=True) + 1e-6)
            else:
                y = moba(q, k, v, cfg, causal)
        x = x + lin(y.transpose(1, 2).reshape(B, T, C), h + "attn.c_proj")
        x = x + lin(TF.gelu(lin(ln(x, h + "ln_2"), h + "mlp.c_fc"), approximate="tanh"), h + "mlp.c_proj")
    logits = TF.linear(ln(x, "ln_f"), P["wte.weight"])
    loss = TF.cross_entropy(logits.view(-1, cfg.vocab_size), torch.tensor(targets).view(-1))
    loss.backward()
    return logits.detach().numpy(), loss.item(), {n: p.grad.numpy() for n, p in P.items()}


def _compare(cfg, B, shift=0.05, seed=1):
    """Our GPT and torch_gpt on the same weights (moved off the init by N(0, shift), so biases,
    gains and the attention patterns matter) and batch: logits, loss and every gradient."""
    m = GPT(cfg, dtype=np.float64, seed=0)
    rng = np.random.default_rng(seed)
    for _, p in m.named_parameters():
        p.data[...] += rng.normal(0, shift, p.shape)
    T, V = cfg.block_size, cfg.vocab_size
    idx, tgt = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    params = {n: p.data.copy() for n, p in m.named_parameters()}
    t_logits, t_loss, t_grads = torch_gpt(params, cfg, idx, tgt)
    logits, _ = m(idx)
    loss, grads = m.loss_and_grads(idx, tgt)
    np.testing.assert_allclose(logits.data, t_logits, rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(t_loss, rel=1e-12)
    assert set(grads) == set(t_grads)
    for n in grads:
        np.testing.assert_allclose(grads[n], t_grads[n], rtol=1e-8, atol=1e-12, err_msg=n)
    assert math.isfinite(loss)


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_forward_and_gradients(bias):
    _compare(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=23, bias=bias), B=3)


# 16 positions. MoBA: 6 blocks of 3, each query its own and the 2 best earlier ones. NSA:
# compressed blocks of 4 every 2 (the first 3 queries see none), selection blocks of 3 (not a
# multiple of the stride), 4 per query: block 0, the 2 local ones and one chosen by the scores.
VARIANTS = {
    "GQA": dict(n_kv_head=2),
    "MQA": dict(n_kv_head=1),
    "linear": dict(attention="linear", n_kv_head=2),
    "moba": dict(attention="moba", n_kv_head=2, moba_block=3, moba_topk=3),
    "nsa": dict(attention="nsa", n_kv_head=2, nsa_cmp_block=4, nsa_cmp_stride=2, nsa_slc_block=3,
                nsa_slc_topn=4, nsa_window=3),
    "nsa-mha": dict(attention="nsa", nsa_cmp_block=4, nsa_cmp_stride=2, nsa_slc_block=3,
                    nsa_slc_topn=4, nsa_window=3, bias=False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_attention_variant_matches_an_independent_torch_model(variant):
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=16, block_size=16, vocab_size=11, **VARIANTS[variant])
    _compare(cfg, B=2, shift=0.3)
