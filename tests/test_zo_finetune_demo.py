"""Smoke test of demos/zo_finetune.py: a --quick run shrunk by flags writes its figures and
results into --out (and nowhere else), reuses its cached pretraining, and bad input is one line."""

import json
import math

import pytest

from strategies import assert_refused, ctrl_c, files_below, load_demo

SMALL = ["--quick", "--pretrain-steps", "4", "--adamw-steps", "3", "--zo-steps", "4", "--n-evals", "2",
         "--eval-batches", "1", "--batch-size", "4", "--max-chars", "200000", "--no-progress"]


def test_quick_run_writes_into_out_and_reuses_the_pretrained_gpt(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)            # anything written outside --out / --cache-dir shows up here
    demo = load_demo("zo_finetune.py")
    assert demo.main(SMALL + ["--out", "tmp", "--cache-dir", "cache"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tmp"]
    assert files_below(tmp_path / "tmp") == ["results_tiny.json", "results_tiny.md", "zo_finetune_loss.png",
                                             "zo_finetune_memory.png"]
    md = (tmp_path / "tmp" / "results_tiny.md").read_text()
    assert "| MeZO |" in md and "eval loss before" in md          # the memory and the runs tables
    for png in ("zo_finetune_loss.png", "zo_finetune_memory.png"):
        assert (tmp_path / "tmp" / png).stat().st_size > 10_000
    res = json.loads((tmp_path / "tmp" / "results_tiny.json").read_text())
    assert res["preset"] == "tiny" and res["args"]["out"] == "tmp"
    assert set(res["memory"]) == {"forward", "mezo", "lozo", "adamw"}
    assert res["memory"]["mezo"]["grads"] == 0 < res["memory"]["adamw"]["grads"]
    runs = res["runs"]
    # evaluations before step 0, every steps // n_evals steps, and after the last step
    assert runs["adamw"]["step"] == [0, 1, 2, 3] and runs["mezo"]["step"] == [0, 2, 4]
    # a backprop step is one forward pass, a MeZO/LoZO step two
    assert runs["adamw"]["forward_passes"] == [0, 1, 2, 3]
    assert runs["mezo"]["forward_passes"] == runs["lozo"]["forward_passes"] == [0, 4, 8]
    for h in runs.values():
        assert all(math.isfinite(v) for v in h["eval_loss"])
        assert h["time"][0] == 0.0 and h["time"] == sorted(h["time"]) and h["time"][-1] > 0
        # the same pretrained model, the same evaluation batches: the same starting loss
        assert h["eval_loss"][0] == runs["adamw"]["eval_loss"][0]
    assert runs["adamw"]["eval_loss"][-1] < runs["adamw"]["eval_loss"][0]
    capsys.readouterr()

    # the pretraining was cached as a checkpoint and is loaded instead of repeated
    pretrain_only = ["--quick", "--pretrain-steps", "4", "--batch-size", "4", "--max-chars", "200000",
                     "--no-progress"]               # --skip-train refuses the fine-tuning flags
    assert demo.main(pretrain_only + ["--out", "tmp2", "--cache-dir", "cache", "--skip-train"]) == 0
    assert "pretrained GPT from cache" in capsys.readouterr().out
    assert files_below(tmp_path / "tmp2") == ["results_tiny.json", "results_tiny.md", "zo_finetune_memory.png"]


def test_pretraining_flags_given_pretrain_here_instead_of_taking_train_gpts_checkpoint(tmp_path, monkeypatch,
                                                                                       capsys):
    """Without --ckpt or --quick the demo takes out/ckpt.npz when it fits, and an explicit
    --pretrain-steps or --pretrain-lr was silently ignored there (a review session): given, they
    now mean a pretraining here."""
    monkeypatch.chdir(tmp_path)
    assert load_demo("train_gpt.py").main(["--preset", "tiny", "--steps", "1", "--max-minutes", "0", "--batch-size",
                                           "2", "--eval-batches", "1", "--sample-chars", "1", "--no-progress"]) == 0
    demo = load_demo("zo_finetune.py")
    base = ["--preset", "tiny", "--skip-train", "--batch-size", "4", "--max-chars", "200000", "--cache-dir", "",
            "--no-progress"]
    capsys.readouterr()
    assert demo.main(base + ["--out", "a"]) == 0
    assert "the checkpoint out/ckpt.npz (step 1)" in capsys.readouterr().out
    assert demo.main(base + ["--out", "b", "--pretrain-steps", "2"]) == 0
    said = capsys.readouterr().out
    assert "pretraining here, not taking out/ckpt.npz" in said and "the checkpoint out/ckpt.npz" not in said
    assert demo.main(base + ["--out", "c", "--pretrain-lr", "3e-3", "--pretrain-steps", "2"]) == 0   # its default,
    assert "pretraining here" in capsys.readouterr().out                                         # but given


@pytest.mark.parametrize("stop_at, says", [
    (1, "zo_finetune.py: pretraining interrupted at step 4 of 4; nothing cached, no results written to res\n"),
    (2, "zo_finetune.py: AdamW (backprop) interrupted at step 3 of 3; no figures and no results_tiny.json or .md "
        "written to res\n")])
def test_ctrl_c_stops_the_demo_with_130_caching_no_part_trained_model(tmp_path, monkeypatch, capsys,
                                                                      stop_at, says):
    monkeypatch.chdir(tmp_path)
    demo = load_demo("zo_finetune.py")
    made = ctrl_c(demo, monkeypatch, run=stop_at, step=(4, 3)[stop_at - 1])   # 1 pretrains, 2 fine-tunes
    assert demo.main(SMALL + ["--out", "res", "--cache-dir", "cache"]) == 130
    assert len(made) == stop_at and capsys.readouterr().err == says
    assert files_below(tmp_path / "res") == []
    cached = [p for p in files_below(tmp_path / "cache") if "zo_finetune_pretrained" in p]
    assert bool(cached) == (stop_at == 2)          # only a finished pretraining is cached


@pytest.mark.parametrize("argv, says", [
    (["--zo-steps", "0"], "--zo-steps must be >= 1, got 0"),
    (["--mezo-lr", "nan"], "--mezo-lr must be a positive number"),
    (["--docs", "x"], "unrecognized arguments: --docs x"),
    (["--ckpt", "missing"], "no checkpoint at missing"),
    (["--skip-train", "--zo-steps", "5"], "--zo-steps: --skip-train runs no fine-tuning, so it would be ignored"),
    (["--skip-train", "--mezo-lr", "0.5", "--eps", "0.1"], "--mezo-lr, --eps: --skip-train runs no fine-tuning"),
    (["--ckpt", "out", "--pretrain-steps", "5"],
     "--pretrain-steps: --ckpt gives the pretrained model, so it would be ignored"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert_refused(load_demo("zo_finetune.py"), ["--quick", "--cache-dir", ""] + argv, says, capsys, watch=tmp_path)


def test_a_refused_out_leaves_no_token_cache(tmp_path, monkeypatch, capsys):
    """--out is checked after the corpus is tokenized: the cache must wait for it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert_refused(load_demo("zo_finetune.py"), SMALL + ["--cache-dir", "cache", "--out", "a_file"],
                   "--out a_file is a file", capsys, watch=tmp_path)
