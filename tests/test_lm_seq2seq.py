"""models/seq2seq.py: beam search of width 1 is greedy decoding; a beam as wide as every live
hypothesis returns the likeliest output found by enumeration; a beam's score is the model's
log-probability of its output; a padded batch gives each sequence what it gets alone; attention
weights are a distribution over the unpadded positions; the gradient is right (float64) for
both cells and both attentions; the tasks' answers are right; bad input names the shapes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigrad
from models.seq2seq import (BOS, EOS, PAD, VOCAB, Seq2Seq, Seq2SeqConfig, Task, decode, encode, exact_match,
                            make_batch, seq2seq_loss)

KINDS = [("gru", "bahdanau"), ("gru", "luong"), ("lstm", "bahdanau"), ("lstm", "luong")]


def tiny(cell="gru", attention="bahdanau", layers=1, seed=0, dtype=np.float64, scale=1.0, size=5):
    model = Seq2Seq(Seq2SeqConfig(cell=cell, attention=attention, n_embd=4, hidden_size=size, num_layers=layers),
                    dtype=dtype, seed=seed)
    if scale != 1.0:                                  # sharper distributions: decoding choices matter
        for p in model.parameters():
            p.data *= scale
    return model


def random_sources(rng, B, max_len=6):
    pairs = [("".join(rng.choice(list("0123456789+"), size=rng.integers(1, max_len + 1))), "1") for _ in range(B)]
    return make_batch(pairs)[0]


@given(kind=st.sampled_from(KINDS), layers=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_beam_of_width_one_is_greedy(kind, layers, seed):
    model = tiny(*kind, layers=layers, seed=seed, scale=3.0)
    src = random_sources(np.random.default_rng(seed), 4)
    greedy, _ = model.greedy(src, max_len=7)
    beam, _ = model.beam_search(src, beam=1, max_len=7)
    np.testing.assert_array_equal(beam, greedy)


@pytest.mark.parametrize("kind", KINDS)
def test_a_beams_score_is_the_log_probability_of_its_output(kind):
    model = tiny(*kind, seed=1, scale=3.0)
    src = random_sources(np.random.default_rng(1), 3)
    out, scores = model.beam_search(src, beam=3, max_len=6)
    for b in range(3):
        row = [int(t) for t in out[b]]
        seq = row[:row.index(EOS) + 1] if EOS in row else row     # no EOS: cut at max_len
        n = int((src[b] != PAD).sum())
        with minigrad.no_grad():
            logits, _, _ = model(src[b:b + 1, :n], np.array([[BOS, *seq[:-1]]]))
        z = logits.data[0].astype(np.float64)
        logp = z - z.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        assert scores[b] == pytest.approx(logp[np.arange(len(seq)), seq].sum(), rel=1e-9)


def _best_by_enumeration(model, src, L):
    """The likeliest output of at most L tokens (ending at its first EOS, or cut at L) and its
    log-probability, found by scoring every one: all V^(L-1) prefixes teacher-forced in a batch."""
    V = len(VOCAB)
    pre = np.array(np.meshgrid(*[np.arange(V)] * (L - 1), indexing="ij")).reshape(L - 1, -1).T
    with minigrad.no_grad():
        logits, _, _ = model(np.repeat(src, len(pre), 0), np.c_[np.full(len(pre), BOS), pre])
    z = logits.data.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))                # (V^(L-1), L, V)
    rows = np.arange(len(pre))[:, None]
    head = np.c_[np.zeros(len(pre)), np.cumsum(logp[rows, np.arange(L - 1), pre], axis=1)]  # first n tokens
    open_ = np.c_[np.ones(len(pre), bool), np.cumprod(pre != EOS, axis=1).astype(bool)]    # no EOS in them
    score = np.full((len(pre), L, V), -np.inf)
    score[:, :L - 1, EOS] = np.where(open_[:, :L - 1], head[:, :L - 1] + logp[:, np.arange(L - 1), EOS], -np.inf)
    score[:, L - 1] = np.where(open_[:, L - 1:], head[:, L - 1:] + logp[:, L - 1], -np.inf)  # cut at L
    row, n, last = np.unravel_index(np.argmax(score), score.shape)
    return [int(t) for t in pre[row, :n]] + [int(last)], float(score[row, n, last])


@pytest.mark.parametrize("kind", KINDS)
def test_a_beam_as_wide_as_every_hypothesis_finds_the_likeliest_output(kind):
    """Width V^(L-1) keeps every live hypothesis: beam search must return the output that
    enumeration finds best (of length 1 or L here, greedy often short of it); a narrower beam
    never beats it."""
    V, L = len(VOCAB), 4
    model = tiny(*kind, seed=5, scale=3.0)
    model.out.bias.data[EOS] -= 2.0                       # so that EOS is not always the best start
    for b, src in enumerate(random_sources(np.random.default_rng(5), 3)):
        src = src[None, :int((src != PAD).sum())]
        want, want_score = _best_by_enumeration(model, src, L)
        out, scores = model.beam_search(src, beam=V ** (L - 1), max_len=L)
        assert list(out[0]) == want + [PAD] * (L - len(want)), b
        assert scores[0] == pytest.approx(want_score, rel=1e-12), b
        for width in (1, 2, 5):
            assert model.beam_search(src, beam=width, max_len=L)[1][0] <= want_score + 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_a_padded_batch_gives_each_sequence_its_own_outputs(kind):
    model = tiny(*kind, layers=2, seed=2, scale=2.0)
    pairs = [("12345", "54321"), ("7", "7"), ("98+1", "99")]
    src, tgt_in, tgt_out = make_batch(pairs)
    with minigrad.no_grad():
        logits, _, attn = model(src, tgt_in)
        for b, (s, t) in enumerate(pairs):
            one_src, one_in, _ = make_batch([(s, t)])
            alone, _, alone_attn = model(one_src, one_in)
            T, S = one_in.shape[1], one_src.shape[1]
            np.testing.assert_allclose(logits.data[b, :T], alone.data[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(attn.data[b, :T, :S], alone_attn.data[0], rtol=1e-12, atol=1e-14)
            assert not attn.data[b, :, S:].any()                        # no weight on padding
    np.testing.assert_allclose(attn.data.sum(-1), 1.0, rtol=1e-12)


@settings(max_examples=8)       # each example is ~500 forwards of the model
@given(kind=st.sampled_from(KINDS), layers=st.integers(1, 2),
       pairs=st.lists(st.tuples(st.text("0123456789+", min_size=1, max_size=4), st.text("0123456789", min_size=1, max_size=3)),
                      min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_model_gradcheck_float64(kind, layers, pairs, seed):
    """float64 gradcheck of the loss and of the attention weights with respect to every parameter
    (moved off its init), over batches of 1-3 pairs whose drawn lengths pad sources and targets."""
    model = tiny(*kind, layers=layers, size=3, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += rng.normal(0, 0.3, p.shape)
    src, tgt_in, tgt_out = make_batch(pairs)
    params = list(model.parameters())
    # up to 6 elements and one direction through all, per parameter
    assert minigrad.gradcheck(lambda *p: seq2seq_loss(model, (src, tgt_in, tgt_out)), params, max_elements=6)
    if src.shape[1] >= 2:               # (over one source position the weights are constant 1)
        assert minigrad.gradcheck(lambda *p: model(src, tgt_in)[2], params, max_elements=6)


def test_the_loss_ignores_padded_targets():
    model = tiny()
    src, tgt_in, tgt_out = make_batch([("123", "321"), ("4", "4")])
    with minigrad.no_grad():
        loss = float(model(src, tgt_in, tgt_out)[1].item())
        logits = model(src, tgt_in)[0].data
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    scored = tgt_out != PAD
    b, t = np.nonzero(scored)
    assert loss == pytest.approx(-logp[b, t, tgt_out[b, t]].mean(), rel=1e-12)


def test_teacher_forcing_below_one_feeds_back_the_models_guesses_reproducibly():
    a, b = (Seq2Seq(Seq2SeqConfig(hidden_size=8, teacher_forcing=0.5), dtype=np.float64, seed=4) for _ in range(2))
    batch = Task("reverse", 3, 6).batch(np.random.default_rng(0), 8)
    la, lb = seq2seq_loss(a, batch), seq2seq_loss(b, batch)
    assert float(la.item()) == float(lb.item())                          # the same seed, the same draws
    full = Seq2Seq(Seq2SeqConfig(hidden_size=8), dtype=np.float64, seed=4)
    assert float(seq2seq_loss(full, batch).item()) != float(la.item())
    a.eval()                                                              # evaluation always teacher-forces
    assert float(seq2seq_loss(a, batch).item()) == float(seq2seq_loss(full, batch).item())


@pytest.mark.parametrize("kind", KINDS[::3])
def test_teacher_forcing_zero_reads_its_own_previous_guess_at_every_step(kind):
    """teacher_forcing is P(the true token is read): at 0 the decoder must read its own argmax at
    every step, i.e. equal a teacher-forced run on the inputs it would have guessed itself."""
    own = tiny(*kind, layers=2, seed=6, scale=2.0)
    own.config.teacher_forcing = 0.0
    forced = tiny(*kind, layers=2, seed=6, scale=2.0)                      # the same weights, tf = 1
    src, tgt_in, tgt_out = Task("reverse", 3, 6).batch(np.random.default_rng(1), 5)
    guessed = tgt_in.copy()
    with minigrad.no_grad():
        for t in range(1, tgt_in.shape[1]):
            logits, _, _ = forced(src, guessed[:, :t])
            guessed[:, t] = logits.data[:, -1].argmax(-1)
        want, _, _ = forced(src, guessed)
        got, _, _ = own(src, tgt_in)
    assert (guessed[:, 1:] != tgt_in[:, 1:]).any()                        # the guesses are not the truth
    np.testing.assert_allclose(got.data, want.data, rtol=1e-12, atol=1e-14)


def test_tasks_give_the_right_answers():
    rng = np.random.default_rng(0)
    for name, check in [("reverse", lambda s, t: t == s[::-1]), ("sort", lambda s, t: t == "".join(sorted(s))),
                        ("add", lambda s, t: int(t) == sum(int(x) for x in s.split("+")))]:
        task = Task(name, 1, 4)
        for _ in range(50):
            s, t = task.sample(rng)
            assert check(s, t) and 1 <= len(s) <= (9 if name == "add" else 4)
            assert len(t) + 1 <= task.max_target_len
    src, tgt_in, tgt_out = make_batch([("12", "21"), ("345", "543")])
    np.testing.assert_array_equal(src, [encode("12") + [PAD], encode("345")])
    np.testing.assert_array_equal(tgt_in, [[BOS, *encode("21"), PAD], [BOS, *encode("543")]])
    np.testing.assert_array_equal(tgt_out, [[*encode("21"), EOS, PAD], [*encode("543"), EOS]])
    assert decode([*encode("9+1"), EOS, *encode("77")]) == "9+1"
    assert len(VOCAB) == 14


def test_an_untrained_model_gets_almost_nothing_right():
    assert exact_match(tiny(dtype=np.float32), Task("reverse", 5, 8), n=100) < 0.05


@pytest.mark.parametrize("make, says", [
    (lambda: tiny()(np.array([[3, 4]]), np.array([[BOS]]), src_padding_mask=np.zeros((1, 3), bool)),
     "src_padding_mask has shape (1, 3) (bool) but src is (1, 2): it must be a boolean (B, S) array"),
    (lambda: tiny()(np.array([[3, 40]]), np.array([[BOS]])), "source ids must be in [0, 14) (the model's vocabulary), got [3, 40]"),
    (lambda: tiny()(np.array([[PAD, 4]]), np.array([[BOS]])), "a source starts with padding"),
    (lambda: tiny()(np.array([[3, 4]]), np.array([[BOS], [BOS]])), "tgt_in must be (B, T) = (1, T >= 1) for src (1, 2), got (2, 1)"),
    (lambda: Seq2SeqConfig(attention="general"), "attention='general' must be one of bahdanau, luong"),
    (lambda: Task("multiply"), "name must be one of reverse, sort, add"),
    (lambda: tiny().beam_search(np.array([[3]]), beam=0), "beam must be >= 1"),
])
def test_bad_input_is_one_clear_error(make, says):
    with pytest.raises(ValueError) as e:
        make()
    assert says in str(e.value)


def test_exact_match_counts_a_pad_or_bos_inside_an_answer_as_wrong():
    """decode() drops PAD and BOS for display, so "3 <bos> 5 <eos>" used to count as an exact "35"."""
    class Fixed:                         # answers "3 <bos> 5 <eos>" to every source
        training = False

        def eval(self):
            self.training = False

        def train(self, mode=True):
            self.training = mode

        def greedy(self, src, steps):
            B = src.shape[0]
            answer = [encode("3")[0], BOS, encode("5")[0], EOS]
            return np.tile(answer, (B, 1)), None

    task = Task("sort", 2, 2)
    assert decode(Fixed().greedy(np.zeros((1, 2), np.int64), 4)[0][0]) == "35"      # shown without it
    # among two-digit sources, sorted "35" is the answer of "35" and "53": a lenient count finds some
    assert exact_match(Fixed(), task, n=200) == 0.0
