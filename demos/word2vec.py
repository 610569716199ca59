"""Word vectors by skip-gram with negative sampling, trained on Shakespeare's words (lecture 3).

    .venv/bin/python demos/word2vec.py              # ~5 min on 2 cores
    .venv/bin/python demos/word2vec.py --quick      # ~1 min
    .venv/bin/python demos/word2vec.py --data my.txt --min-count 2

Trains ``models.word2vec.Word2Vec`` through ``models.training.Trainer`` on the lower-cased words
and punctuation of the training split (the first 90 % of the text; words seen fewer than
``--min-count`` times are ``<unk>`` and never trained on), with frequent words subsampled, dynamic
windows and negatives from the count^0.75 table. The optimizer is plain SGD on the mean loss of a
batch of pairs: with lr = 0.025 x batch size every pair moves its vectors as far as one step of the
reference C code (which updates after every pair at lr 0.025), decayed linearly to 0.

Then prints, and writes to ``word2vec_results.md``: the nearest neighbours (cosine) of some words,
a list of analogies a : b :: c : d answered by the nearest word to v_b - v_a + v_c (top-1 and
top-5 accuracy; random vectors of the same size score ~0), and the SGNS loss on pairs from the
validation split. ``word2vec_pca.png`` projects groups of words (titles, family, pronouns, body,
places, time, numbers) onto the first two principal components of their vectors;
``word2vec_loss.png`` is the loss curve; ``ckpt.npz`` + ``manifest.json`` the trained model
(its vocabulary in the checkpoint's meta). An ``--out`` that already holds a checkpoint is refused
unless ``--force`` is given. Bad input prints one line and exits with code 2. A run stopped by
Ctrl-C or SIGTERM says at which step in one line and exits with code 130, writing nothing: the demo
cannot resume a run, and a checkpoint or results of the stopped one would pass for a finished one.
"""
from __future__ import annotations

import math
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # small GEMMs: one BLAS thread (see train_gpt.py)

import numpy as np  # noqa: E402

import optim  # noqa: E402
from models import cli  # noqa: E402
from models.data import DataError, load_text  # noqa: E402
from models.ngram import WordVocab, words  # noqa: E402
from models.training import Trainer, plot_history, pyplot, save_figure  # noqa: E402
from models.word2vec import SkipGramSampler, Word2Vec, Word2VecConfig, sgns_loss  # noqa: E402

QUICK = {"minutes": 1.0, "steps": 2500}
FULL = {"minutes": 5.0, "steps": 10_000}

QUERIES = ["king", "queen", "love", "death", "romeo", "sword", "thou", "father", "night", "gold",
           "france", "eye", "heaven", "three"]
ANALOGIES = [("king", "queen", "man", "woman"), ("lord", "lady", "man", "woman"),
             ("husband", "wife", "man", "woman"), ("father", "mother", "son", "daughter"),
             ("brother", "sister", "son", "daughter"), ("he", "she", "his", "her"),
             ("i", "me", "he", "him"), ("thou", "thee", "he", "him"), ("thou", "thy", "he", "his"),
             ("i", "my", "he", "his"), ("england", "english", "france", "french"),
             ("go", "went", "come", "came"), ("king", "kings", "lord", "lords"),
             ("son", "sons", "brother", "brothers"), ("day", "days", "night", "nights"),
             ("eye", "eyes", "hand", "hands"), ("good", "better", "bad", "worse"),
             ("one", "two", "first", "second")]
GROUPS = {"titles": ["king", "queen", "prince", "duke", "lord", "lady", "earl", "knight"],
          "family": ["father", "mother", "son", "daughter", "brother", "sister", "wife", "husband"],
          "pronouns": ["he", "she", "him", "her", "thou", "thee", "you", "we"],
          "body": ["eye", "hand", "heart", "head", "tongue", "face", "lips", "blood"],
          "places": ["france", "england", "rome", "london", "venice", "egypt", "scotland", "wales"],
          "time": ["night", "day", "morning", "hour", "year", "week", "tomorrow", "yesterday"],
          "numbers": ["two", "three", "four", "five", "six", "ten", "twenty", "hundred"]}


