"""The checkpoint format: one ``.npz`` of arrays and a ``manifest.json`` that vouches for it.

A checkpoint directory holds

* ``ckpt.npz`` -- every array, loaded with ``allow_pickle=False``:
  ``param/<name>`` (the model's parameters and buffers, ``Module.state_dict`` names),
  ``optim/<key>`` (the optimizer's ``state_dict``, flattened by ``optim.flatten_state_dict``),
  ``state/<name>/<key>`` (other named state dicts flattened the same way, e.g. the error-feedback
  buffers of a gradient hook),
  ``history/<key>`` (float64 series such as ``train_loss``), and ``meta``: one JSON string with
  the format version, the model's class and config (and, for one rank's part of a model split
  over ranks, its ``shard_meta()``, e.g. ``{"tp_rank": 1, "tp_size": 2}``), the step, the RNG
  states and whatever the caller adds (tokenizer, data description, CLI arguments).
* ``manifest.json`` -- human-readable: format version, step, config, last losses, the shape and
  dtype of every array, and the SHA-256 of ``ckpt.npz``. Loading checks that hash, so a
  truncated, bit-flipped or swapped arrays file is refused instead of half-read.

Both files are written under a temporary name and renamed, manifest first on disk, so a crash
(or Ctrl-C) while saving leaves either the previous checkpoint or the new one loadable. Every way a checkpoint can be unusable -- missing,
truncated, not an npz, another format version, a manifest that does not match -- raises
:class:`CheckpointError` with one line that names the file and what is wrong.

    path = save_checkpoint("out", model, optimizer, history=h, meta={"tokenizer": tok.to_dict()})
    ckpt = load_checkpoint("out")              # the directory or the .npz
    model = ckpt.build_model()                 # a GPT with the saved config and weights
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

import optim

__all__ = ["FORMAT_VERSION", "CKPT", "MANIFEST", "CheckpointError", "Checkpoint",
           "save_checkpoint", "load_checkpoint", "load_matching_checkpoint", "checkpoint_path",
           "model_classes"]

FORMAT_VERSION = 2
CKPT = "ckpt.npz"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


def model_classes() -> dict:
    """Model classes a checkpoint can rebuild, by the name stored in its meta: (class, config class)."""
    from models.gpt import GPT, GPTConfig
    return {"GPT": (GPT, GPTConfig)}


def checkpoint_path(path) -> str:
    """``path`` itself if it names a file, else ``path/ckpt.npz``."""
    path = os.fspath(path)
    return path if path.endswith(".npz") else os.path.join(path, CKPT)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_array(obj) -> np.ndarray:
    return np.array(json.dumps(obj))          # a 0-d unicode array: fine with allow_pickle=False


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns. ``meta`` is the JSON dict saved with it, ``states``
    the state dicts saved with ``save_checkpoint(states=...)``, by name."""

    path: str
    params: dict
    optimizer_state: dict | None
    history: dict
    meta: dict
    manifest: dict = field(default_factory=dict)
    states: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def config(self) -> dict:
        return self.meta["model"]["config"]

    def build_model(self, **overrides):
        """A fresh model of the saved class and config, with the saved weights.

        ``overrides`` replace config fields that do not change parameter shapes (e.g. dropout)."""
        spec = self.meta.get("model") or {}
        classes = model_classes()
        if spec.get("class") not in classes:
            raise CheckpointError(f"checkpoint {self.path}: unknown model class {spec.get('class')!r}; "
                                  f"known: {', '.join(classes)}")
        cls, config_cls = classes[spec["class"]]
        # in the saved parameters' dtype: load_state_dict would cast them silently (as torch's does)
        dtype = next(iter(self.params.values())).dtype if self.params else None
        try:
            model = cls(config_cls.from_dict({**spec["config"], **overrides}),
                        **({} if dtype is None else {"dtype": dtype}))
            model.load_state_dict(self.params, strict=True)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {self.path}: cannot rebuild the {spec['class']} ({e})") from None
        return model

    def tokenizer(self):
        """The tokenizer saved in ``meta['tokenizer']``."""
        from models.tokenizer import TokenizerError, tokenizer_from_dict
        if "tokenizer" not in self.meta:
            raise CheckpointError(f"checkpoint {self.path} holds no tokenizer")
        try:
            return tokenizer_from_dict(self.meta["tokenizer"])
        except (TokenizerError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {self.path}: bad tokenizer ({e})") from None


def save_checkpoint(out_dir, model, optimizer=None, *, history=None, meta=None, states=None) -> str:
    """Write ``out_dir/ckpt.npz`` and ``out_dir/manifest.json`` atomically; returns the npz path.

    ``model`` needs ``state_dict()`` (and a ``config`` with ``to_dict()`` to be rebuildable);
    ``optimizer`` anything with ``state_dict()`` (an ``optim.Optimizer`` or the mixed-precision
    wrapper); ``history`` a dict of number lists; ``meta`` JSON-serialisable extras (they must
    not use the keys this function writes: format_version, model); ``states`` a dict name ->
    state dict of anything else to resume (names without "/")."""
    meta = dict(meta or {})
    for k in ("format_version", "model"):
        if k in meta:
            raise ValueError(f"save_checkpoint: meta key {k!r} is written by save_checkpoint itself")
    config = getattr(model, "config", None)
    meta["format_version"] = FORMAT_VERSION
    meta["model"] = {"class": type(model).__name__,
                     "config": config.to_dict() if hasattr(config, "to_dict") else None}
    # which part of a model split over ranks this is (a tensor-parallel shard: tp_rank of
    # tp_size); a restore refuses another part, whose arrays may have the very same shapes
    shard = model.shard_meta() if hasattr(model, "shard_meta") else None
    if shard is not None:
        meta["model"]["shard"] = shard
    arrays = {f"param/{n}": a for n, a in model.state_dict().items()}
    if optimizer is not None:
        for k, v in optim.flatten_state_dict(optimizer.state_dict()).items():
            arrays[f"optim/{k}"] = v
    for name, sd in (states or {}).items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"save_checkpoint: a states name must be a non-empty str without '/', "
                             f"got {name!r}")
        arrays.update(optim.flatten_state_dict(sd, prefix=f"state/{name}/"))
    history = history or {}
    for k, v in history.items():
        arrays[f"history/{k}"] = np.asarray(v, dtype=np.float64)
    arrays["meta"] = _json_array(meta)

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CKPT)
    mpath = os.path.join(out_dir, MANIFEST)
    # A save stopped between its two renames left manifest.json.tmp as the only manifest that
    # vouches for ckpt.npz. Finish it before this save writes its own .tmp over it: a second
    # save stopped in its turn would otherwise leave no manifest matching ckpt.npz at all.
    if os.path.exists(mpath + ".tmp") and os.path.isfile(path) and _pending_manifest(mpath, _sha256(path)):
        os.replace(mpath + ".tmp", mpath)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    _fsync(tmp)
    digest = _sha256(tmp)

    def last(key):
        v = history.get(key)
        return float(v[-1]) if v is not None and len(v) else None

    manifest = {
        "format_version": FORMAT_VERSION, "checkpoint": CKPT, "sha256": digest,
        "step": meta.get("step"), "model": meta["model"]["class"], "config": meta["model"]["config"],
        "num_params": int(sum(p.size for p in model.parameters())) if hasattr(model, "parameters") else None,
        "last_val_loss": last("val_loss"), "last_train_loss": last("train_loss"),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{k: meta[k] for k in ("optimizer", "preset", "data") if k in meta},
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items() if k != "meta"},
    }
    # The new manifest is on disk before the arrays are swapped in: a crash between the two
    # renames leaves manifest.json.tmp vouching for the new ckpt.npz, which load_checkpoint accepts.
    with open(mpath + ".tmp", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    _fsync(mpath + ".tmp")
    os.replace(tmp, path)
    os.replace(mpath + ".tmp", mpath)
    _fsync(out_dir)                                  # the renames themselves
    return path


def _fsync(path):
    """Flush a file's (or a directory's entries') writes to the disk: a rename is only as safe
    as what it renames, and a power cut may otherwise keep the new name with the old bytes."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:                                  # (a directory on a system that cannot open one)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pending_manifest(mpath, digest):
    """``manifest.json.tmp`` if it vouches for the arrays file (``save_checkpoint`` was stopped
    after renaming the arrays and before renaming the manifest), else None."""
    try:
        with open(mpath + ".tmp", encoding="utf-8") as f:
            pending = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(pending, dict) and pending.get("sha256") == digest \
        and pending.get("format_version") == FORMAT_VERSION
    return pending if ok else None


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``path``: its directory or npz).

    Raises :class:`CheckpointError` (one line) when the file is missing, its manifest is missing
    or does not vouch for it (SHA-256), it is not a readable npz, or it has another format version."""
    npz = checkpoint_path(path)
    if not os.path.isfile(npz):
        raise CheckpointError(f"no checkpoint at {npz}")
    mpath = os.path.join(os.path.dirname(npz), MANIFEST)
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:                          # the very first save may have stopped short
        manifest = _pending_manifest(mpath, _sha256(npz))
        if manifest is None:
            raise CheckpointError(f"checkpoint {npz} has no {MANIFEST} beside it (it vouches for the "
                                  f"arrays file); was it copied without it?") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {npz}: unreadable {MANIFEST} ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        have = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise CheckpointError(f"checkpoint {npz} has format version {have!r}; this minigrad reads "
                              f"version {FORMAT_VERSION}")
    digest = _sha256(npz)
    if manifest.get("sha256") != digest:
        manifest = _pending_manifest(mpath, digest) or manifest   # a save interrupted between renames
    if manifest.get("sha256") != digest:
        raise CheckpointError(f"checkpoint {npz} does not match its {MANIFEST} (SHA-256 differs): the "
                              f"file is truncated, corrupted or from another run")
    try:
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read checkpoint {npz}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        have = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"checkpoint {npz} has format version {have!r}; this minigrad reads "
                              f"version {FORMAT_VERSION}")
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    flat = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    ostate = optim.unflatten_state_dict(flat) if flat else None
    names = {k.split("/")[1] for k in arrays if k.startswith("state/")}
    states = {n: optim.unflatten_state_dict(arrays, prefix=f"state/{n}/") for n in sorted(names)}
    history = {k[len("history/"):]: v.tolist() for k, v in arrays.items() if k.startswith("history/")}
    return Checkpoint(path=npz, params=params, optimizer_state=ostate, history=history, meta=meta,
                      manifest=manifest, states=states)


def load_matching_checkpoint(path, config: dict, **meta) -> Checkpoint | None:
    """The checkpoint at ``path`` when it holds a model of this ``config`` (``cfg.to_dict()``) and
    its meta has every given entry (such as the data's key and the training settings); None when
    there is none, it is damaged, or it was made otherwise: the lookup of a cached trained model,
    which the caller reuses instead of training again (and overwrites when None)."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        return None
    if ckpt.config != config or any(ckpt.meta.get(k) != v for k, v in meta.items()):
        return None
    return ckpt
