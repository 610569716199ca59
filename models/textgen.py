"""Sampling from a language model's logits, and text from a trained model: prompt -> tokens ->
``model.generate`` -> text."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["sample_next", "sample_text", "check_sampling"]


def check_sampling(temperature, top_k, where: str = "sample_next") -> None:
    """Raise ValueError, naming ``where``, unless ``temperature`` is a finite number >= 0 and
    ``top_k`` is None or an integer >= 1 (a top_k of 0 or below used to index the sorted logits
    from the wrong end: -1 dropped the least likely token, -4 kept only the likeliest)."""
    if isinstance(temperature, (bool, np.bool_)) or not (
            isinstance(temperature, (int, float, np.integer, np.floating)) and temperature >= 0
            and math.isfinite(temperature)):
        raise ValueError(f"{where}: temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer))
                              or top_k < 1):
        raise ValueError(f"{where}: top_k must be an integer >= 1, or None for every token, got {top_k!r}")


def sample_next(logits, temperature: float, top_k: int | None, rng) -> np.ndarray:
    """Next token ids (B,) from the logits (B, V) of the last position: softmax of logits /
    temperature over the ``top_k`` likeliest tokens (all when None), one draw per row from
    ``rng``; ``temperature`` 0 is the argmax.

    The draw is ``rng.choice(V, p=row)``'s, row by row (the same numbers from the same generator:
    the CDF normalised by its last entry, one ``rng.random()`` per row, the first entry above it),
    done for all rows at once: the per-row call cost ~25 us, more than the rest of a decoding
    step's sampling."""
    check_sampling(temperature, top_k)
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(-1)
    z = logits - logits.max(-1, keepdims=True)         # <= 0, so dividing by a tiny temperature
    if top_k is not None:                              # overflows only to -inf: probability 0,
        k = min(int(top_k), logits.shape[-1])          # the limit of softmax as temperature -> 0
        kth = np.sort(logits, axis=-1)[:, -k][:, None]
        z = np.where(logits < kth, -np.inf, z)
    with np.errstate(over="ignore"):
        p = np.exp(z / temperature)
    p /= p.sum(-1, keepdims=True)
    cdf = p.cumsum(-1)
    cdf /= cdf[:, -1:]
    if not np.isfinite(cdf[:, -1]).all():
        raise ValueError(f"sample_next: the logits hold NaN or inf (rows "
                         f"{np.flatnonzero(~np.isfinite(cdf[:, -1])).tolist()}); no distribution to sample from")
    u = rng.random(len(cdf))
    return (cdf <= u[:, None]).sum(-1)      # searchsorted(cdf, u, side="right"), per row


def sample_text(model, tokenizer, n_tokens: int, prompt: str = "\n", temperature: float = 0.8,
                top_k: int | None = None, seed: int = 0, cache=None) -> str:
    """``n_tokens`` new tokens after ``prompt``, decoded (the prompt itself is not repeated).

    ``temperature`` 0 is greedy decoding; ``top_k`` keeps the k likeliest tokens; ``cache`` is
    `GPT.generate`'s (default: a dense cache of the model's dtype). Raises
    ``models.tokenizer.TokenizerError`` when the prompt holds a character the tokenizer lacks."""
    ids = tokenizer.encode(prompt) or [0]
    out = model.generate(np.array([ids]), max_new_tokens=n_tokens, temperature=temperature,
                         top_k=top_k, rng=np.random.default_rng(seed), cache=cache)
    return tokenizer.decode(out[0, len(ids):].tolist())
