"""Continuous batching over the paged cache (models/serving.py)."""
import numpy as np
import pytest

from models.gpt import GPT, GPTConfig
from models.serving import Server


def _model(seed=0, n_kv_head=None, block_size=48):
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=16, block_size=block_size, vocab_size=11, n_kv_head=n_kv_head)
    m = GPT(cfg, dtype=np.float64, seed=seed)
    prng = np.random.default_rng(seed + 100)
    for _, p in m.named_parameters():       # sharpen the logits so greedy argmaxes are well separated
        p.data[...] += prng.normal(0, 0.3, p.shape)
    return m


def _requests(rng, n, common):
    """n prompts, most starting with a piece of ``common`` (shared prefixes), and their lengths."""
    prompts = []
    for i in range(n):
        head = common[:rng.integers(0, common.size + 1)] if i % 3 else common[:0]
        prompts.append(np.concatenate([head, rng.integers(0, 11, rng.integers(1, 6))]))
    return prompts, [int(rng.integers(1, 14)) for _ in range(n)]


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_each_request_gets_the_tokens_of_decoding_it_alone(n_kv_head):
    m = _model(1, n_kv_head)
    rng = np.random.default_rng(0)
    prompts, lengths = _requests(rng, 9, rng.integers(0, 11, 20))
    server = Server(m, num_blocks=30, block_size=4, max_batch=4)
    ids = [server.submit(p, n, temperature=0) for p, n in zip(prompts, lengths)]
    out = server.run()
    for rid, p, n in zip(ids, prompts, lengths):
        np.testing.assert_array_equal(out[rid], m.generate(p[None], n, temperature=0)[0, p.size:])
    assert sum(server.done[r].shared for r in ids) > 0          # some prompts shared blocks
    assert server.cache.refcount.sum() == 0 and sorted(server.cache.free_blocks) == list(range(30))


def test_sampled_requests_follow_their_own_seeds():
    m = _model(2)
    rng = np.random.default_rng(1)
    prompts, lengths = _requests(rng, 5, rng.integers(0, 11, 12))
    server = Server(m, num_blocks=40, block_size=4, max_batch=3)
    ids = [server.submit(p, n, temperature=1.0, top_k=5, seed=10 + i)
           for i, (p, n) in enumerate(zip(prompts, lengths))]
    out = server.run()
    for i, (rid, p, n) in enumerate(zip(ids, prompts, lengths)):
        alone = m.generate(p[None], n, temperature=1.0, top_k=5, rng=np.random.default_rng(10 + i))
        np.testing.assert_array_equal(out[rid], alone[0, p.size:])


def test_requests_are_admitted_and_retired_continuously():
    m = _model(3)
    server = Server(m, num_blocks=64, block_size=4, max_batch=3)
    lengths = [2, 9, 4, 6, 1, 3, 8]
    ids = [server.submit([1 + i % 5, 2], n) for i, n in enumerate(lengths)]
    busy = []
    while server.waiting or server.running:
        server.step()
        busy.append(len(server.running))
        assert len(server.running) <= 3
    admit = {rid: s for s, what, rid in server.log if what == "admit"}
    retire = {rid: s for s, what, rid in server.log if what == "retire"}
    assert sorted(admit) == sorted(retire) == ids
    for rid, n in zip(ids, lengths):      # the admission step: prefill + a decode; then one per step
        assert retire[rid] - admit[rid] == max(0, n - 2)
    # a request joins while earlier ones are still running: the batch is refilled mid-flight
    assert any(admit[a] < admit[b] <= retire[a] for a in ids for b in ids)
    assert admit[ids[3]] == retire[ids[0]] + 1   # a row freed at the end of a step is taken at the next
    assert server.steps == len(busy) < sum(lengths)


def test_admission_waits_for_blocks_instead_of_running_out():
    m = _model(4)
    server = Server(m, num_blocks=6, block_size=4, max_batch=8, share_prefixes=False)
    ids = [server.submit([1, 2, 3, 4, 5], 8) for _ in range(3)]   # 12 positions = 3 blocks each
    server.step()
    assert len(server.running) == 2 and len(server.waiting) == 1   # the third must wait
    out = server.run()
    assert all(len(out[r]) == 8 for r in ids)
    np.testing.assert_array_equal(out[ids[0]], out[ids[2]])


def test_bad_requests_are_one_clear_error_naming_the_numbers():
    m = _model(0, block_size=16)
    server = Server(m, num_blocks=3, block_size=4)
    with pytest.raises(ValueError, match=r"a prompt of 10 tokens and 8 new ones need 17 positions, more than "
                                         r"the model's block_size=16"):
        server.submit(np.ones(10, np.int64), 8)
    with pytest.raises(ValueError, match="need 4 blocks of 4 positions, the cache has num_blocks=3"):
        server.submit(np.ones(10, np.int64), 4)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 11\)"):
        server.submit([3, 11], 2)
    with pytest.raises(ValueError, match="at least one prompt token"):
        server.submit([], 2)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        server.submit([1], 0)
    with pytest.raises(ValueError, match="Server.submit: top_k must be an integer >= 1"):
        server.submit([1], 2, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="Server.submit: temperature must be a finite number >= 0"):
        server.submit([1], 2, temperature=-0.5)
    linear = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=5, attention="linear"))
    with pytest.raises(ValueError, match="serves softmax attention"):
        Server(linear, num_blocks=4)


@pytest.mark.parametrize("fails_at", ["prefill", "decode"])
def test_a_request_whose_sampling_raises_is_dropped_with_its_blocks_and_the_others_go_on(fails_at, monkeypatch):
    """A failed step left the request running without tokens (every later step raised IndexError)
    and its blocks, and those of anything admitted after, were never freed."""
    import models.serving as serving
    m = _model(0)
    server = Server(m, num_blocks=12, block_size=4)
    bad = server.submit([1, 2, 3], 6, temperature=0.5, seed=1)
    good = server.submit([4, 5], 6)
    real = serving.sample_next
    calls = {"bad": 0}

    def flaky(logits, temperature, top_k, rng):
        if temperature == 0.5:
            calls["bad"] += 1
            if fails_at == "prefill" or calls["bad"] == 3:
                raise ValueError("the logits hold NaN or inf")
        return real(logits, temperature, top_k, rng)

    monkeypatch.setattr(serving, "sample_next", flaky)
    with pytest.raises(ValueError, match="NaN or inf") as e:
        while True:
            server.step()
    assert any(f"request(s) [{bad}] dropped" in note for note in e.value.__notes__)
    assert calls["bad"] == (1 if fails_at == "prefill" else 3)
    assert bad not in [r.id for r in server.running] and bad not in server.done
    outputs = server.run()                              # the other request finishes
    assert set(outputs) == {good} and len(outputs[good]) == 6
    np.testing.assert_array_equal(outputs[good], m.generate(np.array([[4, 5]]), 6, temperature=0)[0, 2:])
    assert len(server.cache.free_blocks) == server.cache.num_blocks     # nothing leaked
