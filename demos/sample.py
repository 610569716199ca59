#!/usr/bin/env python
"""Print text from a saved model.

    python demos/sample.py --out out --prompt "ROMEO:" --tokens 500 --temperature 0.8 --top-k 40 --seed 0
    python demos/sample.py --kv-dtype float16     # the KV cache in float16: half its memory
    python demos/sample.py --quick      # 100 tokens from out/quick, the model of train_gpt.py --quick

Reads the checkpoint that ``demos/train_gpt.py`` wrote to ``--out`` (``ckpt.npz`` and its
``manifest.json``, or give the ``.npz`` itself), rebuilds the model and its tokenizer from it,
and prints the prompt followed by ``--tokens`` sampled tokens (KV-cache decoding). The same seed
gives the same text. A missing or corrupt checkpoint, or a prompt with a character the model's
tokenizer has never seen, prints one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

from models import cli
from models.kv_cache import DenseKVCache, HalfOverflow
from models.textgen import sample_text
from models.tokenizer import TokenizerError
from models.training import CKPT, CheckpointError, load_checkpoint

# --quick reads the smoke run of `train_gpt.py --quick` and prints less (flags given explicitly win)
QUICK = {"out": os.path.join("out", "quick"), "tokens": 100}
FULL = {"out": "out", "tokens": 500}


def build_parser():
    p = cli.ArgumentParser(prog="sample.py",
                           description="Print text sampled from a checkpoint of demos/train_gpt.py.",
                           formatter_class=cli.DefaultsHelpFormatter)
    p.add_argument("--out", default=None,
                   help=f"the training run's output directory (or its ckpt.npz); default: {FULL['out']} "
                        f"({QUICK['out']} with --quick)")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline, or nothing if the model has none)")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"tokens to generate; default: {FULL['tokens']} ({QUICK['tokens']} with --quick)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    p.add_argument("--seed", type=cli.seed, default=0)
    p.add_argument("--kv-dtype", choices=("model", "float16"), default="model",
                   help="what the KV cache stores: the model's dtype, or float16 (half the memory; "
                        "keys and values rounded to float16)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke check: {QUICK['tokens']} tokens from {QUICK['out']}, where "
                        f"`train_gpt.py --quick` saves")
    return p


def run(args) -> None:
    """Print the prompt and the text sampled after it, as the parsed arguments say."""
    cli.fill_defaults(args, QUICK, FULL)
    if args.tokens < 1:
        raise cli.UsageError(f"--tokens must be >= 1, got {args.tokens}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise cli.UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise cli.UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.quick and not os.path.exists(os.path.join(args.out, CKPT)):
        raise cli.UsageError(f"no checkpoint at {args.out}: --quick samples the model that "
                             f"`python demos/train_gpt.py --quick` trains there; run that first")
    ckpt = load_checkpoint(args.out)
    tokenizer = ckpt.tokenizer()
    model = ckpt.build_model()
    bad = [n for n, p in model.named_parameters() if not np.isfinite(p.data).all()]
    if bad:                           # a run whose last step diverged (saved before that was caught)
        raise cli.UsageError(f"the checkpoint in {args.out} (step {ckpt.step}) holds non-finite weights "
                             f"({', '.join(bad[:3])}): its run diverged; train again with a lower --lr")
    prompt = args.prompt
    if prompt is None:                                 # a newline, if the text had any
        prompt = "\n" if _encodes(tokenizer, "\n") else ""
    cache = None
    if args.kv_dtype == "float16":
        if model.config.attention not in DenseKVCache.attentions:
            raise cli.UsageError(f"--kv-dtype float16: this model's attention is {model.config.attention!r}, "
                                 "whose cache has no float16 form; leave --kv-dtype at model")
        cache = DenseKVCache.for_model(model, dtype=np.float16)
    try:
        text = sample_text(model, tokenizer, args.tokens, prompt=prompt, temperature=args.temperature,
                           top_k=args.top_k, seed=args.seed, cache=cache)
    except TokenizerError as e:           # the library's advice names a class; a CLI user has a flag
        advice = str(e).replace("use BPETokenizer", "train with `train_gpt.py --tokenizer bpe`")
        raise cli.UsageError(f"--prompt: {advice}") from None
    except HalfOverflow as e:             # the library's advice names a constructor; a CLI user has a flag
        raise cli.UsageError(f"--kv-dtype float16: layer {e.layer}'s keys or values reach |x| = {e.magnitude:.4g}, "
                             "beyond float16's largest finite 65,504; use --kv-dtype model") from None
    print(prompt + text)


def _encodes(tokenizer, text) -> bool:
    try:
        tokenizer.encode(text)
        return True
    except TokenizerError:
        return False


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv, errors=(CheckpointError,))


if __name__ == "__main__":
    sys.exit(main())
