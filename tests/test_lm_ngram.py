"""models/ngram.py: every conditional distribution sums to 1 over the vocabulary (both
smoothings, every order, seen and unseen contexts), Kneser–Ney equals the formulas worked by hand
on "abracadabra", the per-position log-probabilities are the next-token distributions', and bad
input is refused naming the shapes."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.ngram import NGramLM, WordVocab, words

# "abracadabra" with a = 0, b = 1, c = 2, d = 3, r = 4 and a sixth token (5) never seen
A, B, C, D, R, E = range(6)
ABRACADABRA = np.array([A, B, R, A, C, A, D, A, B, R, A])


@given(seed=st.integers(0, 2**16), order=st.integers(1, 4), V=st.integers(1, 7),
       n=st.integers(1, 60), smoothing=st.sampled_from(["kneser_ney", "add_k"]),
       k=st.floats(0.01, 3.0), context_len=st.integers(0, 6))
def test_every_next_token_distribution_sums_to_one(seed, order, V, n, smoothing, k, context_len):
    rng = np.random.default_rng(seed)
    lm = NGramLM(order, V + 1, smoothing, k=k).fit(rng.integers(0, V, size=n))  # token V is never seen
    p = lm.next_token_probs(rng.integers(0, V + 1, size=context_len))
    assert p.shape == (V + 1,) and np.all(p > 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


@given(seed=st.integers(0, 2**16), order=st.integers(1, 5), smoothing=st.sampled_from(["kneser_ney", "add_k"]))
def test_token_log_probs_are_the_next_token_distributions_at_each_position(seed, order, smoothing):
    rng = np.random.default_rng(seed)
    lm = NGramLM(order, 5, smoothing, k=0.5).fit(rng.integers(0, 4, size=80))
    text = rng.integers(0, 5, size=12)
    expected = [np.log(lm.next_token_probs(text[:i])[text[i]]) for i in range(len(text))]
    np.testing.assert_allclose(lm.token_log_probs(text), expected, rtol=1e-13)
    assert lm.nats_per_token(text) == pytest.approx(-np.mean(expected), rel=1e-13)


def unigram_kn(count, d):
    """The bottom order of "abracadabra": continuation counts a 3 (after r, c, d), b/c/d/r 1 each,
    7 in all over 5 seen types, interpolated with the uniform 1/6."""
    return max(count - d, 0) / 7 + d * 5 / 7 / 6


def test_kneser_ney_bigram_equals_the_hand_computed_values():
    lm = NGramLM(2, 6, "kneser_ney", discount=0.5).fit(ABRACADABRA)
    p1 = {A: unigram_kn(3, 0.5), B: unigram_kn(1, 0.5), E: unigram_kn(0, 0.5)}
    # after "a": ab 2, ac 1, ad 1 -> c(a) = 4 over 3 types
    after_a = lm.next_token_probs([A])
    assert after_a[B] == pytest.approx((2 - 0.5) / 4 + 0.5 * 3 / 4 * p1[B], rel=1e-14)
    assert after_a[A] == pytest.approx(0.5 * 3 / 4 * p1[A], rel=1e-14)      # "aa" never seen
    assert after_a[E] == pytest.approx(0.5 * 3 / 4 * p1[E], rel=1e-14)
    # "e" was never a context: all of its mass comes from the unigram
    assert lm.next_token_probs([E])[A] == pytest.approx(p1[A], rel=1e-14)
    # the first token has no context: the unigram of raw counts (a 5, b 2, r 2, c 1, d 1 of 11)
    assert np.exp(lm.token_log_probs([A])[0]) == pytest.approx((5 - 0.5) / 11 + 0.5 * 5 / 11 / 6, rel=1e-14)


def test_kneser_ney_trigram_uses_continuation_counts_below_the_top_order():
    lm = NGramLM(3, 6, "kneser_ney", discount=0.5).fit(ABRACADABRA)
    # bigram level, continuation counts: every seen bigram has one distinct left neighbour
    # ("ab" starts the text once, after "d" once), so after "r": ra 1 over 1 type
    p2_a_after_r = (1 - 0.5) / 1 + 0.5 * 1 / 1 * unigram_kn(3, 0.5)
    p2_b_after_r = 0.5 * unigram_kn(1, 0.5)
    # top level, raw trigram counts: after "br", "bra" twice -> c(br) = 2 over 1 type
    after_br = lm.next_token_probs([B, R])
    assert after_br[A] == pytest.approx((2 - 0.5) / 2 + 0.5 * 1 / 2 * p2_a_after_r, rel=1e-14)
    assert after_br[B] == pytest.approx(0.5 * 1 / 2 * p2_b_after_r, rel=1e-14)
    # an unseen trigram context "rr" backs off to the bigram after "r" entirely
    assert lm.next_token_probs([R, R])[A] == pytest.approx(p2_a_after_r, rel=1e-14)


def test_kneser_ney_estimates_one_discount_per_order_from_counts_of_counts():
    lm = NGramLM(2, 6, "kneser_ney").fit(ABRACADABRA)
    # bigram raw counts: ab, br, ra twice; ac, ca, ad, da once -> n1 = 4, n2 = 3
    assert lm.tables[1]["raw"]["discount"] == pytest.approx(4 / (4 + 2 * 3))
    # unigram continuation counts a 3, b/c/d/r 1 -> n1 = 4, n2 = 0
    assert lm.tables[0]["cont"]["discount"] == 1.0


def test_add_k_is_the_pseudo_count_formula():
    lm = NGramLM(2, 6, "add_k", k=0.25).fit(ABRACADABRA)
    p = lm.next_token_probs([A])
    # after "a": ab 2, ac 1, ad 1 of c(a) = 4
    np.testing.assert_allclose(p, (np.array([0, 2, 1, 1, 0, 0]) + 0.25) / (4 + 0.25 * 6), rtol=1e-14)


def test_a_higher_order_kneser_ney_fits_its_training_text_better():
    rng = np.random.default_rng(0)
    text = np.tile(rng.integers(0, 8, size=50), 20)          # a repeated random phrase
    nats = [NGramLM(n, 8).fit(text).nats_per_token(text) for n in (1, 2, 4)]
    assert nats[0] > nats[1] > nats[2]


def test_generate_follows_a_deterministic_text():
    lm = NGramLM(3, 5).fit(np.tile([0, 1, 2, 3], 30))
    np.testing.assert_array_equal(lm.generate([0, 1], 6, temperature=0), [2, 3, 0, 1, 2, 3])
    assert lm.generate([0], 5, rng=0).shape == (5,)


@pytest.mark.parametrize("make, says", [
    (lambda: NGramLM(0, 5), "order must be an integer >= 1"),
    (lambda: NGramLM(3, 5, "witten_bell"), "smoothing must be one of kneser_ney, add_k"),
    (lambda: NGramLM(3, 5, "add_k", k=0), "k must be a finite number > 0"),
    (lambda: NGramLM(3, 5, discount=1.5), "discount must be in (0, 1]"),
    (lambda: NGramLM(10, 100_000), "100000^10 does not fit in an int64 code; use order <= 3"),
    (lambda: NGramLM(2, 5).fit([]), "the training text is empty"),
    (lambda: NGramLM(2, 5).fit([[0, 1]]), "1-D integer array, got int64 (1, 2)"),
    (lambda: NGramLM(2, 5).fit([0, 7]), "ids must be in [0, 5) (the vocabulary), got [0, 7]"),
    (lambda: NGramLM(2, 5).fit([0, 1]).nats_per_token([5]), "ids must be in [0, 5)"),
    (lambda: NGramLM(2, 5).next_token_probs([0]), "call fit(ids) first"),
])
def test_bad_input_is_one_clear_error(make, says):
    with pytest.raises((ValueError, RuntimeError)) as e:
        make()
    assert says in str(e.value)


def test_words_and_the_word_vocabulary():
    tokens = words("O Romeo, Romeo! wherefore art thou Romeo? O'er the hill.")
    assert tokens == ["o", "romeo", ",", "romeo", "!", "wherefore", "art", "thou", "romeo", "?",
                      "o'er", "the", "hill", "."]
    vocab = WordVocab.build(tokens, min_count=2)
    assert vocab.itos == ["<unk>", "romeo"]
    assert vocab.encode(["romeo", "juliet"]).tolist() == [1, 0]
    assert WordVocab.build(tokens, max_size=3).itos == ["<unk>", "romeo", "!"]
    with pytest.raises(ValueError, match="must be distinct and start with '<unk>'"):
        WordVocab(["romeo"])
