"""What every command line in ``demos/`` shares: bad input is one line on stderr and exit code 2.

    from models import cli

    def build_parser():
        ap = cli.ArgumentParser(prog="my_demo.py", description="...")
        ap.add_argument("--out", default="out/my_demo")
        return ap

    def run(args):
        if args.steps < 1:
            raise cli.UsageError(f"--steps must be >= 1, got {args.steps}")
        cli.check_out_dir(args.out)          # the last check: it creates the directory
        ...                                  # from here on the demo may write into args.out

    def main(argv=None) -> int:
        return cli.main(build_parser(), run, argv, errors=(DataError,))

A flag argparse rejects, a :class:`UsageError` raised by the demo and any exception class in
``errors`` (e.g. ``models.data.DataError``, ``models.training.CheckpointError``) all end the same
way: ``<prog>: error: <message>`` on stderr, and :func:`main` returns 2. Every check runs before
the demo writes anything, so a refused run leaves no files behind.

A run that diverges (``models.training.Diverged``, a ``FloatingPointError``: non-finite gradients
or losses, usually a learning rate too large) prints ``<prog>: error: <message>`` and returns 1:
not bad input, but no traceback either.

A run stopped by Ctrl-C or SIGTERM (``Trainer.fit`` returns with ``interrupted`` set) raises
:class:`Interrupted` naming what it kept and what it did not write; :func:`main` prints
``<prog>: <message>`` on stderr and returns 130, the shell's code for a run ended by Ctrl-C, so
that a stopped run is never reported, or scripted on, as a finished one.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

__all__ = ["UsageError", "Interrupted", "ArgumentParser", "DefaultsHelpFormatter", "seed", "add_output_arguments", "add_corpus_arguments",
           "fill_defaults", "refuse_unused", "refuse_overwrite", "check_out_dir", "main"]


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class Interrupted(Exception):
    """A run stopped by a signal before its end: printed as one line, exit code 130. The message
    says where it stopped and what was (not) written, e.g. ``interrupted at step 40 of 2000; no
    results written``."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise :class:`UsageError` instead of printing the
    usage and exiting, so that they end as one line, like the demo's own checks. Give ``prog``:
    it names the demo in every error message, also when ``main`` is called from a test. A
    ``description`` (the demo's module docstring) is cut to its first paragraph, on one line."""

    def __init__(self, *args, description=None, **kwargs):
        if description:                     # its first line alone stopped mid-sentence in --help
            description = " ".join(description.strip().split("\n\n")[0].split())
        super().__init__(*args, description=description, **kwargs)

    def error(self, message):
        raise UsageError(message)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, but not for a default of None (the flag's help says
    what None means) or of a switch that is off: "(default: None)" only confused."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def seed(text: str) -> int:
    """The argparse ``type`` of every demo's ``--seed``: an integer >= 0 (NumPy refuses a
    negative seed, which ended nine demos in a traceback), else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or str(value) != text.strip().lstrip("+"):
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def add_output_arguments(parser, out, out_help, quick_help) -> None:
    """The flags of a demo that writes results: ``--out`` (default ``out``), ``--quick`` (a smoke
    run, described by ``quick_help``) and ``--no-progress``."""
    parser.add_argument("--out", default=out, help=out_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def add_corpus_arguments(parser, max_chars_help="use only the first N characters of the corpus",
                         cache_dir_help="where the tokenized corpus is cached ('' disables)") -> None:
    """The flags of a demo that trains on the default corpus: ``--max-chars`` (None: all of it)
    and ``--cache-dir``, by default ``<--out>/cache`` (set by :func:`main`): a demo writes inside
    its --out, never into an ``out/`` of whatever directory it was started from."""
    parser.add_argument("--max-chars", type=int, default=None, help=max_chars_help)
    parser.add_argument("--cache-dir", default=None, help=cache_dir_help + "; default: <--out>/cache")


def fill_defaults(args, quick: dict, full: dict) -> None:
    """Set each argument named in ``quick`` (with ``--quick``) or ``full`` (without) that is still
    None to the value given there, so that a flag given explicitly wins over both."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def refuse_unused(parser, args, names, why) -> None:
    """Raise :class:`UsageError` if a flag among ``names`` (argument names) was given a value other
    than its default, which this run would silently ignore; ``why`` says why, e.g. "--part convex
    runs no GPT part". Call it before :func:`fill_defaults` fills the defaults left None."""
    given = [n for n in names if getattr(args, n) != parser.get_default(n)]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"{flags}: {why}, so {'they would be' if len(given) > 1 else 'it would be'} "
                         f"ignored; drop {'them' if len(given) > 1 else 'it'}")


def refuse_flags_of_untrained(parser, args, methods, readers) -> None:
    """:func:`refuse_unused` for flags that only some methods read: ``readers`` maps a flag
    (argument name) to the methods that read it; one given while ``methods`` holds none of them
    is refused in one line."""
    for flag, users in readers.items():
        if not set(users) & set(methods):
            refuse_unused(parser, args, (flag,), f"--methods {','.join(methods)} trains none of {', '.join(users)}")


