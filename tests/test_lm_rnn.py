"""models/rnn_lm.py: truncated BPTT with the state carried across windows gives the outputs of
one long unrolled forward; the model's gradient is right (float64 finite differences) for each
cell; evaluating one window again starts from the same state; a run resumed from a Trainer
checkpoint continues the streams bit for bit; generation with the carried state equals
recomputing from the whole prefix; a short run learns a periodic text; bad input is refused
naming the shapes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigrad
import optim
from models.rnn_lm import BPTTStreams, RNNLM, RNNLMConfig, detach_state, tbptt_loss
from models.training import CheckpointError, Trainer, clip_grad_norm, evaluate, load_checkpoint


def tiny(cell, layers=1, V=7, seed=0, dropout=0.0):
    return RNNLM(RNNLMConfig(cell=cell, vocab_size=V, n_embd=3, hidden_size=4, num_layers=layers,
                             dropout=dropout), dtype=np.float64, seed=seed)


@given(cell=st.sampled_from(["rnn", "lstm", "gru"]), layers=st.integers(1, 2), seed=st.integers(0, 2**16),
       cuts=st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_windows_with_the_state_carried_equal_one_long_forward(cell, layers, seed, cuts):
    model = tiny(cell, layers, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 7, size=(2, sum(cuts)))
    with minigrad.no_grad():
        full, _, full_state = model(x)
        pieces, state, s = [], None, 0
        for n in cuts:
            logits, _, state = model(x[:, s:s + n], state=detach_state(state))
            pieces.append(logits.data)
            s += n
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full.data, rtol=1e-12, atol=1e-14)
    for a, b in zip(state if cell == "lstm" else (state,), full_state if cell == "lstm" else (full_state,)):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bptt_streams_losses_are_the_long_forwards_per_window(cell):
    """tbptt_loss over consecutive windows of BPTTStreams (state carried by the streams object)
    equals the mean per-token loss of one forward over each whole stream, window by window."""
    model = tiny(cell, 2)
    ids = np.random.default_rng(1).integers(0, 7, size=3 * 12 + 1)
    streams = BPTTStreams(ids, batch_size=3, window=4)
    with minigrad.no_grad():
        losses = [float(tbptt_loss(model, streams.next_window()).item()) for _ in range(3)]
        logits, _, _ = model(streams.x)
    z = logits.data - logits.data.max(-1, keepdims=True)
    nll = -(np.take_along_axis(z, streams.y[..., None], -1)[..., 0] - np.log(np.exp(z).sum(-1)))
    np.testing.assert_allclose(losses, nll.reshape(3, 3, 4).mean(axis=(0, 2)), rtol=1e-12)
    # the pass ends after 3 windows: the next one starts over from the beginning and zeros
    w = streams.next_window()
    assert w.first and np.array_equal(w.x, streams.x[:, :4])


def test_validation_windows_start_from_zeros_at_every_evaluation():
    model = tiny("gru")
    streams = BPTTStreams(np.arange(50) % 7, batch_size=2, window=5)
    windows = streams.windows(3)
    assert [w.first for w in windows] == [True, False, False]
    first = evaluate(model, tbptt_loss, windows)
    assert evaluate(model, tbptt_loss, windows) == first       # the carried state was reset


@settings(max_examples=15)
@given(cell=st.sampled_from(["rnn", "lstm", "gru"]), layers=st.integers(1, 2), B=st.integers(1, 3),
       T=st.integers(1, 4), with_state=st.booleans(), seed=st.integers(0, 2**16))
def test_model_gradcheck_float64(cell, layers, B, T, with_state, seed):
    """float64 gradcheck of the loss, and of the logits and final state, with respect to every
    parameter (moved off its init) and, when one is given, the initial state (h, or (h, c))."""
    model = tiny(cell, layers, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += rng.normal(0, 0.3, p.shape)
    x, y = rng.integers(0, 7, (B, T)), rng.integers(0, 7, (B, T))
    params = list(model.parameters())
    states = [minigrad.Tensor(rng.normal(size=s), requires_grad=True) for s in model.state_shapes(B)]
    states = states if with_state else []
    n = len(states)

    def as_state(parts):
        return None if not parts else tuple(parts) if cell == "lstm" else parts[0]

    def logits_and_state(*a):
        logits, _, new = model(x, state=as_state(a[:n]))
        new = new if isinstance(new, tuple) else (new,)
        return minigrad.cat([logits.reshape(-1)] + [s.reshape(-1) for s in new])

    assert minigrad.gradcheck(lambda *a: model(x, y, state=as_state(a[:n]))[1], states + params, max_elements=12)
    assert minigrad.gradcheck(logits_and_state, states + params, max_elements=12)


def test_lstm_forget_gate_bias_starts_at_one():
    model = RNNLM(RNNLMConfig(cell="lstm", vocab_size=5, hidden_size=3, num_layers=2))
    for layer in range(2):
        b = getattr(model.rnn, f"bias_hh_l{layer}").data + getattr(model.rnn, f"bias_ih_l{layer}").data
        np.testing.assert_array_equal(b[3:6], 1.0)                # gates i | f | g | o


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_greedy_generation_with_the_carried_state_equals_recomputing_the_prefix(cell):
    model = tiny(cell, 2, seed=3)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    out = model.generate(prompt, 6, temperature=0)
    assert out.shape == (2, 9) and np.array_equal(out[:, :3], prompt)
    with minigrad.no_grad():
        for t in range(3, 9):
            logits, _, _ = model(out[:, :t])
            np.testing.assert_array_equal(out[:, t], logits.data[:, -1].argmax(-1))
    sampled = model.generate(prompt, 5, temperature=1.0, top_k=2, rng=0)
    assert np.array_equal(sampled, model.generate(prompt, 5, temperature=1.0, top_k=2, rng=0))


def test_a_short_run_learns_a_periodic_text():
    ids = np.tile(np.array([0, 1, 2, 3, 2, 1]), 400)            # the next id depends on the last two
    model = RNNLM(RNNLMConfig(cell="lstm", vocab_size=4, n_embd=8, hidden_size=16), seed=0)
    streams = BPTTStreams(ids, batch_size=8, window=12)
    opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=1e-2)
    trainer = Trainer(model, tbptt_loss, opt, streams.next_window, steps=150, grad_hooks=[clip_grad_norm(1.0)],
                      progress=False, log_every=10**9)
    trainer.fit()
    assert np.mean(trainer.history["train_loss"][-10:]) < 0.05


@pytest.mark.parametrize("make, says", [
    (lambda: RNNLMConfig(cell="transformer"), "cell='transformer' must be one of rnn, lstm, gru"),
    (lambda: tiny("gru")(np.array([[1, 9]])), "token ids must be in [0, 7) (the model's vocabulary), got [1, 9]"),
    (lambda: tiny("gru")(np.array([1, 2])), "idx must be an integer array (B, T) with T >= 1, got int64 (2,)"),
    (lambda: tiny("gru")(np.array([[1, 2]]), np.array([1, 2])), "targets shape (2,) != idx shape (1, 2)"),
    (lambda: tiny("lstm")(np.array([[1, 2]]), state=tiny("lstm")(np.zeros((3, 2), int))[2]),
     "the state has shape(s) [(1, 3, 4), (1, 3, 4)], a batch of 1 needs [(1, 1, 4), (1, 1, 4)]"),
    (lambda: BPTTStreams(np.arange(20), batch_size=4, window=6), "20 ids in 4 streams give 4 per stream"),
])
def test_bad_input_is_one_clear_error(make, says):
    with pytest.raises(ValueError) as e:
        make()
    assert says in str(e.value)


def _long_forward_losses(model, streams):
    """The mean loss of each window of ``streams`` within one forward over every whole stream."""
    with minigrad.no_grad():
        logits, _, _ = model(streams.x)
    z = logits.data - logits.data.max(-1, keepdims=True)
    nll = -(np.take_along_axis(z, streams.y[..., None], -1)[..., 0] - np.log(np.exp(z).sum(-1)))
    n = streams.windows_per_pass
    return nll[:, :n * streams.window].reshape(len(nll), n, streams.window).mean(axis=(0, 2))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_evaluating_one_window_again_starts_from_the_same_state(cell):
    """A closure optimizer or a zeroth-order method evaluates one window several times in a step:
    each evaluation starts from the state the previous window left, and the window after it
    still continues the streams. The second evaluation started from the first one's end state."""
    model = tiny(cell, 2)
    streams = BPTTStreams(np.random.default_rng(2).integers(0, 7, size=2 * 20 + 1), batch_size=2, window=5)
    want = _long_forward_losses(model, streams)
    with minigrad.no_grad():
        got = []
        for _ in range(4):
            w = streams.next_window()
            got.append([float(tbptt_loss(model, w).item()) for _ in range(3)])
    np.testing.assert_allclose(got, np.repeat(want[:, None], 3, axis=1), rtol=1e-12)


