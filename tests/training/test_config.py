"""The run config: YAML + flag overrides into one typed object, checked once, saved and read back unchanged."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.config import RUN_CONFIG, ConfigError, RunConfig, load, parse, save

REQUIRED = ["--store", "/s", "--annotations", "/a.json", "--out", "/o", "--base-model", "/b"]


def test_yaml_then_flags_then_saved_and_read_back(tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"store": "/s", "annotations": "/a.json", "batch_size": 2},
                                      "model": {"base": "/b", "lora": {"r": 8}}, "optim": {"lr": 3e-4},
                                      "out": "/o"}))
    cfg = parse(["--config", str(recipe), "--optim.lr", "1e-4", "--scale.workers", "2", "--sides", "audio", "hfr"])
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.model.lora.r, cfg.scale.workers) == (1e-4, 2, 8, 2)
    assert cfg.sides == ["audio", "hfr"] and cfg.modalities == ["video", "audio", "hfr"]
    assert cfg.optim.grad_clip == 0.1  # an unset field keeps the recipe default
    save(cfg, tmp_path)
    assert load(tmp_path / RUN_CONFIG) == cfg
    assert load(tmp_path) == cfg  # a run directory stands for its config


def test_readme_flags_are_aliases_of_the_nested_fields():
    cfg = parse([*REQUIRED, "--workers", "8", "--gpus-per-worker", "1", "--sides", "audio", "--steps", "5000",
                 "--lr", "1e-3", "--batch-size", "8", "--lora-r", "8", "--patch-d-model", "64",
                 "--report-every", "20", "--checkpoint-every", "100", "--seed", "3", "--grad-accum", "2"])
    assert (cfg.scale.workers, cfg.scale.gpus_per_worker, cfg.optim.steps, cfg.optim.lr, cfg.data.batch_size) == (
        8, 1.0, 5000, 1e-3, 8)
    assert (cfg.model.lora.r, cfg.model.patches.d_model, cfg.checkpoint.report_every, cfg.checkpoint.every) == (
        8, 64, 20, 100)
    assert (cfg.data.seed, cfg.optim.grad_accum, cfg.data.store, cfg.model.base) == (3, 2, "/s", "/b")
    assert parse([*REQUIRED, "--sides", ""]).sides == []  # LoRA only, as `pave demo` asks for it
    assert parse([*REQUIRED, "--sides", "audio,hfr"]).sides == ["audio", "hfr"]  # the comma list of earlier releases


@pytest.mark.parametrize("argv, message", [
    (REQUIRED[:6], "--model.base (--base-model) is required"),
    ([*REQUIRED[2:]], "--data.store (--store) is required"),
    ([*REQUIRED, "--tiny-base"], "exclude each other"),
    ([*REQUIRED, "--steps", "0"], "--optim.steps must be at least 1, got 0"),
    ([*REQUIRED, "--batch-size", "-1"], "--data.batch-size must be at least 1"),
    ([*REQUIRED, "--optim.warmup-ratio", "1.5"], "--optim.warmup-ratio must be in [0, 1)"),
    ([*REQUIRED, "--sides", "audio", "audio"], "side channels must be distinct"),
    ([*REQUIRED, "--sides", "", "--model.lora.no-enabled"], "nothing to train"),
    (["--config"], "argument --config: expected one argument"),
])
def test_bad_values_are_refused_naming_the_flag(argv, message):
    escaped = message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    with pytest.raises((ConfigError, SystemExit), match=escaped):  # SystemExit: argparse's one line
        parse(argv)


def test_a_misspelt_or_mistyped_yaml_key_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: fast\n  warmup: 0.1\n")
    with pytest.raises(ConfigError) as err:
        parse(["--config", str(tmp_path / "bad.yaml")])
    assert "optim.lr: Input should be a valid number" in str(err.value)
    assert "optim.warmup: Unexpected keyword argument" in str(err.value)
    with pytest.raises(ConfigError, match="not a readable YAML config"):
        parse(["--config", str(tmp_path / "missing.yaml")])


def test_pave_train_without_a_base_model_exits_naming_the_flag(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "train", "--store", str(tmp_path / "store"),
                           "--annotations", str(tmp_path / "a.json"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "pave train: --model.base (--base-model) is required: a local LLaVA-OneVision directory (--tiny-base trains "
        "a tiny random model instead, for demos and tests)")
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_a_store_made_by_another_vision_tower_is_refused_before_training(synthetic_store, tmp_path, pave):
    """The synthetic store holds 4 tokens of width 32 per frame; a base whose tower has a 4x4 grid of width 48 fits
    neither its width nor its grid: one line naming the base and what to do, and no --out left behind."""
    from model.tiny import save_tiny_base
    from pipelines.training_data import open_versions
    from training.launch import check_video_fits

    store, _ = synthetic_store
    video = open_versions(store, ["video"])["video"].schema
    wide = save_tiny_base(tmp_path / "wide", ["low high"], video_dim=48, grid=2)
    with pytest.raises(ConfigError, match="the stored video tokens are 32 wide, its vision tower 48"):
        check_video_fits(str(wide), video)
    big_grid = save_tiny_base(tmp_path / "grid8", ["low high"], video_dim=32, grid=8)
    with pytest.raises(ConfigError, match=r"4 video tokens per frame: neither .* full 8x8 grid .*--encoder-path video="):
        check_video_fits(str(big_grid), video)
    check_video_fits(str(save_tiny_base(tmp_path / "fits", ["low high"], video_dim=32, grid=2)), video)
    code, _, err = pave("train", "--store", store, "--annotations", synthetic_store[1], "--base-model", wide,
                        "--out", tmp_path / "run")
    assert code == 2 and "the stored video tokens are 32 wide, its vision tower 48" in err
    assert not (tmp_path / "run").exists()


def test_a_task_recipe_on_a_machine_without_gpus_stops_at_once(synthetic_store, tmp_path, pave):
    """The recipes ask for a GPU per worker: on a local Ray without one the workers would wait forever."""
    store, annotations = synthetic_store
    code, _, err = pave("train", "--config", Path(__file__).parents[2] / "recipes" / "avsd.yaml", "--store", store,
                        "--annotations", annotations, "--out", tmp_path / "run", "--tiny-base")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "pave train: --scale.gpus-per-worker 1: this machine has no GPU; give --scale.gpus-per-worker 0 to train on "
        "CPUs")
    assert not (tmp_path / "run").exists()


def test_an_mlflow_server_that_does_not_answer_is_refused_before_training():
    from training.tracking import check

    cfg = RunConfig()
    cfg.tracking.mlflow = "http://127.0.0.1:9"  # the discard port: nothing listens
    with pytest.raises(ConfigError, match=r"--tracking.mlflow http://127.0.0.1:9: the tracking server does not answer"):
        check(cfg)


def test_a_dry_run_prints_the_resolved_run_and_the_first_batch_and_writes_nothing(synthetic_store, pave, tmp_path):
    """16 samples, batch 2 x accum 2 on 1 worker: 8 micro-batches an epoch, 1.5 epochs are 6 steps. Each sample's 4
    frames of 2 x 2 tokens are pooled 2 x 2 by the model, then one newline per row: 8 LLM tokens; its answer carries
    the loss with its <|im_end|> and newline, and LLaVA's convention adds the conversation's other <|im_start|>,
    <|im_end|> and newline tokens."""
    from transformers import AutoTokenizer

    from model.tiny import save_tiny_base

    store, annotations = synthetic_store
    out = tmp_path / "run"
    flags = ["train", "--dry-run", "--store", store, "--annotations", annotations, "--out", out, "--tiny-base",
             "--batch-size", "2", "--grad-accum", "2", "--optim.epochs", "1.5"]
    code, printed, _ = pave(*flags)
    assert code == 0 and not out.exists()
    resolved = yaml.safe_load(printed.split("\n\n")[0])
    assert (resolved["optim"]["steps"], resolved["optim"]["epochs"], resolved["data"]["batch_size"]) == (6, 1.5, 2)
    assert "samples: 16; per optimizer step: 4 (batch 2 x grad accum 2 x 1 workers)" in printed
    assert "micro-batches per worker and epoch: 8; optimizer steps: 6 (1.50 epochs)" in printed
    samples = {s["id"]: s for s in json.loads(Path(annotations).read_text())}
    texts = [turn["value"] for s in samples.values() for turn in s["conversations"]]
    tokenizer = AutoTokenizer.from_pretrained(save_tiny_base(tmp_path / "base", texts, 0, 32, 2))  # the run's base
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in printed.splitlines() if line.startswith("| v")]
    assert len(rows) == 2, printed
    for sample, _, video, loss in rows:
        answer = samples[sample]["conversations"][-1]["value"]
        assert (int(video), int(loss)) == (8, len(tokenizer.tokenize(f"{answer}<|im_end|>\n"))), rows

    code, llava, _ = pave(*flags, "--data.loss-tokens", "llava")
    rows_llava = [[c.strip() for c in line.split("|")[1:-1]] for line in llava.splitlines() if line.startswith("| v")]
    assert [r[:3] for r in rows_llava] == [r[:3] for r in rows] and all(int(r[3]) > 3 for r in rows_llava)
