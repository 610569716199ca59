"""Lecture 1: forward and backward propagation by hand, in matrix form, checked against the tape.

A two-layer network on a batch of B examples, legend B = batch, D = inputs, H = hidden, C = classes:

    Z1 = X W1^T + b1        (B, H)     linear
    A1 = phi(Z1)            (B, H)     nonlinearity (tanh or relu)
    Z2 = A1 W2^T + b2       (B, C)     linear
    L  = mean_i CE(Z2_i, y_i)   ()     softmax cross-entropy

Backward is the chain rule written as vector-Jacobian products, from the loss down. Each step
multiplies the upstream gradient (a row vector, here a matrix: one row per example) by the
local Jacobian, which is never formed as a matrix:

    dZ2 = (softmax(Z2) - onehot(y)) / B            dL/dZ2
    dW2 = dZ2^T A1,   db2 = 1^T dZ2,   dA1 = dZ2 W2      (Z2 = A1 W2^T + b2)
    dZ1 = dA1 * phi'(Z1)                            (elementwise: a diagonal Jacobian)
    dW1 = dZ1^T X,    db1 = 1^T dZ1,   dX  = dZ1 W1

To do that, forward must *store* what backward reads: X (for dW1), phi'(Z1) or A1 (for dZ1),
A1 (for dW2), and the softmax probabilities (or the logits) for dZ2. The demo prints each of
those with its shape and bytes, then runs the same network on minigrad's tape, shows what the
tape saved (through `minigrad.add_saved_listener`), and checks every gradient. It repeats the
check over a sweep of batch sizes, where the stored bytes grow linearly in B and the weights'
do not.

    .venv/bin/python demos/backprop_by_hand.py                  # B=8, tanh; out/backprop_by_hand/
    .venv/bin/python demos/backprop_by_hand.py --activation relu --batch 32 --hidden 64
    .venv/bin/python demos/backprop_by_hand.py --quick          # a 3-point batch sweep

Writes to ``--out``: ``backprop_by_hand.png`` (left: the largest |by hand - tape| per gradient;
right: the bytes stored for backward vs B) and ``backprop_by_hand_results.md`` (the tables it
prints). Exit status: 0 when every difference is within ``--tol``, 1 on a mismatch, 2 with one
line on stderr for bad input (nothing written).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

import minigrad as mg
import minigrad.functional as F
from models import cli
from models.training import pyplot, save_figure

SIZE_MAX = 1024                          # a teaching demo: every array is small enough to print
SWEEP = tuple(2 ** k for k in range(11))  # batch sizes 1 .. 1024
QUICK_SWEEP = (1, 4, 16)
GRADS = ("W2", "b2", "W1", "b1", "X")
RULES = {"W2": "dZ2^T A1", "b2": "1^T dZ2", "W1": "dZ1^T X", "b1": "1^T dZ1", "X": "dZ1 W1"}
DIFF_FLOOR = 1e-20                       # an exact 0 is drawn here on the log axis


def human(nbytes: int) -> str:
    return f"{nbytes:,} B" if nbytes < 10_000 else f"{nbytes / 1024:,.1f} KiB"


class Stored:
    """What the hand-written forward keeps for backward, in order (the "tape" by hand)."""

    def __init__(self):
        self.rows: list[tuple[str, str, tuple, int, bool]] = []
        self._ids: set[int] = set()

    def keep(self, step: str, name: str, arr: np.ndarray) -> np.ndarray:
        shared = id(arr) in self._ids  # a second reference to an array already kept costs nothing
        self._ids.add(id(arr))
        self.rows.append((step, name, arr.shape, arr.nbytes, shared))
        return arr

    def total(self) -> int:
        return sum(r[3] for r in self.rows if not r[4])

    def table(self) -> str:
        lines = ["| forward step | stores for backward | shape | bytes |", "|---|---|---|---:|"]
        for step, name, shape, nbytes, shared in self.rows:
            lines.append(f"| {step} | {name} | {shape} | {'(shared)' if shared else human(nbytes)} |")
        lines.append(f"| **total** (distinct arrays) | | | {human(self.total())} |")
        return "\n".join(lines)


def forward_backward_by_hand(X, y, W1, b1, W2, b2, activation):
    """Returns (loss, grads dict, what was stored). Plain NumPy, one line per Jacobian product."""
    B = X.shape[0]
    st = Stored()
    # ---------------------------------------------------------------- forward
    st.keep("Z1 = X W1^T + b1", "X (for dW1)", X)
    Z1 = X @ W1.T + b1  # (B, H)
    if activation == "tanh":
        A1 = np.tanh(Z1)  # (B, H)
        dphi = st.keep("A1 = tanh(Z1)", "A1 (tanh' = 1 - A1^2)", A1)
    else:
        A1 = np.maximum(Z1, 0.0)
        dphi = st.keep("A1 = relu(Z1)", "A1 (relu' = [A1 > 0])", A1)
    st.keep("Z2 = A1 W2^T + b2", "A1 (for dW2; same array)", A1)
    Z2 = A1 @ W2.T + b2  # (B, C)
    m = Z2.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(Z2 - m).sum(axis=1, keepdims=True))  # (B, 1) log-sum-exp
    loss = float(np.mean(lse[:, 0] - Z2[np.arange(B), y]))
    st.keep("L = CE(Z2, y)", "Z2 (logits)", Z2)
    st.keep("L = CE(Z2, y)", "lse (one per row)", lse)
    st.keep("L = CE(Z2, y)", "y (targets)", y)

    # ---------------------------------------------------------------- backward
    g = {}
    P = np.exp(Z2 - lse)  # softmax rebuilt from the stored logits and log-sum-exp
    dZ2 = P.copy()
    dZ2[np.arange(B), y] -= 1.0
    dZ2 /= B  # dL/dZ2 = (softmax - onehot) / B           (B, C)
    g["W2"] = dZ2.T @ A1  # dL/dW2 = dZ2^T A1              (C, H)
    g["b2"] = dZ2.sum(axis=0)  # dL/db2 = 1^T dZ2               (C,)
    dA1 = dZ2 @ W2  # dL/dA1 = dZ2 W2                  (B, H)
    if activation == "tanh":
        dZ1 = dA1 * (1.0 - dphi * dphi)  # diag(1 - A1^2) applied row by row
    else:
        dZ1 = dA1 * (dphi > 0)
    g["W1"] = dZ1.T @ X  # dL/dW1 = dZ1^T X               (H, D)
    g["b1"] = dZ1.sum(axis=0)  # dL/db1 = 1^T dZ1               (H,)
    g["X"] = dZ1 @ W1  # dL/dX  = dZ1 W1                 (B, D)
    return loss, g, st


def forward_backward_on_tape(X, y, W1, b1, W2, b2, activation):
    """The same network with minigrad; returns (loss, grads, [(op, bytes, arrays)], weight ids)."""
    saved = []

    def listener(event, ctx, objs):
        if event == "save":
            saved.append((ctx.name, mg.autograd.saved_nbytes(objs), list(mg.autograd.saved_arrays(objs))))

    leaves = {n: mg.Tensor(a.copy(), requires_grad=True) for n, a in
              (("X", X), ("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2))}
    mg.add_saved_listener(listener)
    try:
        h = F.linear(leaves["X"], leaves["W1"], leaves["b1"])
        h = h.tanh() if activation == "tanh" else h.relu()
        loss = F.cross_entropy(F.linear(h, leaves["W2"], leaves["b2"]), y)
    finally:
        mg.remove_saved_listener(listener)
    loss.backward()
    weight_ids = {id(leaves[n].data) for n in ("W1", "b1", "W2", "b2")}
    return loss.item(), {n: t.grad for n, t in leaves.items()}, saved, weight_ids


def make_problem(B, D, H, C, seed):
    """Inputs, targets and weights (float64): (X, y, W1, b1, W2, b2)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, D))
    y = rng.integers(0, C, size=B)
    W1 = rng.standard_normal((H, D)) / np.sqrt(D)
    b1 = 0.1 * rng.standard_normal(H)
    W2 = rng.standard_normal((C, H)) / np.sqrt(H)
    b2 = 0.1 * rng.standard_normal(C)
    return X, y, W1, b1, W2, b2


