"""What the optimizer tests share: a gradient field that never vanishes, and parameter copies
compared bit for bit (optimizers work on dicts of NumPy arrays keyed by parameter name), and the
check that a run through the Trainer resumes from a mid-period checkpoint bit for bit."""
import numpy as np


def grads_at(params, t):
    """The gradient of sum((p - 0.5)^2) at the current parameters plus noise that depends on the
    step: never zero, never low rank, and a wrong update changes every later gradient."""
    out = {}
    for i, (n, p) in enumerate(params.items()):
        rng = np.random.default_rng(1000 * t + i)
        out[n] = (2.0 * (p - 0.5) + rng.standard_normal(p.shape)).astype(p.dtype)
    return out


def copy_params(params):
    """A copy of every array, to compare with after the optimizer has stepped in place."""
    return {n: p.copy() for n, p in params.items()}


def same_params(a, b):
    """The same names and bit-identical arrays."""
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def assert_resumes_mid_period(make_model, make_opt, make_trainer, tmp_path, other_seeds):
    """A run of 10 steps, and one stopped after step 4 (inside a period of 3 steps), saved,
    restored into a fresh model with other initial weights, optimizer seed (``other_seeds``, the
    keyword arguments of ``make_opt``) and trainer seed, and run on: the two are bit-identical in
    losses, state bytes and final weights. Returns the full run's trainer.

    ``make_model(seed=0)``, ``make_opt(model, **kw)``, ``make_trainer(model, opt, steps, **kw)``."""
    from models.training import load_checkpoint

    full_model = make_model()
    full = make_trainer(full_model, make_opt(full_model), 10)
    full.fit()

    model = make_model()
    part = make_trainer(model, make_opt(model), 10,
                        on_step=lambda t: setattr(t, "interrupted", t.step == 4 or t.interrupted))
    assert part.fit().step == 4
    part.save(tmp_path)

    model2 = make_model(seed=5)                               # weights come from the checkpoint
    again = make_trainer(model2, make_opt(model2, **other_seeds), 10, seed=98)   # seeds too
    again.restore(load_checkpoint(tmp_path))
    again.fit()
    for key in ("train_loss", "val_loss", "state_bytes"):
        assert again.history[key] == full.history[key], key
    for n, p in full_model.named_parameters():
        assert np.array_equal(p.data, dict(model2.named_parameters())[n].data), n
    return full