def test_a_closure_optimizer_sees_one_function_per_window():
    """Through the Trainer: an optimizer whose step evaluates the closure twice at the same
    parameters gets the same loss and gradients twice."""
    seen = []

    class LookTwice(optim.SGD):
        uses_closure = True

        def step(self, grads=None, closure=None):
            first, g = closure()
            g = {n: None if a is None else a.copy() for n, a in g.items()}
            second, g2 = closure()
            seen.append((first, second, all(a is None or np.array_equal(a, g2[n]) for n, a in g.items())))
            super().step(g2)
            return second

    model = tiny("lstm")
    streams = BPTTStreams(np.arange(61) % 7, batch_size=2, window=5)
    opt = LookTwice({n: p.data for n, p in model.named_parameters()}, lr=0.1)
    Trainer(model, tbptt_loss, opt, streams.next_window, steps=4, progress=False, log_every=0).fit()
    assert len(seen) == 4 and all(a == b and same for a, b, same in seen)


def test_validation_rounds_chain_the_windows_afresh_after_the_model_changed():
    """The validation windows are built once and evaluated at every round with other weights:
    each round is the long forward of the weights of that round, window by window."""
    model = tiny("lstm", seed=4)
    streams = BPTTStreams(np.random.default_rng(3).integers(0, 7, size=2 * 15 + 1), batch_size=2, window=5)
    windows = streams.windows()
    for round_ in range(3):
        if round_:
            for p in model.parameters():
                p.data += 0.1 * np.random.default_rng(round_).normal(size=p.data.shape)
        with minigrad.no_grad():
            got = [float(tbptt_loss(model, w).item()) for w in windows]
        np.testing.assert_allclose(got, _long_forward_losses(model, streams), rtol=1e-12)