def both_passes(problem, activation) -> dict:
    """The hand-written and the tape's forward + backward on one problem, and how they compare."""
    loss, grads, stored = forward_backward_by_hand(*problem, activation)
    tape_loss, tape_grads, tape_saved, weight_ids = forward_backward_on_tape(*problem, activation)
    diffs = {"loss": abs(loss - tape_loss)}
    diffs.update({n: float(np.abs(grads[n] - tape_grads[n]).max()) for n in GRADS})
    distinct = {id(a): a for _, _, arrs in tape_saved for a in arrs if id(a) not in weight_ids}
    return {"loss": loss, "tape_loss": tape_loss, "grads": grads, "stored": stored,
            "tape_saved": tape_saved, "diffs": diffs,
            "hand_bytes": stored.total(),
            "tape_bytes": sum(a.nbytes for a in distinct.values()),
            "tape_sum": sum(b for _, b, _ in tape_saved),
            "weight_bytes": sum(a.nbytes for a in problem[2:])}


def gradient_table(r) -> str:
    lines = ["| quantity | by hand | shape | max abs(by hand - tape) |", "|---|---|---|---:|",
             f"| loss | {r['loss']:.12f} (tape {r['tape_loss']:.12f}) | () | {r['diffs']['loss']:.2e} |"]
    for n in GRADS:
        lines.append(f"| dL/d{n} | {RULES[n]} | {r['grads'][n].shape} | {r['diffs'][n]:.2e} |")
    return "\n".join(lines)


