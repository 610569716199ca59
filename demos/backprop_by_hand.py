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
tape saved (through `minigrad.add_saved_listener`), and checks every gradient: the largest
absolute difference is printed and the exit status is non-zero on a mismatch.

Run:  .venv/bin/python demos/backprop_by_hand.py [--batch 8] [--activation tanh|relu]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import minigrad as mg
import minigrad.functional as F


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

    def print(self):
        print(f"  {'step':<22}{'stores':<26}{'shape':<12}{'bytes':>10}")
        for step, name, shape, nbytes, shared in self.rows:
            print(f"  {step:<22}{name:<26}{str(shape):<12}{'(shared)' if shared else human(nbytes):>10}")
        print(f"  {'total (distinct arrays)':<60}{human(self.total()):>10}")


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8, help="B: examples in the batch")
    ap.add_argument("--inputs", type=int, default=5, help="D: input features")
    ap.add_argument("--hidden", type=int, default=16, help="H: hidden units")
    ap.add_argument("--classes", type=int, default=3, help="C: classes")
    ap.add_argument("--activation", choices=["tanh", "relu"], default="tanh")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-10, help="max abs difference allowed (float64)")
    args = ap.parse_args(argv)

    B, D, H, C = args.batch, args.inputs, args.hidden, args.classes
    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((B, D))
    y = rng.integers(0, C, size=B)
    W1 = rng.standard_normal((H, D)) / np.sqrt(D)
    b1 = 0.1 * rng.standard_normal(H)
    W2 = rng.standard_normal((C, H)) / np.sqrt(H)
    b2 = 0.1 * rng.standard_normal(C)

    print(f"Two-layer network, float64: B={B} D={D} H={H} C={C}, activation={args.activation}\n")
    print("Forward (what each step stores for backward):")
    loss, grads, stored = forward_backward_by_hand(X, y, W1, b1, W2, b2, args.activation)
    stored.print()
    print("  (A1 is kept once: the nonlinearity's backward and dW2 read the same array; the")
    print("   weights are read too, but they exist anyway and are not activations)\n")

    print("Backward as Jacobian products, from the loss down:")
    shapes = {"W2": "dZ2^T A1", "b2": "1^T dZ2", "W1": "dZ1^T X", "b1": "1^T dZ1", "X": "dZ1 W1"}
    for n in ("W2", "b2", "W1", "b1", "X"):
        print(f"  dL/d{n:<3} = {shapes[n]:<10} shape {str(grads[n].shape):<9}"
              f" |g|_max = {np.abs(grads[n]).max():.4f}")

    tape_loss, tape_grads, tape_saved, weight_ids = forward_backward_on_tape(X, y, W1, b1, W2, b2, args.activation)
    print("\nWhat minigrad's tape saved (save_for_backward, per op, as its listeners count it):")
    for name, nbytes, _ in tape_saved:
        print(f"  {name:<14}{human(nbytes):>10}")
    print(f"  {'sum over ops':<14}{human(sum(b for _, b, _ in tape_saved)):>10}")
    distinct = {id(a): a for _, _, arrs in tape_saved for a in arrs if id(a) not in weight_ids}
    acts = sum(a.nbytes for a in distinct.values())
    print(f"  distinct arrays other than the weights: {human(acts)} (by hand: {human(stored.total())})")
    print("  The sum over ops counts the weights and the shared A1 again; the tape's fused")
    print("  cross-entropy also keeps a mask of non-ignored rows (ignore_index).")

    print("\nCheck against the tape (max |by hand - tape|):")
    worst = abs(loss - tape_loss)
    print(f"  loss     {loss:.12f} vs {tape_loss:.12f}  diff {worst:.2e}")
    for n in ("W2", "b2", "W1", "b1", "X"):
        diff = float(np.abs(grads[n] - tape_grads[n]).max())
        worst = max(worst, diff)
        print(f"  dL/d{n:<4} max abs diff {diff:.2e}")
    ok = worst <= args.tol
    print(f"\n{'OK' if ok else 'MISMATCH'}: largest difference {worst:.2e} (tolerance {args.tol:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
