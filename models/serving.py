"""Batched generation over a paged KV cache, admitting and retiring requests continuously.

    server = Server(model, num_blocks=256, block_size=16, max_batch=8)
    ids = [server.submit(prompt, max_new_tokens=100, temperature=0.8, seed=i) for i, prompt in ...]
    outputs = server.run()                  # {request id: generated token ids}

Scheduling is per iteration (Yu et al. 2022, "Orca", OSDI; as vLLM, Kwon et al. 2023,
arXiv:2309.06180): every :meth:`Server.step` first admits waiting requests, first come first
served, while the batch has a free row and the cache's free blocks cover what every running
request may still need; each admitted request's prompt runs as one forward (prefill) that
samples its first token. Then one forward decodes one more token for every running request at
once, whatever their lengths (the paged cache gives each row its own positions), and requests
that have their ``max_new_tokens`` retire, their blocks returning to the free list for the next
admission. A batch of R requests costs one pass through the weights per step instead of R:
decoding is memory- and overhead-bound at batch 1, so the throughput grows with R.

Prompts that share a prefix with a running request share its cache blocks instead of
recomputing them (prefix sharing): the new sequence is a ``fork`` of the other's first whole
blocks, so its prefill runs only the rest. Only whole blocks are shared, and no one writes into
a whole block again, so serving never needs a copy-on-write (forks of a partly filled block,
as in parallel sampling, do: ``PagedKVCache.fork``).

Admission reserves each request's worst case (prompt + max_new_tokens positions), so a running
request never runs out of blocks and nothing has to be preempted; vLLM instead admits
optimistically and preempts (swaps out or recomputes) when blocks run out.

Each request samples with its own generator (``seed``), so its tokens do not depend on which
other requests share its batches: they are the tokens ``model.generate`` gives it alone (up to
floating-point rounding in the batched products, which can flip a near-tie).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import minigrad
from models.kv_cache import PagedKVCache
from models.textgen import check_sampling, sample_next

__all__ = ["Request", "Server"]


@dataclass
class Request:
    """A generation request and its progress."""

    id: int
    prompt: np.ndarray                  # token ids (P,)
    max_new_tokens: int
    temperature: float
    top_k: int | None
    rng: np.random.Generator
    tokens: list = field(default_factory=list)      # generated so far
    seq: int | None = None              # its sequence in the paged cache while running
    shared: int = 0                     # prompt positions taken from another request's blocks

    @property
    def cached_tokens(self) -> np.ndarray:
        """The tokens whose keys and values its sequence holds (all but the last sampled one)."""
        return np.concatenate([self.prompt, np.asarray(self.tokens[:-1], np.int64)])

    @property
    def final_length(self) -> int:
        """Positions its sequence holds at the end: the last sampled token is never fed back."""
        return self.prompt.size + self.max_new_tokens - 1


class Server:
    """Continuous batching of ``model`` (a GPT with softmax attention) over one :class:`PagedKVCache`.

    ``num_blocks`` blocks of ``block_size`` positions are shared by all requests;
    ``max_batch`` requests decode together at most; ``share_prefixes`` lets a prompt reuse the
    whole blocks of a running request's equal prefix."""

    def __init__(self, model, num_blocks: int, block_size: int = 16, max_batch: int = 8,
                 share_prefixes: bool = True):
        if model.config.attention != "mha":
            raise ValueError(f"Server: the paged cache serves softmax attention (attention='mha', any "
                             f"n_kv_head); this model's is {model.config.attention!r}")
        if not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"Server: max_batch must be an integer >= 1, got {max_batch!r}")
        self.model = model
        self.cache = PagedKVCache.for_model(model, num_blocks=num_blocks, block_size=block_size)
        self.max_batch = int(max_batch)
        self.share_prefixes = share_prefixes
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.done: dict[int, Request] = {}
        self.steps = 0
        self.log: list[tuple[int, str, int]] = []       # (step, "admit" | "retire" | "dropped", request id)
        self._next_id = 0

    def submit(self, prompt, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
               seed: int = 0) -> int:
        """Queue a request; returns its id. ``temperature`` 0 is greedy decoding."""
        prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
        cfg, c = self.model.config, self.cache
        if prompt.size == 0:
            raise ValueError("Server.submit: give at least one prompt token")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"Server.submit: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if prompt.min() < 0 or prompt.max() >= cfg.vocab_size:
            raise ValueError(f"Server.submit: token ids must be in [0, {cfg.vocab_size}), got "
                             f"[{prompt.min()}, {prompt.max()}]")
        # the last sampled token is never fed back, so the cache holds P + N - 1 positions
        length = prompt.size + max_new_tokens - 1
        if length > cfg.block_size:
            raise ValueError(f"Server.submit: a prompt of {prompt.size} tokens and {max_new_tokens} new ones "
                             f"need {length} positions, more than the model's block_size={cfg.block_size}; "
                             "shorten the prompt or ask for fewer tokens")
        if c.blocks_for(length) > c.num_blocks:
            raise ValueError(f"Server.submit: a prompt of {prompt.size} tokens and {max_new_tokens} new ones "
                             f"need {c.blocks_for(length)} blocks of {c.block_size} positions, the cache has "
                             f"num_blocks={c.num_blocks}")
        check_sampling(temperature, top_k, "Server.submit")
        rid = self._next_id
        self._next_id += 1
        self.waiting.append(Request(rid, prompt, int(max_new_tokens), float(temperature), top_k,
                                    np.random.default_rng(seed)))
        return rid

    def run(self) -> dict[int, np.ndarray]:
        """Step until every submitted request is done; {request id: generated tokens}."""
        while self.waiting or self.running:
            self.step()
        return {rid: np.array(r.tokens, np.int64) for rid, r in self.done.items()}

    def step(self) -> list[int]:
        """Admit what fits, decode one token for every running request, retire the finished;
        returns the ids retired in this step."""
        was_training = self.model.training
        self.model.eval()
        try:
            with minigrad.no_grad():
                self._admit()
                decoding = [r for r in self.running if len(r.tokens) < r.max_new_tokens]
                if decoding:
                    self._decode(decoding)
        finally:
            self.model.train(was_training)
        retired = self._retire()
        self.steps += 1
        return retired

    # ------------------------------------------------------------------ scheduling
    def _outstanding(self) -> int:
        """Blocks the running requests may still draw from the free list."""
        c = self.cache
        return sum(c.blocks_for(r.final_length) - len(c.tables[r.seq]) for r in self.running)

    def _admit(self) -> None:
        """Admit waiting requests, in order, while a row is free and the free blocks cover every
        running request's worst case and theirs; each runs its prompt at once (so the next one
        admitted can share it)."""
        c = self.cache
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            source, shared = self._shared_prefix(r.prompt)
            need = c.blocks_for(r.final_length) - shared // c.block_size
            if len(c.free_blocks) - self._outstanding() < need:
                break                                   # first come, first served: wait for blocks
            self.waiting.pop(0)
            r.seq = c.add_sequence() if source is None else c.fork(source.seq, shared)
            r.shared = shared
            self.running.append(r)
            self.log.append((self.steps, "admit", r.id))
            try:
                logits = self._forward([r], r.prompt[None, shared:])      # prefill
                r.tokens.append(self._sample(r, logits[0]))
            except Exception as e:
                self._drop([r], e)
                raise

    def _shared_prefix(self, prompt):
        """(running request, positions) of the longest whole-block prefix of ``prompt`` whose
        keys and values a running request holds; at least one prompt token is left to run."""
        best, best_n = None, 0
        if not self.share_prefixes:
            return best, best_n
        bs = self.cache.block_size
        for r in self.running:
            held = r.cached_tokens[:self.cache.lengths[r.seq]]
            m = min(held.size, prompt.size - 1)
            same = np.flatnonzero(held[:m] != prompt[:m])
            n = (same[0] if same.size else m) // bs * bs
            if n > best_n:
                best, best_n = r, n
        return best, best_n

    def _retire(self) -> list[int]:
        retired = []
        for r in [r for r in self.running if len(r.tokens) == r.max_new_tokens]:
            self.running.remove(r)
            self.cache.free(r.seq)
            r.seq = None
            self.done[r.id] = r
            self.log.append((self.steps, "retire", r.id))
            retired.append(r.id)
        return retired

    # ------------------------------------------------------------------ forwards
    def _forward(self, requests, idx):
        """One forward of ``idx`` (B, T) for ``requests`` (one row each); logits of the last position."""
        logits, _ = self.model(idx, cache=self.cache.batch([r.seq for r in requests]))
        return logits.data[:, -1]

    def _decode(self, requests):
        last = np.array([[r.tokens[-1]] for r in requests], np.int64)
        try:
            logits = self._forward(requests, last)
        except Exception as e:           # the cache may hold this position for some rows only
            self._drop(requests, e)
            raise
        failed, error = [], None
        for r, row in zip(requests, logits):
            try:
                r.tokens.append(self._sample(r, row))
            except Exception as e:       # its cache holds a position no token follows
                failed.append(r)
                error = error or e
        if failed:
            self._drop(failed, error)
            raise error

    def _drop(self, requests, error) -> None:
        """Take ``requests`` out of the running ones and free their blocks (a request whose forward
        or sampling raised: its cache no longer matches its tokens), saying so on ``error``."""
        for r in requests:
            self.running.remove(r)
            self.cache.free(r.seq)
            r.seq = None
            self.log.append((self.steps, "dropped", r.id))
        error.add_note(f"Server: request(s) {[r.id for r in requests]} dropped, their blocks freed; "
                       f"the other requests go on at the next step()")

    def _sample(self, r, logits) -> int:
        return int(sample_next(logits[None], r.temperature, r.top_k, r.rng)[0])
