"""Smoke test of demos/finetune_lora.py: a --quick run shrunk by flags writes its figure and
results into --out (and nowhere else), its measurements say what the methods cost, a cached
pretraining is reused and loads with --init-from, and bad input is one line and exit 2."""
import json
import math

import pytest

from strategies import assert_refused, ctrl_c, files_below, load_demo

SMALL = ["--quick", "--pretrain-steps", "3", "--steps", "2", "--n-evals", "1", "--eval-batches", "1",
         "--batch-size", "2", "--max-chars", "60000", "--ranks", "1,2", "--dora-rank", "1", "--no-progress"]
# the tiny preset: 2 layers of C = 64; adapters on c_attn (64 -> 192), attn.c_proj (64 -> 64),
# c_fc (64 -> 256) and mlp.c_proj (256 -> 64): r·1024 numbers per layer, DoRA 576 more
ADAPTER_NUMBERS = {"LoRA r=1": 2 * 1024, "LoRA r=2": 2 * 2048, "DoRA r=1": 2 * (1024 + 576)}


def test_quick_run_measures_every_method_and_reuses_its_pretraining(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out / --cache-dir shows up here
    demo = load_demo("finetune_lora.py")
    assert demo.main(SMALL + ["--out", "res", "--cache-dir", "cache"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "res"]
    assert files_below(tmp_path / "res") == ["finetune_lora.png", "results_tiny.json", "results_tiny.md"]
    assert "| method | val loss (new text) |" in (tmp_path / "res" / "results_tiny.md").read_text()
    assert (tmp_path / "res" / "finetune_lora.png").stat().st_size > 10_000
    res = json.loads((tmp_path / "res" / "results_tiny.json").read_text())
    runs = res["runs"]
    assert list(runs) == ["full", "LoRA r=1", "LoRA r=2", "DoRA r=1"]
    assert runs["full"]["trainable"] == res["n_params"]
    for name, numbers in ADAPTER_NUMBERS.items():
        assert runs[name]["trainable"] == numbers, name
        # merging changes the arithmetic's order only
        assert abs(runs[name]["merged_val_loss"] - runs[name]["val_loss"]) < 1e-4, name
    for name, r in runs.items():
        assert r["state_bytes"] == r["state_formula"] == 2 * 4 * r["trainable"], name   # float32 AdamW
        assert r["curve"]["step"] == [0, 2] and r["curve"]["val_loss"][0] == res["base_val_loss"]
        assert all(math.isfinite(v) for v in r["curve"]["val_loss"]) and r["seconds"] > 0
    assert res["table"] in out and "| LoRA r=2 |" in res["table"]

    # the pretraining was cached as a checkpoint: reused, and usable as --init-from
    argv = SMALL + ["--ranks", "1", "--dora-rank", "0", "--cache-dir", "cache"]
    assert demo.main(argv + ["--out", "again", "--train-embeddings"]) == 0
    assert "pretrained GPT from cache" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "results_tiny.json").read_text())
    assert again["base_val_loss"] == res["base_val_loss"]
    with_wte = again["runs"]["LoRA r=1 + wte"]                  # + the token embedding (V, 64)
    assert with_wte["trainable"] == 2 * 1024 + again["vocab_size"] * 64
    assert with_wte["state_bytes"] == 2 * 4 * with_wte["trainable"]
    ckpt = next(p for p in (tmp_path / "cache").iterdir() if p.name.startswith("finetune_lora_pretrained"))
    no_preset = [a for a in argv if a != "--quick"]
    del no_preset[no_preset.index("--pretrain-steps"):no_preset.index("--pretrain-steps") + 2]   # refused
    assert demo.main(no_preset + ["--init-from", str(ckpt), "--out", "init"]) == 0
    loaded = json.loads((tmp_path / "init" / "results_checkpoint.json").read_text())
    assert loaded["base_val_loss"] == res["base_val_loss"] and "the checkpoint" in loaded["source"]


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--ranks", "1,x"], "--ranks must be integers separated by commas"),
    (["--ranks", "0"], "--ranks must be >= 1"),
    (["--adapter-lr", "nan"], "--adapter-lr must be a positive number"),
    (["--targets", "h.*.q_proj"], "--targets: apply_lora: target 'h.*.q_proj' matches no Linear layer"),
    (["--targets", "role:attn_q"], "target 'role:attn_qkv'"),
    (["--data", "missing.txt"], "--data missing.txt: no such file; the named texts are python-docs and first-folio"),
    (["--init-from", "missing"], "no checkpoint at missing"),
    (["--init-from", "missing", "--preset", "tiny"], "with --init-from the model is the checkpoint's"),
    (["--init-from", "missing", "--pretrain-steps", "9"],
     "--pretrain-steps: --init-from gives the pretrained model, so it would be ignored"),
    (["--out", "a_file"], "--out a_file is a file, not a directory"),
    (["--out", "a_file/sub"], "--out a_file/sub is not writable"),
])
def test_bad_input_is_one_line_and_exit_2_before_writing(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    demo = load_demo("finetune_lora.py")
    base = ["--cache-dir", "", "--max-chars", "60000"] + ([] if "--init-from" in argv else ["--quick"])
    assert_refused(demo, base + argv, says, capsys, watch=tmp_path)


def test_an_interrupted_run_stops_the_demo_with_130_and_writes_no_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("finetune_lora.py")
    made = ctrl_c(demo, monkeypatch, run=2)          # the pretraining, then full fine-tuning: Ctrl-C there
    assert demo.main(SMALL + ["--out", "res", "--cache-dir", ""]) == 130
    assert len(made) == 2
    assert capsys.readouterr().err == "finetune_lora.py: full: interrupted at step 2 of 2; no results written to res\n"
    assert files_below(tmp_path / "res") == []
