"""A character language model with a recurrent network (RNN, LSTM or GRU), trained by truncated
backpropagation through time: lecture 4's road from n-grams to transformers.

The network reads one character at a time and keeps a hidden state h_t that summarizes
everything read so far, so unlike an n-gram its context has no fixed length:

    e_t = E[x_t]                      embedding of the character (B, n_embd)
    h_t = cell(e_t, h_{t-1})          nn.RNN (Elman 1990), nn.LSTM (Hochreiter and Schmidhuber
                                      1997) or nn.GRU (Cho et al. 2014, arXiv:1406.1078),
                                      ``num_layers`` stacked
    logits_t = W h_t + b              a distribution over the next character (B, V)

**Backpropagation through time** is backprop on the unrolled loop: the gradient of the loss at
step t flows back through h_{t-1}, h_{t-2}, ... and is multiplied by each step's Jacobian
∂h_t/∂h_{t-1}. For the plain RNN these products shrink or blow up geometrically (Bengio, Simard,
Frasconi 1994; Pascanu, Mikolov, Bengio 2013, arXiv:1211.5063), which is why the LSTM's additive
cell c_t = f ⊙ c_{t-1} + i ⊙ g (a path whose Jacobian is the forget gate, near 1) learns long
dependencies that the RNN cannot, and why the gradient is clipped to a global norm.

**Truncated BPTT** (Williams and Peng 1990): the text is cut into ``B`` long contiguous streams
(:class:`BPTTStreams`), and each training step reads the next ``window`` characters of every
stream. The hidden state at the end of a window is the initial state of the next, so the model
sees context from far back, but it is *detached*: gradients stop at the window boundary, so one
step costs O(window) however long the stream. Running two windows one after the other with the
state carried gives exactly the outputs of one forward over the two windows joined
(tests/test_lm_rnn.py); only the gradient is truncated. The streams' position and carried state
are saved with the Trainer's checkpoints, so a resumed run continues them bit for bit.

The LSTM's forget-gate bias starts at 1 (Gers, Schmidhuber, Cummins 2000; Jozefowicz, Zaremba,
Sutskever 2015), so the cell remembers by default at the start of training.

    model = RNNLM(RNNLMConfig(cell="lstm", vocab_size=V, hidden_size=256))
    streams = BPTTStreams(train_ids, batch_size=32, window=64)
    Trainer(model, tbptt_loss, opt, streams.next_window, steps=1000,
            grad_hooks=[clip_grad_norm(1.0)]).fit()
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

import minigrad
import minigrad.functional as F
from minigrad import nn
from models.textgen import sample_next

__all__ = ["RNNLMConfig", "RNNLM", "CELLS", "BPTTStreams", "Window", "tbptt_loss", "detach_state"]

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RNNLMConfig:
    cell: str = "lstm"
    vocab_size: int = 65
    n_embd: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0           # between stacked layers (nn.LSTM's dropout), while training

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"RNNLMConfig.cell={self.cell!r} must be one of {', '.join(CELLS)}")
        for name in ("vocab_size", "n_embd", "hidden_size", "num_layers"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"RNNLMConfig.{name}={v!r} must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RNNLMConfig.dropout={self.dropout} must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RNNLMConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"RNNLMConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def detach_state(state):
    """The recurrent state (a Tensor, or the LSTM's (h, c)) cut from the graph: BPTT's truncation."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


class RNNLM(nn.Module):
    """``RNNLM(config, dtype=np.float32, seed=0)``;
    ``forward(idx (B, T), targets=None, state=None) -> (logits (B, T, V), loss, state)``."""

    def __init__(self, config: RNNLMConfig, dtype=np.float32, seed: int = 0):
        super().__init__()
        self.config = config
        rng = np.random.default_rng(seed)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd, dtype=dtype, rng=rng)
        self.rnn = CELLS[c.cell](c.n_embd, c.hidden_size, c.num_layers, batch_first=True, dropout=c.dropout,
                                 dtype=dtype, rng=rng)
        self.head = nn.Linear(c.hidden_size, c.vocab_size, dtype=dtype, rng=rng)
        if c.cell == "lstm":                     # gates i | f | g | o: the forget gate's bias starts at 1
            H = c.hidden_size
            for layer in range(c.num_layers):
                getattr(self.rnn, f"bias_hh_l{layer}").data[H:2 * H] = 1.0
                getattr(self.rnn, f"bias_ih_l{layer}").data[H:2 * H] = 0.0

    def state_shapes(self, batch_size: int) -> tuple:
        """The shape of each part of the state for a batch: ((layers, B, H),) or, for the LSTM, two."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        return (shape, shape) if self.config.cell == "lstm" else (shape,)

    def forward(self, idx, targets=None, state=None):
        idx = np.asarray(idx.data if isinstance(idx, minigrad.Tensor) else idx)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer) or idx.shape[1] == 0:
            raise ValueError(f"RNNLM.forward: idx must be an integer array (B, T) with T >= 1, "
                             f"got {idx.dtype} {idx.shape}")
        V = self.config.vocab_size
        if idx.min() < 0 or idx.max() >= V:
            raise ValueError(f"RNNLM.forward: token ids must be in [0, {V}) (the model's vocabulary), "
                             f"got [{idx.min()}, {idx.max()}]")
        B, T = idx.shape
        if state is not None:
            parts = state if isinstance(state, tuple) else (state,)
            want = self.state_shapes(B)
            if tuple(p.shape for p in parts) != want:
                raise ValueError(f"RNNLM.forward: the state has shape(s) {[p.shape for p in parts]}, a batch of "
                                 f"{B} needs {list(want)}; start with state=None")
        x = F.embedding(idx, self.wte.weight)                          # (B, T, n_embd)
        out, state = self.rnn(x, state)                                # (B, T, H); state (L, B, H)
        logits = self.head(out)                                        # (B, T, V)
        loss = None
        if targets is not None:
            targets = np.asarray(targets)
            if targets.shape != (B, T):
                raise ValueError(f"RNNLM.forward: targets shape {targets.shape} != idx shape {(B, T)}")
            loss = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))
        return logits, loss, state

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None, rng=None):
        """Sample ``max_new_tokens`` after ``idx`` (B, T0) -> (B, T0 + max_new_tokens): the prompt
        is read once, then each new character costs one step of the carried state."""
        rng = np.random.default_rng(rng)
        idx = np.asarray(idx, dtype=np.int64)
        was = self.training
        self.eval()
        out = [idx]
        try:
            with minigrad.no_grad():
                logits, _, state = self(idx)
                for _ in range(max_new_tokens):
                    nxt = sample_next(logits.data[:, -1, :], temperature, top_k, rng)
                    out.append(nxt[:, None])
                    logits, _, state = self(nxt[:, None], state=state)
        finally:
            self.train(was)
        return np.concatenate(out, axis=1)


@dataclass
class Window:
    """One step of truncated BPTT: ``window`` characters of every stream, and the carrier whose
    ``state`` holds the streams' hidden state at its start (None, zeros, when ``first``).
    ``start`` is the state its first evaluation started from, which the evaluations that follow
    at once (a closure optimizer's, a zeroth-order method's) start from again."""

    x: np.ndarray
    y: np.ndarray
    carry: "BPTTStreams"
    first: bool
    start: object = None


def tbptt_loss(model, window: Window):
    """``loss_fn`` for the Trainer: the loss of one window, starting from the state the previous
    window left, which is then replaced by this window's final state, detached.

    Evaluating the same window again right away (several evaluations in one optimizer step)
    starts from the same state, so every evaluation sees the same function of the parameters;
    a list of windows evaluated round after round (``BPTTStreams.windows``) chains afresh in
    each round."""
    carry = window.carry
    if carry.last is not window:            # a new window: it starts where the last one ended
        window.start = None if window.first else carry.state
    _, loss, state = model(window.x, window.y, state=window.start)
    carry.state, carry.last = detach_state(state), window
    return loss


class BPTTStreams:
    """The id array cut into ``batch_size`` contiguous streams, read ``window`` ids at a time.

    Stream b is ids[b n : (b + 1) n + 1] with n = (len(ids) - 1) // batch_size. :meth:`next_window`
    returns the next window of every stream and wraps to the start (state reset) when a stream
    is used up; :meth:`windows` lists the first ``count`` windows, for validation (the first one
    resets the state, so every evaluation starts afresh). :meth:`state_dict` and
    :meth:`load_state_dict` keep the position and the carried state across a checkpoint."""

    def __init__(self, ids, batch_size: int, window: int):
        ids = np.asarray(ids, dtype=np.int64)
        if batch_size < 1 or window < 1:
            raise ValueError(f"BPTTStreams: batch_size and window must be >= 1, got {batch_size} and {window}")
        n = (len(ids) - 1) // batch_size
        if n < window:
            raise ValueError(f"BPTTStreams: {len(ids):,} ids in {batch_size} streams give {max(n, 0)} per stream, "
                             f"fewer than one window of {window}; use a longer text, a smaller batch or window")
        self.window, self.length = int(window), n
        self.x = ids[:batch_size * n].reshape(batch_size, n)
        self.y = ids[1:batch_size * n + 1].reshape(batch_size, n)
        self.pos = 0
        self.state = None
        self.last = None            # the window whose evaluation left ``state`` (see tbptt_loss)

    @property
    def windows_per_pass(self) -> int:
        return self.length // self.window

    def _window(self, i: int) -> Window:
        s = i * self.window
        return Window(self.x[:, s:s + self.window], self.y[:, s:s + self.window], self, first=i == 0)

    def next_window(self, rng=None) -> Window:
        """The next window (``rng`` is accepted for the Trainer's ``batches(rng)`` and unused)."""
        if self.pos >= self.windows_per_pass:
            self.pos = 0
        w = self._window(self.pos)
        self.pos += 1
        return w

    def windows(self, count: int | None = None) -> list[Window]:
        """The first ``count`` windows (None: all of them), in order."""
        n = self.windows_per_pass if count is None else min(count, self.windows_per_pass)
        return [self._window(i) for i in range(n)]

    def state_dict(self) -> dict:
        """Where the streams are: the next window and the carried state's arrays (a tuple for the
        LSTM's (h, c)), with the streams' shape to check against. The Trainer saves it in its
        checkpoints, so a resumed run reads on from the same window and state."""
        state = self.state
        if isinstance(state, tuple):
            state = tuple(s.data for s in state)
        elif state is not None:
            state = state.data
        return {"pos": self.pos, "streams": len(self.x), "length": self.length, "window": self.window,
                "state": state}

    def load_state_dict(self, sd: dict) -> None:
        """Continue from :meth:`state_dict`; ValueError when it is of other streams."""
        mine = (len(self.x), self.length, self.window)
        saved = (sd["streams"], sd["length"], sd["window"])
        if saved != mine:
            raise ValueError(f"BPTTStreams: saved for {saved[0]} streams of {saved[1]} ids read {saved[2]} "
                             f"at a time, these are {mine[0]} of {mine[1]} by {mine[2]}")
        pos, state = int(sd["pos"]), sd["state"]
        parts = state if isinstance(state, tuple) else () if state is None else (state,)
        if not 0 <= pos <= self.windows_per_pass:
            raise ValueError(f"BPTTStreams: the saved position {pos} is not in [0, {self.windows_per_pass}]")
        if any(a.ndim != 3 or a.shape[1] != mine[0] for a in parts):
            raise ValueError(f"BPTTStreams: a saved state of shape(s) {[a.shape for a in parts]} is not "
                             f"(layers, {mine[0]}, hidden)")
        tensors = tuple(minigrad.tensor(np.array(a)) for a in parts)
        self.pos = pos
        self.state = tensors if isinstance(state, tuple) else tensors[0] if tensors else None
        self.last = None