def tape_table(r) -> str:
    lines = ["| op (save_for_backward) | bytes |", "|---|---:|"]
    lines += [f"| {name} | {human(nbytes)} |" for name, nbytes, _ in r["tape_saved"]]
    lines.append(f"| sum over ops | {human(r['tape_sum'])} |")
    lines.append(f"| **distinct arrays other than the weights** | {human(r['tape_bytes'])} |")
    return "\n".join(lines)


def sweep_table(sweep) -> str:
    lines = ["| B | stored by hand | tape: distinct, not weights | tape: sum over ops | weights | "
             "max abs(by hand - tape) |", "|---:|---:|---:|---:|---:|---:|"]
    for B, r in sweep.items():
        lines.append(f"| {B} | {r['hand_bytes']:,} | {r['tape_bytes']:,} | {r['tape_sum']:,} | "
                     f"{r['weight_bytes']:,} | {max(r['diffs'].values()):.2e} |")
    return "\n".join(lines)


def plot(r, sweep, tol, title, path):
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["loss", *GRADS]
    ax1.bar([n if n == "loss" else f"dL/d{n}" for n in names],
            [max(r["diffs"][n], DIFF_FLOOR) for n in names], color="C0")
    ax1.axhline(tol, color="C3", ls="--", label=f"--tol {tol:.0e}")
    ax1.axhline(np.finfo(np.float64).eps, color="k", ls=":", label="float64 eps")
    ax1.set_yscale("log")
    ax1.set_ylim(DIFF_FLOOR / 10, max(10 * tol, 1.0))
    ax1.set_ylabel("max |by hand − tape|")
    ax1.set_title(f"{title}\n(an exact 0 is drawn at {DIFF_FLOOR:.0e})", fontsize=9)
    ax1.legend(fontsize=7)
    bs = np.array(list(sweep))
    for key, label, style in (("hand_bytes", "stored by hand", "o-"),
                              ("tape_bytes", "tape: distinct arrays, not weights", "x--"),
                              ("tape_sum", "tape: sum over ops", "s:"),
                              ("weight_bytes", "weights (not activations)", "-")):
        ax2.loglog(bs, [sweep[b][key] for b in bs], style, ms=4, label=label)
    ax2.set_xlabel("batch size B")
    ax2.set_ylabel("bytes")
    ax2.set_title("what forward stores for backward grows like B", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="backprop_by_hand.py", description=__doc__)
    for flag, default, what in (("--batch", 8, "B: examples in the batch"), ("--inputs", 5, "D: input features"),
                                ("--hidden", 16, "H: hidden units"), ("--classes", 3, "C: classes")):
        ap.add_argument(flag, type=int, default=default, help=f"{what}, in [1, {SIZE_MAX}]")
    ap.add_argument("--activation", choices=["tanh", "relu"], default="tanh")
    ap.add_argument("--seed", type=cli.seed, default=0, help=">= 0")
    ap.add_argument("--tol", type=float, default=1e-10, help="max abs difference allowed (float64), >= 0")
    ap.add_argument("--out", default=os.path.join("out", "backprop_by_hand"),
                    help="directory for backprop_by_hand.png and backprop_by_hand_results.md")
    ap.add_argument("--quick", action="store_true",
                    help=f"sweep B over {', '.join(map(str, QUICK_SWEEP))} instead of 1 .. {SWEEP[-1]}")
    return ap


