"""models/bert.py: the masking is 15 % of the ordinary tokens, of which 80 % [MASK], 10 % random,
10 % unchanged (statistically); attention is bidirectional and ignores padding (a padded batch
gives each sequence its own outputs); both losses' gradients are right in float64; the
real-vs-shuffled task is balanced and honest; bad input names the shapes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad
from models.bert import (BERT, IGNORE, BERTConfig, BERTVocab, ShuffledWordsTask, check_vocabulary,
                         classification_loss, mask_tokens, mlm_batch, mlm_loss)
from models.tokenizer import CharTokenizer

TEXT = "to be or not to be that is the question whether tis nobler in the mind to suffer\n" * 4


def vocab():
    return BERTVocab(CharTokenizer.train(TEXT))


def tiny(seed=0, block=12, dtype=np.float64):
    v = vocab()
    return BERT(BERTConfig(vocab_size=v.size, n_layer=2, n_head=2, n_embd=8, block_size=block), dtype=dtype,
                seed=seed), v


def test_masking_proportions_are_15_percent_then_80_10_10():
    v = vocab()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, v.n_tokens, size=(400, 500))
    ids[:, 0] = v.cls
    ids[:, -50:] = v.pad
    inputs, labels = mask_tokens(ids, v, rng)
    chosen = labels != IGNORE
    ordinary = ids < v.n_tokens
    n = ordinary.sum()
    assert not chosen[~ordinary].any()                                    # never [CLS] or [PAD]
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])
    p = chosen.sum() / n
    assert abs(p - 0.15) < 5 * np.sqrt(0.15 * 0.85 / n)
    k = chosen.sum()
    to_mask = (inputs[chosen] == v.mask).mean()
    changed = ((inputs[chosen] != v.mask) & (inputs[chosen] != ids[chosen])).mean()
    kept = (inputs[chosen] == ids[chosen]).mean()
    # a random replacement draws the original token with probability 1/n_tokens
    expected = {"mask": 0.8, "changed": 0.1 * (1 - 1 / v.n_tokens), "kept": 0.1 + 0.1 / v.n_tokens}
    for got, want in ((to_mask, expected["mask"]), (changed, expected["changed"]), (kept, expected["kept"])):
        assert abs(got - want) < 5 * np.sqrt(want * (1 - want) / k)
    random_tokens = inputs[chosen & (inputs != v.mask) & (inputs != ids)]
    assert random_tokens.max() < v.n_tokens                               # random ordinary tokens only


def test_mlm_batch_starts_with_cls_and_masks_the_windows():
    v = vocab()
    ids = v.encode(TEXT)
    inputs, labels = mlm_batch(ids, v, 64, 12, np.random.default_rng(0))
    assert inputs.shape == labels.shape == (64, 12)
    assert (inputs[:, 0] == v.cls).all() and (labels[:, 0] == IGNORE).all()
    assert (labels != IGNORE).any() and (inputs == v.mask).any()


def test_mlm_batch_windows_reach_the_last_id():
    """A masked-LM window has no target shift, so its last start is len(ids) - n: the last id was
    never drawn, and ids of exactly one window were refused (a review session)."""
    v = vocab()
    ids = v.encode(TEXT)[:11]
    inputs, _ = mlm_batch(ids, v, 8, 12, np.random.default_rng(0), p=0.0)    # one window of 11: accepted
    assert (inputs[:, 1:] == ids).all()
    ids = v.encode(TEXT)[:14]
    inputs, _ = mlm_batch(ids, v, 400, 12, np.random.default_rng(1), p=0.0)
    assert {int(r[-1]) for r in inputs} == set(ids[10:].tolist())         # every start 0..3 drawn


def test_a_padded_batch_gives_each_sequence_its_own_outputs():
    model, v = tiny(seed=1)
    a, b = v.encode("to be or"), v.encode("the mind")[:5]
    batch = np.full((2, 9), v.pad)
    batch[0, 0] = batch[1, 0] = v.cls
    batch[0, 1:9], batch[1, 1:6] = a, b
    with minigrad.no_grad():
        both = model(batch).data
        alone = model(batch[1:, :6]).data
        np.testing.assert_allclose(both[1, :6], alone[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(model.class_logits(model(batch)).data[1],
                                   model.class_logits(model(batch[1:, :6])).data[0], rtol=1e-12)


def test_attention_is_bidirectional():
    model, v = tiny(seed=2)
    x = np.concatenate([[v.cls], v.encode("to be or no")])[None]
    y = x.copy()
    y[0, -1] = v.encode("q")[0]                                          # change only the last token
    with minigrad.no_grad():
        hx, hy = model(x).data, model(y).data
    assert np.abs(hx[0, 1] - hy[0, 1]).max() > 1e-6                     # an early position sees it


@settings(max_examples=10)      # each example is ~400 forwards of the model
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=2), T_extra=st.integers(0, 1),
       n_layer=st.integers(1, 2), heads=st.sampled_from([(1, 3), (2, 2), (3, 1)]), seed=st.integers(0, 2**16))
def test_gradcheck_float64_of_both_losses(lengths, T_extra, n_layer, heads, seed):
    """float64 gradcheck of the masked-LM and the [CLS] classification loss with respect to every
    parameter (moved off its init), over batches of 1-2 rows whose drawn lengths pad them
    (a row of [CLS] alone, rows padded to a longer one, a column of padding in every row)."""
    v = vocab()
    n_head, hs = heads
    model = BERT(BERTConfig(vocab_size=v.size, n_layer=n_layer, n_head=n_head, n_embd=n_head * hs, block_size=7),
                 dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += rng.normal(0, 0.3, p.shape)
    B, T = len(lengths), max(lengths) + T_extra
    inputs = np.full((B, T), v.pad)
    labels = np.full((B, T), IGNORE)
    for b, n in enumerate(lengths):                        # [CLS], then n - 1 tokens, then [PAD]s
        inputs[b, 0] = v.cls
        inputs[b, 1:n] = rng.integers(0, v.n_tokens, n - 1)
        chosen = rng.random(n - 1) < 0.5
        labels[b, 1:n] = np.where(chosen, rng.integers(0, v.n_tokens, n - 1), IGNORE)
        inputs[b, 1:n][chosen & (rng.random(n - 1) < 0.8)] = v.mask
    params = list(model.parameters())
    if (labels != IGNORE).any():                           # (else the loss is a constant 0)
        assert minigrad.gradcheck(lambda *p: mlm_loss(model, (inputs, labels)), params, max_elements=8)
    cls_labels = rng.integers(0, 2, B)
    assert minigrad.gradcheck(lambda *p: classification_loss(model, (inputs, cls_labels)), params, max_elements=8)


def test_shuffled_words_task_is_balanced_and_keeps_the_words():
    v = vocab()
    task = ShuffledWordsTask(TEXT, v, block_size=40, min_words=3, max_words=6)
    rng = np.random.default_rng(0)
    examples = [task.sample(rng) for _ in range(2000)]
    labels = np.array([label for _, label in examples])
    assert abs(labels.mean() - 0.5) < 5 * np.sqrt(0.25 / len(labels))
    normalized = " ".join(TEXT.split())
    for text, label in examples[:200]:
        assert len(text) <= 39 and "\n" not in text and "  " not in text
        if label == 1:
            assert text in normalized
    inputs, labels = task.batch(rng, 8)
    assert (inputs[:, 0] == v.cls).all() and inputs.shape[1] <= 40
    lengths = (inputs != v.pad).sum(1)
    assert lengths.max() == inputs.shape[1]                               # padded to the longest


def test_a_shuffled_example_is_its_words_in_another_order():
    words = [f"w{chr(97 + i // 10)}{chr(97 + i % 10)}" for i in range(100)]      # 100 distinct words
    text = " ".join(words)
    task = ShuffledWordsTask(text, BERTVocab(CharTokenizer.train(text)), block_size=20, min_words=2, max_words=4)
    rng = np.random.default_rng(1)
    for _ in range(300):
        example, label = task.sample(rng)
        got = example.split()
        start = words.index(min(got))                                    # the window it was cut from
        window = words[start:start + len(got)]
        assert sorted(got) == window                                     # the same words ...
        assert (got == window) == (label == 1)                           # ... in another order iff shuffled


@pytest.mark.parametrize("make, says", [
    (lambda m, v: m(np.full((2, 13), v.cls)),
     "a sequence of 13 tokens (idx shape (2, 13)) is longer than block_size=12"),
    (lambda m, v: m(np.full((2, 5), v.cls), padding_mask=np.zeros((2, 4), bool)),
     "padding_mask has shape (2, 4) (bool) but idx is (2, 5): it must be a boolean (B, T) array"),
    (lambda m, v: m(np.array([[v.size]])), f"token ids must be in [0, {vocab().size})"),
    (lambda m, v: check_vocabulary(BERTConfig(vocab_size=90), v, "checkpoint out/bert"),
     f"checkpoint out/bert has a vocabulary of 90 tokens (86 + 4 specials) but this text needs {vocab().size}"),
    (lambda m, v: BERTConfig(n_embd=10, n_head=3), "n_embd=10 must be divisible by n_head=3"),
    (lambda m, v: ShuffledWordsTask("a b c", v, 10), "the text has 3 words, fewer than max_words + 1 = 13"),
    # texts with no example: sample() drew for ever (the demo hung before printing anything)
    (lambda m, v: ShuffledWordsTask("la " * 3000, v, 64), "no stretch of 2 to 12 words of this text holds two "
                                                           "different words in block_size - 1 = 63 characters"),
    (lambda m, v: ShuffledWordsTask(("a" * 36 + " " + "b" * 36 + " ") * 800, v, 64), "no stretch of 2 to 12"),
])
def test_bad_input_is_one_clear_error(make, says):
    model, v = tiny()
    with pytest.raises(ValueError) as e:
        make(model, v)
    assert says in str(e.value)


def test_the_check_for_an_example_agrees_with_the_rule_sample_uses():
    """Brute force over small random texts (the rule written out on every start and length): an
    example exists exactly when some start's first words up to two different ones fit in
    block_size - 1 characters."""
    rng = np.random.default_rng(0)
    kinds = ["a", "bb", "ccc", "dddddddd", "e" * 20]

    def brute(words, room, max_words=12):
        for s in range(len(words) - max_words):
            for k in range(2, max_words + 1):
                if len(set(words[s:s + k])) > 1:
                    if len(" ".join(words[s:s + k])) <= room:
                        return True
                    break
        return False

    seen = set()
    for _ in range(300):
        body = [kinds[i] for i in rng.choice(5, rng.integers(13, 40), p=rng.dirichlet(np.full(5, 0.3)))]
        text = " ".join(body)
        block = int(rng.integers(4, 40))
        try:
            ShuffledWordsTask(text, vocab(), block)
            found = True
        except ValueError:
            found = False
        assert found == brute(text.split(), block - 1)
        seen.add(found)
    assert seen == {True, False}