def build_parser():
    p = cli.ArgumentParser(prog="word2vec.py", description=__doc__)
    p.add_argument("--data", default=None, help="a UTF-8 text file; None means Shakespeare's works")
    p.add_argument("--max-chars", type=int, default=None, help="use only the first N characters")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"training time, evaluation included (default {FULL['minutes']:g}; --quick {QUICK['minutes']:g})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"the schedule's length, fewer if --minutes says so (default {FULL['steps']:,}; "
                        f"--quick {QUICK['steps']:,})")
    p.add_argument("--dim", type=int, default=100, help="vector size D")
    p.add_argument("--window", type=int, default=5, help="largest window radius R")
    p.add_argument("--negatives", type=int, default=5, help="noise words K per pair")
    p.add_argument("--subsample", type=float, default=1e-3, help="subsampling threshold t (0: off)")
    p.add_argument("--min-count", type=int, default=5, help="rarer words are <unk>")
    p.add_argument("--batch-size", type=int, default=1024, help="pairs per step")
    p.add_argument("--lr", type=float, default=None, help="SGD's lr on the batch mean (default 0.025 x batch)")
    p.add_argument("--seed", type=cli.seed, default=0)
    cli.add_output_arguments(p, os.path.join("out", "word2vec"),
                             out_help="directory for the results, figures and checkpoint",
                             quick_help="train for 1 minute and 2,500 steps at most (explicit flags win)")
    p.add_argument("--force", action="store_true", help="overwrite the checkpoint an earlier run left in --out")
    return p


def _validate(a):
    cli.fill_defaults(a, QUICK, FULL)
    for name in ("steps", "dim", "window", "negatives", "min_count", "batch_size"):
        if getattr(a, name) < 1:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.max_chars is not None and a.max_chars < 1:
        raise cli.UsageError(f"--max-chars must be >= 1, got {a.max_chars}")
    if not (a.minutes > 0 and math.isfinite(a.minutes)):
        raise cli.UsageError(f"--minutes must be a finite number > 0, got {a.minutes}")
    if not (0 <= a.subsample < 1):
        raise cli.UsageError(f"--subsample must be in [0, 1), got {a.subsample}")
    if a.lr is None:
        a.lr = 0.025 * a.batch_size
    if not (a.lr > 0 and math.isfinite(a.lr)):
        raise cli.UsageError(f"--lr must be a finite number > 0, got {a.lr}")


def analogy_table(model, vocab, k=5):
    """Rows (a, b, c, d, top-5 answers, hit@1, hit@5) for the analogies whose words are known."""
    rows = []
    for a, b, c, d in ANALOGIES:
        if not all(w in vocab.stoi for w in (a, b, c, d)):
            continue
        top = [vocab.itos[i] for i, _ in model.analogy(vocab.stoi[a], vocab.stoi[b], vocab.stoi[c], k)]
        rows.append((a, b, c, d, top, top[0] == d, d in top))
    return rows