def _bptt_run(steps, stop_at=None, streams_of=None, dropout=0.0):
    """A truncated-BPTT Trainer over a two-layer LSTM (a state of two parts), with clipping; the
    script seeds minigrad's global generator first, as a user's would."""
    minigrad.manual_seed(0)
    model = tiny("lstm", 2, dropout=dropout)
    streams = BPTTStreams(np.random.default_rng(5).integers(0, 7, size=2 * 40 + 1), batch_size=2, window=5)
    opt = optim.create("adamw", {n: p.data for n, p in model.named_parameters()}, lr=1e-2)
    stop = (lambda t: setattr(t, "interrupted", t.step == stop_at)) if stop_at else None
    batches = streams.next_window if streams_of is None else streams_of(streams)
    trainer = Trainer(model, tbptt_loss, opt, batches, steps=steps, schedule="cosine",
                      grad_hooks=[clip_grad_norm(1.0)], on_step=stop, progress=False, log_every=0)
    return trainer, model, streams


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_resumed_bptt_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, dropout):
    """Stopped after 11 steps (8 windows a pass: the streams wrapped once), saved, restored into a
    fresh Trainer and run to 20: the same losses and weights as 20 steps at once. The streams
    restarted at window 0 with zero state (the Trainer did not save them); with dropout between
    the layers, the masks came from minigrad's global generator, which it did not save either."""
    full, full_model, _ = _bptt_run(20, dropout=dropout)
    full.fit()
    part, _, _ = _bptt_run(20, stop_at=11, dropout=dropout)
    assert part.fit().step == 11
    part.save(tmp_path)
    again, model, streams = _bptt_run(20, dropout=dropout)
    again.restore(load_checkpoint(tmp_path))
    assert streams.pos == 11 - 8 and streams.state is not None
    again.fit()
    assert again.history["train_loss"] == full.history["train_loss"]
    for (n, p), q in zip(full_model.named_parameters(), model.parameters()):
        assert np.array_equal(p.data, q.data), n


def test_a_checkpoint_without_the_streams_state_still_loads_and_leaves_them_as_they_are(tmp_path):
    tr, _, _ = _bptt_run(3, streams_of=lambda s: lambda rng: s.next_window())   # batches keep no state
    tr.fit()
    tr.save(tmp_path)
    again, _, streams = _bptt_run(3)
    again.restore(load_checkpoint(tmp_path))
    assert again.step == 3 and streams.pos == 0 and streams.state is None


def test_a_restore_refused_after_the_streams_were_loaded_puts_them_back(tmp_path):
    """A target behind the saved step is refused last, after the streams took the saved state:
    the rollback must give them theirs back (the refusals above come before they are touched)."""
    tr, _, _ = _bptt_run(3)
    tr.fit()
    tr.save(tmp_path)
    again, _, streams = _bptt_run(5)
    with pytest.raises(CheckpointError, match="a target of 1 steps is behind it"):
        again.restore(load_checkpoint(tmp_path), target=1)
    assert streams.pos == 0 and streams.state is None and again.step == 0


@pytest.mark.parametrize("other, match", [
    (lambda s: lambda rng: s.next_window(), "holds the state of a batch source, this trainer's batches keep none"),
    (lambda s: BPTTStreams(s.x.ravel()[:41], batch_size=2, window=5).next_window,
     "saved state of batches does not fit this BPTTStreams .*saved for 2 streams of 40 ids read 5 at a time, these are 2 of 20 by 5"),
])
def test_a_streams_state_this_run_cannot_take_is_refused_and_changes_nothing(tmp_path, other, match):
    tr, _, _ = _bptt_run(3)
    tr.fit()
    tr.save(tmp_path)
    again, model, streams = _bptt_run(3, streams_of=other)
    again.fit()
    source = getattr(again.batches, "__self__", None)
    before = (again.step, [p.data.copy() for p in model.parameters()],
              source and (source.pos, source.state[0].data.copy()))
    with pytest.raises(CheckpointError, match=match):
        again.restore(load_checkpoint(tmp_path))
    assert again.step == before[0]
    assert all(np.array_equal(p.data, q) for p, q in zip(model.parameters(), before[1]))
    if source is not None:
        assert source.pos == before[2][0] and np.array_equal(source.state[0].data, before[2][1])
