"""Loss curves of a training run (matplotlib, Agg backend; a text table when it is missing)."""
from __future__ import annotations

import os

import numpy as np

__all__ = ["plot_history", "pyplot", "save_figure"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported on first use
    so that code which never plots does not need matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 80) -> str:
    """Write ``fig`` to ``path`` and close it (pyplot holds every open figure until closed).
    Returns the path."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_history(history: dict, out_dir: str, title: str, name: str = "loss.png") -> str:
    """Train loss per step (raw and a running mean) and validation loss, written atomically to
    ``out_dir/name``; ``loss.txt`` (step, val loss) when matplotlib is not installed. Returns the path."""
    try:
        plt = pyplot()
    except ImportError:
        path = os.path.join(out_dir, "loss.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("step\tval_loss\n")
            for s, v in zip(history["val_step"], history["val_loss"]):
                f.write(f"{int(s)}\t{v:.4f}\n")
        return path
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ts, tl = np.asarray(history["train_step"]), np.asarray(history["train_loss"])
    if len(tl):
        ax.plot(ts, tl, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        k = max(1, min(50, len(tl) // 10))
        smooth = np.convolve(tl, np.ones(k) / k, mode="valid")
        ax.plot(ts[k - 1:], smooth, color="tab:blue", lw=1.5, label=f"train ({k}-step mean)")
    if history["val_loss"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", color="tab:orange", lw=1.5, ms=4,
                label="validation")
        title += f" - val {history['val_loss'][-1]:.3f} at step {int(history['val_step'][-1])}"
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