def pca_plot(model, vocab, path, title):
    """The words of GROUPS on the first two principal components of their (unit) vectors; False
    (nothing drawn) when the corpus holds fewer than two of them."""
    vecs = model.vectors()
    known = {g: [w for w in ws if w in vocab.stoi] for g, ws in GROUPS.items()}
    names = [w for ws in known.values() for w in ws]
    if len(names) < 2:                               # (a corpus of other words: nothing to project)
        return False
    plt = pyplot()
    x = vecs[[vocab.stoi[w] for w in names]]
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7.5, 6.0), dpi=100)
    i = 0
    for (group, ws), color in zip(known.items(), plt.cm.tab10.colors):
        pts = xy[i:i + len(ws)]
        ax.scatter(pts[:, 0], pts[:, 1], color=color, label=group, s=18)
        for w, (px, py) in zip(ws, pts):
            ax.annotate(w, (px, py), fontsize=8, color=color, xytext=(2, 2), textcoords="offset points")
        i += len(ws)
    share = s[:2] ** 2 / np.sum(s ** 2)
    ax.set_xlabel(f"PC 1 ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC 2 ({share[1]:.0%})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def run(a) -> dict:
    """The demo as the parsed arguments ``a`` say; returns what it measured."""
    _validate(a)
    text, desc = load_text(a.data, notice=True, max_chars=a.max_chars)
    split = int(round(len(text) * 0.9))               # the characters' train/val cut
    train_words, val_words = words(text[:split]), words(text[split:])
    vocab = WordVocab.build(train_words, min_count=a.min_count)
    if vocab.vocab_size < 3:
        raise DataError(f"the training text has {vocab.vocab_size - 1} word(s) seen {a.min_count} times or more; "
                        f"word2vec needs at least 2: use a longer text or a smaller --min-count")
    train_ids, val_ids = vocab.encode(train_words), vocab.encode(val_words)
    if not len(val_words):
        raise DataError("the validation text (the last 10%) holds no words; use a longer text")
    if not (np.asarray(val_ids) > 0).any():    # (0 is <unk>, which the sampler skips)
        raise DataError(f"the validation text (the last 10%) holds no word seen {a.min_count} times or more in "
                        f"training (its {len(val_words):,} words are all <unk>); use a longer text or a smaller "
                        f"--min-count")
    try:
        pairs = SkipGramSampler(train_ids, vocab.vocab_size, a.window, a.negatives, a.subsample, seed=a.seed)
        val_pairs = SkipGramSampler(val_ids, vocab.vocab_size, a.window, a.negatives, a.subsample, seed=a.seed + 1)
    except ValueError as e:
        raise DataError(str(e).replace("SkipGramSampler: ", "")) from None
    cli.refuse_overwrite([a.out], a.force)
    cli.check_out_dir(a.out)                          # the inputs are good: from here on we may write
    print(f"[word2vec] {desc}: {len(train_words):,} training words, vocabulary {vocab.vocab_size:,} "
          f"(seen >= {a.min_count} times), {len(pairs.text):,} left after subsampling (t = {a.subsample:g}); "
          f"validation {len(val_words):,} words")
    model = Word2Vec(Word2VecConfig(vocab_size=vocab.vocab_size, dim=a.dim), seed=a.seed)
    opt = optim.create("sgd", {n: p.data for n, p in model.named_parameters()}, lr=a.lr)
    eval_rng = np.random.default_rng(a.seed + 2)
    eval_batches = [val_pairs.batch(eval_rng, a.batch_size) for _ in range(4)]
    trainer = Trainer(model, sgns_loss, opt, lambda rng: pairs.batch(rng, a.batch_size), steps=a.steps,
                      schedule="linear", eval_batches=eval_batches, eval_every=max(1, a.steps // 10),
                      time_budget=a.minutes * 60,
                      reserve_seconds=5.0, seed=a.seed, progress=not a.no_progress, log_every=500)
    result = trainer.fit()
    if result.interrupted:
        raise cli.Interrupted(f"interrupted at step {trainer.step} of {trainer.target}; no checkpoint, results or "
                              f"figures written")
    trainer.save(a.out, meta={"vocab": vocab.to_dict(), "args": vars(a)})
    plot_history(trainer.history, a.out, f"word2vec (SGNS, D = {a.dim}) on {desc}", name="word2vec_loss.png")

    lines = [f"# word2vec on {desc}\n",
             f"Skip-gram with negative sampling, D = {a.dim}, window {a.window}, {a.negatives} negatives, "
             f"t = {a.subsample:g}, vocabulary {vocab.vocab_size:,} words; {trainer.step:,} steps of "
             f"{a.batch_size} pairs in {result.seconds / 60:.1f} min; validation SGNS loss "
             f"{trainer.history['val_loss'][0]:.3f} -> {result.val_loss:.3f}.\n",
             "Nearest neighbours (cosine of the centre vectors):\n", "| word | neighbours |", "|---|---|"]
    neighbours = {}
    for w in QUERIES:
        if w in vocab.stoi:
            near = model.nearest(vocab.stoi[w], 8, exclude=(0,))
            neighbours[w] = [vocab.itos[i] for i, _ in near]
            lines.append(f"| {w} | " + ", ".join(f"{vocab.itos[i]} ({c:.2f})" for i, c in near) + " |")
    rows = analogy_table(model, vocab)
    top1 = sum(r[5] for r in rows) / max(len(rows), 1)
    top5 = sum(r[6] for r in rows) / max(len(rows), 1)
    lines += ["", f"Analogies a : b :: c : ? (the word nearest to b - a + c): top-1 {top1:.0%}, "
                  f"top-5 {top5:.0%} of {len(rows)}.\n",
              "| a : b :: c : d | top 5 | top-1 |", "|---|---|---|"]
    for a_, b, c, d, top, hit1, _ in rows:
        lines.append(f"| {a_} : {b} :: {c} : {d} | {', '.join(top)} | {'yes' if hit1 else 'no'} |")
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "word2vec_results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    drawn = pca_plot(model, vocab, os.path.join(a.out, "word2vec_pca.png"),
                     f"word2vec on {desc}: word groups on the first two principal components")
    print("\n" + markdown)
    pca = "word2vec_pca.png, " if drawn is not False else ""
    print(f"[word2vec] wrote word2vec_results.md, {pca}word2vec_loss.png and the checkpoint to {a.out}/"
          + ("" if pca else " (no PCA plot: the corpus holds fewer than two of the plotted words)"))
    return {"neighbours": neighbours, "analogies": rows, "top1": top1, "top5": top5,
            "val_loss": trainer.history["val_loss"], "steps": trainer.step}


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
