"""Sequence to sequence: a recurrent encoder–decoder with attention, on tasks generated in code.

An *encoder* reads the source x_1..x_S into hidden states h_1..h_S; a *decoder* writes the
target y_1..y_T one token at a time, each conditioned on the tokens before it (Sutskever,
Vinyals, Le 2014, arXiv:1409.3215; Cho et al. 2014, arXiv:1406.1078). Squeezing the whole
source into the encoder's last state is a bottleneck; **attention** lets every decoder step look
back at all encoder states and take a weighted mean of them, the context c_t = Σ_j α_tj h_j,
with weights α_t = softmax(scores) over the source positions:

* **additive** (Bahdanau, Cho, Bengio 2014, arXiv:1409.0473): the score of position j is
  v^T tanh(W s_{t-1} + U h_j), from the decoder's *previous* state; the context then enters the
  recurrent cell with the previous token: s_t = cell([E y_{t-1}; c_t], s_{t-1}), and the output
  reads [s_t; c_t; E y_{t-1}].
* **dot-product** (Luong, Pham, Manning 2015, arXiv:1508.04025, their "dot" score): the cell
  runs first, s_t = cell([E y_{t-1}; h̃_{t-1}], s_{t-1}) ("input feeding" of the last
  attentional state), then the score of j is s_t · h_j, and the output reads
  h̃_t = tanh(W_c [c_t; s_t]).

Padding. Sources of different lengths share a batch padded with PAD; the encoder keeps a
sequence's state unchanged over its padding (what PyTorch's packed sequences do), so its final
state is the one after its last real token, and attention gives padded positions weight 0 (a
key-padding mask). A padded batch therefore gives each sequence the outputs it gets alone
(tests/test_lm_seq2seq.py).

Training uses **teacher forcing**: the decoder's input at step t is the true y_{t-1}, not its own
guess (Williams and Zipser 1989); ``teacher_forcing < 1`` feeds back its own argmax with
probability 1 - teacher_forcing at each step (scheduled sampling, Bengio et al. 2015,
arXiv:1506.03099, without the schedule). Decoding is **greedy** (the likeliest token each step) or
**beam search** (keep the ``beam`` best partial outputs by total log-probability; width 1 is
greedy).

Tasks (:class:`Task`) are generated in code, so there is unlimited data and an exact answer:
``reverse`` (7 3 1 -> 1 3 7), ``sort`` (7 3 1 -> 1 3 7 sorted) and ``add`` (digit strings:
"95+7" -> "102"). Accuracy is *exact match*: the whole output sequence right.

    task = Task("reverse", max_len=10)
    model = Seq2Seq(Seq2SeqConfig(cell="gru", attention="bahdanau"))
    Trainer(model, seq2seq_loss, opt, lambda rng: task.batch(rng, 64), steps=1500).fit()
    exact_match(model, task, n=1000)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

import minigrad
import minigrad.functional as F
from minigrad import nn

__all__ = ["Seq2SeqConfig", "Seq2Seq", "Task", "TASKS", "VOCAB", "PAD", "BOS", "EOS", "seq2seq_loss",
           "exact_match", "encode", "decode"]

# one vocabulary for every task: three specials, the digits and "+"
VOCAB = ["<pad>", "<bos>", "<eos>", *"0123456789+"]
PAD, BOS, EOS = 0, 1, 2
_STOI = {s: i for i, s in enumerate(VOCAB)}
TASKS = ("reverse", "sort", "add")
CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}
ATTENTIONS = ("bahdanau", "luong")


def encode(text: str) -> list[int]:
    """"95+7" -> ids (no specials)."""
    return [_STOI[c] for c in text]


def decode(ids) -> str:
    """ids -> text, stopping at the first EOS and dropping PAD/BOS."""
    out = []
    for i in ids:
        if int(i) == EOS:
            break
        if int(i) > EOS:
            out.append(VOCAB[int(i)])
    return "".join(out)


def _before_eos(ids) -> list[int]:
    out = []
    for i in ids:
        if int(i) == EOS:
            break
        out.append(int(i))
    return out


@dataclass
class Seq2SeqConfig:
    cell: str = "gru"
    attention: str = "bahdanau"
    vocab_size: int = len(VOCAB)
    n_embd: int = 32
    hidden_size: int = 128
    num_layers: int = 1
    teacher_forcing: float = 1.0   # P(the decoder reads the true previous token) while training

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"Seq2SeqConfig.cell={self.cell!r} must be one of {', '.join(CELLS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"Seq2SeqConfig.attention={self.attention!r} must be one of {', '.join(ATTENTIONS)}")
        for name in ("vocab_size", "n_embd", "hidden_size", "num_layers"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Seq2SeqConfig.{name}={v!r} must be a positive integer")
        if self.vocab_size <= EOS:
            raise ValueError(f"Seq2SeqConfig.vocab_size={self.vocab_size} leaves no room beside PAD, BOS, EOS")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"Seq2SeqConfig.teacher_forcing={self.teacher_forcing} must be in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Seq2SeqConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Seq2SeqConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def _keep(valid, new, old):
    """The new state where ``valid`` (B, 1), the old one elsewhere (a tensor or the LSTM's pair)."""
    if isinstance(new, tuple):
        return tuple(minigrad.where(valid, n, o) for n, o in zip(new, old))
    return minigrad.where(valid, new, old)


def _top(state):
    """The hidden state h of a layer's state (the LSTM's is (h, c))."""
    return state[0] if isinstance(state, tuple) else state


class Seq2Seq(nn.Module):
    """``Seq2Seq(config, dtype=np.float32, seed=0)``; ``forward(src, tgt_in, tgt_out=None,
    src_padding_mask=None) -> (logits (B, T, V), loss, attention (B, T, S))``.

    src (B, S) source ids padded with PAD; tgt_in (B, T) the decoder's inputs (BOS, y_1, ...);
    tgt_out (B, T) the targets (y_1, ..., EOS, PAD...; PAD is not scored); src_padding_mask
    (B, S) True at padding (default: src == PAD)."""

    def __init__(self, config: Seq2SeqConfig, dtype=np.float32, seed: int = 0):
        super().__init__()
        self.config = c = config
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        Cell, E, H = CELLS[c.cell], c.n_embd, c.hidden_size
        self.src_embed = nn.Embedding(c.vocab_size, E, dtype=dtype, rng=rng)
        self.tgt_embed = nn.Embedding(c.vocab_size, E, dtype=dtype, rng=rng)
        self.encoder = nn.ModuleList([Cell(E if i == 0 else H, H, dtype=dtype, rng=rng)
                                      for i in range(c.num_layers)])
        # the decoder's first layer reads the token and a context (Bahdanau) or h̃ (Luong)
        self.decoder = nn.ModuleList([Cell(E + H if i == 0 else H, H, dtype=dtype, rng=rng)
                                      for i in range(c.num_layers)])
        if c.attention == "bahdanau":
            self.attn_query = nn.Linear(H, H, bias=False, dtype=dtype, rng=rng)   # W s_{t-1}
            self.attn_key = nn.Linear(H, H, dtype=dtype, rng=rng)                 # U h_j
            self.attn_v = nn.Linear(H, 1, bias=False, dtype=dtype, rng=rng)       # v^T tanh(.)
            self.out = nn.Linear(2 * H + E, c.vocab_size, dtype=dtype, rng=rng)   # [s_t; c_t; E y]
        else:
            self.attn_combine = nn.Linear(2 * H, H, bias=False, dtype=dtype, rng=rng)  # W_c [c_t; s_t]
            self.out = nn.Linear(H, c.vocab_size, dtype=dtype, rng=rng)
        # teacher forcing < 1 draws from this generator; its state is part of a checkpoint
        self.sampling_rng = np.random.default_rng(seed + 1)

    # ------------------------------------------------------------------ pieces
    def _check(self, src, src_padding_mask):
        src = np.asarray(src)
        if src.ndim != 2 or not np.issubdtype(src.dtype, np.integer) or src.shape[1] == 0:
            raise ValueError(f"Seq2Seq: src must be an integer array (B, S) with S >= 1, got {src.dtype} {src.shape}")
        V = self.config.vocab_size
        if src.min() < 0 or src.max() >= V:
            raise ValueError(f"Seq2Seq: source ids must be in [0, {V}) (the model's vocabulary), "
                             f"got [{src.min()}, {src.max()}]")
        pad = src == PAD if src_padding_mask is None else np.asarray(src_padding_mask)
        if pad.shape != src.shape or pad.dtype != np.bool_:
            raise ValueError(f"Seq2Seq: src_padding_mask has shape {pad.shape} ({pad.dtype}) but src is "
                             f"{src.shape}: it must be a boolean (B, S) array, True at padding")
        if pad[:, 0].any():
            raise ValueError("Seq2Seq: a source starts with padding; pad at the end and give every source "
                             ">= 1 token")
        return src, pad

    def _zero_state(self, B):
        z = lambda: minigrad.Tensor(np.zeros((B, self.config.hidden_size), self.dtype))
        return [(z(), z()) if self.config.cell == "lstm" else z() for _ in range(self.config.num_layers)]

    def encode(self, src, src_padding_mask=None):
        """(encoder outputs (B, S, H), final state per layer, padding mask (B, S))."""
        src, pad = self._check(src, src_padding_mask)
        B, S = src.shape
        x = F.embedding(src, self.src_embed.weight)                       # (B, S, E)
        states = self._zero_state(B)
        outs = []
        for t in range(S):
            inp, valid = x[:, t], ~pad[:, t:t + 1]                        # (B, E), (B, 1)
            for i, cell in enumerate(self.encoder):
                states[i] = _keep(valid, cell(inp, states[i]), states[i])  # frozen over padding
                inp = _top(states[i])
            outs.append(inp)
        return minigrad.stack(outs, axis=1), states, pad

    def _attend(self, scores, pad, enc):
        """Softmax of the scores (B, S) over the unpadded positions; (context (B, H), weights)."""
        weights = F.softmax(scores.masked_fill(pad, float("-inf")), axis=-1)        # (B, S)
        B, S = pad.shape
        context = (weights.reshape(B, 1, S) @ enc).reshape(B, -1)                   # (B, H)
        return context, weights

    def start(self, enc, states, pad):
        """The decoder's state before its first step: the encoder's final state, plus what the
        attention needs every step (the keys U h_j, precomputed once)."""
        B = pad.shape[0]
        dec = {"enc": enc, "pad": pad, "states": list(states),
               "feed": minigrad.Tensor(np.zeros((B, self.config.hidden_size), self.dtype))}
        if self.config.attention == "bahdanau":
            dec["keys"] = self.attn_key(enc)                              # (B, S, H)
        return dec

    def step(self, y_prev, dec):
        """One decoder step from the previous tokens y_prev (B,): (logits (B, V), attention
        weights (B, S)); ``dec`` (from :meth:`start`) is updated in place."""
        e = F.embedding(np.asarray(y_prev), self.tgt_embed.weight)          # (B, E)
        enc, pad, states = dec["enc"], dec["pad"], dec["states"]
        if self.config.attention == "bahdanau":
            query = self.attn_query(_top(states[-1])).reshape(pad.shape[0], 1, -1)   # W s_{t-1}: (B, 1, H)
            scores = self.attn_v((dec["keys"] + query).tanh()).reshape(pad.shape)    # (B, S)
            context, weights = self._attend(scores, pad, enc)
            inp = minigrad.cat([e, context], axis=-1)
        else:
            inp = minigrad.cat([e, dec["feed"]], axis=-1)                  # input feeding of h̃_{t-1}
        for i, cell in enumerate(self.decoder):
            states[i] = cell(inp, states[i])
            inp = _top(states[i])
        s = inp                                                            # (B, H) top layer's s_t
        if self.config.attention == "bahdanau":
            logits = self.out(minigrad.cat([s, context, e], axis=-1))
        else:
            B = pad.shape[0]
            scores = (enc @ s.reshape(B, -1, 1)).reshape(pad.shape)          # s_t · h_j: (B, S)
            context, weights = self._attend(scores, pad, enc)
            dec["feed"] = self.attn_combine(minigrad.cat([context, s], axis=-1)).tanh()   # h̃_t
            logits = self.out(dec["feed"])
        return logits, weights

    # ------------------------------------------------------------------ training
    def forward(self, src, tgt_in, tgt_out=None, src_padding_mask=None):
        tgt_in = np.asarray(tgt_in)
        enc, states, pad = self.encode(src, src_padding_mask)
        B = pad.shape[0]
        if tgt_in.ndim != 2 or tgt_in.shape[0] != B or tgt_in.shape[1] == 0:
            raise ValueError(f"Seq2Seq: tgt_in must be (B, T) = ({B}, T >= 1) for src {pad.shape}, got {tgt_in.shape}")
        dec = self.start(enc, states, pad)
        logits, attn = [], []
        y = tgt_in[:, 0]
        tf = self.config.teacher_forcing
        for t in range(tgt_in.shape[1]):
            z, w = self.step(y, dec)
            logits.append(z)
            attn.append(w)
            if t + 1 < tgt_in.shape[1]:
                y = tgt_in[:, t + 1]
                if tf < 1.0 and self.training:                             # feed back its own guess
                    own = z.data.argmax(axis=-1)
                    y = np.where(self.sampling_rng.random(B) < tf, y, own)
        logits = minigrad.stack(logits, axis=1)                            # (B, T, V)
        loss = None
        if tgt_out is not None:
            tgt_out = np.asarray(tgt_out)
            if tgt_out.shape != tgt_in.shape:
                raise ValueError(f"Seq2Seq: tgt_out shape {tgt_out.shape} != tgt_in shape {tgt_in.shape}")
            V = self.config.vocab_size
            loss = F.cross_entropy(logits.reshape(-1, V), tgt_out.reshape(-1), ignore_index=PAD)
        return logits, loss, minigrad.stack(attn, axis=1)

    # ------------------------------------------------------------------ decoding
    def greedy(self, src, max_len: int = 32, src_padding_mask=None):
        """The likeliest token at each step: (outputs (B, max_len) ending in EOS then PAD,
        attention (B, steps, S))."""
        with minigrad.no_grad():
            enc, states, pad = self.encode(src, src_padding_mask)
            B = pad.shape[0]
            dec = self.start(enc, states, pad)
            y = np.full(B, BOS)
            out = np.full((B, max_len), PAD)
            done = np.zeros(B, bool)
            attn = []
            for t in range(max_len):
                z, w = self.step(y, dec)
                attn.append(w.data)
                y = z.data.argmax(axis=-1)
                out[:, t] = np.where(done, PAD, y)
                done |= y == EOS
                if done.all():
                    break
        return out, np.stack(attn, axis=1)

    def beam_search(self, src, beam: int = 4, max_len: int = 32):
        """Beam search per source sequence (B, S), by total log-probability: (outputs (B, max_len),
        their log-probabilities (B,)). Width 1 gives the greedy output."""
        src = np.asarray(src)
        if beam < 1:
            raise ValueError(f"Seq2Seq.beam_search: beam must be >= 1, got {beam}")
        out = np.full((len(src), max_len), PAD)
        scores = np.zeros(len(src))
        with minigrad.no_grad():
            for b in range(len(src)):
                seq, scores[b] = self._beam_one(src[b:b + 1], beam, max_len)
                out[b, :len(seq)] = seq
        return out, scores

    def _beam_one(self, src, beam, max_len):
        row = src[0]
        n = int(np.argmax(row == PAD)) if (row == PAD).any() else len(row)
        enc, states, pad = self.encode(src[:, :n])
        dec = self.start(enc, states, pad)
        alive = [([], 0.0)]                                     # (tokens so far, log-probability)
        finished = []
        for t in range(max_len):
            z, _ = self.step(np.array([seq[-1] if seq else BOS for seq, _ in alive]), dec)
            logp = z.data.astype(np.float64)
            logp = logp - logp.max(-1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
            total = np.array([s for _, s in alive])[:, None] + logp          # (beams, V)
            order = np.argsort(-total, axis=None, kind="stable")[:beam]      # ties: the lower id first
            keep, new = [], []
            for flat in order:
                i, tok = divmod(int(flat), logp.shape[1])
                hyp = (alive[i][0] + [tok], float(total[i, tok]))
                (finished if tok == EOS or t == max_len - 1 else new).append(hyp)
                if tok != EOS and t < max_len - 1:
                    keep.append(i)
            # stop when no live hypothesis can still beat the best finished one (scores only fall)
            if not new or (finished and max(s for _, s in finished) >= new[0][1]):
                break
            alive = new
            dec["states"] = [tuple(p[keep] for p in s) if isinstance(s, tuple) else s[keep] for s in dec["states"]]
            dec["feed"] = dec["feed"][keep]
            for k in ("enc", "keys"):
                if k in dec:
                    dec[k] = dec[k][[0] * len(keep)]
            dec["pad"] = dec["pad"][[0] * len(keep)]
        best = max(finished, key=lambda h: h[1])
        return best


def seq2seq_loss(model, batch):
    """``loss_fn`` for the Trainer: a batch is (src, tgt_in, tgt_out)."""
    src, tgt_in, tgt_out = batch
    return model(src, tgt_in, tgt_out)[1]


class Task:
    """A synthetic translation task with exact answers.

    name      "reverse" (the digits backwards), "sort" (the digits in ascending order) or "add"
              (the sum of two numbers written as "a+b")
    min_len, max_len   source lengths in digits (reverse, sort); for "add", each number has
              min_len..max_len digits (no leading zeros)
    """

    def __init__(self, name: str, min_len: int = 1, max_len: int = 10):
        if name not in TASKS:
            raise ValueError(f"Task: name must be one of {', '.join(TASKS)}, got {name!r}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"Task: need 1 <= min_len <= max_len, got {min_len} and {max_len}")
        self.name, self.min_len, self.max_len = name, int(min_len), int(max_len)

    def sample(self, rng) -> tuple[str, str]:
        """One (source, target) pair as text."""
        if self.name == "add":
            a, b = (self._number(rng) for _ in range(2))
            return f"{a}+{b}", str(a + b)
        digits = "".join(rng.choice(list("0123456789"), size=rng.integers(self.min_len, self.max_len + 1)))
        return digits, digits[::-1] if self.name == "reverse" else "".join(sorted(digits))

    def _number(self, rng) -> int:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        return int(rng.integers(10 ** (n - 1) if n > 1 else 0, 10 ** n))

    def batch(self, rng, batch_size: int):
        """(src (B, S), tgt_in (B, T), tgt_out (B, T)) padded with PAD; tgt_in = BOS + target,
        tgt_out = target + EOS."""
        return make_batch([self.sample(rng) for _ in range(batch_size)])

    @property
    def max_target_len(self) -> int:
        """The longest target, EOS included."""
        return (self.max_len + 2) if self.name == "add" else self.max_len + 1


def make_batch(pairs):
    """Padded arrays for a list of (source, target) texts."""
    srcs = [encode(s) for s, _ in pairs]
    tgts = [encode(t) for _, t in pairs]
    S, T = max(map(len, srcs)), max(map(len, tgts)) + 1
    src = np.full((len(pairs), S), PAD)
    tgt_in = np.full((len(pairs), T), PAD)
    tgt_out = np.full((len(pairs), T), PAD)
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        src[i, :len(s)] = s
        tgt_in[i, :len(t) + 1] = [BOS, *t]
        tgt_out[i, :len(t) + 1] = [*t, EOS]
    return src, tgt_in, tgt_out


def exact_match(model, task: Task, n: int = 1000, seed: int = 12345, beam: int = 1, batch_size: int = 250):
    """The share of ``n`` fresh examples whose whole output is right (greedy for beam 1)."""
    rng = np.random.default_rng(seed)
    was = model.training
    model.eval()
    right = 0
    try:
        for start in range(0, n, batch_size):
            pairs = [task.sample(rng) for _ in range(min(batch_size, n - start))]
            src, _, _ = make_batch(pairs)
            if beam == 1:
                out, _ = model.greedy(src, task.max_target_len + 1)
            else:
                out, _ = model.beam_search(src, beam, task.max_target_len + 1)
            # the tokens before EOS, all of them: decode() drops a PAD or BOS inside an answer
            # for display, which made "3 <bos> 5" an exact "35"
            right += sum(_before_eos(o) == encode(t) for o, (_, t) in zip(out, pairs))
    finally:
        model.train(was)
    return right / n