def ngram_orders_that_fit(order, vocab_size, flag, explicit, what="characters", tag="") -> int:
    """``order``, or the highest order ``models.ngram.NGramLM`` takes for ``vocab_size`` tokens
    (an n-gram is one int64 code, vocab^order < 2^63): a default order gives way to it with a note
    (``tag`` starts it), one given (``explicit``) is refused in one line beyond it."""
    from models.ngram import max_order
    most = max_order(vocab_size)
    if order <= most:
        return order
    if explicit:
        raise UsageError(f"{flag} {order}: this text's {vocab_size:,} {what} allow orders up to {most} "
                         f"(an n-gram is one int64 code, vocab^order < 2^63)")
    print(f"{tag}this text's {vocab_size:,} {what} allow orders up to {most}: {flag} {most}")
    return most


def refuse_overwrite(dirs, force: bool, instead: str = "") -> None:
    """Raise :class:`UsageError` when a directory among ``dirs`` holds the checkpoint of an
    earlier run, unless ``force`` (``--force``): a run overwrites a trained model only when asked.
    ``instead`` offers another way on, e.g. "continue it with --resume"."""
    from models.training.checkpoint import CKPT
    found = [os.fspath(d) for d in dirs if os.path.exists(os.path.join(d, CKPT))]
    if found and not force:
        one = len(found) == 1
        raise UsageError(f"{', '.join(found)} already {'holds a checkpoint' if one else 'hold checkpoints'} of an "
                         f"earlier run; {instead + ', ' if instead else ''}overwrite {'it' if one else 'them'} "
                         f"with --force, or choose another --out")


def _refuse_unusable_out(path) -> None:
    """The refusals of :func:`check_out_dir` that need nothing made: ``path`` is a file, or its
    nearest existing ancestor is a file or a directory this user cannot write."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path} is a file, not a directory")
    above = os.path.abspath(path)
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above) or not os.access(above, os.W_OK | os.X_OK):
        why = "Not a directory" if not os.path.isdir(above) else "Permission denied"
        raise UsageError(f"--out {path} is not writable ({why}); choose another directory")


def check_out_dir(path) -> None:
    """Make the output directory ``path`` (given as ``--out``) and check that a file can be
    created in it; raises :class:`UsageError` naming it otherwise. It creates the directory, so
    call it after every other check of the input."""
    _refuse_unusable_out(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"--out {path} is not writable ({e.strerror or e}); choose another directory") from None


def main(parser: argparse.ArgumentParser, run, argv=None, errors=()) -> int:
    """Parse ``argv`` (None: ``sys.argv[1:]``) with ``parser`` and return ``run(args)`` as an exit
    status: the int it returns, or 0 when it returns anything else (a summary, None).
    :class:`UsageError` and the exception classes in ``errors`` print ``<parser.prog>: error:
    <message>`` on stderr and return 2; :class:`Interrupted` prints ``<parser.prog>: <message>``
    and returns 130; a ``FloatingPointError`` (a diverged run) prints ``<parser.prog>: error:
    <message>`` and returns 1; any other exception propagates."""
    try:
        args = parser.parse_args(argv)
        if getattr(args, "cache_dir", "") is None:            # add_corpus_arguments' default
            _refuse_unusable_out(args.out)    # (before the cache in it is tried: one line, not two)
            args.cache_dir = os.path.join(args.out, "cache")
        status = run(args)
    except (UsageError, *errors) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 130
    except FloatingPointError as e:                   # models.training.Diverged among them
        # the optimizers' advice names a Python argument (nonfinite='skip'): not a flag here
        msg = re.sub(r"(;| or) use nonfinite='skip'[^;]*", "", str(e))
        hint = "" if re.search(r"\blr\b|learning rate", msg) else "; a smaller learning rate may train"
        print(f"{parser.prog}: error: {msg}{hint}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


def available_memory():
    """Bytes the kernel says a new process could use now (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_gpt_step_fits(config, batch_size, data=None, optimizer="adamw") -> None:
    """Raise :class:`UsageError` unless ``batch_size`` rows of the GPT's block fit in the training
    split of ``data`` (when given) and one training step (``models.costs.gpt_costs``: weights,
    gradients, the optimizer's state, activations) in 80% of the memory available: a batch too
    large for the machine is one line, not a process the kernel kills. A model gpt_costs has no
    formulas for (grouped-query or other attention) gets no memory estimate."""
    from minigrad.memory import fmt_bytes
    from models.costs import gpt_costs
    need = batch_size * config.block_size
    if data is not None and need > len(data.train):
        raise UsageError(f"--batch-size {batch_size} x block {config.block_size} = {need:,} tokens is more "
                         f"than the whole training split ({len(data.train):,} tokens); use a smaller batch")
    try:
        costs = gpt_costs(config, batch_size, optimizer=optimizer.lower())
    except ValueError:                       # its formulas are multi-head attention's
        return
    avail = available_memory()
    if avail is not None and costs.total_bytes > 0.8 * avail:
        raise UsageError(f"--batch-size {batch_size} needs about {fmt_bytes(costs.total_bytes)} for one "
                         f"training step (models.costs.gpt_costs), more than 80% of the "
                         f"{fmt_bytes(avail)} available; use a smaller batch")
