"""The GPT equals a PyTorch model of the same architecture (nanoGPT's), weights copied, float64."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is optional (bench extra)")
import torch.nn.functional as TF  # noqa: E402

from models.gpt import GPT, GPTConfig  # noqa: E402


def torch_gpt(params, cfg, idx, targets):
    """nanoGPT's forward written with torch ops on our parameters (same names)."""
    P = {n: torch.tensor(a, requires_grad=True) for n, a in params.items()}
    B, T = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    x = P["wte.weight"][torch.tensor(idx)] + P["wpe.weight"][torch.arange(T)]

    def ln(x, name):
        return TF.layer_norm(x, (C,), P[name + ".weight"], P.get(name + ".bias"), 1e-5)

    def lin(x, name):
        return TF.linear(x, P[name + ".weight"], P.get(name + ".bias"))

    for i in range(cfg.n_layer):
        h = f"h.{i}."
        q, k, v = lin(ln(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + lin(y, h + "attn.c_proj")
        x = x + lin(TF.gelu(lin(ln(x, h + "ln_2"), h + "mlp.c_fc"), approximate="tanh"), h + "mlp.c_proj")
    logits = TF.linear(ln(x, "ln_f"), P["wte.weight"])
    loss = TF.cross_entropy(logits.view(-1, cfg.vocab_size), torch.tensor(targets).view(-1))
    loss.backward()
    return logits.detach().numpy(), loss.item(), {n: p.grad.numpy() for n, p in P.items()}


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_forward_and_gradients(bias):
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=23, bias=bias)
    m = GPT(cfg, dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    for _, p in m.named_parameters():          # move off the init so biases/gains matter
        p.data[...] += rng.normal(0, 0.05, p.shape)
    idx, tgt = rng.integers(0, 23, (3, 16)), rng.integers(0, 23, (3, 16))
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