def _validate(args):
    for name in ("batch", "inputs", "hidden", "classes"):
        v = getattr(args, name)
        if not 1 <= v <= SIZE_MAX:
            raise cli.UsageError(f"--{name} must be in [1, {SIZE_MAX}], got {v}")
    if not (args.tol >= 0 and math.isfinite(args.tol)):
        raise cli.UsageError(f"--tol must be a finite number >= 0, got {args.tol}")
    cli.check_out_dir(args.out)


def run(args) -> int:
    """The demo as the parsed arguments say; 0 if every gradient agrees within --tol, else 1."""
    _validate(args)
    B, D, H, C = args.batch, args.inputs, args.hidden, args.classes
    title = f"Two-layer network, float64: B={B} D={D} H={H} C={C}, activation={args.activation}"
    r = both_passes(make_problem(B, D, H, C, args.seed), args.activation)
    sections = [
        f"{title}\n",
        "## Forward: what each step stores for backward\n",
        r["stored"].table(),
        "\nA1 is kept once: the nonlinearity's backward and dW2 read the same array. The weights are "
        "read too, but they exist anyway and are not activations.\n",
        "## Backward as Jacobian products, checked against the tape\n",
        gradient_table(r),
        "\n## What minigrad's tape saved (save_for_backward, per op, as its listeners count it)\n",
        tape_table(r),
        f"\nBy hand: {human(r['hand_bytes'])}. The sum over ops counts the weights and the shared A1 "
        "again; the tape's fused cross-entropy also keeps a mask of non-ignored rows (ignore_index).\n",
    ]
    for s in sections:
        print(s)
    sizes = QUICK_SWEEP if args.quick else SWEEP
    print(f"sweeping the batch size over {', '.join(map(str, sizes))} ...", flush=True)
    sweep = {b: both_passes(make_problem(b, D, H, C, args.seed), args.activation) for b in sizes}
    sections += [f"## Stored bytes vs batch size (D={D} H={H} C={C})\n", sweep_table(sweep)]
    print("\n".join(sections[-2:]))
    worst = max(max(x["diffs"].values()) for x in (r, *sweep.values()))
    ok = worst <= args.tol
    verdict = (f"{'OK' if ok else 'MISMATCH'}: largest difference {worst:.2e} over B={B} and the sweep "
               f"(tolerance {args.tol:.0e})")
    sections.append(f"\n{verdict}\n")
    print(f"\n{verdict}")
    with open(os.path.join(args.out, "backprop_by_hand_results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(sections))
    png = os.path.join(args.out, "backprop_by_hand.png")
    plot(r, sweep, args.tol, title.split(": ", 1)[1], png)
    print(f"wrote {png} and backprop_by_hand_results.md in {args.out}/")
    return 0 if ok else 1


def main(argv=None) -> int:
    return cli.main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
