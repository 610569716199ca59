"""Count-based n-gram language models on the default corpus: the baseline of lecture 3.

    .venv/bin/python demos/ngram.py               # ~25 s of CPU: characters up to order 8, words up to 4
    .venv/bin/python demos/ngram.py --quick       # ~10 s: the first 1 M characters, orders <= 6
    .venv/bin/python demos/ngram.py --data my.txt --out out/mine

Fits ``models.ngram.NGramLM`` with interpolated Kneser–Ney and with add-k smoothing (k = 1, 0.1,
0.01) at every order on the training split (the first 90 % of the text, the split every model
here uses) and measures the validation loss in nats per character; then the same on words
(lower-cased words and punctuation, words seen once in training are ``<unk>``), in nats per word
and perplexity. The best character model is the baseline the neural models must beat
(``demos/rnn_lm.py`` puts it beside them).

Writes to ``--out`` (default ``out/ngram``): ``ngram_results.md`` (the tables), ``ngram.png``
(validation nats/char against the order) and ``ngram_sample.txt`` (text sampled from the best
character model). Bad input (an empty or missing ``--data``, an order out of range) prints one
line and exits with code 2 before anything is written.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from models import cli
from models.data import DataError, TextData, load_text
from models.ngram import NGramLM, WordVocab, words
from models.training import pyplot, save_figure

QUICK = {"max_chars": 1_000_000, "max_order": 6, "word_max_order": 3}
FULL = {"max_chars": None, "max_order": 8, "word_max_order": 4}
K_VALUES = (1.0, 0.1, 0.01)


def build_parser():
    p = cli.ArgumentParser(prog="ngram.py", description=__doc__)
    p.add_argument("--data", default=None, help="a UTF-8 text file; None means Shakespeare's works")
    p.add_argument("--max-chars", type=int, default=None,
                   help=f"use only the first N characters (default: all; --quick {QUICK['max_chars']:,})")
    p.add_argument("--max-order", type=int, default=None,
                   help=f"character models of orders 1..N (default {FULL['max_order']}; --quick {QUICK['max_order']})")
    p.add_argument("--word-max-order", type=int, default=None,
                   help=f"word models of orders 1..N, 0: none (default {FULL['word_max_order']}; --quick "
                        f"{QUICK['word_max_order']})")
    p.add_argument("--sample-chars", type=int, default=400, help="length of the sample of the best model")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_output_arguments(p, os.path.join("out", "ngram"),
                             out_help="directory for ngram_results.md, ngram.png and ngram_sample.txt",
                             quick_help="the first 1 M characters, orders <= 6 (explicit flags win)")
    return p


def _validate(a):
    # (a default order gives way to what the vocabulary allows; one given is refused beyond it)
    a.explicit_order = a.max_order is not None
    cli.fill_defaults(a, QUICK, FULL)
    if a.max_chars is not None and a.max_chars < 1:
        raise cli.UsageError(f"--max-chars must be >= 1, got {a.max_chars}")
    if not 1 <= a.max_order <= 9:
        raise cli.UsageError(f"--max-order must be in [1, 9] (character codes fit in an int64), got {a.max_order}")
    if not 0 <= a.word_max_order <= 4:
        raise cli.UsageError(f"--word-max-order must be in [0, 4], got {a.word_max_order}")
    if a.sample_chars < 0:
        raise cli.UsageError(f"--sample-chars must be >= 0, got {a.sample_chars}")


def char_models(train, val, vocab_size, max_order):
    """{order: {"kneser_ney": nats/char, "add_k=1": ...}} and the seconds the fits took."""
    results = {}
    for n in range(1, max_order + 1):
        t0 = time.perf_counter()
        kn = NGramLM(n, vocab_size, "kneser_ney").fit(train)
        row = {"kneser_ney": kn.nats_per_token(val)}
        for k in K_VALUES:
            row[f"add_k={k:g}"] = NGramLM(n, vocab_size, "add_k", k=k).fit(train).nats_per_token(val)
        row["seconds"] = time.perf_counter() - t0
        row["ngrams"] = kn.num_ngrams()[-1]
        results[n] = row
        print(f"[ngram] chars, order {n}: Kneser-Ney {row['kneser_ney']:.4f} nats/char, add-k "
              + ", ".join(f"{row[f'add_k={k:g}']:.4f} (k={k:g})" for k in K_VALUES)
              + f"; {row['ngrams']:,} distinct {n}-grams ({row['seconds']:.1f} s)", flush=True)
    return results


def word_models(train_text, val_text, top):
    """{order: {"kneser_ney": nats/word, ...}}, the vocabulary and the <unk> rate of validation."""
    train_words, val_words = words(train_text), words(val_text)
    vocab = WordVocab.build(train_words, min_count=2)
    # (known only now, after the character models: beyond it, the orders that fit, with a note)
    top = cli.ngram_orders_that_fit(top, vocab.vocab_size, "--word-max-order", explicit=False, what="words",
                                    tag="[ngram] ")
    train, val = vocab.encode(train_words), vocab.encode(val_words)
    results = {}
    for n in range(1, top + 1):
        row = {"kneser_ney": NGramLM(n, vocab.vocab_size, "kneser_ney").fit(train).nats_per_token(val)}
        for k in K_VALUES:
            row[f"add_k={k:g}"] = NGramLM(n, vocab.vocab_size, "add_k", k=k).fit(train).nats_per_token(val)
        results[n] = row
        print(f"[ngram] words, order {n}: Kneser-Ney {row['kneser_ney']:.3f} nats/word "
              f"(perplexity {math.exp(row['kneser_ney']):.0f})", flush=True)
    return results, vocab, float(np.mean(val == 0)), (len(train), len(val))


def table(results, unit, perplexity=False) -> str:
    cols = ["kneser_ney", *(f"add_k={k:g}" for k in K_VALUES)]
    head = "| order | Kneser–Ney | " + " | ".join(f"add-k, k = {k:g}" for k in K_VALUES) + " |"
    lines = [head, "|---:|" + "---:|" * len(cols)]
    best = min(min(r[c] for c in cols) for r in results.values())
    for n, r in results.items():
        cells = []
        for c in cols:
            cell = f"{r[c]:.4f}" + (f" ({math.exp(r[c]):.0f})" if perplexity else "")
            cells.append(f"**{cell}**" if r[c] == best else cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return f"Validation {unit}" + (" (perplexity)" if perplexity else "") + ":\n\n" + "\n".join(lines) + "\n"


def best_char_model(results) -> tuple[int, str, float]:
    """(order, smoothing column, nats/char) of the lowest validation loss."""
    return min(((n, c, v) for n, r in results.items() for c, v in r.items()
                if c not in ("seconds", "ngrams")), key=lambda t: t[2])


def plot(results, path, title):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    orders = list(results)
    ax.plot(orders, [results[n]["kneser_ney"] for n in orders], "o-", lw=2, label="Kneser–Ney")
    for k in K_VALUES:
        ax.plot(orders, [results[n][f"add_k={k:g}"] for n in orders], "s--", ms=4, label=f"add-k, k = {k:g}")
    ax.set_xlabel("order n (the model sees the previous n-1 characters)")
    ax.set_ylabel("validation cross-entropy (nats/char)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def run(a) -> dict:
    """The demo as the parsed arguments ``a`` say; returns the results."""
    _validate(a)
    text, desc = load_text(a.data, notice=True, max_chars=a.max_chars)
    data = TextData(text, block_size=1, cache_dir=None, description=desc)
    a.max_order = cli.ngram_orders_that_fit(a.max_order, data.vocab_size, "--max-order", a.explicit_order,
                                            tag="[ngram] ")
    if not words(text[len(data.train):]) and a.word_max_order:
        raise DataError(f"the validation part of {desc} (its last 10%) holds no words to score the word "
                        f"models on; give a longer text, or --word-max-order 0")
    cli.check_out_dir(a.out)                # the inputs are good: from here on we may write
    train, val = np.asarray(data.train.ids), np.asarray(data.val.ids)
    print(f"[ngram] {desc}: {len(data.ids):,} characters (vocab {data.vocab_size}), "
          f"train {len(train):,} / val {len(val):,}")
    chars = char_models(train, val, data.vocab_size, a.max_order)
    order, column, best = best_char_model(chars)
    sections = [f"# n-gram language models on {desc}\n",
                f"Characters: train {len(train):,}, validation {len(val):,}, vocabulary {data.vocab_size}. "
                f"Best: order {order}, {column.replace('_', ' ')}, {best:.4f} nats/char.\n",
                table(chars, "nats/char")]
    result = {"chars": chars, "best": {"order": order, "smoothing": column, "nats_per_char": best}}
    if a.word_max_order:
        split = len(train)                  # the same cut as the characters'
        wres, vocab, unk, sizes = word_models(text[:split], text[split:], a.word_max_order)
        sections += [f"Words: train {sizes[0]:,}, validation {sizes[1]:,} words; vocabulary "
                     f"{vocab.vocab_size:,} (words seen twice or more in training), {unk:.1%} of the "
                     f"validation words are <unk>.\n", table(wres, "nats/word", perplexity=True)]
        result["words"] = wres
    plot(chars, os.path.join(a.out, "ngram.png"), f"character n-grams on {desc}")
    lm = NGramLM(order, data.vocab_size, "kneser_ney" if column == "kneser_ney" else "add_k",
                 k=float(column.split("=")[1]) if "=" in column else 1.0).fit(train)
    prompt = data.tokenizer.encode_array(text[:order - 1]) if order > 1 else np.zeros(0, np.int64)
    sample = data.tokenizer.decode(lm.generate(prompt, a.sample_chars, temperature=1.0, rng=a.seed))
    with open(os.path.join(a.out, "ngram_sample.txt"), "w", encoding="utf-8") as f:
        f.write(sample + "\n")
    markdown = "\n".join(sections)
    with open(os.path.join(a.out, "ngram_results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    print("\n" + markdown)
    print("-" * 60 + "\n" + sample + "\n" + "-" * 60)
    print(f"[ngram] wrote ngram_results.md, ngram.png and ngram_sample.txt to {a.out}/")
    return result


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
