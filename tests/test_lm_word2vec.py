"""models/word2vec.py: the SGNS loss's gradient (float64 finite differences, and the closed form),
the count^0.75 noise table, subsampling's keep rate, the dynamic window's distance law, and a
short training run that puts words of the same contexts next to each other."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad
import optim
from models.training import Trainer
from models.word2vec import (SkipGramSampler, Word2Vec, Word2VecConfig, keep_probabilities, log_sigmoid,
                             noise_table, sgns_loss)


def tiny_model(V=7, D=4, seed=0):
    model = Word2Vec(Word2VecConfig(vocab_size=V, dim=D), dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters():                 # away from the zero start of the context vectors
        p.data[...] = rng.normal(0, 0.7, p.shape)
    return model


@given(seed=st.integers(0, 2**16), B=st.integers(1, 5), K=st.integers(1, 4))
def test_sgns_loss_gradcheck_float64(seed, B, K):
    model = tiny_model(seed=seed)
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 7, B), rng.integers(0, 7, B), rng.integers(0, 7, (B, K))
    assert minigrad.gradcheck(lambda *params: sgns_loss(model, batch), list(model.parameters()))


def test_sgns_gradient_is_the_closed_form():
    """For one pair: dL/dv_c = -(1 - σ(u_o·v_c)) u_o + Σ_k σ(u_k·v_c) u_k,
    dL/du_o = -(1 - σ(u_o·v_c)) v_c, dL/du_k = σ(u_k·v_c) v_c."""
    model = tiny_model()
    c, o, negs = 1, 2, [3, 5]
    model.zero_grad()
    loss = model(np.array([c]), np.array([o]), np.array([negs]))
    loss.backward()
    v, u = model.in_embed.weight.data, model.out_embed.weight.data
    sig = lambda x: 1 / (1 + np.exp(-x))
    expected_loss = -np.log(sig(u[o] @ v[c])) - sum(np.log(sig(-u[k] @ v[c])) for k in negs)
    assert float(loss.item()) == pytest.approx(expected_loss, rel=1e-13)
    gv = -(1 - sig(u[o] @ v[c])) * u[o] + sum(sig(u[k] @ v[c]) * u[k] for k in negs)
    np.testing.assert_allclose(model.in_embed.weight.grad[c], gv, rtol=1e-12)
    np.testing.assert_allclose(model.out_embed.weight.grad[o], -(1 - sig(u[o] @ v[c])) * v[c], rtol=1e-12)
    for k in negs:
        np.testing.assert_allclose(model.out_embed.weight.grad[k], sig(u[k] @ v[c]) * v[c], rtol=1e-12)
    untouched = [w for w in range(7) if w not in (o, *negs)]
    assert not model.out_embed.weight.grad[untouched].any()


def test_log_sigmoid_is_stable_and_its_gradient_exact_at_zero():
    x = minigrad.tensor(np.array([-800.0, -3.0, 0.0, 3.0, 800.0]), requires_grad=True)
    y = log_sigmoid(x)
    np.testing.assert_allclose(y.data, [-800.0, -3.0485873515737420, -np.log(2), -0.0485873515737420, 0.0],
                               rtol=1e-14, atol=1e-300)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0, 1 / (1 + np.exp(-3.0)), 0.5, 1 / (1 + np.exp(3.0)), 0.0], rtol=1e-14)


def test_noise_table_holds_each_word_in_proportion_to_its_count_to_the_three_quarters():
    counts = np.array([0, 1, 10, 100, 1000, 5])
    table = noise_table(counts, size=100_000)
    assert len(table) == 100_000
    share = np.bincount(table, minlength=len(counts)) / len(table)
    expected = counts ** 0.75 / np.sum(counts ** 0.75)
    np.testing.assert_allclose(share, expected, atol=1.5 / 100_000)
    assert share[0] == 0
    with pytest.raises(ValueError, match="every count is 0"):
        noise_table([0, 0])


def test_subsampling_keeps_each_word_with_probability_sqrt_t_over_f():
    rng = np.random.default_rng(0)
    ids = rng.choice(4, size=200_000, p=[0.0, 0.7, 0.25, 0.05])
    sampler = SkipGramSampler(ids, 4, subsample=0.05, seed=1)
    keep = keep_probabilities(np.bincount(ids, minlength=4), 0.05)
    kept = np.bincount(sampler.text, minlength=4) / np.bincount(ids, minlength=4).clip(1)
    n = np.bincount(ids, minlength=4)
    for w in (1, 2, 3):                         # within 5 binomial standard deviations
        assert abs(kept[w] - keep[w]) < 5 * np.sqrt(keep[w] * (1 - keep[w]) / n[w]) + 1e-12
    assert keep[3] == 1.0 and keep[1] < 0.3      # the frequent word is thinned, the rare one kept


def test_pairs_follow_the_dynamic_window_law():
    R, n = 4, 400_000
    sampler = SkipGramSampler(np.arange(1, 1001) % 50 + 1, 51, window=R, negatives=3, subsample=0)
    center, context, negatives = sampler.batch(np.random.default_rng(0), n)
    assert center.shape == context.shape == (n,) and negatives.shape == (n, 3)
    d = (context - center) % 50                   # the text is 1..50 repeated: the offset mod 50
    d = np.where(d > 25, d - 50, d)
    counts = np.array([np.sum(np.abs(d) == k) for k in range(1, R + 1)])
    expected = n * np.array([4, 3, 2, 1]) / 10   # P(|d| = k) ∝ R - k + 1
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    assert abs(np.mean(d > 0) - 0.5) < 0.005
    assert not np.isin(0, center) and not np.isin(0, negatives)   # <unk> is skipped


def test_a_short_text_is_refused_and_a_text_of_two_windows_pairs_within_it():
    """A context past one end of the text is reflected to the other side, which stays inside the
    text only from 2R words on: 6 words at R = 5 indexed past the end, 8 wrapped round to a pair
    at the wrong distance (a review session)."""
    with pytest.raises(ValueError, match="fewer than a window"):
        SkipGramSampler(np.arange(1, 10), 10, window=5, subsample=0)
    text = np.arange(1, 11)                        # 10 distinct words = 2R: ids are positions + 1
    sampler = SkipGramSampler(text, 11, window=5, negatives=1, subsample=0)
    center, context, _ = sampler.batch(np.random.default_rng(0), 20_000)
    assert 1 <= np.abs(context - center).min() and np.abs(context - center).max() <= 5


def test_training_puts_words_of_the_same_contexts_together():
    """Two 'topics' that never share a window: after a short run every word's nearest neighbours
    are words of its own topic."""
    rng = np.random.default_rng(0)
    topics = [np.arange(1, 6), np.arange(6, 11)]
    ids = np.concatenate([rng.choice(topics[i % 2], size=20) for i in range(400)])
    sampler = SkipGramSampler(ids, 11, window=2, negatives=4, subsample=0)
    model = Word2Vec(Word2VecConfig(vocab_size=11, dim=8), seed=0)
    opt = optim.create("sgd", {n: p.data for n, p in model.named_parameters()}, lr=5.0)
    Trainer(model, sgns_loss, opt, lambda r: sampler.batch(r, 256), steps=300, progress=False,
            log_every=10**9).fit()
    for w in range(1, 11):
        group = topics[0] if w <= 5 else topics[1]
        neighbours = [i for i, _ in model.nearest(w, k=4, exclude=(0,))]
        assert set(neighbours) <= set(group), (w, neighbours)
    # an analogy inside the structure: the answer lies in c's topic
    assert model.analogy(1, 2, 7)[0][0] in topics[1]


@pytest.mark.parametrize("make, says", [
    (lambda: Word2VecConfig(vocab_size=0), "Word2VecConfig.vocab_size=0 must be a positive integer"),
    (lambda: SkipGramSampler([1, 2, 9], 5), "ids must be a 1-D array in [0, 5), got shape (3,) with values in [1, 9]"),
    (lambda: SkipGramSampler([1, 2], 5, window=3, subsample=0), "2 words are left after subsampling"),
    (lambda: SkipGramSampler([1, 2, 3, 4], 5, window=0), "window and negatives must be >= 1"),
    (lambda: Word2Vec(Word2VecConfig(5, 2))(np.zeros(3, int), np.zeros(2, int), np.zeros((3, 2), int)),
     "expected center (B,), context (B,) and negatives (B, K), got (3,), (2,) and (3, 2)"),
])
def test_bad_input_is_one_clear_error(make, says):
    with pytest.raises(ValueError) as e:
        make()
    assert says in str(e.value)
