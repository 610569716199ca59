"""Text from a trained language model: prompt -> tokens -> ``model.generate`` -> text."""
from __future__ import annotations

import numpy as np

__all__ = ["sample_text"]


def sample_text(model, tokenizer, n_tokens: int, prompt: str = "\n", temperature: float = 0.8,
                top_k: int | None = None, seed: int = 0) -> str:
    """``n_tokens`` new tokens after ``prompt``, decoded (the prompt itself is not repeated).

    ``temperature`` 0 is greedy decoding; ``top_k`` keeps the k likeliest tokens. Raises
    ``models.tokenizer.TokenizerError`` when the prompt holds a character the tokenizer lacks."""
    ids = tokenizer.encode(prompt) or [0]
    out = model.generate(np.array([ids]), max_new_tokens=n_tokens, temperature=temperature,
                         top_k=top_k, rng=np.random.default_rng(seed))
    return tokenizer.decode(out[0, len(ids):].tolist())
